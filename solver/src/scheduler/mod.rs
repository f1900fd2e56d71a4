//! The scheduler: solves a [`Graph`] on tokio, checking each vertex against the [`Cache`] and
//! running misses through a [`Worker`], with BuildKit's solver semantics.
//!
//! A [`Solver`] is shared by every build of a process (`hoist build` has one build; `hoist serve`
//! has many at once). [`Solver::solve`] takes a [`Job`]: a graph, the vertices wanted from it,
//! the build's worker and progress sink, and a cancellation token. It proceeds in three steps:
//!
//! 1. **Keys.** The worker gives each vertex its content key ([`Worker::content_key`]: the
//!    content hash of the context files a source selects, the manifest digest of an image), all
//!    at once; then every vertex gets its [`CacheKey`], inputs first (see [`CacheKey`] for what
//!    it covers).
//! 2. **Lookups.** Unless the job says `no_cache`, every key is looked up in the cache; each hit
//!    is reported [`Event::Cached`], as `docker build` shows every step of a rebuild as CACHED.
//! 3. **Runs.** Starting from the wanted vertices, a vertex that missed needs its inputs; a hit
//!    needs nothing below it, so a cached vertex's inputs are never loaded or run. Each vertex
//!    whose inputs are ready runs as soon as a slot is free: at most `max_parallelism` workers
//!    run at once across all builds of the solver.
//!
//! **Sharing.** In-flight work is keyed by cache key in the solver. A build that needs a key
//! another build is computing joins that computation instead of starting its own; it gets the
//! `Started` event and the output so far replayed (the last [`REPLAY_BYTES`] of it, after a
//! line that says how much came before), then the rest live. Right before running, a
//! computation looks its key up once more, so a build that missed just before another build
//! recorded the same key still reuses it. Within one build the graph has already merged
//! identical vertices, so each runs at most once.
//!
//! **Failure and cancellation.** The first failure cancels the build: no new work starts, and
//! every running worker is told through its [`VertexContext`] and then awaited. `solve` returns
//! that first failure, naming the vertex and its Dockerfile line and carrying the worker's
//! error. Cancelling the job's token does the same and returns [`SolveError::Cancelled`]. Shared
//! work is cancelled only when no build waits for it any more, so one build's Ctrl-C never fails
//! another's. Workers must react to cancellation and then return (after cleaning up their
//! sandbox, mounts and temporary state); the scheduler never drops a running worker's future,
//! so `solve` returns only when no work it started or joined alone is still running.

mod context;
mod error;
mod flight;
mod key;
mod reason;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use context::{Fanout, Subscriber, VertexInfo};
pub use context::{REPLAY_BYTES, VertexContext};
use error::{CancelledElsewhere, Panicked, worker_error};
pub use error::{Phase, SolveError, WorkerError};
use flight::{Outcome, Shared};
pub use key::CacheKey;
pub use reason::{
    BuildHistory, ContextFiles, History, InputInputs, MAX_FILES, OpInputs, StepIdentity,
    StepInputs, explain,
};
pub use tokio_util::sync::CancellationToken;

use crate::graph::{Graph, Location, Vertex, VertexDigest, VertexId};
use crate::progress::{Event, ProgressSink, ResourceUsage, Stream};

/// A boxed future, as the [`Worker`] and [`Cache`] traits return (they are used as trait
/// objects, which `async fn` in traits does not allow).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The error a worker or cache returns; `?` converts any error type into it.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Does the work of vertices: RUN through the executor, COPY/ADD through the cache's file ops,
/// FROM through the registry. One worker serves one build; it knows that build's context,
/// secrets and options.
pub trait Worker: Send + Sync + 'static {
    /// What a vertex produces (for hoist: a snapshot and the layer chain that rebuilds it).
    /// Cloned for every dependant, so it should be cheap to clone (an `Arc` or a few ids).
    type Output: Clone + Send + Sync + 'static;

    /// The content that the vertex's digest does not pin: for a `Local` source the content
    /// hash of the files it selects, for an image the manifest digest it resolved to. `None`
    /// (the default) when the digest alone decides the result. It must never depend on
    /// mtimes, the session or the host. Called once per vertex per build, for all vertices at
    /// once, before any work runs.
    ///
    /// # Errors
    /// When the content cannot be read or resolved; the build fails at this vertex.
    fn content_key<'a>(
        &'a self,
        vertex: &'a Vertex,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<String>, BoxError>> {
        let _ = (vertex, cancel);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// The files behind a `Local` source's content key, by path, for naming what changed when
    /// a step that reads them misses the cache. Asked only for sources of steps that missed,
    /// after [`content_key`](Self::content_key); `None` (the default) when unknown.
    fn context_files(&self, vertex: &Vertex) -> Option<ContextFiles> {
        let _ = vertex;
        None
    }

    /// Does the vertex's work over its inputs' results (in the order of `vertex.inputs`).
    /// Output goes to [`VertexContext::log`], measurements to
    /// [`VertexContext::report_usage`]. When [`VertexContext::cancelled`] fires, stop, clean
    /// up, and return (any error will do: it is not reported).
    ///
    /// # Errors
    /// Whatever made the work fail; it reaches the user as the cause of [`SolveError::Vertex`].
    fn run<'a>(
        &'a self,
        vertex: &'a Vertex,
        inputs: &'a [Self::Output],
        ctx: &'a VertexContext,
    ) -> BoxFuture<'a, Result<Self::Output, BoxError>>;
}

/// Maps cache keys to results. Shared by all builds of a [`Solver`].
pub trait Cache<R>: Send + Sync + 'static {
    /// The result recorded under `key`, if any.
    ///
    /// # Errors
    /// The index cannot be read; the build fails at this vertex.
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        vertex: &'a Vertex,
    ) -> BoxFuture<'a, Result<Option<R>, BoxError>>;

    /// Records the result of a vertex that ran (also in `no_cache` builds, as BuildKit does).
    ///
    /// # Errors
    /// The index cannot be written; the build fails at this vertex.
    fn record<'a>(
        &'a self,
        key: &'a CacheKey,
        vertex: &'a Vertex,
        result: &'a R,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// A cache in memory, for one process's lifetime (tests, and builds without a cache dir).
#[derive(Debug)]
pub struct MemoryCache<R> {
    entries: Mutex<HashMap<CacheKey, R>>,
}

impl<R> Default for MemoryCache<R> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> MemoryCache<R> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<R: Clone + Send + Sync + 'static> Cache<R> for MemoryCache<R> {
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
    ) -> BoxFuture<'a, Result<Option<R>, BoxError>> {
        let hit = lock(&self.entries).get(key).cloned();
        Box::pin(std::future::ready(Ok(hit)))
    }

    fn record<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
        result: &'a R,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        lock(&self.entries).insert(*key, result.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

/// How a [`Solver`] runs work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SolverOptions {
    /// At most this many [`Worker::run`] calls at once, across all builds (`--max-parallelism`).
    pub max_parallelism: usize,
}

impl Default for SolverOptions {
    fn default() -> Self {
        Self {
            max_parallelism: default_parallelism(),
        }
    }
}

/// The number of CPUs hoist may use, the default `--max-parallelism`.
#[must_use]
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// One build for [`Solver::solve`].
pub struct Job<'g, R> {
    pub graph: &'g Graph,
    /// The vertices whose results are wanted (for a Dockerfile, [`BuildPlan::root`]).
    ///
    /// [`BuildPlan::root`]: crate::frontend::BuildPlan::root
    pub roots: Vec<VertexId>,
    pub worker: Arc<dyn Worker<Output = R>>,
    pub progress: Arc<dyn ProgressSink>,
    /// Cancel this to stop the build (Ctrl-C); `solve` returns once everything stopped.
    pub cancel: CancellationToken,
    /// `--no-cache`: look nothing up (results are still recorded).
    pub no_cache: bool,
    /// This build's own second cache (`--cache-from`), asked when the shared one misses. Its
    /// hits are not recorded in the shared cache: they are the importer's to keep.
    pub imported: Option<Arc<dyn Cache<R>>>,
    /// Where steps that ran record their inputs, and steps that miss find the last ones, to
    /// say why they ran; `None` to say nothing (but `--no-cache`).
    pub history: Option<BuildHistory>,
}

impl<'g, R> Job<'g, R> {
    /// A job with no progress output, its own cancellation token, and the cache on.
    #[must_use]
    pub fn new(
        graph: &'g Graph,
        roots: Vec<VertexId>,
        worker: Arc<dyn Worker<Output = R>>,
    ) -> Self {
        Self {
            graph,
            roots,
            worker,
            progress: Arc::new(crate::progress::Discard),
            cancel: CancellationToken::new(),
            no_cache: false,
            imported: None,
            history: None,
        }
    }
}

impl<R> fmt::Debug for Job<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("roots", &self.roots)
            .field("vertices", &self.graph.len())
            .field("no_cache", &self.no_cache)
            .finish_non_exhaustive()
    }
}

/// What a successful solve produced.
#[derive(Clone, Debug)]
pub struct Solution<R> {
    /// The results of the job's roots, in the order given.
    pub results: Vec<R>,
    /// The cache keys of the job's roots, in the order given.
    pub keys: Vec<CacheKey>,
    /// Vertices whose work ran (or was joined) in this build.
    pub ran: usize,
    /// Vertices whose result came from the cache.
    pub cached: usize,
    /// Every vertex of the job, inputs first: its key, and its result when the build needed
    /// one (a vertex below a cache hit has none). For cache export.
    pub vertices: Vec<SolvedVertex<R>>,
}

/// One vertex of a solved job.
#[derive(Clone, Debug)]
pub struct SolvedVertex<R> {
    pub id: VertexId,
    pub key: CacheKey,
    pub result: Option<R>,
}

/// Solves graphs; one per process, shared by its builds.
pub struct Solver<R> {
    shared: Arc<Shared<R>>,
}

impl<R> Clone for Solver<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R> fmt::Debug for Solver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Solver")
            .field("max_parallelism", &self.shared.max_parallelism)
            .field("in_flight", &lock(&self.shared.in_flight).len())
            .finish_non_exhaustive()
    }
}

/// In-flight work is shared by cache key; `no_cache` work only with `no_cache` builds, so a
/// `--no-cache` build never gets a result that a cache lookup produced.
type FlightKey = (CacheKey, bool);

/// A vertex of the job, with its inputs and dependants as indices into the job's vertices.
struct Node {
    vertex: Arc<Vertex>,
    info: Arc<VertexInfo>,
    inputs: Vec<usize>,
    /// One entry per use: a vertex that takes this one twice is listed twice.
    dependants: Vec<usize>,
}

/// Everything one build's tasks share.
struct BuildCtx<R> {
    shared: Arc<Shared<R>>,
    worker: Arc<dyn Worker<Output = R>>,
    sink: Arc<dyn ProgressSink>,
    /// Child of the job's token: fired by the caller or by the first failure.
    cancel: CancellationToken,
    no_cache: bool,
    imported: Option<Arc<dyn Cache<R>>>,
    history: Option<Arc<BuildHistory>>,
}

impl<R> Clone for BuildCtx<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            worker: Arc::clone(&self.worker),
            sink: Arc::clone(&self.sink),
            cancel: self.cancel.clone(),
            no_cache: self.no_cache,
            imported: self.imported.clone(),
            history: self.history.clone(),
        }
    }
}

/// The first failure of a build, and the cancellation it causes.
struct FirstFailure {
    failure: Option<SolveError>,
}

impl FirstFailure {
    /// Keeps `err` if it is the first, cancels the build, and says whether it was kept. A
    /// failure after the build was cancelled is a consequence of the cancellation: dropped.
    fn fail<R>(
        &mut self,
        build: &BuildCtx<R>,
        info: &VertexInfo,
        phase: Phase,
        err: WorkerError,
    ) -> bool {
        if self.failure.is_some() || build.cancel.is_cancelled() {
            return false;
        }
        self.failure = Some(info.error(phase, err));
        build.cancel.cancel();
        true
    }

    /// [`fail`](Self::fail) for work that reports no events of its own: a kept failure is
    /// reported as the vertex's [`Event::Failed`].
    fn fail_and_report<R>(
        &mut self,
        build: &BuildCtx<R>,
        info: &VertexInfo,
        phase: Phase,
        err: WorkerError,
    ) {
        let text = crate::progress::error_text(&err);
        if self.fail(build, info, phase, err) {
            build.sink.event(Event::Failed {
                id: info.id,
                error: text,
                wall: Duration::ZERO,
                usage: None,
            });
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Solver<R> {
    #[must_use]
    pub fn new(cache: Arc<dyn Cache<R>>, options: SolverOptions) -> Self {
        let max_parallelism = options.max_parallelism.max(1);
        Self {
            shared: Arc::new(Shared {
                cache,
                permits: Arc::new(Semaphore::new(max_parallelism)),
                max_parallelism,
                in_flight: Mutex::new(HashMap::new()),
                next_serial: AtomicU64::new(0),
            }),
        }
    }

    /// How many computations are running or waiting for a slot, across all builds.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.in_flight).len()
    }

    /// Solves a job: the results of its roots, or its first failure.
    ///
    /// Must be called within a tokio runtime. Dropping the returned future instead of
    /// cancelling the job's token still tells running work to stop, but cannot wait for it.
    ///
    /// # Errors
    /// [`SolveError::Vertex`] for the first vertex that failed, [`SolveError::Cancelled`] when
    /// the job's token fired first.
    ///
    /// # Panics
    /// If a root is not a vertex of the job's graph.
    pub async fn solve(&self, job: Job<'_, R>) -> Result<Solution<R>, SolveError> {
        let Job {
            graph,
            roots,
            worker,
            progress,
            cancel,
            no_cache,
            imported,
            history,
        } = job;
        let build = BuildCtx {
            shared: Arc::clone(&self.shared),
            worker,
            sink: progress,
            cancel: cancel.child_token(),
            no_cache,
            imported,
            history: history.map(Arc::new),
        };
        let (nodes, root_index, order) = nodes_of(graph, &roots);

        let (keys, key_times) = content_keys(&build, &nodes).await?;
        let mut results: Vec<Option<R>> = vec![None; nodes.len()];
        let mut cached = 0;
        if !no_cache {
            cached = lookups(&build, &nodes, &keys, &mut results).await?;
        }
        let (ran, late_hits) =
            runs(&build, &nodes, &keys, &key_times, &root_index, &mut results).await?;
        cached += late_hits;
        if cancel.is_cancelled() {
            return Err(SolveError::Cancelled);
        }
        let mut out = Vec::with_capacity(root_index.len());
        for &i in &root_index {
            // Every wanted vertex has a result once `runs` returned without failure.
            out.push(results[i].clone().ok_or(SolveError::Cancelled)?);
        }
        let vertices = order
            .into_iter()
            .zip(&keys)
            .zip(results)
            .map(|((id, &key), result)| SolvedVertex { id, key, result })
            .collect();
        Ok(Solution {
            results: out,
            keys: root_index.iter().map(|&i| keys[i]).collect(),
            ran,
            cached,
            vertices,
        })
    }
}

/// The job's vertices in topological order, the positions of its roots among them, and their
/// ids in that order.
fn nodes_of(graph: &Graph, roots: &[VertexId]) -> (Vec<Node>, Vec<usize>, Vec<VertexId>) {
    let order = graph.reachable(roots);
    let index: HashMap<VertexId, usize> = order.iter().enumerate().map(|(i, &v)| (v, i)).collect();
    let mut nodes: Vec<Node> = order
        .iter()
        .map(|&id| {
            let vertex = graph.vertex(id);
            Node {
                vertex: graph.shared(id),
                info: Arc::new(VertexInfo {
                    id: id.index(),
                    name: vertex.name.clone(),
                    digest: vertex.digest,
                    location: vertex.location.clone(),
                }),
                // Inputs of a reachable vertex are reachable.
                inputs: vertex
                    .inputs
                    .iter()
                    .filter_map(|i| index.get(i).copied())
                    .collect(),
                dependants: Vec::new(),
            }
        })
        .collect();
    for i in 0..nodes.len() {
        for j in nodes[i].inputs.clone() {
            nodes[j].dependants.push(i);
        }
    }
    let root_index = roots.iter().filter_map(|r| index.get(r).copied()).collect();
    (nodes, root_index, order)
}

/// Step 1: content keys for all vertices at once, then cache keys inputs first. Also returns how
/// long each vertex's content key took: that work (hashing a context's files) is the vertex's
/// own, and counts in its wall time if it runs.
async fn content_keys<R: Clone + Send + Sync + 'static>(
    build: &BuildCtx<R>,
    nodes: &[Node],
) -> Result<(Vec<CacheKey>, Vec<Duration>), SolveError> {
    let mut set = JoinSet::new();
    let mut task_node = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let worker = Arc::clone(&build.worker);
        let vertex = Arc::clone(&node.vertex);
        let cancel = build.cancel.clone();
        let handle = set.spawn(async move {
            let started = Instant::now();
            let key = worker.content_key(&vertex, &cancel).await;
            (key, started.elapsed())
        });
        task_node.insert(handle.id(), i);
    }
    let mut content: Vec<Option<String>> = vec![None; nodes.len()];
    let mut took = vec![Duration::ZERO; nodes.len()];
    let mut first = FirstFailure { failure: None };
    while let Some(joined) = set.join_next_with_id().await {
        let (i, result) = match joined {
            Ok((task, (result, elapsed))) => {
                took[task_node[&task]] = elapsed;
                (task_node[&task], result.map_err(WorkerError::from))
            }
            Err(err) => (task_node[&err.id()], Err(worker_error(Panicked))),
        };
        match result {
            Ok(c) => content[i] = c,
            Err(err) => first.fail_and_report(build, &nodes[i].info, Phase::ContentKey, err),
        }
    }
    finish(build, first)?;
    let mut keys: Vec<CacheKey> = Vec::with_capacity(nodes.len());
    for (node, content) in nodes.iter().zip(&content) {
        let inputs: Vec<CacheKey> = node.inputs.iter().map(|&j| keys[j]).collect();
        keys.push(CacheKey::compute(
            &node.vertex.digest,
            content.as_deref(),
            &inputs,
        ));
    }
    Ok((keys, took))
}

/// Step 2: every key looked up at once; hits are reported and kept. Returns the hit count.
async fn lookups<R: Clone + Send + Sync + 'static>(
    build: &BuildCtx<R>,
    nodes: &[Node],
    keys: &[CacheKey],
    results: &mut [Option<R>],
) -> Result<usize, SolveError> {
    let mut set = JoinSet::new();
    let mut task_node = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let cache = Arc::clone(&build.shared.cache);
        let imported = build.imported.clone();
        let vertex = Arc::clone(&node.vertex);
        let key = keys[i];
        let handle = set.spawn(async move {
            match cache.lookup(&key, &vertex).await {
                Ok(None) => match imported {
                    Some(imported) => imported.lookup(&key, &vertex).await,
                    None => Ok(None),
                },
                found => found,
            }
        });
        task_node.insert(handle.id(), i);
    }
    let mut hits = 0;
    let mut first = FirstFailure { failure: None };
    while let Some(joined) = set.join_next_with_id().await {
        let (i, result) = match joined {
            Ok((task, result)) => (task_node[&task], result.map_err(WorkerError::from)),
            Err(err) => (task_node[&err.id()], Err(worker_error(Panicked))),
        };
        match result {
            Ok(Some(hit)) => {
                build.sink.event(nodes[i].info.cached());
                results[i] = Some(hit);
                hits += 1;
            }
            Ok(None) => {}
            Err(err) => first.fail_and_report(build, &nodes[i].info, Phase::CacheLookup, err),
        }
    }
    finish(build, first)?;
    Ok(hits)
}

/// Step 3: runs every vertex the roots need, each as soon as its inputs are done. Returns how
/// many ran and how many a last lookup found cached after all.
async fn runs<R: Clone + Send + Sync + 'static>(
    build: &BuildCtx<R>,
    nodes: &[Node],
    keys: &[CacheKey],
    key_times: &[Duration],
    roots: &[usize],
    results: &mut [Option<R>],
) -> Result<(usize, usize), SolveError> {
    // A vertex is needed when it has no result and a root or a needed vertex uses it.
    let mut needed = vec![false; nodes.len()];
    let mut stack: Vec<usize> = roots.to_vec();
    while let Some(i) = stack.pop() {
        if needed[i] || results[i].is_some() {
            continue;
        }
        needed[i] = true;
        stack.extend(&nodes[i].inputs);
    }
    let mut pending: Vec<usize> = nodes
        .iter()
        .map(|n| n.inputs.iter().filter(|&&j| results[j].is_none()).count())
        .collect();
    // An input that has a result now was a cache hit; any other input of a vertex that runs
    // will run first.
    let hit: Vec<bool> = results.iter().map(Option::is_some).collect();

    let mut set = JoinSet::new();
    let mut task_node = HashMap::new();
    let spawn = |set: &mut JoinSet<Outcome<R>>,
                 task_node: &mut HashMap<tokio::task::Id, usize>,
                 results: &[Option<R>],
                 i: usize| {
        let node = &nodes[i];
        // All inputs are done when a vertex is spawned.
        let inputs: Vec<R> = node
            .inputs
            .iter()
            .filter_map(|&j| results[j].clone())
            .collect();
        let input_steps = node
            .inputs
            .iter()
            .map(|&j| InputStep {
                key: keys[j],
                vertex: Arc::clone(&nodes[j].vertex),
                ran: !hit[j],
            })
            .collect();
        let handle = set.spawn(run_vertex(
            build.clone(),
            Arc::clone(&node.vertex),
            Arc::clone(&node.info),
            keys[i],
            key_times[i],
            inputs,
            input_steps,
        ));
        task_node.insert(handle.id(), i);
    };
    for i in 0..nodes.len() {
        if needed[i] && pending[i] == 0 {
            spawn(&mut set, &mut task_node, results, i);
        }
    }

    let mut counts = (0, 0);
    let mut first = FirstFailure { failure: None };
    while let Some(joined) = set.join_next_with_id().await {
        let (i, outcome) = match joined {
            Ok((task, outcome)) => (task_node[&task], outcome),
            Err(err) => {
                // The waiting task itself panicked (a progress sink, say): nothing reported it.
                let i = task_node[&err.id()];
                first.fail_and_report(build, &nodes[i].info, Phase::Run, worker_error(Panicked));
                continue;
            }
        };
        let result = match outcome {
            Outcome::Ran { result, .. } => {
                counts.0 += 1;
                result
            }
            Outcome::Cached(result) => {
                counts.1 += 1;
                result
            }
            Outcome::Failed { phase, error, .. } => {
                // `run_vertex` reported it.
                first.fail(build, &nodes[i].info, phase, error);
                continue;
            }
            Outcome::Cancelled if !build.cancel.is_cancelled() => {
                let err = worker_error(CancelledElsewhere);
                first.fail_and_report(build, &nodes[i].info, Phase::Run, err);
                continue;
            }
            Outcome::Cancelled => continue,
        };
        results[i] = Some(result);
        if build.cancel.is_cancelled() {
            continue;
        }
        for &d in &nodes[i].dependants {
            if needed[d] {
                pending[d] -= 1;
                if pending[d] == 0 {
                    spawn(&mut set, &mut task_node, results, d);
                }
            }
        }
    }
    finish(build, first)?;
    Ok(counts)
}

/// The first failure, else `Cancelled` if the build was cancelled.
fn finish<R>(build: &BuildCtx<R>, first: FirstFailure) -> Result<(), SolveError> {
    match first.failure {
        Some(failure) => Err(failure),
        None if build.cancel.is_cancelled() => Err(SolveError::Cancelled),
        None => Ok(()),
    }
}

/// One build's run of one vertex: joins or starts the computation of its key, waits for it,
/// and reports how it ended. The wall time reported includes `key_time`, what computing the
/// vertex's content key took before it could run.
async fn run_vertex<R: Clone + Send + Sync + 'static>(
    build: BuildCtx<R>,
    vertex: Arc<Vertex>,
    info: Arc<VertexInfo>,
    key: CacheKey,
    key_time: Duration,
    inputs: Vec<R>,
    input_steps: Vec<InputStep>,
) -> Outcome<R> {
    let shared = &build.shared;
    let (reason, record) = reason::why(&build, &vertex, key, &input_steps).await;
    let started = Arc::new(AtomicBool::new(false));
    let sub = Subscriber {
        serial: shared.next_serial.fetch_add(1, Ordering::Relaxed),
        sink: Arc::clone(&build.sink),
        info: Arc::clone(&info),
        started: Arc::clone(&started),
        reason,
    };
    let sub_serial = sub.serial;
    let flight_key = (key, build.no_cache);
    let flight = shared.join_or_start(flight_key, sub, &build, vertex, inputs);
    let outcome = shared
        .wait(&flight, flight_key, sub_serial, &build.cancel)
        .await;
    match &outcome {
        Outcome::Ran { wall, usage, .. } => {
            if let (Some(history), Some(record)) = (&build.history, &record) {
                reason::record(history, record, &build.sink, info.id).await;
            }
            build.sink.event(Event::Finished {
                id: info.id,
                wall: key_time + *wall,
                usage: *usage,
            });
        }
        Outcome::Cached(_) => build.sink.event(info.cached()),
        Outcome::Failed {
            error, wall, usage, ..
        } => {
            if !build.cancel.is_cancelled() {
                build.sink.event(Event::Failed {
                    id: info.id,
                    error: crate::progress::error_text(error),
                    wall: key_time + *wall,
                    usage: *usage,
                });
            } else if started.load(Ordering::SeqCst) {
                build.sink.event(Event::Canceled { id: info.id });
            }
        }
        Outcome::Cancelled => {
            if started.load(Ordering::SeqCst) {
                build.sink.event(Event::Canceled { id: info.id });
            }
        }
    }
    outcome
}

/// An input of a vertex about to run, as its reason needs it.
struct InputStep {
    key: CacheKey,
    vertex: Arc<Vertex>,
    /// It ran in this build (it was no cache hit).
    ran: bool,
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data that is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
