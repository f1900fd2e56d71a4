//! The worker: does the work of each vertex on this machine, and the cache that remembers it.
//!
//! - `Source::Scratch` is the empty chain; `Source::Image` pulls the pinned image into the
//!   content store and unpacks each layer once into its snapshot; `Source::Local` selects the
//!   context files a COPY names (its content key is their content hash).
//! - `File` ops (COPY, ADD, WORKDIR, heredoc files) write into a fresh directory that becomes
//!   the new layer; `Exec` (RUN) runs in the sandbox over the input's snapshots and keeps the
//!   overlay upperdir as the new layer.
//! - A new layer is tarred and compressed once into the content store (diffID, digest and size
//!   in one pass); its directory is then renamed into place as the snapshot of that diffID.
//!
//! Every result is a [`Chain`]: the layers, bottom first, that rebuild the vertex's filesystem.
//! [`IndexCache`] records chains in the redb index under their cache keys; a record whose
//! snapshots are gone reads as a miss.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use hoist_cache::context::{self, ContextError, Origin, Selection, StatCache};
use hoist_cache::copy::{self, CopyOptions};
use hoist_cache::index::{BlobRecord, CacheIndex, CacheRecord, LayerRecord};
use hoist_cache::oci_spec::image::{Descriptor, Digest, MediaType};
use hoist_cache::scratch::{self, Reclaimed, ScratchArea};
use hoist_cache::{BlobStore, CompressionOptions, DiffOptions, SnapshotStore};
use hoist_executor::spec::{self, Limits, SpecOptions};
use hoist_executor::{Executor, Rootfs, RunRequest};
use hoist_parser::ignore::Matcher;
use hoist_registry::{Client, Platform, Reference};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use crate::graph::{Vertex, VertexDigest};
use crate::op::{CopyFrom, ExecOp, FileAction, FileOp, NetworkMode, Op, SourceOp};
use crate::progress::{ResourceUsage, Stream};
use crate::scheduler::{BoxError, BoxFuture, Cache, CacheKey, VertexContext, Worker};

/// How many bytes of a failed RUN's output its error shows.
const OUTPUT_TAIL: usize = 4096;

/// `PATH` for a process whose image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A process to run in the sandbox, for [`State::sandbox_request`].
#[derive(Debug)]
pub struct Sandboxed<'a> {
    pub args: Vec<String>,
    /// `K=V`, in order; Docker's default `PATH` is added when none is set.
    pub env: Vec<String>,
    pub cwd: &'a str,
    /// As written in USER (`name[:group]` or `uid[:gid]`); empty means root.
    pub user: &'a str,
    pub hostname: &'a str,
    pub network: spec::NetworkMode,
    /// `RUN --security=insecure`.
    pub insecure: bool,
    /// Snapshot directories, topmost first.
    pub lowerdirs: Vec<PathBuf>,
    /// cgroup limits (`hoist build --memory`, `--cpu-quota`, …).
    pub limits: Limits,
}

/// One layer of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    /// The compressed blob in the content store: known for a pulled layer; made for a built
    /// one only when an image is exported or pushed ([`State::layer_blobs`]).
    pub blob: Option<Descriptor>,
}

/// What a vertex produced.
#[derive(Clone, Debug)]
pub enum Output {
    /// A filesystem: its layers, bottom first.
    Chain(Arc<Vec<Layer>>),
    /// Files of the build context, for the COPY that selected them.
    Context(Arc<Selection>),
}

impl Output {
    fn chain(&self) -> Result<&[Layer], WorkerError> {
        match self {
            Self::Chain(layers) => Ok(layers),
            Self::Context(_) => Err(WorkerError::Internal(
                "a filesystem input is the build context",
            )),
        }
    }
}

/// A vertex's work failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("process \"{command}\" did not complete successfully: {status}\n{tail}")]
    Exec {
        command: String,
        status: String,
        tail: String,
    },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    #[error("invalid --exclude pattern: {0}")]
    Exclude(#[from] hoist_parser::ignore::IgnoreError),
    #[error("cannot resolve user {user:?} in the image: {source}")]
    User {
        user: String,
        #[source]
        source: hoist_executor::user::ResolveUserError,
    },
    #[error("pulling {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: Box<hoist_registry::PullError>,
    },
    #[error("invalid image reference {reference:?}: {source}")]
    Reference {
        reference: String,
        #[source]
        source: hoist_registry::ParseReferenceError,
    },
    #[error("unpacking {layer}: {source}")]
    Snapshot {
        layer: Digest,
        #[source]
        source: hoist_cache::SnapshotError,
    },
    #[error("making a layer from {}: {source}", path.display())]
    Diff {
        path: PathBuf,
        #[source]
        source: hoist_cache::DiffError,
    },
    #[error("the snapshot of layer {layer} is gone from the state root; rebuild with --no-cache")]
    SnapshotGone { layer: Digest },
    #[error(
        "the snapshot {} of layer {layer} was changed on disk (it now hashes to {now}); rebuild with --no-cache",
        path.display()
    )]
    SnapshotChanged {
        path: PathBuf,
        layer: Digest,
        now: Digest,
    },
    #[error(transparent)]
    Index(#[from] hoist_cache::index::IndexError),
    #[error("ADD: {0}")]
    Archive(#[from] hoist_cache::archive::ArchiveError),
    #[error("the sandbox failed: {0}")]
    Run(#[from] hoist_executor::RunError),
    #[error("building the sandbox spec: {0}")]
    Spec(#[from] hoist_executor::spec::BuildSpecError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount a read-only view at {}", target.display())]
    View {
        target: PathBuf,
        #[source]
        source: hoist_executor::overlay::OverlayError,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("cancelled")]
    Cancelled,
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> WorkerError + 'p {
    move |source| WorkerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The state root's layout, shared by every build of a process.
#[derive(Debug)]
pub struct State {
    pub root: PathBuf,
    pub blobs: BlobStore,
    pub snapshots: SnapshotStore,
    pub index: CacheIndex,
    /// This process's scratch area: unfinished step trees, blobs and snapshots.
    scratch: ScratchArea,
    /// What opening the state reclaimed from processes that died mid-work.
    pub reclaimed: Reclaimed,
}

impl State {
    /// Opens the state under `root` (creating what is missing), after reclaiming the
    /// scratch areas of hoist processes that died without cleaning up.
    ///
    /// # Errors
    /// The directories or the index cannot be created, or debris cannot be removed.
    pub fn open(root: &Path) -> Result<Self, BoxError> {
        let tmp = root.join("tmp");
        // New snapshots and scratch trees spread over the filesystem (see spread_directories).
        hoist_cache::spread_directories(&tmp)?;
        let reclaimed = scratch::reclaim_stale(&tmp)?;
        let scratch = ScratchArea::create(&tmp)?;
        hoist_cache::spread_directories(scratch.dir())?;
        let snapshots = SnapshotStore::new(root).with_scratch(scratch.dir());
        hoist_cache::spread_directories(&snapshots.dir())?;
        Ok(Self {
            root: root.to_path_buf(),
            blobs: BlobStore::new(root).with_scratch(scratch.dir()),
            snapshots,
            index: CacheIndex::open(&root.join("cache.redb"))?,
            scratch,
            reclaimed,
        })
    }

    /// A new private scratch directory on the state's filesystem (so it can be renamed into
    /// a snapshot), removed when the guard drops unless it was kept.
    fn scratch(&self) -> Result<tempfile::TempDir, WorkerError> {
        let base = self.scratch.dir();
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(base)
            .map_err(io_err("create a scratch dir in", base))
    }

    /// The content store as the registry client sees it, for pulls and pushes.
    #[must_use]
    pub fn registry_store(&self) -> Arc<dyn hoist_registry::BlobStore> {
        Arc::new(StoreAdapter(self.blobs.clone()))
    }

    /// The snapshot directories of `chain`, topmost first, as an overlay stacks them. A chain
    /// deeper than this kernel's overlayfs takes (see [`hoist_executor::overlay::fits`]) has
    /// its lowest layers merged into one snapshot, made once and kept under
    /// `snapshots/merged/` by their diffIDs, instead of failing to mount.
    fn snapshot_dirs(&self, chain: &[Layer]) -> Result<Vec<PathBuf>, WorkerError> {
        let dirs: Vec<PathBuf> = chain
            .iter()
            .rev()
            .map(|l| {
                self.snapshots
                    .get(&l.diff_id)
                    .ok_or(WorkerError::Internal("a snapshot of the chain is missing"))
            })
            .collect::<Result<_, _>>()?;
        if fits_in_overlay(&dirs) {
            return Ok(dirs);
        }
        // Keep as many of the top layers as fit beside the merged one.
        let mut keep = dirs.len() - 1;
        loop {
            let merged = self.merged_path(&chain[..chain.len() - keep]);
            let mut candidate = dirs[..keep].to_vec();
            candidate.push(merged);
            if keep == 0 || fits_in_overlay(&candidate) {
                self.merge(&chain[..chain.len() - keep])?;
                return Ok(candidate);
            }
            keep -= 1;
        }
    }

    /// Where the merged snapshot of `layers` (bottom first) lives.
    fn merged_path(&self, layers: &[Layer]) -> PathBuf {
        let ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_ref()).collect();
        let key = hoist_cache::sha256_of(ids.join("\n").as_bytes());
        self.root
            .join("snapshots/merged")
            .join(key.to_string().trim_start_matches("sha256:"))
    }

    /// Makes the merged snapshot of `layers` unless it exists: their filesystem, flattened
    /// (no whiteouts), which serves as the lowest lowerdir in their place.
    fn merge(&self, layers: &[Layer]) -> Result<(), WorkerError> {
        let target = self.merged_path(layers);
        if target.is_dir() {
            return Ok(());
        }
        let scratch = self.scratch()?;
        let fs = scratch.path().join("fs");
        self.export_rootfs(layers, &fs)?;
        if let Some(parent) = target.parent() {
            fs_err::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        match fs_err::rename(&fs, &target) {
            Ok(()) => Ok(()),
            // Another build merged the same layers first.
            Err(_) if target.is_dir() => Ok(()),
            Err(e) => Err(io_err("rename into place", &target)(e)),
        }
    }

    /// Prepares a sandboxed process over a snapshot chain: the user resolved in the image, the
    /// Spec with Docker's defaults, and a scratch dir holding a fresh upperdir and workdir. The
    /// scratch dir (returned) removes itself when dropped, unless its upperdir was renamed away.
    ///
    /// # Errors
    /// An unknown user, or a spec or scratch dir that cannot be made.
    pub fn sandbox_request(
        &self,
        executor: &Executor,
        run: Sandboxed<'_>,
    ) -> Result<(RunRequest, tempfile::TempDir), WorkerError> {
        let user_spec = if run.user.is_empty() {
            "root"
        } else {
            run.user
        };
        let user =
            hoist_executor::user::resolve_user(&run.lowerdirs, user_spec).map_err(|source| {
                WorkerError::User {
                    user: user_spec.to_owned(),
                    source,
                }
            })?;
        let mut env = run.env;
        if !env.iter().any(|kv| kv.starts_with("PATH=")) {
            env.push(DEFAULT_PATH.to_owned());
        }
        let spec = spec::build_spec(&SpecOptions {
            args: run.args,
            env,
            cwd: PathBuf::from(run.cwd),
            user,
            hostname: run.hostname.to_owned(),
            network: run.network,
            etc_files: executor.etc_files(run.hostname)?,
            limits: run.limits,
            insecure: run.insecure,
        })?;
        let scratch = self.scratch()?;
        let upperdir = scratch.path().join("upper");
        let workdir = scratch.path().join("work");
        for d in [&upperdir, &workdir] {
            fs_err::create_dir(d).map_err(io_err("create", d))?;
        }
        let request = RunRequest {
            spec,
            rootfs: Rootfs {
                lowerdirs: run.lowerdirs,
                upperdir,
                workdir,
            },
            timeout: None,
        };
        Ok((request, scratch))
    }

    /// Turns a directory of changes into a layer: its diffID (the sha256 of its tar; nothing
    /// is compressed or stored yet), then the directory is renamed into place as the snapshot
    /// of that diffID.
    fn commit_layer(
        &self,
        dir: &Path,
        source_date_epoch: Option<i64>,
    ) -> Result<Layer, WorkerError> {
        let diff_id = hoist_cache::upperdir_diff_id(dir, source_date_epoch).map_err(|source| {
            WorkerError::Diff {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        let target = self
            .snapshots
            .path(&diff_id)
            .map_err(|source| WorkerError::Snapshot {
                layer: diff_id.clone(),
                source,
            })?;
        if !target.is_dir() {
            if let Some(parent) = target.parent() {
                fs_err::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            match fs_err::rename(dir, &target) {
                Ok(()) => {}
                // Another build made the same layer first: theirs is as good as ours.
                Err(_) if target.is_dir() => {}
                Err(e) => return Err(io_err("rename into place", &target)(e)),
            }
        }
        Ok(Layer {
            diff_id,
            blob: None,
        })
    }

    /// Writes the filesystem of `chain` into `dest` (`-o type=local`) without compressing: a
    /// built layer's tar is streamed from its snapshot into the apply, a pulled layer is
    /// applied from its blob, and each is checked against its diffID on the way.
    ///
    /// # Errors
    /// A snapshot is gone, or reading or writing fails.
    pub fn export_rootfs(&self, chain: &[Layer], dest: &Path) -> Result<(), WorkerError> {
        fs_err::create_dir_all(dest).map_err(io_err("create", dest))?;
        let apply = |reader: &mut dyn io::Read, layer: &Layer| {
            hoist_cache::apply_layer(
                reader,
                dest,
                &hoist_cache::ApplyOptions {
                    whiteouts: hoist_cache::WhiteoutMode::Remove,
                    expected_diff_id: Some(layer.diff_id.clone()),
                    lower_dirs: Vec::new(),
                },
            )
            .map(|_| ())
            .map_err(|e| WorkerError::Io {
                op: "write the filesystem into",
                path: dest.to_path_buf(),
                source: io::Error::other(e),
            })
        };
        for layer in chain {
            if let Some(blob) = &layer.blob {
                // A pulled layer: its own blob is the layer (a tar of its snapshot made here
                // would not be byte-identical to the one its diffID names).
                let mut reader = self
                    .blobs
                    .open(blob.digest())
                    .map_err(|e| WorkerError::Io {
                        op: "open the layer blob of",
                        path: dest.to_path_buf(),
                        source: io::Error::other(e),
                    })?;
                apply(&mut reader, layer)?;
                continue;
            }
            let dir =
                self.snapshots
                    .get(&layer.diff_id)
                    .ok_or_else(|| WorkerError::SnapshotGone {
                        layer: layer.diff_id.clone(),
                    })?;
            let (mut reader, writer) = io::pipe().map_err(io_err("make a pipe for", &dir))?;
            let walked = dir.clone();
            let tar = std::thread::spawn(move || {
                let options = DiffOptions {
                    compression: CompressionOptions::new(hoist_cache::Compression::None),
                    source_date_epoch: None,
                };
                hoist_cache::diff_upperdir(&walked, writer, &options).map(|_| ())
            });
            let applied = apply(&mut reader, layer);
            // Closing the read end unblocks the tar side if the apply stopped early.
            drop(reader);
            // The tar side's error explains an apply that saw a cut stream, so it goes first.
            tar.join()
                .map_err(|_| WorkerError::Internal("the layer tar thread panicked"))?
                .map_err(|source| WorkerError::Diff {
                    path: dir.clone(),
                    source,
                })?;
            applied?;
        }
        Ok(())
    }

    /// The compressed blob of every layer of `chain`, bottom first, for a manifest. A built
    /// layer's blob is made from its snapshot the first time an image needs it, and remembered
    /// in the index, so exporting or pushing it again costs nothing.
    ///
    /// # Errors
    /// A snapshot is gone or no longer hashes to its diffID, or storing the blob fails.
    pub fn layer_blobs(
        &self,
        chain: &[Layer],
        options: &DiffOptions,
    ) -> Result<Vec<Descriptor>, WorkerError> {
        let media_type = match options.compression.compression {
            hoist_cache::Compression::Gzip => MediaType::ImageLayerGzip,
            hoist_cache::Compression::Zstd => MediaType::ImageLayerZstd,
            hoist_cache::Compression::None => MediaType::ImageLayer,
        };
        chain
            .iter()
            .map(|layer| {
                if let Some(blob) = &layer.blob {
                    return Ok(blob.clone());
                }
                let diff_id = layer.diff_id.to_string();
                if let Some(known) = self.index.get_blob(&diff_id, media_type.as_ref())?
                    && let Ok(digest) = known.digest.parse::<Digest>()
                    && self.blobs.has(&digest)
                {
                    return Ok(Descriptor::new(media_type.clone(), known.size, digest));
                }
                let dir = self.snapshots.get(&layer.diff_id).ok_or_else(|| {
                    WorkerError::SnapshotGone {
                        layer: layer.diff_id.clone(),
                    }
                })?;
                let digests = hoist_cache::store_upperdir_layer(&self.blobs, &dir, options)
                    .map_err(|source| WorkerError::Diff {
                        path: dir.clone(),
                        source,
                    })?;
                if digests.diff_id != layer.diff_id {
                    return Err(WorkerError::SnapshotChanged {
                        path: dir,
                        layer: layer.diff_id.clone(),
                        now: digests.diff_id,
                    });
                }
                self.index.put_blob(
                    &diff_id,
                    &BlobRecord {
                        digest: digests.digest.to_string(),
                        size: digests.size,
                        media_type: media_type.to_string(),
                    },
                )?;
                Ok(Descriptor::new(
                    media_type.clone(),
                    digests.size,
                    digests.digest,
                ))
            })
            .collect()
    }
}

/// What keying a context selection took, for the progress log of "load build context".
#[derive(Clone, Copy, Debug)]
pub struct ContextSummary {
    pub files: u64,
    pub bytes: u64,
    /// Files read and hashed (new or changed since the last build); the others were known
    /// by their stat.
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    pub took: std::time::Duration,
}

impl std::fmt::Display for ContextSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[allow(clippy::cast_precision_loss)] // a human-readable size
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{} files, {:.1} MiB; {} read and hashed ({:.1} MiB), the rest unchanged since they were last hashed; {:.3}s",
            self.files,
            mib(self.bytes),
            self.hashed_files,
            mib(self.hashed_bytes),
            self.took.as_secs_f64()
        )
    }
}

/// Does the work of one build's vertices.
pub struct BuildWorker {
    pub state: Arc<State>,
    pub executor: Arc<Executor>,
    pub registry: Arc<Client>,
    pub platform: Platform,
    /// The build context directory.
    pub context_dir: PathBuf,
    /// Proxy build-args, given to every RUN but part of no key.
    pub proxy_env: Vec<(String, String)>,
    pub diff_options: DiffOptions,
    /// cgroup limits of every RUN of the build.
    pub limits: Limits,
    pub stat_cache: Arc<Mutex<StatCache>>,
    /// Context selections made while computing content keys, by vertex digest, so that the
    /// source's run uses the very files that were hashed instead of walking the context again.
    pub selections: Mutex<HashMap<VertexDigest, (Arc<Selection>, ContextSummary)>>,
}

impl std::fmt::Debug for BuildWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildWorker")
            .field("context_dir", &self.context_dir)
            .finish_non_exhaustive()
    }
}

impl BuildWorker {
    /// Default layer options: gzip at the default level.
    #[must_use]
    pub fn default_diff_options() -> DiffOptions {
        DiffOptions {
            compression: CompressionOptions::default(),
            source_date_epoch: None,
        }
    }

    fn select_context(
        &self,
        include: &[String],
        exclude: &[String],
    ) -> Result<Selection, WorkerError> {
        let sources: Vec<String> = if include.is_empty() {
            vec![".".to_owned()]
        } else {
            include.to_vec()
        };
        let matcher = Matcher::new(exclude.iter().map(String::as_str))?;
        Ok(context::select(&self.context_dir, &sources, &matcher)?)
    }

    async fn pull(
        &self,
        reference: &str,
        platform: &str,
        ctx: &VertexContext,
    ) -> Result<Vec<Layer>, WorkerError> {
        let parsed: Reference = reference.parse().map_err(|source| WorkerError::Reference {
            reference: reference.to_owned(),
            source,
        })?;
        let platform: Platform = platform.parse().unwrap_or_else(|_| self.platform.clone());
        let store = self.state.registry_store();
        // Each registry event is a line of this step's output, so a pull that waits shows
        // which manifest or blob it waits for. The observer must be 'static and `ctx` is
        // borrowed, hence the channel.
        let (lines, mut pending) = tokio::sync::mpsc::unbounded_channel::<String>();
        let observer: hoist_registry::Observer = Arc::new(move |event| {
            let _ = lines.send(format!("{event}\n"));
        });
        let pull = hoist_registry::observe(observer, self.registry.pull(&parsed, &platform, store));
        tokio::pin!(pull);
        let pulled = loop {
            tokio::select! {
                pulled = &mut pull => break pulled,
                Some(line) = pending.recv() => ctx.log(Stream::Stdout, line.as_bytes()),
            }
        };
        while let Ok(line) = pending.try_recv() {
            ctx.log(Stream::Stdout, line.as_bytes());
        }
        let resolved = pulled.map_err(|source| WorkerError::Pull {
            reference: reference.to_owned(),
            source: Box::new(source),
        })?;
        let state = Arc::clone(&self.state);
        let image = resolved.image.clone();
        tokio::task::spawn_blocking(move || {
            let config_bytes = state
                .blobs
                .read(image.config().digest())
                .map_err(|_| WorkerError::Internal("the pulled config blob is missing"))?;
            let diff_ids = diff_ids_of(&config_bytes);
            if diff_ids.len() != image.layers().len() {
                return Err(WorkerError::Internal(
                    "the image's config and manifest disagree on its layers",
                ));
            }
            let mut chain = Vec::new();
            for (layer, diff_id) in image.layers().iter().zip(diff_ids) {
                state
                    .snapshots
                    .unpack(&state.blobs, layer, &diff_id)
                    .map_err(|source| WorkerError::Snapshot {
                        layer: layer.digest().clone(),
                        source,
                    })?;
                chain.push(Layer {
                    diff_id,
                    blob: Some(layer.clone()),
                });
            }
            Ok(chain)
        })
        .await
        .map_err(|_| WorkerError::Internal("the unpack task panicked"))?
    }

    fn file_op(&self, op: &FileOp, inputs: &[Output]) -> Result<Vec<Layer>, WorkerError> {
        let dest_chain = inputs
            .first()
            .ok_or(WorkerError::Internal("a file op without input"))?
            .chain()?;
        let dest_layers = self.state.snapshot_dirs(dest_chain)?;
        let dest_view = View::new(&self.state, &dest_layers)?;
        let out = self.state.scratch()?;
        let out_dir = out.path().join("layer");
        fs_err::create_dir(&out_dir).map_err(io_err("create", &out_dir))?;
        for action in &op.actions {
            match action {
                FileAction::Copy {
                    src_input,
                    src,
                    dest,
                    chown,
                    chmod,
                    unpack_archives,
                    exclude,
                    from,
                    ..
                } => {
                    let owner = self.owner(&dest_layers, chown.as_deref())?;
                    let opts = CopyOptions {
                        chown: owner,
                        chmod: *chmod,
                    };
                    let input = inputs
                        .get(*src_input)
                        .ok_or(WorkerError::Internal("copy source missing"))?;
                    match input {
                        Output::Context(selection) => {
                            // The context source already applied .dockerignore and --exclude.
                            if *unpack_archives {
                                self.add_archives(
                                    selection,
                                    dest,
                                    dest_view.path(),
                                    &out_dir,
                                    opts,
                                )?;
                            } else {
                                copy::copy_selection(
                                    &self.context_dir,
                                    selection,
                                    dest,
                                    dest_view.path(),
                                    &out_dir,
                                    opts,
                                )?;
                            }
                        }
                        Output::Chain(chain) => {
                            let src_layers = self.state.snapshot_dirs(chain)?;
                            let src_view = View::new(&self.state, &src_layers)?;
                            let matcher = Matcher::new(exclude.iter().map(String::as_str))?;
                            // Messages name the stage or image, not the view's internal path.
                            let origin = match from {
                                Some(CopyFrom::Image(reference)) => {
                                    Origin::Image(reference.clone())
                                }
                                Some(CopyFrom::Stage(name)) => Origin::Stage(name.clone()),
                                None => {
                                    return Err(WorkerError::Internal(
                                        "a copy from a filesystem names no stage or image",
                                    ));
                                }
                            };
                            let selection =
                                context::select_from(src_view.path(), &origin, src, &matcher)?;
                            copy::copy_selection(
                                src_view.path(),
                                &selection,
                                dest,
                                dest_view.path(),
                                &out_dir,
                                opts,
                            )?;
                        }
                    }
                }
                FileAction::Mkdir {
                    path, mode, chown, ..
                } => {
                    let owner = self.owner(&dest_layers, chown.as_deref())?;
                    copy::mkdir(dest_view.path(), &out_dir, path, *mode, owner)?;
                }
                FileAction::Mkfile {
                    path,
                    mode,
                    data,
                    chown,
                } => {
                    let owner = self.owner(&dest_layers, chown.as_deref())?;
                    copy::mkfile(
                        dest_view.path(),
                        &out_dir,
                        path,
                        data.as_bytes(),
                        *mode,
                        owner,
                    )?;
                }
            }
        }
        drop(dest_view);
        let layer = self
            .state
            .commit_layer(&out_dir, self.diff_options.source_date_epoch)?;
        let mut chain = dest_chain.to_vec();
        chain.push(layer);
        Ok(chain)
    }

    /// ADD of local files: a tar archive (plain, gzip, bzip2, xz or zstd, told by content) is
    /// extracted into the destination directory; any other file is copied as COPY would.
    fn add_archives(
        &self,
        selection: &Selection,
        dest: &str,
        dest_view: &Path,
        out_dir: &Path,
        opts: CopyOptions,
    ) -> Result<(), WorkerError> {
        let mut plain = Selection::default();
        for entry in &selection.entries {
            let path = self.context_dir.join(&entry.source);
            let archive = if entry.kind == context::EntryKind::File {
                hoist_cache::archive::detect_archive(&path)?
            } else {
                None
            };
            if archive.is_some() {
                // The destination follows the image's symlinks (inside the root), as COPY's.
                let dir = copy::resolve_dest(dest_view, dest)?;
                copy::mkdir(dest_view, out_dir, &dir, 0o755, opts.chown)?;
                let target = out_dir.join(&dir);
                hoist_cache::archive::extract_archive(
                    &path,
                    &target,
                    &hoist_cache::archive::ExtractOptions { chown: opts.chown },
                )?;
            } else {
                plain.entries.push(entry.clone());
            }
        }
        if !plain.entries.is_empty() {
            copy::copy_selection(&self.context_dir, &plain, dest, dest_view, out_dir, opts)?;
        }
        Ok(())
    }

    /// Resolves `--chown` in the destination image; `None` is root.
    fn owner(
        &self,
        layers: &[PathBuf],
        chown: Option<&str>,
    ) -> Result<Option<(u32, u32)>, WorkerError> {
        let Some(spec) = chown else {
            return Ok(None);
        };
        // Docker: a user without a group uses the same number for the group.
        let user_only = !spec.contains(':');
        let user = hoist_executor::user::resolve_user(layers, spec).map_err(|source| {
            WorkerError::User {
                user: spec.to_owned(),
                source,
            }
        })?;
        let gid = if user_only { user.uid() } else { user.gid() };
        Ok(Some((user.uid(), gid)))
    }

    async fn exec(
        &self,
        exec: &ExecOp,
        inputs: &[Output],
        ctx: &VertexContext,
    ) -> Result<Vec<Layer>, WorkerError> {
        let chain = inputs
            .first()
            .ok_or(WorkerError::Internal("a RUN without input"))?
            .chain()?
            .to_vec();
        let mut env: Vec<String> = exec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(self.proxy_env.iter().map(|(k, v)| format!("{k}={v}")));
        let (request, scratch) = self.state.sandbox_request(
            &self.executor,
            Sandboxed {
                args: exec.args.clone(),
                env,
                cwd: &exec.cwd,
                user: &exec.user,
                hostname: "hoist",
                network: match exec.network {
                    NetworkMode::Host => spec::NetworkMode::Host,
                    // No uplink is set up for sandboxes yet: the default is loopback only.
                    NetworkMode::Default | NetworkMode::None => spec::NetworkMode::None,
                },
                insecure: exec.privileged,
                lowerdirs: self.state.snapshot_dirs(&chain)?,
                limits: self.limits,
            },
        )?;
        let mut stdout = LogSink::new(ctx, Stream::Stdout);
        let mut stderr = LogSink::new(ctx, Stream::Stderr);
        let outcome = tokio::select! {
            outcome = self.executor.run(request, &mut stdout, &mut stderr) => outcome?,
            () = ctx.cancelled() => return Err(WorkerError::Cancelled),
        };
        ctx.report_usage(ResourceUsage {
            peak_memory_bytes: outcome.peak_memory_bytes,
            cpu_user_us: outcome
                .cpu_time
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            cpu_system_us: None,
        });
        if !outcome.status.success() || outcome.oom_killed.is_some() {
            let status = match (outcome.oom_killed, outcome.status) {
                (Some(Some(limit)), _) => {
                    format!("killed by the OOM killer at its memory limit of {limit} bytes")
                }
                (Some(None), _) => "killed by the OOM killer".to_owned(),
                (None, hoist_executor::ExitStatus::Exited(code)) => format!("exit code: {code}"),
                (None, hoist_executor::ExitStatus::Signaled(sig)) => {
                    format!("killed by signal {sig}")
                }
            };
            let mut tail = stderr.tail();
            tail.extend(stdout.tail());
            return Err(WorkerError::Exec {
                command: exec.args.join(" "),
                status,
                tail: String::from_utf8_lossy(&tail).into_owned(),
            });
        }
        let state = Arc::clone(&self.state);
        let epoch = self.diff_options.source_date_epoch;
        let upper = outcome.upperdir;
        let layer = tokio::task::spawn_blocking(move || {
            let layer = state.commit_layer(&upper, epoch);
            drop(scratch);
            layer
        })
        .await
        .map_err(|_| WorkerError::Internal("the layer task panicked"))??;
        let mut chain = chain;
        chain.push(layer);
        Ok(chain)
    }
}

/// The config's `rootfs.diff_ids`.
fn diff_ids_of(config: &[u8]) -> Vec<Digest> {
    #[derive(serde::Deserialize)]
    struct Rootfs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Rootfs,
    }
    serde_json::from_slice::<Config>(config)
        .map(|c| {
            c.rootfs
                .diff_ids
                .iter()
                .filter_map(|d| d.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Worker for BuildWorker {
    type Output = Output;

    fn content_key<'a>(
        &'a self,
        vertex: &'a Vertex,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<String>, BoxError>> {
        Box::pin(async move {
            let Op::Source(SourceOp::Local {
                include, exclude, ..
            }) = &vertex.op
            else {
                return Ok(None);
            };
            let started = std::time::Instant::now();
            let selection = Arc::new(self.select_context(include, exclude)?);
            let root = self.context_dir.clone();
            let cache = Arc::clone(&self.stat_cache);
            let hashed = Arc::clone(&selection);
            let (key, hashed_files, hashed_bytes) = tokio::task::spawn_blocking(move || {
                let mut cache = cache
                    .lock()
                    .map_err(|_| WorkerError::Internal("stat cache lock"))?;
                let (files, bytes) = (cache.hashed_files, cache.hashed_bytes);
                let key = context::content_key(&root, &hashed, &mut cache)?;
                Ok::<_, WorkerError>((key, cache.hashed_files - files, cache.hashed_bytes - bytes))
            })
            .await
            .map_err(|_| WorkerError::Internal("the hashing task panicked"))??;
            let files = selection
                .entries
                .iter()
                .filter(|e| e.kind == context::EntryKind::File);
            let summary = ContextSummary {
                files: files.clone().count() as u64,
                bytes: files.map(|e| e.size).sum(),
                hashed_files,
                hashed_bytes,
                took: started.elapsed(),
            };
            if let Ok(mut selections) = self.selections.lock() {
                selections.insert(vertex.digest, (selection, summary));
            }
            Ok(Some(key))
        })
    }

    fn run<'a>(
        &'a self,
        vertex: &'a Vertex,
        inputs: &'a [Output],
        ctx: &'a VertexContext,
    ) -> BoxFuture<'a, Result<Output, BoxError>> {
        Box::pin(async move {
            let chain = match &vertex.op {
                Op::Source(SourceOp::Scratch) => Vec::new(),
                Op::Source(SourceOp::Image {
                    reference,
                    platform,
                }) => self.pull(reference, platform, ctx).await?,
                Op::Source(SourceOp::Local {
                    include, exclude, ..
                }) => {
                    let hashed = self
                        .selections
                        .lock()
                        .ok()
                        .and_then(|s| s.get(&vertex.digest).cloned());
                    let selection = match hashed {
                        Some((selection, summary)) => {
                            ctx.log(Stream::Stdout, format!("{summary}\n").as_bytes());
                            selection
                        }
                        None => Arc::new(self.select_context(include, exclude)?),
                    };
                    for socket in &selection.skipped {
                        let warning = format!(
                            "warning: {:?} is a socket, left out: a layer cannot hold sockets\n",
                            socket.display().to_string()
                        );
                        ctx.log(Stream::Stderr, warning.as_bytes());
                    }
                    return Ok(Output::Context(selection));
                }
                Op::File(op) => {
                    // File ops are plain blocking file system work.
                    tokio::task::block_in_place(|| self.file_op(op, inputs))?
                }
                Op::Exec(exec) => self.exec(exec, inputs, ctx).await?,
                Op::Merge(_) => {
                    return Err(WorkerError::Internal("merge ops are not produced yet").into());
                }
            };
            Ok(Output::Chain(Arc::new(chain)))
        })
    }
}

/// Forwards a RUN's output to the progress stream as it comes, keeping a tail for errors.
struct LogSink<'a> {
    ctx: &'a VertexContext,
    stream: Stream,
    tail: Vec<u8>,
}

impl<'a> LogSink<'a> {
    fn new(ctx: &'a VertexContext, stream: Stream) -> Self {
        Self {
            ctx,
            stream,
            tail: Vec::new(),
        }
    }

    fn tail(&self) -> Vec<u8> {
        self.tail.clone()
    }
}

impl AsyncWrite for LogSink<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.ctx.log(this.stream, buf);
        this.tail.extend_from_slice(buf);
        if this.tail.len() > OUTPUT_TAIL {
            let cut = this.tail.len() - OUTPUT_TAIL;
            this.tail.drain(..cut);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Whether an overlay of `lowerdirs` can be mounted here, with room to spare for what the
/// sandbox adds to a RUN's rootfs (a layer of mount-point stubs, an upperdir and a workdir).
/// `HOIST_OVERLAY_MAX_LAYERS` lowers the limit, so that tests reach the merging of layers
/// without building hundreds of them.
fn fits_in_overlay(lowerdirs: &[PathBuf]) -> bool {
    use hoist_executor::overlay::{Overlay, fits};
    let spare = PathBuf::from("/".repeat(200));
    let cap = std::env::var("HOIST_OVERLAY_MAX_LAYERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if cap.is_some_and(|cap| lowerdirs.len() > cap) {
        return false;
    }
    let mut with_stub = lowerdirs.to_vec();
    with_stub.push(spare.clone());
    fits(&Overlay {
        lowerdirs: &with_stub,
        upper: Some((&spare, &spare)),
    })
}

/// A read-only merged view of a chain: the single snapshot itself, an empty directory, or a
/// read-only overlay mount of several (unmounted on drop).
struct View {
    path: PathBuf,
    mounted: bool,
    _scratch: Option<tempfile::TempDir>,
}

impl View {
    fn new(state: &State, layers_top_first: &[PathBuf]) -> Result<Self, WorkerError> {
        match layers_top_first {
            [] => {
                let scratch = state.scratch()?;
                Ok(Self {
                    path: scratch.path().to_path_buf(),
                    mounted: false,
                    _scratch: Some(scratch),
                })
            }
            [one] => Ok(Self {
                path: one.clone(),
                mounted: false,
                _scratch: None,
            }),
            many => {
                let scratch = state.scratch()?;
                let target = scratch.path().join("view");
                fs_err::create_dir(&target).map_err(io_err("create", &target))?;
                hoist_executor::overlay::mount(
                    &target,
                    &hoist_executor::overlay::Overlay {
                        lowerdirs: many,
                        upper: None,
                    },
                )
                .map_err(|source| WorkerError::View {
                    target: target.clone(),
                    source,
                })?;
                Ok(Self {
                    path: target,
                    mounted: true,
                    _scratch: Some(scratch),
                })
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The content store as the registry client's blob store: both keep `blobs/sha256/<hex>`.
#[derive(Clone, Debug)]
pub struct StoreAdapter(pub BlobStore);

impl hoist_registry::BlobStore for StoreAdapter {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, hoist_registry::StoreError> {
        if self.0.has(digest) {
            self.0.size(digest).map(Some).map_err(store_err)
        } else {
            Ok(None)
        }
    }

    fn open(
        &self,
        digest: &Digest,
    ) -> Result<Box<dyn hoist_registry::BlobReader>, hoist_registry::StoreError> {
        Ok(Box::new(self.0.open(digest).map_err(store_err)?))
    }

    fn writer(
        &self,
        expected: &Digest,
        _size: Option<u64>,
    ) -> Result<Box<dyn hoist_registry::BlobWriter>, hoist_registry::StoreError> {
        Ok(Box::new(WriterAdapter(
            self.0.writer(expected).map_err(store_err)?,
        )))
    }
}

struct WriterAdapter(hoist_cache::BlobWriter);

impl io::Write for WriterAdapter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl hoist_registry::BlobWriter for WriterAdapter {
    fn commit(self: Box<Self>) -> Result<(), hoist_registry::StoreError> {
        self.0.commit().map(|_| ()).map_err(store_err)
    }
}

fn store_err(e: hoist_cache::StoreError) -> hoist_registry::StoreError {
    hoist_registry::StoreError::Backend(Box::new(e))
}

/// The redb index as the scheduler's cache. Only filesystem results are recorded; a record
/// whose snapshots are gone is a miss.
#[derive(Debug)]
pub struct IndexCache {
    pub state: Arc<State>,
}

impl Cache<Output> for IndexCache {
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
    ) -> BoxFuture<'a, Result<Option<Output>, BoxError>> {
        Box::pin(async move {
            let Some(record) = self.state.index.get(&key.to_string())? else {
                return Ok(None);
            };
            let mut chain = Vec::new();
            for layer in record.layers {
                let Ok(diff_id) = layer.diff_id.parse::<Digest>() else {
                    return Ok(None);
                };
                if self.state.snapshots.get(&diff_id).is_none() {
                    return Ok(None);
                }
                // A pulled layer keeps its blob; a built one may have none yet.
                let blob = match layer.blob {
                    None => None,
                    Some(blob) => {
                        let Ok(digest) = blob.digest.parse::<Digest>() else {
                            return Ok(None);
                        };
                        if !self.state.blobs.has(&digest) {
                            return Ok(None);
                        }
                        Some(Descriptor::new(
                            MediaType::from(blob.media_type.as_str()),
                            blob.size,
                            digest,
                        ))
                    }
                };
                chain.push(Layer { diff_id, blob });
            }
            Ok(Some(Output::Chain(Arc::new(chain))))
        })
    }

    fn record<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
        result: &'a Output,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let Output::Chain(chain) = result else {
                return Ok(());
            };
            let record = CacheRecord {
                layers: chain
                    .iter()
                    .map(|l| LayerRecord {
                        diff_id: l.diff_id.to_string(),
                        blob: l.blob.as_ref().map(|b| BlobRecord {
                            digest: b.digest().to_string(),
                            size: b.size(),
                            media_type: b.media_type().to_string(),
                        }),
                    })
                    .collect(),
                took_ms: 0,
            };
            self.state.index.put(&key.to_string(), &record)?;
            Ok(())
        })
    }
}
