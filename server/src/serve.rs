//! The server as a whole: the services over one engine, on every address, until a shutdown
//! that drains the builds first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hoist_proto::v1 as pb;
use hoist_worker::{ContextSource, Engine};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::Addr;
use crate::auth::AuthConfig;
use crate::cas::{CasError, CasLimits, CasStore};
use crate::context::RemoteContext;
use crate::control::{BuildLogLine, ContextStore, ControlConfig, ControlService};
use crate::metrics::{Metrics, MetricsListener};

/// How `hoist serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addrs: Vec<Addr>,
    pub auth: AuthConfig,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub control: ControlConfig,
    /// How long running builds may take to finish after `SIGTERM` before they are cancelled.
    pub grace: Duration,
    pub cas_limits: CasLimits,
    /// The automatic GC keeps the state root under this many bytes (`--gc-keep-storage`):
    /// checked every `gc_interval`, which costs one `statvfs` while the root is under it.
    pub gc_keep_storage: u64,
    pub gc_interval: Duration,
}

/// The server could not start, or a listener failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] crate::listen::ListenError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("opening the context store in {}", path.display())]
    Cas {
        path: PathBuf,
        #[source]
        source: CasError,
    },
}

/// The `Cas` store as the control service's source of contexts.
#[derive(Debug)]
struct CasContexts {
    store: Arc<CasStore>,
    state_root: PathBuf,
}

fn cas_status(e: &CasError) -> Status {
    let text = crate::error_chain(e);
    match e {
        CasError::Fs(_) => Status::internal(text),
        _ => Status::failed_precondition(text),
    }
}

impl ContextStore for CasContexts {
    fn checkout(
        &self,
        root: &pb::Digest,
        ignore_patterns: Vec<String>,
    ) -> Result<Arc<dyn ContextSource>, Status> {
        let lease = self.store.checkout(root).map_err(|e| cas_status(&e))?;
        Ok(Arc::new(RemoteContext::new(
            lease,
            ignore_patterns,
            &self.state_root,
        )))
    }

    fn usage(&self) -> Result<Vec<pb::UsageRecord>, Status> {
        Ok(self
            .store
            .usage()
            .map_err(|e| cas_status(&e))?
            .into_iter()
            .map(|u| pb::UsageRecord {
                kind: "context".to_owned(),
                id: u.name,
                bytes: u.bytes,
                in_use: u.in_use,
                instances: u.count,
            })
            .collect())
    }

    fn prune(&self, all: bool) -> Result<Vec<pb::UsageRecord>, Status> {
        let pruned = self.store.prune(all).map_err(|e| cas_status(&e))?;
        Ok(if pruned.blobs + pruned.trees > 0 {
            vec![pb::UsageRecord {
                kind: "context".to_owned(),
                id: format!(
                    "{} uploaded blob(s) and {} checked-out tree(s)",
                    pruned.blobs, pruned.trees
                ),
                bytes: pruned.bytes,
                in_use: false,
                instances: pruned.blobs + pruned.trees,
            }]
        } else {
            Vec::new()
        })
    }

    fn limits(&self) -> (i64, i64) {
        let limits = self.store.limits();
        (
            i64::try_from(limits.max_blob).unwrap_or(i64::MAX),
            i64::try_from(limits.max_directory).unwrap_or(i64::MAX),
        )
    }
}

/// Where the server listens, once it does.
#[derive(Clone, Debug)]
pub struct Ready {
    pub addrs: Vec<Addr>,
    pub metrics: Option<SocketAddr>,
}

/// Serves builds on `engine` until `shutdown` is cancelled (`SIGTERM`). Then new builds are
/// refused and the health service says NOT_SERVING; running builds get `options.grace` to
/// finish, and are cancelled after it; then the listeners close.
///
/// `ready` is called once every address listens; `log` gets one line per finished build.
///
/// # Errors
/// An address that cannot be listened on, a bad configuration, or a listener that failed.
pub async fn serve(
    engine: Arc<Engine>,
    options: ServeOptions,
    shutdown: CancellationToken,
    log: BuildLogLine,
    ready: impl FnOnce(&Ready),
) -> Result<(), ServeError> {
    let cas_dir = serve_dir(&engine.state.root).join("cas");
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(
        CasStore::open(&cas_dir, options.cas_limits.clone())
            .map_err(|source| ServeError::Cas {
                path: cas_dir.clone(),
                source,
            })?
            .with_metrics(Arc::clone(&metrics)),
    );
    let contexts = Arc::new(CasContexts {
        store: Arc::clone(&store),
        state_root: engine.state.root.clone(),
    });
    let log_gc = Arc::clone(&log);
    let (control, builds) = ControlService::new(
        Arc::clone(&engine),
        contexts,
        Arc::clone(&metrics),
        options.control.clone(),
        log,
    );
    let (health_reporter, health) = crate::listen::health();
    health_reporter
        .set_serving::<pb::control_server::ControlServer<ControlService>>()
        .await;
    let routes = tonic::service::Routes::new(health)
        .add_service(pb::control_server::ControlServer::new(control))
        .add_service(Arc::clone(&store).service());

    let listeners = crate::listen::bind(&options.addrs, &options.auth).await?;
    let metrics_listener = match options.metrics_addr {
        Some(addr) => Some(MetricsListener::bind(addr).await?),
        None => None,
    };
    ready(&Ready {
        addrs: listeners.local_addrs(),
        metrics: metrics_listener
            .as_ref()
            .and_then(MetricsListener::local_addr),
    });

    let stop_listening = CancellationToken::new();
    tokio::spawn(collect_garbage(
        Arc::clone(&engine),
        options.gc_keep_storage,
        options.gc_interval,
        Arc::clone(&log_gc),
        stop_listening.clone(),
    ));
    let mut serving = tokio::spawn(listeners.serve(routes, stop_listening.clone()));
    if let Some(listener) = metrics_listener {
        tokio::spawn(listener.serve(Arc::clone(&metrics), stop_listening.clone()));
    }
    tokio::select! {
        () = shutdown.cancelled() => {}
        // A listener that fails ends the server.
        result = &mut serving => {
            return result.unwrap_or(Ok(())).map_err(ServeError::from);
        }
    }
    builds.drain();
    health_reporter
        .set_not_serving::<pb::control_server::ControlServer<ControlService>>()
        .await;
    let deadline = tokio::time::Instant::now() + options.grace;
    while builds.active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if builds.active() > 0 {
        builds.cancel_all();
        // Cancelled builds end their sandboxes and leases; give them a moment to.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while builds.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_listening.cancel();
    serving.await.unwrap_or(Ok(())).map_err(ServeError::from)
}

/// The automatic GC of a server: every `interval`, removes the least recently used records
/// while the state root is over `budget`; never what a running build holds.
async fn collect_garbage(
    engine: Arc<Engine>,
    budget: u64,
    interval: Duration,
    log: BuildLogLine,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let state = Arc::clone(&engine.state);
        let done =
            tokio::task::spawn_blocking(move || hoist_worker::gc::auto(&state, budget)).await;
        let line = match done {
            Ok(Ok(Some(collected))) if collected.bytes > 0 => serde_json::json!({
                "msg": "gc",
                "removed_records": collected.removed.len(),
                "removed_bytes": collected.bytes,
                "root_bytes": collected.after,
                "keep_storage": budget,
            }),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => serde_json::json!({"msg": "gc failed", "error": crate::error_chain(&e)}),
            Err(e) => serde_json::json!({"msg": "gc failed", "error": e.to_string()}),
        };
        log(&line);
    }
}

/// The server's own records under a state root.
#[must_use]
pub fn serve_dir(root: &Path) -> PathBuf {
    root.join("serve")
}
