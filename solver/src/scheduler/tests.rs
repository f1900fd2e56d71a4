//! Scheduler tests in the manner of BuildKit's `solver/scheduler_test.go`: fake vertices that
//! compute constants, sums and concatenations, and no containers. Concurrency is proven with
//! barriers and gates that only the other party can open, never with timing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoist_parser::Span;
use tokio::sync::{Barrier, Semaphore, mpsc};

use super::*;
use crate::graph::{Graph, Location, Vertex, VertexId};
use crate::op::{ExecOp, NetworkMode, Op, SourceOp};
use crate::progress::{Event, Recorder, ResourceUsage, Stream};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Int(i64),
    Str(String),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

/// A worker whose ops are `Exec` argument lists: `const N`, `sum`, `concat`, `fail MSG`, and
/// the probes below. `Local` sources yield the test's "context" contents.
struct Fake {
    /// The argument list of every run, in start order.
    runs: Mutex<Vec<String>>,
    /// `Local` source name to content; the content is also its content key.
    contents: Mutex<HashMap<String, String>>,
    /// Released by the test to let `gate` vertices finish.
    gate: Semaphore,
    /// One permit per `gate`/`until-cancelled` vertex that started.
    started: Semaphore,
    barrier: Barrier,
    current: AtomicUsize,
    max_seen: AtomicUsize,
    cancelled_seen: AtomicUsize,
    cleaned_up: AtomicUsize,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            runs: Mutex::new(Vec::new()),
            contents: Mutex::new(HashMap::new()),
            gate: Semaphore::new(0),
            started: Semaphore::new(0),
            barrier: Barrier::new(2),
            current: AtomicUsize::new(0),
            max_seen: AtomicUsize::new(0),
            cancelled_seen: AtomicUsize::new(0),
            cleaned_up: AtomicUsize::new(0),
        })
    }

    fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    fn runs_of(&self, args: &str) -> usize {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| *r == args)
            .count()
    }

    fn set_content(&self, name: &str, content: &str) {
        self.contents
            .lock()
            .unwrap()
            .insert(name.into(), content.into());
    }

    /// Waits until `n` more gate or until-cancelled vertices have started.
    async fn wait_started(&self, n: u32) {
        tokio::time::timeout(Duration::from_secs(30), self.started.acquire_many(n))
            .await
            .expect("vertices started")
            .unwrap()
            .forget();
    }

    async fn exec(
        &self,
        args: &[String],
        inputs: &[Value],
        ctx: &VertexContext,
    ) -> Result<Value, BoxError> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        match args[0].as_str() {
            "const" => Ok(Value::Int(arg(1).parse()?)),
            "sum" => {
                let mut total = 0;
                for input in inputs {
                    match input {
                        Value::Int(n) => total += n,
                        Value::Str(s) => return Err(FakeError(format!("not a number: {s}")).into()),
                    }
                }
                Ok(Value::Int(total))
            }
            "concat" => Ok(Value::Str(inputs.iter().map(Value::text).collect())),
            "fail" => Err(FakeError(arg(1)).into()),
            // Fails once a sibling is known to be running.
            "fail-after-start" => {
                self.started.acquire().await?.forget();
                Err(FakeError(arg(1)).into())
            }
            "until-cancelled" => {
                self.started.add_permits(1);
                ctx.cancelled().await;
                self.cancelled_seen.fetch_add(1, Ordering::SeqCst);
                // Cleaning up a sandbox takes a while; the scheduler must wait for it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.cleaned_up.fetch_add(1, Ordering::SeqCst);
                Err(FakeError("stopped".into()).into())
            }
            // Prints N MiB, then waits at the gate like "gate".
            "flood" => {
                let n: usize = arg(2).parse()?;
                for _ in 0..n {
                    ctx.log(Stream::Stdout, &big_chunk(&arg(1)));
                }
                ctx.log(Stream::Stdout, b"flooded\n");
                self.started.add_permits(1);
                self.gate.acquire().await?.forget();
                Ok(Value::Str(arg(1)))
            }
            "gate" => {
                ctx.log(Stream::Stdout, format!("{} waiting\n", arg(1)).as_bytes());
                self.started.add_permits(1);
                tokio::select! {
                    permit = self.gate.acquire() => {
                        permit?.forget();
                        ctx.log(Stream::Stdout, b"released\n");
                        Ok(Value::Str(arg(1)))
                    }
                    () = ctx.cancelled() => {
                        self.cancelled_seen.fetch_add(1, Ordering::SeqCst);
                        Err(FakeError("stopped".into()).into())
                    }
                }
            }
            // Finishes only if the other barrier vertex runs at the same time.
            "barrier" => {
                self.barrier.wait().await;
                Ok(Value::Str(arg(1)))
            }
            "busy" => {
                let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_seen.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
                self.current.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Str(arg(1)))
            }
            "log" => {
                let n: usize = arg(2).parse()?;
                for i in 0..n {
                    let stream = if i % 2 == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    ctx.log(stream, format!("{} {i}\n", arg(1)).as_bytes());
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ctx.log(Stream::Stdout, &big_chunk(&arg(1)));
                ctx.log(Stream::Stderr, &[0xff, 0x00, 0xfe]);
                Ok(Value::Str(arg(1)))
            }
            "usage" => {
                ctx.report_usage(ResourceUsage {
                    peak_memory_bytes: Some(123_456),
                    cpu_user_us: Some(7),
                    cpu_system_us: Some(8),
                });
                Ok(Value::Int(0))
            }
            "panic" => panic!("fake worker panics on purpose"),
            other => Err(FakeError(format!("unknown fake op {other}")).into()),
        }
    }
}

fn big_chunk(tag: &str) -> Vec<u8> {
    tag.bytes().cycle().take(1 << 20).collect()
}

impl Worker for Fake {
    type Output = Value;

    fn content_key<'a>(
        &'a self,
        vertex: &'a Vertex,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<String>, BoxError>> {
        Box::pin(async move {
            match &vertex.op {
                Op::Source(SourceOp::Local { name, .. }) => {
                    match self.contents.lock().unwrap().get(name) {
                        Some(content) => Ok(Some(content.clone())),
                        None => Err(FakeError(format!("no context named {name}")).into()),
                    }
                }
                _ => Ok(None),
            }
        })
    }

    fn run<'a>(
        &'a self,
        vertex: &'a Vertex,
        inputs: &'a [Value],
        ctx: &'a VertexContext,
    ) -> BoxFuture<'a, Result<Value, BoxError>> {
        Box::pin(async move {
            match &vertex.op {
                Op::Exec(exec) => {
                    self.runs.lock().unwrap().push(exec.args.join(" "));
                    self.exec(&exec.args, inputs, ctx).await
                }
                Op::Source(SourceOp::Local { name, .. }) => {
                    self.runs.lock().unwrap().push(format!("local {name}"));
                    let content = self.contents.lock().unwrap().get(name).cloned();
                    Ok(Value::Str(content.unwrap_or_default()))
                }
                other => Err(FakeError(format!("unexpected op {other:?}")).into()),
            }
        })
    }
}

fn exec(args: &str) -> Op {
    Op::Exec(ExecOp {
        args: args.split(' ').map(String::from).collect(),
        env: vec![],
        cwd: "/".into(),
        user: String::new(),
        network: NetworkMode::Default,
        privileged: false,
        mounts: vec![],
        epoch: None,
    })
}

fn local(name: &str) -> Op {
    Op::Source(SourceOp::Local {
        name: name.into(),
        include: vec![],
        exclude: vec![],
        parents: false,
    })
}

fn at(line: usize) -> Option<Location> {
    Some(Location {
        line,
        column: 1,
        span: Span::default(),
    })
}

fn solver(max_parallelism: usize) -> Solver<Value> {
    Solver::new(
        Arc::new(MemoryCache::new()),
        SolverOptions { max_parallelism },
    )
}

fn job<'g>(
    graph: &'g Graph,
    roots: &[VertexId],
    worker: &Arc<Fake>,
    sink: Arc<dyn ProgressSink>,
) -> Job<'g, Value> {
    let mut job = Job::new(
        graph,
        roots.to_vec(),
        Arc::clone(worker) as Arc<dyn Worker<Output = Value>>,
    );
    job.progress = sink;
    job
}

fn of(events: &[Event], v: VertexId) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.id() == Some(v.index()))
        .cloned()
        .collect()
}

fn kind(e: &Event) -> &'static str {
    match e {
        Event::Build { .. } => "build",
        Event::Started { .. } => "started",
        Event::Cached { .. } => "cached",
        Event::Log { .. } => "log",
        Event::Finished { .. } => "finished",
        Event::Failed { .. } => "failed",
        Event::Canceled { .. } => "canceled",
    }
}

fn kinds(events: &[Event], v: VertexId) -> Vec<&'static str> {
    of(events, v).iter().map(kind).collect()
}

/// Awaits a future that must finish: a hang is a failure, not a stuck test run.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

/// Receives events until one matches, failing after a generous timeout.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    pred: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("event not seen; got {seen:?}"))
            .expect("sink open");
        let done = pred(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn computes_values_through_the_graph() {
    let mut g = Graph::new();
    let two = g.add(exec("const 2"), vec![], "two", at(2));
    let three = g.add(exec("const 3"), vec![], "three", at(3));
    let sum = g.add(exec("sum"), vec![two, three], "sum", at(4));
    let text = g.add(exec("concat"), vec![sum, two], "text", at(5));
    let usage = g.add(exec("usage"), vec![], "usage", None);
    let worker = Fake::new();
    let events = Arc::new(Recorder::new());
    let solution = solver(4)
        .solve(job(&g, &[text, sum, usage], &worker, events.clone()))
        .await
        .unwrap();
    assert_eq!(
        solution.results,
        vec![Value::Str("52".into()), Value::Int(5), Value::Int(0)]
    );
    assert_eq!((solution.ran, solution.cached), (5, 0));
    assert_eq!(solution.keys.len(), 3);
    let events = events.events();
    for v in [two, three, sum, text, usage] {
        assert_eq!(
            kinds(&events, v),
            ["started", "finished"],
            "{v:?}: {events:?}"
        );
    }
    assert_eq!(
        of(&events, sum)[0],
        Event::Started {
            id: sum.index(),
            name: "sum".into(),
            digest: g.vertex(sum).digest.to_string(),
            line: Some(4),
            reason: None,
        }
    );
    let Event::Finished {
        usage: reported, ..
    } = &of(&events, usage)[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!(reported.unwrap().peak_memory_bytes, Some(123_456));
    // Inputs finish before the vertices that use them start.
    let pos = |pred: &dyn Fn(&Event) -> bool| events.iter().position(pred).unwrap();
    assert!(
        pos(&|e| matches!(e, Event::Finished { id, .. } if *id == sum.index()))
            < pos(&|e| matches!(e, Event::Started { id, .. } if *id == text.index()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_vertex_runs_once_per_build() {
    let mut g = Graph::new();
    let one = g.add(exec("const 1"), vec![], "one", None);
    // The same work under another name is the same vertex.
    assert_eq!(
        g.add(exec("const 1"), vec![], "[b 1/2] one again", None),
        one
    );
    let a = g.add(exec("sum"), vec![one], "a", None);
    let b = g.add(exec("sum"), vec![one, one], "b", None);
    let root = g.add(exec("sum"), vec![a, b], "root", None);
    let worker = Fake::new();
    let mut j = job(&g, &[root, a], &worker, Arc::new(Recorder::new()));
    j.no_cache = true;
    let solution = solver(4).solve(j).await.unwrap();
    assert_eq!(solution.results, vec![Value::Int(3), Value::Int(1)]);
    assert_eq!(worker.runs_of("const 1"), 1);
    assert_eq!(worker.total_runs(), 4, "{:?}", worker.runs.lock().unwrap());
}

/// Two builds that need the same work while it runs share one computation; the one that joins
/// late gets the output so far replayed, under its own vertex ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_work_in_concurrent_builds_runs_once() {
    let solver = solver(4);
    let worker = Fake::new();

    let mut ga = Graph::new();
    let gate_a = ga.add(exec("gate shared"), vec![], "[a 1/1] gate", None);
    let mut gb = Graph::new();
    let other = gb.add(exec("const 9"), vec![], "other", None);
    let gate_b = gb.add(exec("gate shared"), vec![], "[b 1/2] gate", None);
    let root_b = gb.add(exec("concat"), vec![gate_b, other], "[b 2/2] concat", None);
    assert_ne!(gate_a.index(), gate_b.index());

    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let build_a = tokio::spawn({
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        async move {
            let mut j = job(&ga, &[gate_a], &worker, Arc::new(tx_a));
            j.no_cache = true;
            solver.solve(j).await
        }
    });
    until(&mut rx_a, |e| matches!(e, Event::Log { .. })).await;
    let build_b = tokio::spawn({
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        async move {
            let mut j = job(&gb, &[root_b], &worker, Arc::new(tx_b));
            j.no_cache = true;
            solver.solve(j).await
        }
    });
    // B joined: it got the start and the output so far, with its own id.
    let replay = until(
        &mut rx_b,
        |e| matches!(e, Event::Log { id, .. } if *id == gate_b.index()),
    )
    .await;
    assert!(replay.iter().any(
        |e| matches!(e, Event::Started { id, name, .. } if *id == gate_b.index() && name == "[b 1/2] gate")
    ));
    // Had B started its own computation, its worker would have run before it logged.
    assert_eq!(worker.runs_of("gate shared"), 1);

    worker.gate.add_permits(1);
    let a = within("build a", build_a).await.unwrap().unwrap();
    let b = within("build b", build_b).await.unwrap().unwrap();
    assert_eq!(a.results, vec![Value::Str("shared".into())]);
    assert_eq!(b.results, vec![Value::Str("shared9".into())]);
    assert_eq!(worker.runs_of("gate shared"), 1);
    assert_eq!(solver.in_flight(), 0);

    let rest: Vec<Event> = std::iter::from_fn(|| rx_b.try_recv().ok()).collect();
    let logs: Vec<Vec<u8>> = replay
        .iter()
        .chain(&rest)
        .filter_map(|e| match e {
            Event::Log { id, data, .. } if *id == gate_b.index() => Some(data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        logs,
        vec![b"shared waiting\n".to_vec(), b"released\n".to_vec()]
    );
    assert!(
        rest.iter()
            .any(|e| matches!(e, Event::Finished { id, .. } if *id == gate_b.index()))
    );
}

/// A shared computation keeps only the tail of its output for builds that join late: a step
/// that prints gigabytes must not hold them in memory. The joiner is told what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_joiner_gets_the_tail_of_the_output_and_a_note_of_the_rest() {
    let solver = solver(4);
    let worker = Fake::new();
    let mut ga = Graph::new();
    let a = ga.add(exec("flood x 8"), vec![], "[a 1/1] flood", None);
    let mut gb = Graph::new();
    let b = gb.add(exec("flood x 8"), vec![], "[b 1/1] flood", None);
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let build_a = tokio::spawn({
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        async move {
            let mut j = job(&ga, &[a], &worker, Arc::new(tx_a));
            j.no_cache = true;
            solver.solve(j).await
        }
    });
    // A's build got every byte as it came.
    let seen_a = until(
        &mut rx_a,
        |e| matches!(e, Event::Log { data, .. } if data == b"flooded\n"),
    )
    .await;
    let bytes = |events: &[Event]| -> usize {
        events
            .iter()
            .map(|e| match e {
                Event::Log { data, .. } => data.len(),
                _ => 0,
            })
            .sum()
    };
    assert_eq!(bytes(&seen_a), 8 * (1 << 20) + b"flooded\n".len());
    let build_b = tokio::spawn({
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        async move {
            let mut j = job(&gb, &[b], &worker, Arc::new(tx_b));
            j.no_cache = true;
            solver.solve(j).await
        }
    });
    let replay = until(
        &mut rx_b,
        |e| matches!(e, Event::Log { data, .. } if data == b"flooded\n"),
    )
    .await;
    worker.gate.add_permits(1);
    within("build a", build_a).await.unwrap().unwrap();
    within("build b", build_b).await.unwrap().unwrap();
    assert_eq!(worker.runs_of("flood x 8"), 1);
    let note = replay.iter().find_map(|e| match e {
        Event::Log { data, .. } if data.starts_with(b"[hoist:") => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        _ => None,
    });
    let note = note.expect("no note of the output the joiner missed");
    // Kept: what fits in REPLAY_BYTES from the end (here the final line: the last 1 MiB chunk
    // with it would not fit); missed: everything before, 8 MiB.
    assert!(note.contains(&format!("first {} bytes", 8 << 20)), "{note}");
    assert!(
        bytes(&replay) <= REPLAY_BYTES + note.len(),
        "{}",
        bytes(&replay)
    );
}

/// With a cache, concurrent builds of the same graph run every vertex once in total, however
/// their steps interleave: a computation looks its key up again right before running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_builds_with_a_cache_run_each_vertex_once() {
    fn graph() -> (Graph, VertexId) {
        let mut g = Graph::new();
        let a = g.add(exec("busy a"), vec![], "a", None);
        let b = g.add(exec("busy b"), vec![], "b", None);
        let c = g.add(exec("concat"), vec![a, b], "c", None);
        let d = g.add(exec("busy d"), vec![c], "d", None);
        let e = g.add(exec("concat"), vec![d, a], "e", None);
        (g, e)
    }
    for _ in 0..20 {
        let solver = solver(4);
        let worker = Fake::new();
        let mut builds = Vec::new();
        for _ in 0..3 {
            let (solver, worker) = (solver.clone(), Arc::clone(&worker));
            builds.push(tokio::spawn(async move {
                let (g, root) = graph();
                solver
                    .solve(job(&g, &[root], &worker, Arc::new(Recorder::new())))
                    .await
            }));
        }
        for build in builds {
            let solution = within("build", build).await.unwrap().unwrap();
            assert_eq!(solution.results, vec![Value::Str("da".into())]);
        }
        assert_eq!(worker.total_runs(), 5, "{:?}", worker.runs.lock().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_hit_skips_the_worker_and_is_reported_cached() {
    fn graph() -> (Graph, Vec<VertexId>) {
        let mut g = Graph::new();
        let a = g.add(exec("const 4"), vec![], "a", None);
        let b = g.add(exec("const 5"), vec![], "b", None);
        let s = g.add(exec("sum"), vec![a, b], "s", None);
        let t = g.add(exec("concat"), vec![s, a], "t", None);
        (g, vec![a, b, s, t])
    }
    let solver = solver(4);
    let worker = Fake::new();
    let (g, v) = graph();
    let first = solver
        .solve(job(&g, &[v[3]], &worker, Arc::new(Recorder::new())))
        .await
        .unwrap();
    assert_eq!(worker.total_runs(), 4);

    let (g, v) = graph();
    let events = Arc::new(Recorder::new());
    let again = solver
        .solve(job(&g, &[v[3]], &worker, events.clone()))
        .await
        .unwrap();
    assert_eq!(worker.total_runs(), 4, "no worker ran");
    assert_eq!(again.results, first.results);
    assert_eq!(again.keys, first.keys);
    assert_eq!((again.ran, again.cached), (0, 4));
    let events = events.events();
    for &vertex in &v {
        assert_eq!(kinds(&events, vertex), ["cached"], "{events:?}");
    }

    // --no-cache runs everything again, and reports no hit.
    let (g, v) = graph();
    let events = Arc::new(Recorder::new());
    let mut j = job(&g, &[v[3]], &worker, events.clone());
    j.no_cache = true;
    let fresh = solver.solve(j).await.unwrap();
    assert_eq!(fresh.results, first.results);
    assert_eq!(worker.total_runs(), 8);
    assert!(events.events().iter().all(|e| kind(e) != "cached"));
}

/// A source's content key makes its cache key concrete: changing one context changes the keys
/// of the steps built on it, and of nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_source_invalidates_only_what_uses_it() {
    let mut g = Graph::new();
    let a = g.add(local("a"), vec![], "ctx a", None);
    let b = g.add(local("b"), vec![], "ctx b", None);
    let use_a = g.add(exec("concat"), vec![a], "COPY a", None);
    let use_b = g.add(exec("concat"), vec![b], "COPY b", None);
    let root = g.add(exec("concat"), vec![use_a, use_b], "join", None);
    let solver = solver(4);
    let worker = Fake::new();
    worker.set_content("a", "A1");
    worker.set_content("b", "B1");
    let build = || async {
        let events = Arc::new(Recorder::new());
        let solution = solver
            .solve(job(&g, &[root], &worker, events.clone()))
            .await
            .unwrap();
        (solution, events.events())
    };
    let (first, _) = build().await;
    assert_eq!(first.results, vec![Value::Str("A1B1".into())]);
    assert_eq!(worker.total_runs(), 5);

    worker.set_content("b", "B2");
    let (second, events) = build().await;
    assert_eq!(second.results, vec![Value::Str("A1B2".into())]);
    assert_ne!(second.keys, first.keys);
    assert_eq!(worker.total_runs(), 8, "b, COPY b and join ran again");
    for v in [a, use_a] {
        assert_eq!(kinds(&events, v), ["cached"]);
    }
    for v in [b, use_b, root] {
        assert_eq!(kinds(&events, v), ["started", "finished"]);
    }

    // Content, not history, decides: putting the old content back hits the first build's keys.
    worker.set_content("b", "B1");
    let (third, events) = build().await;
    assert_eq!(third.keys, first.keys);
    assert_eq!(third.results, first.results);
    assert_eq!(worker.total_runs(), 8);
    assert_eq!(kinds(&events, root), ["cached"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_parallelism_is_a_bound_across_builds() {
    let solver = solver(2);
    let worker = Fake::new();
    let mut builds = Vec::new();
    for build in 0..2 {
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        builds.push(tokio::spawn(async move {
            let mut g = Graph::new();
            let leaves: Vec<VertexId> = (0..8)
                .map(|i| g.add(exec(&format!("busy {build}-{i}")), vec![], "", None))
                .collect();
            let root = g.add(exec("concat"), leaves, "root", None);
            solver
                .solve(job(&g, &[root], &worker, Arc::new(Recorder::new())))
                .await
        }));
    }
    for build in builds {
        build.await.unwrap().unwrap();
    }
    assert_eq!(worker.total_runs(), 18);
    let max = worker.max_seen.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "at most 2 at once, saw {max}");
}

/// Two vertices that each wait at a barrier only the other can pass: the build finishes only
/// if they run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn independent_vertices_run_concurrently() {
    let mut g = Graph::new();
    let x = g.add(exec("barrier x"), vec![], "x", None);
    let y = g.add(exec("barrier y"), vec![], "y", None);
    let root = g.add(exec("concat"), vec![x, y], "root", None);
    let worker = Fake::new();
    let solver = solver(2);
    let solve = solver.solve(job(&g, &[root], &worker, Arc::new(Recorder::new())));
    let solution = tokio::time::timeout(Duration::from_secs(30), solve)
        .await
        .expect("x and y ran at the same time")
        .unwrap();
    assert_eq!(solution.results, vec![Value::Str("xy".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_error_cancels_a_running_sibling_and_names_its_vertex() {
    let mut g = Graph::new();
    let sibling = g.add(exec("until-cancelled"), vec![], "[a 1/2] RUN sleep", at(3));
    let after_sibling = g.add(exec("concat"), vec![sibling], "[a 2/2] RUN next", at(4));
    let failing = g.add(
        exec("fail-after-start boom"),
        vec![],
        "[b 1/1] RUN false",
        at(7),
    );
    let root = g.add(exec("concat"), vec![after_sibling, failing], "join", at(9));
    let solver = solver(4);
    let worker = Fake::new();
    let events = Arc::new(Recorder::new());
    let err = within(
        "the failing build",
        solver.solve(job(&g, &[root], &worker, events.clone())),
    )
    .await
    .unwrap_err();

    let SolveError::Vertex {
        name,
        location,
        phase,
        source,
        digest,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(name, "[b 1/1] RUN false");
    assert_eq!(location.as_ref().map(|l| l.line), Some(7));
    assert_eq!(*phase, Phase::Run);
    assert_eq!(*digest, g.vertex(failing).digest);
    assert_eq!(err.to_string(), "[b 1/1] RUN false (line 7:1) failed");
    assert_eq!(source.to_string(), "boom");
    assert!(source.downcast_ref::<FakeError>().is_some());
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "boom");

    // The sibling was told to stop and had cleaned up before solve returned.
    assert_eq!(worker.cancelled_seen.load(Ordering::SeqCst), 1);
    assert_eq!(worker.cleaned_up.load(Ordering::SeqCst), 1);
    assert_eq!(solver.in_flight(), 0);
    let events = events.events();
    assert_eq!(kinds(&events, sibling), ["started", "canceled"]);
    assert_eq!(kinds(&events, failing), ["started", "failed"]);
    assert!(matches!(&of(&events, failing)[1], Event::Failed { error, .. } if error == "boom"));
    assert!(kinds(&events, after_sibling).is_empty());
    assert!(kinds(&events, root).is_empty());
    assert_eq!(worker.total_runs(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_cancel_stops_everything_and_waits_for_it() {
    let mut g = Graph::new();
    let a = g.add(exec("until-cancelled 1"), vec![], "a", None);
    let b = g.add(exec("until-cancelled 2"), vec![], "b", None);
    // With two slots, this one waits for a slot and must never start.
    let c = g.add(exec("until-cancelled 3"), vec![], "c", None);
    let root = g.add(exec("concat"), vec![a, b, c], "root", None);
    let solver = solver(2);
    let worker = Fake::new();
    let events = Arc::new(Recorder::new());
    let cancel = CancellationToken::new();
    let build = tokio::spawn({
        let (solver, worker, events, cancel) = (
            solver.clone(),
            Arc::clone(&worker),
            events.clone(),
            cancel.clone(),
        );
        async move {
            let mut j = job(&g, &[root], &worker, events);
            j.cancel = cancel;
            solver.solve(j).await.map(|_| ())
        }
    });
    worker.wait_started(2).await;
    cancel.cancel();
    let result = within("the cancelled build", build).await.unwrap();
    assert!(matches!(result, Err(SolveError::Cancelled)), "{result:?}");
    assert_eq!(worker.cleaned_up.load(Ordering::SeqCst), 2);
    assert_eq!(worker.total_runs(), 2);
    assert_eq!(solver.in_flight(), 0);
    let events = events.events();
    let canceled = events.iter().filter(|e| kind(e) == "canceled").count();
    assert_eq!(canceled, 2, "{events:?}");
    assert!(!events.iter().any(|e| kind(e) == "failed"), "{events:?}");
}

/// Ctrl-C in one build does not fail another build that shares the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_one_build_leaves_shared_work_to_the_other() {
    let solver = solver(4);
    let worker = Fake::new();
    let mut ga = Graph::new();
    let gate_a = ga.add(exec("gate both"), vec![], "a", None);
    let mut gb = Graph::new();
    let gate_b = gb.add(exec("gate both"), vec![], "b", None);
    let cancel_a = CancellationToken::new();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let build_a = tokio::spawn({
        let (solver, worker, cancel) = (solver.clone(), Arc::clone(&worker), cancel_a.clone());
        async move {
            let mut j = job(&ga, &[gate_a], &worker, Arc::new(Recorder::new()));
            j.cancel = cancel;
            solver.solve(j).await
        }
    });
    worker.wait_started(1).await;
    let build_b = tokio::spawn({
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        async move {
            solver
                .solve(job(&gb, &[gate_b], &worker, Arc::new(tx_b)))
                .await
        }
    });
    until(&mut rx_b, |e| kind(e) == "started").await;

    cancel_a.cancel();
    assert!(matches!(
        within("build a", build_a).await.unwrap(),
        Err(SolveError::Cancelled)
    ));
    assert_eq!(solver.in_flight(), 1, "B still waits for it");
    worker.gate.add_permits(1);
    let b = within("build b", build_b).await.unwrap().unwrap();
    assert_eq!(b.results, vec![Value::Str("both".into())]);
    assert_eq!(worker.cancelled_seen.load(Ordering::SeqCst), 0);
    assert_eq!(worker.runs_of("gate both"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_chunks_keep_their_order_per_vertex() {
    let mut g = Graph::new();
    let x = g.add(exec("log x 600"), vec![], "x", None);
    let y = g.add(exec("log y 600"), vec![], "y", None);
    let root = g.add(exec("concat"), vec![x, y], "root", None);
    let worker = Fake::new();
    let events = Arc::new(Recorder::new());
    solver(4)
        .solve(job(&g, &[root], &worker, events.clone()))
        .await
        .unwrap();
    let events = events.events();
    for (v, tag) in [(x, "x"), (y, "y")] {
        let mut expected: Vec<(Stream, Vec<u8>)> = (0..600)
            .map(|i| {
                let stream = if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                };
                (stream, format!("{tag} {i}\n").into_bytes())
            })
            .collect();
        expected.push((Stream::Stdout, big_chunk(tag)));
        expected.push((Stream::Stderr, vec![0xff, 0x00, 0xfe]));
        let mine = of(&events, v);
        let logs: Vec<(Stream, Vec<u8>)> = mine
            .iter()
            .filter_map(|e| match e {
                Event::Log { stream, data, .. } => Some((*stream, data.clone())),
                _ => None,
            })
            .collect();
        assert!(
            logs == expected,
            "{tag}: {} chunks, out of order or cut",
            logs.len()
        );
        assert_eq!(kind(&mine[0]), "started");
        assert_eq!(kind(mine.last().unwrap()), "finished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_worker_fails_its_vertex() {
    let mut g = Graph::new();
    let p = g.add(exec("panic"), vec![], "[x 1/1] RUN crash", at(2));
    let solver = solver(2);
    let worker = Fake::new();
    let err = solver
        .solve(job(&g, &[p], &worker, Arc::new(Recorder::new())))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "[x 1/1] RUN crash (line 2:1) failed");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "the worker panicked"
    );
    assert_eq!(solver.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_content_key_failure_names_the_source_and_runs_nothing() {
    let mut g = Graph::new();
    let missing = g.add(
        local("nowhere"),
        vec![],
        "[internal] load context nowhere",
        None,
    );
    let root = g.add(exec("concat"), vec![missing], "COPY", at(3));
    let worker = Fake::new();
    let events = Arc::new(Recorder::new());
    let err = solver(2)
        .solve(job(&g, &[root], &worker, events.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SolveError::Vertex { phase: Phase::ContentKey, name, .. } if name.contains("nowhere")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "cannot compute the cache key of [internal] load context nowhere"
    );
    assert_eq!(worker.total_runs(), 0);
    assert_eq!(kinds(&events.events(), missing), ["failed"]);
}

/// A cache that cannot be read fails the build at the vertex it was asked about.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_lookup_failure_names_the_vertex() {
    struct Broken;
    impl Cache<Value> for Broken {
        fn lookup<'a>(
            &'a self,
            _key: &'a CacheKey,
            _vertex: &'a Vertex,
        ) -> BoxFuture<'a, Result<Option<Value>, BoxError>> {
            Box::pin(async { Err(FakeError("index is corrupt".into()).into()) })
        }
        fn record<'a>(
            &'a self,
            _key: &'a CacheKey,
            _vertex: &'a Vertex,
            _result: &'a Value,
        ) -> BoxFuture<'a, Result<(), BoxError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let mut g = Graph::new();
    let v = g.add(exec("const 1"), vec![], "one", at(1));
    let solver = Solver::new(Arc::new(Broken), SolverOptions::default());
    let worker = Fake::new();
    let err = solver
        .solve(job(&g, &[v], &worker, Arc::new(Recorder::new())))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "cache lookup for one (line 1:1) failed");
    assert_eq!(worker.total_runs(), 0);
}

#[test]
fn default_parallelism_is_the_cpu_count() {
    assert_eq!(
        SolverOptions::default().max_parallelism,
        std::thread::available_parallelism().unwrap().get()
    );
}

/// Dropping a build's future (instead of cancelling its token) still tells running work to
/// stop; it cannot wait for it, so the test waits for the worker's cleanup itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_a_build_stops_its_work() {
    let solver = solver(2);
    let worker = Fake::new();
    let build = tokio::spawn({
        let (solver, worker) = (solver.clone(), Arc::clone(&worker));
        async move {
            let mut g = Graph::new();
            let v = g.add(exec("until-cancelled"), vec![], "v", None);
            solver
                .solve(job(&g, &[v], &worker, Arc::new(Recorder::new())))
                .await
                .map(|_| ())
        }
    });
    worker.wait_started(1).await;
    build.abort();
    assert!(build.await.unwrap_err().is_cancelled());
    within("the worker's cleanup", async {
        while worker.cleaned_up.load(Ordering::SeqCst) == 0 || solver.in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(worker.cancelled_seen.load(Ordering::SeqCst), 1);
}

/// Step inputs in memory, counting how often they are read and written.
#[derive(Default)]
struct MemoryHistory {
    last: Mutex<HashMap<String, StepInputs>>,
    reads: AtomicUsize,
    writes: AtomicUsize,
}

impl History for MemoryHistory {
    fn previous<'a>(
        &'a self,
        identity: &'a StepIdentity,
    ) -> BoxFuture<'a, Result<Option<StepInputs>, BoxError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let found = self.last.lock().unwrap().get(&identity.to_key()).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn record<'a>(&'a self, inputs: &'a StepInputs) -> BoxFuture<'a, Result<(), BoxError>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.last
            .lock()
            .unwrap()
            .insert(inputs.identity.to_key(), inputs.clone());
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Each started step's name and reason, by name.
fn reasons(events: &[Event]) -> Vec<(String, Option<String>)> {
    let mut started: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Started { name, reason, .. } => Some((name.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    started.sort();
    started
}

#[tokio::test]
async fn a_step_that_misses_says_why_and_a_cached_build_reads_and_writes_no_history() {
    let fake = Fake::new();
    fake.set_content("context", "v1");
    let mut g = Graph::new();
    let context = g.add(
        local("context"),
        vec![],
        "[internal] load build context",
        None,
    );
    let base = g.add(exec("const 1"), vec![], "[s] FROM base", at(1));
    let copy = g.add(
        exec("concat"),
        vec![base, context],
        "[s 1/1] COPY . /",
        at(2),
    );
    let history = Arc::new(MemoryHistory::default());
    let solver = solver(4);
    let build = |fake: &Arc<Fake>| {
        let recorder = Arc::new(Recorder::new());
        let mut job = job(&g, &[copy], fake, Arc::clone(&recorder) as _);
        job.history = Some(BuildHistory {
            store: Arc::clone(&history) as _,
            dockerfile: "/p/Dockerfile".into(),
            build_args: std::collections::BTreeSet::new(),
        });
        (job, recorder)
    };

    let (first, events) = build(&fake);
    within("the first build", solver.solve(first))
        .await
        .unwrap();
    let first_new = Some("no earlier build of this step".to_owned());
    assert_eq!(
        reasons(&events.events()),
        [
            ("[internal] load build context".to_owned(), None),
            ("[s 1/1] COPY . /".to_owned(), first_new.clone()),
            ("[s] FROM base".to_owned(), first_new),
        ]
    );
    assert_eq!(
        history.writes.load(Ordering::SeqCst),
        2,
        "once per step that ran"
    );

    let (cached, events) = build(&fake);
    within("the cached build", solver.solve(cached))
        .await
        .unwrap();
    assert!(
        reasons(&events.events()).is_empty(),
        "{:?}",
        events.events()
    );
    assert_eq!(
        history.reads.load(Ordering::SeqCst),
        2,
        "a hit reads no history"
    );
    assert_eq!(
        history.writes.load(Ordering::SeqCst),
        2,
        "a hit writes no history"
    );

    fake.set_content("context", "v2");
    let (changed, events) = build(&fake);
    within("the changed build", solver.solve(changed))
        .await
        .unwrap();
    assert_eq!(
        reasons(&events.events()),
        [
            ("[internal] load build context".to_owned(), None),
            (
                "[s 1/1] COPY . /".to_owned(),
                Some("its input [internal] load build context ran".to_owned())
            ),
        ]
    );
}
