//! One `hoist build`, end to end: read the Dockerfile and `.dockerignore`, lower to a graph
//! (resolving base images through the registry), solve it with the [`BuildWorker`], assemble
//! the image (config with diff_ids and history, manifest), name it in the local store, and push
//! it when asked.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hoist_cache::oci_spec::image::{Descriptor, Digest, ImageConfiguration, ImageManifest};
use hoist_cache::{DockerConfigExtras, Healthcheck, ImageStore, MediaTypes};
use hoist_executor::Executor;
use hoist_registry::{Client, PushOptions, Reference};
use hoist_solver::Platform;
use tokio_util::sync::CancellationToken;

use crate::context::ContextSource;
use crate::{BuildWorker, IndexCache, Output, State};
use hoist_solver::frontend::{
    self, BuildOptions, HistoryEntry, ImageConfig, ImageResolver, ResolvedImage,
};
use hoist_solver::progress::ProgressSink;
use hoist_solver::scheduler::{BoxError, Job, SolveError, Solver, SolverOptions};

/// The Dockerfile of a build, read by the caller (from a file, or from standard input).
#[derive(Clone, Debug)]
pub struct Dockerfile {
    /// Its text.
    pub text: String,
    /// What errors call it (`Dockerfile:3:5`): the path as the user gave it, or `Dockerfile`.
    pub name: String,
    /// Where it is, for its own `<path>.dockerignore`; `None` for standard input.
    pub path: Option<PathBuf>,
}

/// What to build and where the result goes.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The build context: a local directory, or (for `hoist serve`) an uploaded tree.
    pub context: Arc<dyn ContextSource>,
    /// Secrets and SSH agents for `RUN --mount=type=secret|ssh`.
    pub session: Arc<dyn crate::Session>,
    /// `--build-context`: the named local directories and OCI layouts (their images are
    /// resolved into [`BuildOptions::named_contexts`] by the caller).
    pub named_contexts: crate::named::NamedContexts,
    pub dockerfile: Dockerfile,
    pub options: BuildOptions,
    /// `-t`: names in the local store (and push targets with `--push`).
    pub tags: Vec<String>,
    pub push: bool,
    pub no_cache: bool,
    pub media: MediaTypes,
    /// Make the image (compressed layers and manifest) even without tags or a push, for an
    /// export or a metadata file. Without it and without tags, a build leaves only its cache
    /// and the image config: no layer is compressed.
    pub write_image: bool,
    /// cgroup limits of every RUN.
    pub limits: hoist_executor::spec::Limits,
    /// How the image's new layers are compressed (`-o compression=…`); base image layers
    /// keep the blobs they were pulled as.
    pub compression: hoist_cache::CompressionOptions,
    /// The registry client of this build, when it is not the engine's: a remote build pulls
    /// and pushes with its client's credentials (see
    /// [`Client::with_credential_source`]).
    pub registry: Option<Arc<Client>>,
    /// `-o force-compression=true`: base image layers are compressed again as `compression`
    /// says, not kept as pulled.
    pub force_compression: bool,
    /// `-o annotation.KEY=V`: annotations of the image manifest.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `--cache-from`, in order: the first cache that has a step wins.
    pub cache_from: Vec<crate::exchange::CacheImport>,
    /// `--cache-to`: each is written after the image is pushed.
    pub cache_to: Vec<crate::exchange::CacheExport>,
    /// No output reads the layers' bytes: the image is only pushed (`--push`, `type=registry`),
    /// or not written at all. Layers that an imported cache hit named are then mounted or
    /// copied between repositories, never pulled here, and the image is named in the local
    /// store only when every blob of it is here.
    pub lazy_layers: bool,
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildOutcome {
    /// The build's id, under which its complete log is kept (`hoist logs ID`).
    pub build: String,
    /// The image manifest; `None` when the build had no output that needs one.
    pub manifest: Option<Descriptor>,
    /// The built filesystem's layers, bottom first (for `-o type=local`).
    pub chain: Arc<Vec<crate::Layer>>,
    pub config_digest: Digest,
    /// Each pushed tag, pinned: `REF@sha256:…`.
    pub pushed: Vec<String>,
    pub ran: usize,
    pub cached: usize,
    /// Build-args that no ARG used.
    pub unused_build_args: Vec<String>,
    /// What the build checks found.
    pub warnings: Vec<hoist_parser::lint::Warning>,
}

/// A build that failed, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile is invalid; the message names the file, line and column.
    #[error("{0}")]
    Dockerfile(String),
    #[error(transparent)]
    Ignore(#[from] hoist_parser::ignore::IgnoreError),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error("assembling the image")]
    Image(#[from] hoist_cache::ImageError),
    #[error("compressing the image's layers")]
    Layers(#[from] crate::WorkerError),
    #[error("fetching the image's layers")]
    Fetch(#[source] crate::WorkerError),
    #[error("naming the image in the local store")]
    Store(#[from] hoist_cache::LayoutError),
    #[error("invalid tag {tag:?}")]
    Tag {
        tag: String,
        #[source]
        source: hoist_registry::ParseReferenceError,
    },
    #[error("pushing {tag}")]
    Push {
        tag: String,
        #[source]
        source: Box<hoist_registry::PushError>,
    },
    #[error("keep the build's log")]
    Log(#[from] crate::logs::LogError),
    #[error("{0}")]
    Internal(String),
}

/// The build engine of one process: state, sandbox, registry client and the shared solver.
pub struct Engine {
    pub state: Arc<State>,
    pub executor: Arc<Executor>,
    pub registry: Arc<Client>,
    solver: Solver<Output>,
    max_parallelism: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("state", &self.state.root)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over an opened state, sandbox and registry client.
    #[must_use]
    pub fn new(
        state: Arc<State>,
        executor: Arc<Executor>,
        registry: Arc<Client>,
        max_parallelism: usize,
    ) -> Self {
        let cache = Arc::new(IndexCache {
            state: Arc::clone(&state),
        });
        Self {
            solver: Solver::new(cache, SolverOptions { max_parallelism }),
            max_parallelism,
            state,
            executor,
            registry,
        }
    }

    /// How many steps run at once, across every build of the engine.
    #[must_use]
    pub fn max_parallelism(&self) -> usize {
        self.max_parallelism
    }

    /// Builds an image.
    ///
    /// # Errors
    /// [`BuildError`]: an unreadable or invalid Dockerfile (located), a failed step (with its
    /// Dockerfile line and output tail), or a failed push.
    pub async fn build(
        &self,
        request: &BuildRequest,
        progress: Arc<dyn ProgressSink>,
        cancel: CancellationToken,
    ) -> Result<BuildOutcome, BuildError> {
        // What the build uses is held against collectors until it ends.
        let _hold = crate::gc::BuildHold::new(&self.state);
        // Every event goes through the build's log first, so the whole output can be read
        // back afterwards (`hoist logs`), whatever the renderer kept.
        let log = Arc::new(
            crate::logs::LogStore::new(&self.state.root)
                .with_lease(Arc::clone(&self.state.lease))
                .start(progress)?,
        );
        log.event(hoist_solver::progress::Event::Build {
            build: log.build().to_owned(),
        });
        let progress: Arc<dyn ProgressSink> = Arc::clone(&log) as Arc<dyn ProgressSink>;
        let result = self
            .build_logged(log.build(), request, progress, cancel)
            .await;
        // A log that could not be written costs the log, not the build.
        let _ = log.finish();
        result
    }

    async fn build_logged(
        &self,
        build: &str,
        request: &BuildRequest,
        progress: Arc<dyn ProgressSink>,
        cancel: CancellationToken,
    ) -> Result<BuildOutcome, BuildError> {
        let source: &str = &request.dockerfile.text;
        let shown = request.dockerfile.name.clone();
        let file = hoist_parser::parse(source).map_err(|e| {
            BuildError::Dockerfile(e.render(&shown, source, &hoist_parser::LineIndex::new(source)))
        })?;
        let mut options = request.options.clone();
        options.ignore_patterns = request
            .context
            .ignore_patterns(request.dockerfile.path.as_deref())?;

        // Lowering resolves base images; it is synchronous, so it runs on a blocking thread
        // that drives the registry calls on this runtime.
        let registry = Arc::clone(request.registry.as_ref().unwrap_or(&self.registry));
        let internal = InternalSteps {
            progress: Arc::clone(&progress),
            next: Arc::default(),
        };
        // The cache documents load while the frontend resolves images and the context is
        // hashed; a step waits for them only when the local cache misses.
        let imported = (!request.cache_from.is_empty() && !request.no_cache).then(|| {
            let steps = internal.clone();
            let ids: Vec<(String, usize)> = request
                .cache_from
                .iter()
                .map(|c| {
                    let name = format!("[internal] importing cache from {}", c.location);
                    (c.location.to_string(), steps.start(&name))
                })
                .collect();
            let started = std::time::Instant::now();
            crate::exchange::ImportedCache::start(
                Arc::clone(&self.state),
                Arc::clone(&registry),
                request.cache_from.clone(),
                Box::new(move |location, result| {
                    let shown = location.to_string();
                    let Some((_, id)) = ids.iter().find(|(l, _)| *l == shown) else {
                        return;
                    };
                    match result {
                        Ok(n) => steps.log(*id, &format!("{n} cached steps\n")),
                        Err(why) => {
                            steps.log(*id, &format!("warning: cache {shown} not used: {why}\n"))
                        }
                    }
                    steps.finish(*id, started.elapsed(), None);
                }),
            )
        });
        let resolver = RegistryResolver {
            client: Arc::clone(&registry),
            handle: tokio::runtime::Handle::current(),
            state: Arc::clone(&self.state),
            progress: Arc::clone(&progress),
            steps: Arc::clone(&internal.next),
        };
        let mut plan = {
            let source = source.to_owned();
            let options = options.clone();
            tokio::task::spawn_blocking(move || {
                frontend::lower(&file, &source, &options, &resolver)
                    .map_err(|e| e.render(&shown, &source))
            })
            .await
            .map_err(|e| BuildError::Internal(format!("the frontend panicked: {e}")))?
            .map_err(BuildError::Dockerfile)?
        };

        let worker = Arc::new(BuildWorker {
            state: Arc::clone(&self.state),
            executor: Arc::clone(&self.executor),
            registry: Arc::clone(&registry),
            context: Arc::clone(&request.context),
            named_contexts: request.named_contexts.clone(),
            session: Arc::clone(&request.session),
            proxy_env: plan.proxy_env.clone(),
            // Every layer the build makes has its mtimes clamped to the epoch (see
            // `State::commit_layer`); the frontend put the epoch in those steps' keys.
            diff_options: hoist_cache::DiffOptions {
                source_date_epoch: source_date_epoch(&options.build_args)?,
                ..BuildWorker::default_diff_options()
            },
            limits: request.limits,
            selections: Mutex::default(),
            imported: imported.clone(),
            remote_keyed: Mutex::default(),
        });
        // A blob of an imported cache that turns out bad (unreachable, or not what its record
        // says) is marked so, and the build is solved again: the steps that needed it now
        // miss and run. Each round marks at least one more blob bad.
        let mut retries = 0;
        let solution = loop {
            let bad_before = imported.as_ref().map_or(0, |i| i.bad.count());
            let solved = self
                .solver
                .solve(Job {
                    graph: &plan.graph,
                    roots: vec![plan.root],
                    worker: Arc::clone(&worker) as _,
                    progress: Arc::clone(&progress),
                    cancel: cancel.clone(),
                    no_cache: request.no_cache,
                    history: Some(self.history(request, imported.as_ref())),
                    imported: imported
                        .clone()
                        .map(|i| Arc::new(i) as Arc<dyn hoist_solver::scheduler::Cache<Output>>),
                })
                .await
                .map_err(BuildError::from);
            // Outputs that write files need every blob here; a push mounts or copies them.
            let solved = match solved {
                Ok(solution) if !request.lazy_layers => match solution.results.first() {
                    Some(Output::Chain(chain)) => {
                        let blobs: Vec<Descriptor> =
                            chain.iter().filter_map(|l| l.blob.clone()).collect();
                        self.state.fetch_blobs(&blobs).await.map(|()| solution)
                    }
                    _ => Ok(solution),
                }
                .map_err(BuildError::Fetch),
                solved => solved,
            };
            match solved {
                Err(e)
                    if retries < 8
                        && !cancel.is_cancelled()
                        && imported.as_ref().map_or(0, |i| i.bad.count()) > bad_before =>
                {
                    retries += 1;
                    let id = internal.start("[internal] imported cache refused");
                    internal.log(
                        id,
                        &format!("warning: {}\n", crate::exchange::error_text(&e)),
                    );
                    internal.finish(id, std::time::Duration::ZERO, None);
                }
                solved => break solved?,
            }
        };
        request.context.finish();
        let Some(Output::Chain(chain)) = solution.results.first() else {
            return Err(BuildError::Internal(
                "the build produced no filesystem".into(),
            ));
        };

        let created = created_time(&options.build_args)?;
        let (config, mut extras) = image_config(
            std::mem::take(&mut plan.config),
            plan.author.take(),
            std::mem::take(&mut plan.history),
            chain,
            &options.target_platform,
            &created,
        );
        if request
            .cache_to
            .iter()
            .any(|c| c.location == crate::exchange::CacheLocation::Inline)
        {
            let id = internal.start("[internal] inline cache in the image config");
            let records = self
                .cache_records(
                    crate::exchange::ExportMode::Min,
                    &plan.graph,
                    plan.root,
                    &solution,
                    imported.as_ref(),
                )
                .await;
            let doc = crate::exchange::document(
                &self.state,
                records,
                request.compression,
                crate::exchange::Inputs::None,
            )
            .await?;
            internal.log(id, &format!("{} steps\n", doc.records.len()));
            internal.finish(id, std::time::Duration::ZERO, None);
            extras.inline_cache = Some(serde_json::to_value(&doc).map_err(|e| {
                BuildError::Internal(format!("encoding the inline cache failed: {e}"))
            })?);
        }
        if !(request.write_image || request.push || !request.tags.is_empty()) {
            let config =
                hoist_cache::write_config(&self.state.blobs, &config, &extras, request.media)?;
            self.export_caches(
                request,
                &plan.graph,
                plan.root,
                &solution,
                imported.as_ref(),
                &internal,
            )
            .await?;
            return Ok(BuildOutcome {
                build: build.to_owned(),
                manifest: None,
                chain: Arc::clone(chain),
                config_digest: config.digest().clone(),
                pushed: Vec::new(),
                ran: solution.ran,
                cached: solution.cached,
                unused_build_args: plan.unused_build_args,
                warnings: plan.warnings,
            });
        }
        let layers = {
            let state = Arc::clone(&self.state);
            let chain = Arc::clone(chain);
            let options = hoist_cache::DiffOptions {
                compression: request.compression,
                ..BuildWorker::default_diff_options()
            };
            if request.force_compression {
                // Base layers are read to be compressed again, wherever their bytes are.
                let blobs: Vec<Descriptor> = chain.iter().filter_map(|l| l.blob.clone()).collect();
                self.state.fetch_blobs(&blobs).await?;
            }
            let force = request.force_compression;
            tokio::task::spawn_blocking(move || state.layer_blobs_as(&chain, &options, force))
                .await
                .map_err(|e| {
                    BuildError::Internal(format!("compressing the layers panicked: {e}"))
                })??
        };
        let manifest = hoist_cache::write_image(
            &self.state.blobs,
            &config,
            &extras,
            &layers,
            request.media,
            (!request.annotations.is_empty()).then(|| {
                request
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
        )?;
        drop(config);
        // The manifest alone names the config: loading the image would read back and parse a
        // config that may be hundreds of megabytes.
        let config_digest = {
            let raw = self
                .state
                .blobs
                .read(manifest.digest())
                .map_err(hoist_cache::ImageError::from)?;
            let parsed: ImageManifest =
                serde_json::from_slice(&raw).map_err(|source| hoist_cache::ImageError::Json {
                    what: "manifest",
                    digest: manifest.digest().to_string(),
                    source,
                })?;
            parsed.config().digest().clone()
        };

        let store = ImageStore::open(&self.state.root)?;
        let complete = layers.iter().all(|l| self.state.blobs.has(l.digest()));
        let mut pushed = Vec::new();
        for tag in &request.tags {
            let reference: Reference = tag.parse().map_err(|source| BuildError::Tag {
                tag: tag.clone(),
                source,
            })?;
            // An image whose blobs stayed in an imported cache's registry is not named here:
            // nothing local could read it.
            if complete {
                store.tag(&reference.to_string(), &manifest)?;
            }
            if request.push {
                let mount_from = self.state.prepare_push(&reference, &layers).await?;
                let report = registry
                    .push(
                        &reference,
                        &manifest,
                        self.state.registry_store(),
                        &PushOptions { mount_from },
                    )
                    .await
                    .map_err(|source| BuildError::Push {
                        tag: tag.clone(),
                        source: Box::new(source),
                    })?;
                pushed.push(report.reference.to_string());
            }
        }
        self.export_caches(
            request,
            &plan.graph,
            plan.root,
            &solution,
            imported.as_ref(),
            &internal,
        )
        .await?;
        Ok(BuildOutcome {
            build: build.to_owned(),
            manifest: Some(manifest),
            chain: Arc::clone(chain),
            config_digest,
            pushed,
            ran: solution.ran,
            cached: solution.cached,
            unused_build_args: plan.unused_build_args,
            warnings: plan.warnings,
        })
    }

    /// `hoist build --check`: the build checks over every stage, with base images resolved as
    /// a build resolves them, and no step run.
    ///
    /// # Errors
    /// A Dockerfile that does not parse, or a `.dockerignore` that cannot be read; what stops
    /// the checks later is in the report.
    pub async fn check(
        &self,
        request: &BuildRequest,
        progress: Arc<dyn ProgressSink>,
    ) -> Result<frontend::CheckReport, BuildError> {
        let source = request.dockerfile.text.clone();
        let file = hoist_parser::parse(&source).map_err(|e| {
            let index = hoist_parser::LineIndex::new(&source);
            BuildError::Dockerfile(e.render(&request.dockerfile.name, &source, &index))
        })?;
        let mut options = request.options.clone();
        options.ignore_patterns = request
            .context
            .ignore_patterns(request.dockerfile.path.as_deref())?;
        let resolver = RegistryResolver {
            client: Arc::clone(request.registry.as_ref().unwrap_or(&self.registry)),
            handle: tokio::runtime::Handle::current(),
            state: Arc::clone(&self.state),
            progress,
            steps: Arc::default(),
        };
        tokio::task::spawn_blocking(move || frontend::check(&file, &source, &options, &resolver))
            .await
            .map_err(|e| BuildError::Internal(format!("the frontend panicked: {e}")))
    }
}

impl Engine {
    /// Where a build's steps record their inputs and find their last ones: a local build's
    /// Dockerfile by its absolute path, so that two projects' `Dockerfile`s stay apart.
    fn history(
        &self,
        request: &BuildRequest,
        imported: Option<&crate::exchange::ImportedCache>,
    ) -> hoist_solver::scheduler::BuildHistory {
        let dockerfile = &request.dockerfile;
        hoist_solver::scheduler::BuildHistory {
            store: Arc::new(crate::history::IndexHistory {
                state: Arc::clone(&self.state),
                imported: imported.cloned(),
            }),
            dockerfile: dockerfile
                .path
                .as_ref()
                .map_or_else(|| dockerfile.name.clone(), |p| p.display().to_string()),
            build_args: request.options.build_args.keys().cloned().collect(),
        }
    }
}

/// When the image was "created", for its config and the history entries it adds:
/// `SOURCE_DATE_EPOCH` (a build-arg, as in BuildKit) when set, else the Unix epoch, so the day
/// of a build does not enter its config (file mtimes in RUN layers still do).
fn created_time(
    build_args: &std::collections::BTreeMap<String, String>,
) -> Result<String, BuildError> {
    Ok(rfc3339(source_date_epoch(build_args)?.unwrap_or(0)))
}

/// `SOURCE_DATE_EPOCH` (a build-arg, as in BuildKit), in seconds, when set.
fn source_date_epoch(
    build_args: &std::collections::BTreeMap<String, String>,
) -> Result<Option<i64>, BuildError> {
    let Some(raw) = build_args.get("SOURCE_DATE_EPOCH") else {
        return Ok(None);
    };
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s >= 0)
        .map(Some)
        .ok_or_else(|| {
            BuildError::Internal(format!(
                "invalid SOURCE_DATE_EPOCH {raw:?}: expected whole seconds since 1970-01-01"
            ))
        })
}

/// `secs` since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The image config: the frontend's runtime config plus rootfs, history and platform. Takes
/// the plan's config and history over: their strings move into the image rather than copy.
fn image_config(
    mut config: ImageConfig,
    author: Option<String>,
    history: Vec<HistoryEntry>,
    chain: &[crate::Layer],
    platform: &Platform,
    created: &str,
) -> (ImageConfiguration, DockerConfigExtras) {
    let extras = DockerConfigExtras {
        healthcheck: config.healthcheck.take().map(|h| Healthcheck {
            test: h.test,
            interval: nonzero(h.interval),
            timeout: nonzero(h.timeout),
            start_period: nonzero(h.start_period),
            start_interval: nonzero(h.start_interval),
            retries: nonzero(h.retries),
        }),
        on_build: std::mem::take(&mut config.on_build),
        shell: std::mem::take(&mut config.shell),
        inline_cache: None,
    };
    let mut image = ImageConfiguration::default();
    image.set_created(Some(created.to_owned()));
    image.set_author(author);
    image.set_architecture(platform.architecture.as_str().into());
    image.set_os(platform.os.as_str().into());
    image.set_variant(platform.variant.clone());
    image.set_config(Some(config.into_oci()));
    image
        .rootfs_mut()
        .set_diff_ids(chain.iter().map(|l| l.diff_id.to_string()).collect());
    image.set_history(Some(
        history.into_iter().map(|h| h.into_oci(created)).collect(),
    ));
    (image, extras)
}

fn nonzero(n: u64) -> Option<i64> {
    (n != 0).then(|| i64::try_from(n).unwrap_or(i64::MAX))
}

/// Resolves base images through the registry for the frontend. Each resolution is shown as a
/// step of its own, as BuildKit shows `[internal] load metadata for REF`, with the registry's
/// events as its output: a registry that does not answer leaves that step running, saying what
/// it waits for.
struct RegistryResolver {
    client: Arc<Client>,
    handle: tokio::runtime::Handle,
    state: Arc<State>,
    progress: Arc<dyn ProgressSink>,
    /// Internal steps shown so far (shared with the build's other internal steps).
    steps: Arc<std::sync::atomic::AtomicUsize>,
}

/// The build's own steps that no vertex stands for (`[internal] …`): cache import and
/// export, and their warnings.
#[derive(Clone)]
struct InternalSteps {
    progress: Arc<dyn ProgressSink>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl InternalSteps {
    fn start(&self, name: &str) -> usize {
        use hoist_solver::progress::{Event, internal_id};
        let id = internal_id(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.progress.event(Event::Started {
            id,
            name: name.to_owned(),
            digest: String::new(),
            line: None,
            reason: None,
        });
        id
    }

    fn log(&self, id: usize, line: &str) {
        self.progress.event(hoist_solver::progress::Event::Log {
            id,
            stream: hoist_solver::progress::Stream::Stdout,
            data: line.as_bytes().to_vec(),
        });
    }

    fn finish(&self, id: usize, wall: std::time::Duration, error: Option<String>) {
        use hoist_solver::progress::Event;
        self.progress.event(match error {
            None => Event::Finished {
                id,
                wall,
                usage: None,
            },
            Some(error) => Event::Failed {
                id,
                error,
                wall,
                usage: None,
            },
        });
    }
}

impl Engine {
    /// The steps a cache export of `mode` holds, each with its key and layer chain: the steps
    /// of the final image (`min`: the root and what it is built on, first input by first input)
    /// or every step the build reached (`max`). A step this build did not need (a later step
    /// hit) is taken from the local or imported record of its key.
    async fn cache_records(
        &self,
        mode: crate::exchange::ExportMode,
        graph: &hoist_solver::graph::Graph,
        root: hoist_solver::graph::VertexId,
        solution: &hoist_solver::scheduler::Solution<Output>,
        imported: Option<&crate::exchange::ImportedCache>,
    ) -> Vec<(hoist_solver::scheduler::CacheKey, Arc<Vec<crate::Layer>>)> {
        use hoist_solver::scheduler::Cache as _;
        let mut min = std::collections::HashSet::new();
        let mut at = Some(root);
        while let Some(id) = at {
            min.insert(id);
            at = graph.vertex(id).inputs.first().copied();
        }
        let local = IndexCache {
            state: Arc::clone(&self.state),
        };
        let mut records = Vec::new();
        for v in &solution.vertices {
            if mode == crate::exchange::ExportMode::Min && !min.contains(&v.id) {
                continue;
            }
            let chain = match &v.result {
                Some(Output::Chain(chain)) => Some(Arc::clone(chain)),
                Some(Output::Context(..)) => None,
                None => match local.lookup(&v.key, graph.vertex(v.id)).await {
                    Ok(Some(Output::Chain(chain))) => Some(chain),
                    _ => match imported {
                        Some(i) => i.chain_of(&v.key).await.map(Arc::new),
                        None => None,
                    },
                },
            };
            if let Some(chain) = chain {
                records.push((v.key, chain));
            }
        }
        records
    }

    /// Writes each `--cache-to`: the steps of the final image (`mode=min`) or of every stage
    /// (`mode=max`), each with the layer chain that rebuilds it. A step this build did not need
    /// (a later step hit) is exported from the local or imported record of its key.
    async fn export_caches(
        &self,
        request: &BuildRequest,
        graph: &hoist_solver::graph::Graph,
        root: hoist_solver::graph::VertexId,
        solution: &hoist_solver::scheduler::Solution<Output>,
        imported: Option<&crate::exchange::ImportedCache>,
        internal: &InternalSteps,
    ) -> Result<(), BuildError> {
        // Blobs the image push just sent can be mounted from its repositories.
        let pushed: Vec<Reference> = if request.push {
            request.tags.iter().filter_map(|t| t.parse().ok()).collect()
        } else {
            Vec::new()
        };
        // The unseeded cache mounts of the steps this build reached, for `mounts=true`.
        let mut mounts: Vec<(String, String)> = Vec::new();
        for v in &solution.vertices {
            if let hoist_solver::op::Op::Exec(exec) = &graph.vertex(v.id).op {
                for m in &exec.mounts {
                    if let hoist_solver::op::Mount::Cache {
                        id,
                        seed: None,
                        source,
                        ..
                    } = m
                        && !mounts.iter().any(|(i, _)| i == id)
                    {
                        mounts.push((id.clone(), source.clone()));
                    }
                }
            }
        }
        for export in &request.cache_to {
            if export.location == crate::exchange::CacheLocation::Inline {
                continue;
            }
            let started = std::time::Instant::now();
            let id = internal.start(&format!(
                "[internal] exporting cache to {}",
                export.location
            ));
            let records = self
                .cache_records(export.mode, graph, root, solution, imported)
                .await;
            let exported = crate::exchange::export(
                &self.state,
                request.registry.as_ref().unwrap_or(&self.registry),
                export,
                crate::exchange::ExportContents {
                    records,
                    compression: request.compression,
                    pushed: &pushed,
                    mounts: mounts.clone(),
                    imported,
                },
            )
            .await;
            match exported {
                Ok(report) => {
                    internal.log(
                        id,
                        &format!(
                            "{} steps, {} blobs; {} blobs sent ({} bytes), the rest were there or mounted\n",
                            report.records, report.blobs, report.uploaded, report.bytes_sent
                        ),
                    );
                    if export.mounts {
                        internal.log(id, &format!("{} cache mounts\n", report.mounts));
                    }
                    for (mount, bytes) in &report.skipped_mounts {
                        internal.log(
                            id,
                            &format!(
                                "warning: cache mount {mount:?} left out: {bytes} bytes, more \
                                 than mounts-max={}\n",
                                export.mounts_max
                            ),
                        );
                    }
                    if let Some(m) = report.manifest {
                        internal.log(id, &format!("cache manifest {m}\n"));
                    }
                    internal.finish(id, started.elapsed(), None);
                }
                Err(e) if export.ignore_error => {
                    let why = crate::exchange::error_text(&e);
                    internal.log(id, &format!("warning: {why} (ignore-error=true)\n"));
                    internal.finish(id, started.elapsed(), None);
                }
                Err(e) => {
                    internal.finish(id, started.elapsed(), Some(crate::exchange::error_text(&e)));
                    return Err(BuildError::Layers(e));
                }
            }
        }
        Ok(())
    }
}

impl ImageResolver for RegistryResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, BoxError> {
        use hoist_solver::progress::{Event, Stream, internal_id};
        let parsed: Reference = reference.parse().map_err(|e| format!("{e}"))?;
        let id = internal_id(
            self.steps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        self.progress.event(Event::Started {
            id,
            name: format!("[internal] load metadata for {parsed}"),
            digest: String::new(),
            line: None,
            reason: None,
        });
        let started = std::time::Instant::now();
        let sink = Arc::clone(&self.progress);
        let observer: hoist_registry::Observer = Arc::new(move |event| {
            sink.event(Event::Log {
                id,
                stream: Stream::Stdout,
                data: format!("{event}\n").into_bytes(),
            });
        });
        let resolved = self.handle.block_on(hoist_registry::observe(
            observer,
            self.resolve_config(&parsed, platform),
        ));
        let wall = started.elapsed();
        self.progress.event(match &resolved {
            Ok(_) => Event::Finished {
                id,
                wall,
                usage: None,
            },
            Err(error) => Event::Failed {
                id,
                error: hoist_solver::progress::error_text(error.as_ref()),
                wall,
                usage: None,
            },
        });
        resolved
    }
}

impl RegistryResolver {
    /// The image's manifest, then its config, read into the state's store.
    async fn resolve_config(
        &self,
        parsed: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, BoxError> {
        let resolved = self
            .client
            .resolve(parsed, &crate::source::registry_platform(platform))
            .await?;
        let config_desc = resolved.image.config().clone();
        let store = self.state.registry_store();
        self.client
            .fetch_blob(&resolved.reference, &config_desc, store)
            .await?;
        let raw = self.state.blobs.read(config_desc.digest())?;
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            config: Option<ImageConfig>,
            #[serde(default)]
            history: Vec<HistoryEntry>,
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            variant: Option<String>,
        }
        let parsed_config: Raw =
            serde_json::from_slice(&raw).map_err(|source| ResolveError::Config {
                digest: config_desc.digest().to_string(),
                source,
            })?;
        let platform = (!parsed_config.os.is_empty() && !parsed_config.architecture.is_empty())
            .then(|| Platform {
                os: parsed_config.os,
                architecture: parsed_config.architecture,
                variant: parsed_config.variant.filter(|v| !v.is_empty()),
            });
        Ok(ResolvedImage {
            pinned: resolved.reference.to_string(),
            config: parsed_config.config.unwrap_or_default(),
            history: parsed_config.history,
            platform,
        })
    }
}

/// A base image's config that is not one.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("the image config {digest} is not valid JSON for an image config")]
    Config {
        digest: String,
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_times_are_rfc3339_and_the_epoch_by_default() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        let mut args = std::collections::BTreeMap::new();
        assert_eq!(created_time(&args).unwrap(), "1970-01-01T00:00:00Z");
        args.insert("SOURCE_DATE_EPOCH".to_owned(), "951782400".to_owned());
        assert_eq!(created_time(&args).unwrap(), "2000-02-29T00:00:00Z");
        args.insert("SOURCE_DATE_EPOCH".to_owned(), "yesterday".to_owned());
        assert!(
            created_time(&args)
                .unwrap_err()
                .to_string()
                .contains("SOURCE_DATE_EPOCH")
        );
    }
}
