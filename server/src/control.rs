//! The `Control` service: builds from many clients on one shared [`Engine`], each on a stream
//! of its own (events out; callbacks both ways; file outputs and the result at the end), and
//! the calls that look at and clean the server's state.
//!
//! Builds past `--max-builds` wait in a queue. A client whose stream ends cancels its build:
//! its sandbox, mounts and context lease go with it, while steps another build shares keep
//! running (the solver runs each step once for every build that needs it).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use hoist_proto::v1 as pb;
use hoist_solver::Platform;
use hoist_solver::frontend::{BuildOptions, NamedContext};
use hoist_solver::op::NetworkMode;
use hoist_solver::progress::{Event, ProgressSink};
use hoist_worker::{BuildError, BuildOutcome, BuildRequest, ContextSource, Dockerfile, Engine};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::locked;
use crate::metrics::{BuildResultLabel, Metrics};
use crate::session::{Callbacks, Outbound, RemoteCredentials, RemoteSession};

/// Where builds' contexts come from, and the records the server keeps for them: the `Cas`
/// store, seen from the control service.
pub trait ContextStore: Send + Sync + std::fmt::Debug {
    /// The uploaded tree under `root` as a build context, held until the returned source
    /// drops. Blocking: called on a blocking thread.
    ///
    /// # Errors
    /// A tree that is incomplete (`FailedPrecondition`, naming what is missing) or invalid.
    fn checkout(
        &self,
        root: &pb::Digest,
        ignore_patterns: Vec<String>,
    ) -> Result<Arc<dyn ContextSource>, Status>;

    /// What the store holds, record by record.
    ///
    /// # Errors
    /// The store cannot be read.
    fn usage(&self) -> Result<Vec<pb::UsageRecord>, Status>;

    /// Removes what no build holds (with `all`, also what was used recently).
    ///
    /// # Errors
    /// The store cannot be read or written.
    fn prune(&self, all: bool) -> Result<Vec<pb::UsageRecord>, Status>;

    /// The largest blob and Directory message the store takes.
    fn limits(&self) -> (i64, i64);
}

/// Settings of the control service.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Builds that run at once; more wait in a queue.
    pub max_builds: usize,
    /// Entitlements the server lets a client ask for (buildkitd's
    /// `--allow-insecure-entitlement`): `network.host`, `security.insecure`.
    pub entitlements: Vec<String>,
}

/// One line per finished build, for the server's log.
pub type BuildLogLine = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

/// A build the server runs or queues.
#[derive(Debug)]
struct Running {
    /// The engine's build id, known once the build starts.
    id: Mutex<String>,
    running: AtomicBool,
    started_unix_ms: i64,
    dockerfile_name: String,
    tags: Vec<String>,
    cancel: CancellationToken,
    /// Every event so far (output only up to [`HISTORY_LOG_BUDGET`]), and the attached
    /// listeners that get each next one.
    events: Mutex<History>,
}

/// The most output a build's history keeps for clients that attach later; past it, they get
/// the other events, and `hoist logs` has the whole output.
const HISTORY_LOG_BUDGET: usize = 8 << 20;

/// The most output queued for a client that reads slower than a step prints; past it, output
/// is left out of the stream (never out of the build's log), and a line says so.
const STREAM_LOG_BUDGET: usize = 8 << 20;

#[derive(Debug, Default)]
struct History {
    events: Vec<pb::Event>,
    log_bytes: usize,
    listeners: Vec<mpsc::UnboundedSender<pb::Event>>,
}

impl Running {
    fn id(&self) -> String {
        locked(&self.id).clone()
    }

    fn record(&self, event: &pb::Event) {
        let mut history = locked(&self.events);
        let log = match &event.kind {
            Some(pb::event::Kind::Log(log)) => log.data.len(),
            _ => 0,
        };
        if history.log_bytes + log <= HISTORY_LOG_BUDGET {
            history.log_bytes += log;
            history.events.push(event.clone());
        }
        history.listeners.retain(|l| l.send(event.clone()).is_ok());
    }
}

/// The builds of the server, the slots they run in, and whether it still takes new ones.
#[derive(Debug)]
pub struct Builds {
    entries: Mutex<Vec<Arc<Running>>>,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    draining: AtomicBool,
}

impl Builds {
    fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max.max(1))),
            queued: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Stops taking new builds (`SIGTERM`): each new Solve is refused as `Unavailable`.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Builds queued or running now.
    #[must_use]
    pub fn active(&self) -> usize {
        locked(&self.entries).len()
    }

    /// Cancels every build (the drain's grace period is over).
    pub fn cancel_all(&self) {
        for entry in locked(&self.entries).iter() {
            entry.cancel.cancel();
        }
    }

    fn running(&self) -> usize {
        locked(&self.entries)
            .iter()
            .filter(|e| e.running.load(Ordering::SeqCst))
            .count()
    }

    fn find(&self, build: &str) -> Option<Arc<Running>> {
        locked(&self.entries)
            .iter()
            .find(|e| !build.is_empty() && *locked(&e.id) == build)
            .cloned()
    }

    fn remove(&self, entry: &Arc<Running>) {
        locked(&self.entries).retain(|e| !Arc::ptr_eq(e, entry));
    }
}

/// The control service over one engine.
#[derive(Clone)]
pub struct ControlService {
    engine: Arc<Engine>,
    contexts: Arc<dyn ContextStore>,
    builds: Arc<Builds>,
    metrics: Arc<Metrics>,
    config: ControlConfig,
    log: BuildLogLine,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService")
            .field("engine", &self.engine)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ControlService {
    /// The service, and the builds it runs (for the server's drain on `SIGTERM`).
    #[must_use]
    pub fn new(
        engine: Arc<Engine>,
        contexts: Arc<dyn ContextStore>,
        metrics: Arc<Metrics>,
        config: ControlConfig,
        log: BuildLogLine,
    ) -> (Self, Arc<Builds>) {
        let builds = Arc::new(Builds::new(config.max_builds));
        (
            Self {
                engine,
                contexts,
                builds: Arc::clone(&builds),
                metrics,
                config,
                log,
            },
            builds,
        )
    }

    /// The engine's request for a client's, or why it cannot be built.
    fn request(
        &self,
        solve: pb::SolveRequest,
        context: Arc<dyn ContextSource>,
        callbacks: &Arc<Callbacks>,
    ) -> Result<BuildRequest, Status> {
        let target_platform = if solve.platform.is_empty() {
            Platform::host()
        } else {
            solve.platform.parse::<Platform>().map_err(|e| {
                Status::invalid_argument(format!("invalid --platform {:?}: {e}", solve.platform))
            })?
        };
        if target_platform.architecture != Platform::host().architecture {
            return Err(Status::invalid_argument(format!(
                "--platform {target_platform} needs emulation, which hoist does not do yet; the server is {}",
                Platform::host()
            )));
        }
        for (asked, name) in [
            (solve.allow_insecure, "security.insecure"),
            (solve.allow_network_host, "network.host"),
        ] {
            if asked && !self.config.entitlements.iter().any(|e| e == name) {
                return Err(Status::permission_denied(format!(
                    "--allow {name}: this server does not grant the {name} entitlement; its \
                     operator can start it with --allow-insecure-entitlement {name}"
                )));
            }
        }
        let limits = solve.limits.unwrap_or_default();
        if limits.memory_bytes > 0 && limits.memory_bytes < 6 * 1024 * 1024 {
            return Err(Status::invalid_argument(format!(
                "--memory {} is too small: a RUN needs at least 6m, as in Docker",
                limits.memory_bytes
            )));
        }
        let (cache_from, cache_to) = cache_specs(&solve.cache_from, &solve.cache_to)?;
        // Only images: a directory or layout named here would be the server's, not the
        // client's.
        let named_contexts = solve
            .build_contexts
            .iter()
            .map(|(name, reference)| (name.clone(), NamedContext::Image(reference.clone())))
            .collect();
        let registry = self
            .engine
            .registry
            .with_credential_source(Arc::new(RemoteCredentials(Arc::clone(callbacks))));
        Ok(BuildRequest {
            context,
            named_contexts: hoist_worker::named::NamedContexts::default(),
            session: Arc::new(RemoteSession(Arc::clone(callbacks))),
            dockerfile: Dockerfile {
                text: solve.dockerfile,
                name: if solve.dockerfile_name.is_empty() {
                    "Dockerfile".to_owned()
                } else {
                    solve.dockerfile_name
                },
                path: None,
            },
            options: BuildOptions {
                build_args: solve.build_args.into_iter().collect(),
                target: Some(solve.target).filter(|t| !t.is_empty()),
                target_platform,
                build_platform: Platform::host(),
                network: match pb::NetworkMode::try_from(solve.network) {
                    Ok(pb::NetworkMode::None) => NetworkMode::None,
                    Ok(pb::NetworkMode::Host) => NetworkMode::Host,
                    _ => NetworkMode::Default,
                },
                labels: solve.labels.into_iter().collect::<BTreeMap<_, _>>(),
                ignore_patterns: Vec::new(),
                allow_insecure: solve.allow_insecure,
                allow_network_host: solve.allow_network_host,
                named_contexts,
            },
            tags: solve.tags,
            push: solve.push,
            no_cache: solve.no_cache,
            media: if solve.docker_mediatypes {
                hoist_cache::MediaTypes::Docker
            } else {
                hoist_cache::MediaTypes::Oci
            },
            write_image: solve.write_image,
            limits: hoist_executor::spec::Limits {
                memory_bytes: (limits.memory_bytes > 0).then_some(limits.memory_bytes),
                pids: (limits.pids > 0).then_some(limits.pids),
                cpu_quota: (limits.cpu_quota_us > 0).then(|| {
                    let period = if limits.cpu_period_us == 0 {
                        100_000
                    } else {
                        limits.cpu_period_us
                    };
                    (limits.cpu_quota_us, period)
                }),
            },
            registry: Some(Arc::new(registry)),
            cache_from,
            cache_to,
            lazy_layers: solve.lazy_layers,
            force_compression: solve.force_compression,
            annotations: solve.annotations.into_iter().collect(),
            compression: hoist_cache::CompressionOptions {
                level: solve.compression_level,
                ..hoist_cache::CompressionOptions::new(
                    match pb::LayerCompression::try_from(solve.compression) {
                        Ok(pb::LayerCompression::Zstd) => hoist_cache::Compression::Zstd,
                        Ok(pb::LayerCompression::Uncompressed) => hoist_cache::Compression::None,
                        _ => hoist_cache::Compression::Gzip,
                    },
                )
            },
        })
    }

    /// Runs one build to its end, sending everything down `out`.
    async fn run_build(
        self,
        solve: pb::SolveRequest,
        mut inbound: Streaming<pb::ClientMessage>,
        out: Outbound,
        entry: Arc<Running>,
    ) {
        let began = Instant::now();
        let cancel = entry.cancel.clone();
        let callbacks =
            Callbacks::new(out.clone(), solve.secret_ids.clone(), solve.ssh_ids.clone());
        // The client's side of the stream: answers to asks, and its end, which cancels.
        let reader = {
            let callbacks = Arc::clone(&callbacks);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = inbound.message().await {
                    if let Some(kind) = message.kind {
                        callbacks.deliver(kind);
                    }
                }
                callbacks.client_gone();
                cancel.cancel();
            })
        };
        let outcome = self
            .queued_build(solve.clone(), &out, &entry, &callbacks)
            .await;
        let label = match &outcome {
            Ok(_) => BuildResultLabel::Success,
            Err(_) if cancel.is_cancelled() => BuildResultLabel::Canceled,
            Err(_) => BuildResultLabel::Failed,
        };
        self.metrics.build_finished(label, began.elapsed());
        let mut line = serde_json::json!({
            "msg": "build",
            "build": entry.id(),
            "dockerfile": entry.dockerfile_name,
            "tags": entry.tags,
            "result": match label {
                BuildResultLabel::Success => "success",
                BuildResultLabel::Failed => "failed",
                BuildResultLabel::Canceled => "canceled",
            },
            "seconds": (began.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        });
        match outcome {
            Ok(result) => {
                line["ran"] = result.ran.into();
                line["cached"] = result.cached.into();
                let _ = out
                    .send(Ok(pb::ServerMessage {
                        kind: Some(pb::server_message::Kind::Result(result)),
                    }))
                    .await;
            }
            Err(status) => {
                line["error"] = status.message().into();
                let _ = out.send(Err(status)).await;
            }
        }
        (self.log)(&line);
        self.builds.remove(&entry);
        self.metrics.set_running(self.builds.running());
        reader.abort();
        callbacks.client_gone();
    }

    /// Waits for a slot, then builds and streams the outputs back.
    async fn queued_build(
        &self,
        solve: pb::SolveRequest,
        out: &Outbound,
        entry: &Arc<Running>,
        callbacks: &Arc<Callbacks>,
    ) -> Result<pb::BuildResult, Status> {
        let cancel = entry.cancel.clone();
        let slots = Arc::clone(&self.builds.slots);
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let place = self.builds.queued.fetch_add(1, Ordering::SeqCst) + 1;
                self.metrics.build_queued();
                self.metrics
                    .set_queue(self.builds.queued.load(Ordering::SeqCst));
                let _ = out
                    .send(Ok(pb::ServerMessage {
                        kind: Some(pb::server_message::Kind::Queued(
                            u32::try_from(place).unwrap_or(u32::MAX),
                        )),
                    }))
                    .await;
                let permit = tokio::select! {
                    permit = slots.acquire_owned() => permit.ok(),
                    () = cancel.cancelled() => None,
                };
                self.builds.queued.fetch_sub(1, Ordering::SeqCst);
                self.metrics
                    .set_queue(self.builds.queued.load(Ordering::SeqCst));
                permit.ok_or_else(|| Status::cancelled("the build was cancelled in the queue"))?
            }
        };
        entry.running.store(true, Ordering::SeqCst);
        self.metrics.build_started();
        self.metrics.set_running(self.builds.running());

        let root = solve
            .context
            .clone()
            .ok_or_else(|| Status::invalid_argument("the request names no context tree"))?;
        let contexts = Arc::clone(&self.contexts);
        let patterns = solve.ignore_patterns.clone();
        let context = tokio::task::spawn_blocking(move || contexts.checkout(&root, patterns))
            .await
            .map_err(|e| Status::internal(format!("checking the context out: {e}")))??;
        let outputs = solve.outputs.clone();
        // An image output names the image as a local build's does: by its tags, else latest.
        let names = if solve.tags.is_empty() {
            vec!["latest".to_owned()]
        } else {
            solve.tags.clone()
        };
        let request = self.request(solve, context, callbacks)?;

        let queued = Arc::new(AtomicUsize::new(0));
        let (events, forwarded) = forward_events(out.clone(), Arc::clone(&queued));
        let sink = Arc::new(BuildEvents {
            entry: Arc::clone(entry),
            events: events.clone(),
            queued,
            skipped: Mutex::new(BTreeMap::new()),
            metrics: Arc::clone(&self.metrics),
        });
        let result = self
            .engine
            .build(&request, sink as Arc<dyn ProgressSink>, cancel.clone())
            .await;
        // Every event reaches the client before the outputs and the result.
        let (flushed, flush) = oneshot::channel();
        let _ = events.send(Forward::Flush(flushed));
        let _ = flush.await;
        drop(events);
        let _ = forwarded.await;
        let outcome = result.map_err(|e| build_status(&e, cancel.is_cancelled()))?;
        drop(request);
        for (index, output) in outputs.iter().enumerate() {
            self.send_output(index, output, &outcome, &names, out, &cancel)
                .await?;
        }
        drop(permit);
        Ok(pb::BuildResult {
            build: outcome.build.clone(),
            manifest_digest: outcome
                .manifest
                .as_ref()
                .map(|m| m.digest().to_string())
                .unwrap_or_default(),
            manifest_media_type: outcome
                .manifest
                .as_ref()
                .map(|m| m.media_type().to_string())
                .unwrap_or_default(),
            manifest_size: outcome
                .manifest
                .as_ref()
                .map_or(0, |m| i64::try_from(m.size()).unwrap_or(i64::MAX)),
            config_digest: outcome.config_digest.to_string(),
            pushed: outcome.pushed.clone(),
            ran: outcome.ran as u64,
            cached: outcome.cached as u64,
            unused_build_args: outcome.unused_build_args.clone(),
            warnings: outcome
                .warnings
                .iter()
                .map(|w| pb::BuildWarning {
                    rule: w.rule.to_owned(),
                    line: w.line as u64,
                    message: w.message.clone(),
                    url: w.url.to_owned(),
                })
                .collect(),
        })
    }

    /// Streams one file output of the build back to its client, as a tar.
    async fn send_output(
        &self,
        index: usize,
        output: &pb::OutputRequest,
        outcome: &BuildOutcome,
        names: &[String],
        out: &Outbound,
        cancel: &CancellationToken,
    ) -> Result<(), Status> {
        let names = names.to_vec();
        let kind = pb::output_request::Kind::try_from(output.kind)
            .map_err(|_| Status::invalid_argument("an output of an unknown kind"))?;
        let engine = Arc::clone(&self.engine);
        let outcome = outcome.clone();
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let mut writer = ChunkWriter {
            out: out.clone(),
            index,
            buf: Vec::with_capacity(CHUNK),
        };
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Status> {
            // What the output reads stays until it is sent, whatever a GC meanwhile decides.
            let _hold = hoist_worker::gc::BuildHold::new(&engine.state);
            let failed = |what: &str, e: &dyn std::fmt::Display| {
                if cancel.is_cancelled() {
                    Status::cancelled("the build's client went away")
                } else {
                    Status::internal(format!("streaming the {what} output: {e}"))
                }
            };
            match kind {
                pb::output_request::Kind::Local => {
                    let dir = tempfile::Builder::new()
                        .prefix("output-")
                        .tempdir_in(engine.state.root.join("tmp"))
                        .map_err(|e| failed("local", &e))?;
                    engine
                        .state
                        .export_rootfs(&outcome.chain, dir.path())
                        .map_err(|e| failed("local", &e))?;
                    let mut tar = tar::Builder::new(&mut writer);
                    tar.follow_symlinks(false);
                    tar.mode(tar::HeaderMode::Complete);
                    tar.append_dir_all(".", dir.path())
                        .and_then(|()| tar.finish())
                        .map_err(|e| failed("local", &e))?;
                }
                pb::output_request::Kind::Oci | pb::output_request::Kind::Docker => {
                    let manifest = outcome.manifest.as_ref().ok_or_else(|| {
                        Status::invalid_argument("an image output needs write_image")
                    })?;
                    let store = hoist_cache::ImageStore::open(&engine.state.root)
                        .map_err(|e| failed("image", &e))?;
                    if kind == pb::output_request::Kind::Oci {
                        let named: Vec<_> = names
                            .iter()
                            .map(|n| (n.clone(), manifest.clone()))
                            .collect();
                        store
                            .export_oci_tar(&named, &mut writer)
                            .map_err(|e| failed("oci", &e))?;
                    } else {
                        store
                            .export_docker_tar(manifest, &names, &mut writer)
                            .map_err(|e| failed("docker", &e))?;
                    }
                }
                pb::output_request::Kind::Unspecified => {
                    return Err(Status::invalid_argument("an output without a kind"));
                }
            }
            writer.flush().map_err(|e| failed("file", &e))?;
            writer
                .out
                .blocking_send(Ok(pb::ServerMessage {
                    kind: Some(pb::server_message::Kind::Output(pb::OutputChunk {
                        index,
                        data: Vec::new(),
                        done: true,
                    })),
                }))
                .map_err(|_| Status::cancelled("the build's client went away"))
        })
        .await
        .map_err(|e| Status::internal(format!("streaming an output: {e}")))?
    }
}

/// The size of an output chunk on the wire.
const CHUNK: usize = 256 * 1024;

/// Writes an output down the build's stream in chunks, waiting while the client is behind.
struct ChunkWriter {
    out: Outbound,
    index: u32,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.out
            .blocking_send(Ok(pb::ServerMessage {
                kind: Some(pb::server_message::Kind::Output(pb::OutputChunk {
                    index: self.index,
                    data,
                    done: false,
                })),
            }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

/// What goes to the forwarding task: a message (with the output bytes it carries), or a
/// marker it answers once every message before it is sent.
enum Forward {
    Message(pb::ServerMessage, usize),
    Flush(oneshot::Sender<()>),
}

/// Events are made synchronously by the engine; this task sends them down the stream in
/// order, waiting while the client is behind. `queued` counts the output bytes on their way.
fn forward_events(
    out: Outbound,
    queued: Arc<AtomicUsize>,
) -> (mpsc::UnboundedSender<Forward>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Forward>();
    let task = tokio::spawn(async move {
        let mut open = true;
        while let Some(item) = rx.recv().await {
            match item {
                Forward::Message(message, bytes) => {
                    if open {
                        open = out.send(Ok(message)).await.is_ok();
                    }
                    queued.fetch_sub(bytes, Ordering::SeqCst);
                }
                Forward::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    (tx, task)
}

/// The progress sink of a remote build: the wire, the attached listeners and the metrics.
/// The build never waits for its client: output past [`STREAM_LOG_BUDGET`] that the client
/// has not taken yet is left out of the stream, and a line at the step says how much.
struct BuildEvents {
    entry: Arc<Running>,
    events: mpsc::UnboundedSender<Forward>,
    queued: Arc<AtomicUsize>,
    /// Output bytes left out, by step id, not yet reported.
    skipped: Mutex<BTreeMap<usize, u64>>,
    metrics: Arc<Metrics>,
}

impl BuildEvents {
    /// Queues one event for the client; `bytes` is the output it carries.
    fn send(&self, wire: pb::Event, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::SeqCst);
        let _ = self.events.send(Forward::Message(
            pb::ServerMessage {
                kind: Some(pb::server_message::Kind::Event(wire)),
            },
            bytes,
        ));
    }
}

impl ProgressSink for BuildEvents {
    fn event(&self, event: Event) {
        match &event {
            Event::Build { build } => build.clone_into(&mut locked(&self.entry.id)),
            Event::Cached { .. } => self.metrics.step(true, None),
            Event::Finished { wall, .. } | Event::Failed { wall, .. } => {
                self.metrics.step(false, Some(*wall));
            }
            _ => {}
        }
        let wire = crate::convert::event_out(&event);
        self.entry.record(&wire);
        let bytes = match &event {
            Event::Log { data, .. } => data.len(),
            _ => 0,
        };
        if let Some(id) = event.id() {
            if matches!(event, Event::Log { .. })
                && self.queued.load(Ordering::SeqCst) + bytes > STREAM_LOG_BUDGET
            {
                *locked(&self.skipped).entry(id).or_default() += bytes as u64;
                return;
            }
            if let Some(bytes) = locked(&self.skipped).remove(&id) {
                let note = format!(
                    "[{bytes} bytes of output are not shown here: the client fell behind; \
                     `hoist logs --remote ADDR {}` prints all of it]\n",
                    self.entry.id()
                );
                let note = note.into_bytes();
                let len = note.len();
                let wire = crate::convert::event_out(&Event::Log {
                    id,
                    stream: hoist_solver::progress::Stream::Stderr,
                    data: note,
                });
                self.send(wire, len);
            }
        }
        self.send(wire, bytes);
    }
}

/// A failed build as a status: the error and every cause, as the local CLI prints them.
fn build_status(err: &BuildError, cancelled: bool) -> Status {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        text.push_str("\n  caused by: ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    match err {
        _ if cancelled => Status::cancelled(text),
        BuildError::Dockerfile(_) | BuildError::Ignore(_) | BuildError::Tag { .. } => {
            Status::invalid_argument(text)
        }
        _ => Status::aborted(text),
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Longest a client may take to send its request once it opened a build's stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    type SolveStream = ServerStream<pb::ServerMessage>;
    type AttachStream = ServerStream<pb::Event>;
    type PruneStream = ServerStream<pb::PruneEvent>;
    type LogsStream = ServerStream<pb::LogsChunk>;

    async fn solve(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::SolveStream>, Status> {
        if self.builds.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "the server is shutting down and takes no new builds; try another server or retry shortly",
            ));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REQUEST_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no build request within 60 s"))??;
        let Some(pb::ClientMessage {
            kind: Some(pb::client_message::Kind::Solve(solve)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "a build's stream must begin with its SolveRequest",
            ));
        };
        let entry = Arc::new(Running {
            id: Mutex::new(String::new()),
            running: AtomicBool::new(false),
            started_unix_ms: now_unix_ms(),
            dockerfile_name: solve.dockerfile_name.clone(),
            tags: solve.tags.clone(),
            cancel: CancellationToken::new(),
            events: Mutex::new(History::default()),
        });
        locked(&self.builds.entries).push(Arc::clone(&entry));
        let (out, rx) = mpsc::channel(64);
        tokio::spawn(self.clone().run_build(solve, inbound, out, entry));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let build = request.into_inner().build;
        let entry = self.builds.find(&build).ok_or_else(|| {
            Status::not_found(format!(
                "no running build {build:?} on this server; `hoist logs {build} --remote …` \
                 shows a finished one"
            ))
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut history = locked(&entry.events);
            for event in &history.events {
                let _ = tx.send(event.clone());
            }
            history.listeners.push(tx);
        }
        Ok(Response::new(Box::pin(futures_util::StreamExt::map(
            UnboundedReceiverStream::new(rx),
            Ok,
        ))))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let build = request.into_inner().build;
        let found = self.builds.find(&build);
        if let Some(entry) = &found {
            entry.cancel.cancel();
        }
        Ok(Response::new(pb::CancelResponse {
            found: found.is_some(),
        }))
    }

    async fn list_builds(
        &self,
        _request: Request<pb::ListBuildsRequest>,
    ) -> Result<Response<pb::ListBuildsResponse>, Status> {
        let builds = locked(&self.builds.entries)
            .iter()
            .map(|e| pb::BuildInfo {
                build: e.id(),
                state: if e.running.load(Ordering::SeqCst) {
                    "running"
                } else {
                    "queued"
                }
                .to_owned(),
                started_unix_ms: e.started_unix_ms,
                dockerfile_name: e.dockerfile_name.clone(),
                tags: e.tags.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListBuildsResponse { builds }))
    }

    async fn disk_usage(
        &self,
        _request: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        let engine = Arc::clone(&self.engine);
        let contexts = Arc::clone(&self.contexts);
        let records = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let usage = hoist_worker::gc::usage(&engine.state).map_err(|e| {
                Status::internal(format!(
                    "measuring {}: {}",
                    engine.state.root.display(),
                    crate::error_chain(&e)
                ))
            })?;
            // The uploaded trees are listed one by one below.
            let mut records: Vec<pb::UsageRecord> = usage
                .records
                .into_iter()
                .filter(|r| r.record.kind != hoist_cache::gc::Kind::Server)
                .map(|r| pb::UsageRecord {
                    kind: r.record.kind.name().to_owned(),
                    id: r.record.id,
                    bytes: r.exclusive,
                    in_use: r.record.held,
                    instances: 1,
                })
                .collect();
            records.extend(contexts.usage()?);
            Ok(records)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::DiskUsageResponse { records }))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        let all = request.into_inner().all;
        let engine = Arc::clone(&self.engine);
        let contexts = Arc::clone(&self.contexts);
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let mut bytes = 0;
            let mut count = 0;
            let mut send = |removed: pb::UsageRecord| {
                bytes += removed.bytes;
                count += 1;
                let _ = tx.blocking_send(Ok(pb::PruneEvent {
                    removed: Some(removed),
                    ..pb::PruneEvent::default()
                }));
            };
            let policy = hoist_cache::gc::Policy {
                all,
                keep_storage: None,
                until: None,
                now: hoist_cache::gc::now(),
            };
            match hoist_worker::gc::prune(&engine.state, &policy) {
                Ok(collected) => {
                    for (record, bytes) in collected.removed {
                        send(pb::UsageRecord {
                            kind: record.kind.name().to_owned(),
                            id: record.id,
                            bytes,
                            in_use: false,
                            instances: 1,
                        });
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "pruning {}: {}",
                        engine.state.root.display(),
                        crate::error_chain(&e)
                    ))));
                    return;
                }
            }
            match contexts.prune(all) {
                Ok(removed) => removed.into_iter().for_each(&mut send),
                Err(status) => {
                    let _ = tx.blocking_send(Err(status));
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(pb::PruneEvent {
                removed: None,
                done: true,
                removed_bytes: bytes,
                removed_records: count,
            }));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let step = request
            .step
            .map(|s| usize::try_from(s).map_err(|_| Status::invalid_argument("step out of range")))
            .transpose()?;
        let build = Some(request.build).filter(|b| !b.is_empty());
        let logs = hoist_worker::logs::LogStore::new(&self.engine.state.root);
        // The whole log is made first, so that an unknown build is the call's error rather
        // than a broken stream.
        let text = tokio::task::spawn_blocking(move || {
            let mut text = Vec::new();
            logs.write_log(build.as_deref(), step, &mut text)
                .map(|()| text)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            hoist_worker::logs::LogError::Io { .. } => Status::internal(e.to_string()),
            _ => Status::not_found(e.to_string()),
        })?;
        let chunks: Vec<Result<pb::LogsChunk, Status>> = text
            .chunks(CHUNK)
            .map(|c| Ok(pb::LogsChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let (max_blob_bytes, max_directory_bytes) = self.contexts.limits();
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            platform: Platform::host().to_string(),
            max_builds: u32::try_from(self.config.max_builds).unwrap_or(u32::MAX),
            running_builds: u32::try_from(self.builds.running()).unwrap_or(u32::MAX),
            queued_builds: u32::try_from(self.builds.queued.load(Ordering::SeqCst))
                .unwrap_or(u32::MAX),
            max_blob_bytes,
            max_directory_bytes,
            max_parallelism: u32::try_from(self.engine.max_parallelism()).unwrap_or(u32::MAX),
        }))
    }
}

/// A remote build's `--cache-from` and `--cache-to`. A local directory would be the server's,
/// not the client's: only registries are taken.
fn cache_specs(
    from: &[String],
    to: &[String],
) -> Result<
    (
        Vec<hoist_worker::exchange::CacheImport>,
        Vec<hoist_worker::exchange::CacheExport>,
    ),
    Status,
> {
    use hoist_worker::exchange::{CacheExport, CacheImport, CacheLocation};
    let local = |flag: &str, spec: &str| {
        Status::invalid_argument(format!(
            "{flag} {spec:?}: type=local is not available for a remote build (the directory \
             would be on the server); use type=registry,ref=REF"
        ))
    };
    let mut imports = Vec::new();
    for spec in from {
        let import =
            CacheImport::parse(spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if matches!(import.location, CacheLocation::Local(_)) {
            return Err(local("--cache-from", spec));
        }
        imports.push(import);
    }
    let mut exports = Vec::new();
    for spec in to {
        let export =
            CacheExport::parse(spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if matches!(export.location, CacheLocation::Local(_)) {
            return Err(local("--cache-to", spec));
        }
        exports.push(export);
    }
    Ok((imports, exports))
}
