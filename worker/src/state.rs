//! The state root: snapshots, blobs, the cache index and this process's scratch area; the
//! sandbox request of a RUN over a snapshot chain; layers made from directories; exports
//! that read the snapshots.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_cache::content::ContentStore;
use hoist_cache::index::{BlobRecord, CacheIndex};
use hoist_cache::oci_spec::image::{Descriptor, Digest, MediaType};
use hoist_cache::scratch::{self, Reclaimed, ScratchArea};
use hoist_cache::{BlobStore, CompressionOptions, DiffOptions, SnapshotStore};
use hoist_executor::spec::{self, Limits, SpecOptions};
use hoist_executor::{Executor, Rootfs, RunRequest};

use hoist_solver::scheduler::BoxError;

use crate::error::{WorkerError, io_err};
use crate::exchange::{BlobSource, SourceKind};

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
    /// Mounts after Docker's defaults (`RUN --mount`).
    pub mounts: Vec<hoist_executor::oci_spec::runtime::Mount>,
}

/// One layer of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    /// The compressed blob in the content store: known for a pulled layer; made for a built
    /// one only when an image is exported or pushed ([`State::layer_blobs`]).
    pub blob: Option<Descriptor>,
}

/// The state root's layout, shared by every build of a process.
#[derive(Debug)]
pub struct State {
    pub root: PathBuf,
    pub blobs: BlobStore,
    pub snapshots: SnapshotStore,
    /// The cache index, opened when a build first needs it: pulls and pushes never do.
    index: std::sync::OnceLock<CacheIndex>,
    index_opening: std::sync::Mutex<()>,
    /// This process's scratch area: unfinished step trees, blobs and snapshots.
    scratch: Arc<ScratchArea>,
    /// What opening the state reclaimed from processes that died mid-work.
    pub reclaimed: Reclaimed,
    /// Where blobs that imported cache hits named can be had (see [`crate::exchange`]).
    blob_sources: std::sync::Mutex<std::collections::HashMap<Digest, Arc<BlobSource>>>,
    /// What this process's running builds hold, for collectors (see [`crate::gc`]).
    pub lease: Arc<hoist_cache::gc::Lease>,
}

impl State {
    /// Opens the state under `root` (creating what is missing), after reclaiming the
    /// scratch areas of hoist processes that died without cleaning up.
    ///
    /// # Errors
    /// The directories or the index cannot be created, or debris cannot be removed.
    pub fn open(root: &Path) -> Result<Self, BoxError> {
        fs_err::create_dir_all(root)?;
        // Only the owner may enter: snapshots hold images' setuid programs and device nodes, and
        // a server's trees hold what its clients uploaded. Other users of the machine must not
        // reach them (Docker keeps /var/lib/docker 0710 for the same reason).
        fs_err::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let tmp = root.join("tmp");
        // New snapshots and scratch trees spread over the filesystem (see spread_directories).
        hoist_cache::spread_directories(&tmp)?;
        let reclaimed = scratch::reclaim_stale(&tmp)?;
        let scratch = Arc::new(ScratchArea::new(&tmp));
        let lease = hoist_cache::gc::Lease::new(root);
        let snapshots = SnapshotStore::new(root)
            .with_scratch(Arc::clone(&scratch))
            .with_lease(Arc::clone(&lease));
        hoist_cache::spread_directories(&snapshots.dir())?;
        Ok(Self {
            root: root.to_path_buf(),
            blobs: BlobStore::new(root)
                .with_scratch(Arc::clone(&scratch))
                .with_lease(Arc::clone(&lease)),
            lease,
            snapshots,
            index: std::sync::OnceLock::new(),
            index_opening: std::sync::Mutex::new(()),
            scratch,
            reclaimed,
            blob_sources: std::sync::Mutex::default(),
        })
    }

    /// Records where imported blobs can be fetched from, for [`State::materialize`].
    pub(crate) fn add_blob_sources(
        &self,
        sources: impl Iterator<Item = (Digest, Arc<BlobSource>)>,
    ) {
        let mut known = self
            .blob_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.extend(sources);
    }

    fn blob_source(&self, digest: &Digest) -> Option<Arc<BlobSource>> {
        self.blob_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Fetches into the content store every blob of `blobs` that it lacks, from where an
    /// imported cache said it is, in parallel. A blob that cannot be had is marked bad in its
    /// import, so that a new solve rebuilds what needed it.
    ///
    /// # Errors
    /// [`WorkerError::ImportedBlob`] for a blob that failed; [`WorkerError::SnapshotGone`]-like
    /// [`WorkerError::BlobMissing`] for one nobody can provide.
    pub async fn fetch_blobs(self: &Arc<Self>, blobs: &[Descriptor]) -> Result<(), WorkerError> {
        let mut missing = blobs
            .iter()
            .filter(|b| !self.blobs.has(b.digest()))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter();
        let mut set = tokio::task::JoinSet::new();
        let mut first_error = None;
        loop {
            while set.len() < 4 {
                let Some(blob) = missing.next() else { break };
                let state = Arc::clone(self);
                set.spawn(async move {
                    let Some(source) = state.blob_source(blob.digest()) else {
                        return Err(WorkerError::BlobMissing {
                            digest: blob.digest().clone(),
                        });
                    };
                    crate::exchange::fetch(&state, &source, &blob)
                        .await
                        .map_err(|reason| {
                            source.bad.mark(blob.digest());
                            WorkerError::ImportedBlob {
                                digest: blob.digest().clone(),
                                reason,
                            }
                        })
                });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let result = joined.unwrap_or(Err(WorkerError::Internal("a blob fetch task panicked")));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes the snapshots of `chain` that are missing, from blobs that an imported cache hit
    /// named: fetched, then unpacked bottom first. Free when every snapshot is there.
    ///
    /// # Errors
    /// As [`State::fetch_blobs`]; a blob whose content does not give its diffID is marked bad
    /// and refused.
    pub async fn materialize(self: &Arc<Self>, chain: &[Layer]) -> Result<(), WorkerError> {
        let first_missing = chain
            .iter()
            .position(|l| self.snapshots.get(&l.diff_id).is_none());
        let Some(first_missing) = first_missing else {
            return Ok(());
        };
        let wanted: Vec<Descriptor> = chain[first_missing..]
            .iter()
            .filter(|l| self.snapshots.get(&l.diff_id).is_none())
            .filter_map(|l| l.blob.clone())
            .collect();
        self.fetch_blobs(&wanted).await?;
        let state = Arc::clone(self);
        let chain = chain.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut lowers: Vec<PathBuf> = Vec::new();
            for layer in &chain {
                if let Some(dir) = state.snapshots.get(&layer.diff_id) {
                    lowers.insert(0, dir);
                    continue;
                }
                let blob = layer
                    .blob
                    .as_ref()
                    .ok_or_else(|| WorkerError::SnapshotGone {
                        layer: layer.diff_id.clone(),
                    })?;
                let dir = state
                    .snapshots
                    .unpack_on(&state.blobs, blob, &layer.diff_id, &lowers)
                    .map_err(|e| {
                        let source = state.blob_source(blob.digest());
                        match source {
                            Some(source) => {
                                source.bad.mark(blob.digest());
                                WorkerError::ImportedBlob {
                                    digest: blob.digest().clone(),
                                    reason: crate::exchange::error_text(&e),
                                }
                            }
                            None => WorkerError::Snapshot {
                                layer: blob.digest().clone(),
                                source: e,
                            },
                        }
                    })?;
                lowers.insert(0, dir);
            }
            Ok(())
        })
        .await
        .map_err(|_| WorkerError::Internal("the unpack task panicked"))?
    }

    /// Readies `blobs` for a push to `target`: each blob this store lacks is mounted from the
    /// imported cache's repository when that is on the same registry (returned, for
    /// [`hoist_registry::PushOptions::mount_from`]), and fetched here otherwise.
    ///
    /// # Errors
    /// As [`State::fetch_blobs`].
    pub async fn prepare_push(
        self: &Arc<Self>,
        target: &hoist_registry::Reference,
        blobs: &[Descriptor],
    ) -> Result<Vec<String>, WorkerError> {
        let mut mount_from = Vec::new();
        let mut fetch = Vec::new();
        for blob in blobs.iter().filter(|b| !self.blobs.has(b.digest())) {
            match self.blob_source(blob.digest()).as_deref() {
                Some(BlobSource {
                    from: SourceKind::Registry { reference, .. },
                    ..
                }) if reference.registry() == target.registry() => {
                    if !mount_from.contains(&reference.repository().to_owned()) {
                        mount_from.push(reference.repository().to_owned());
                    }
                }
                _ => fetch.push(blob.clone()),
            }
        }
        self.fetch_blobs(&fetch).await?;
        Ok(mount_from)
    }

    /// The cache index (`cache.redb`), opened on first use.
    ///
    /// # Errors
    /// The index cannot be opened or created.
    pub fn index(&self) -> Result<&CacheIndex, hoist_cache::index::IndexError> {
        if let Some(index) = self.index.get() {
            return Ok(index);
        }
        // One opener at a time: the database cannot be opened twice in one process.
        let _opening = self
            .index_opening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(index) = self.index.get() {
            return Ok(index);
        }
        let index =
            CacheIndex::open(&self.root.join("cache.redb"))?.with_lease(Arc::clone(&self.lease));
        Ok(self.index.get_or_init(|| index))
    }

    /// The cache index if this process opened it, without opening it.
    #[must_use]
    pub fn opened_index(&self) -> Option<&CacheIndex> {
        self.index.get()
    }

    /// A new private scratch directory on the state's filesystem (so it can be renamed into
    /// a snapshot), removed when the guard drops unless it was kept.
    pub(crate) fn scratch(&self) -> Result<tempfile::TempDir, WorkerError> {
        let base = self
            .scratch
            .dir()
            .map_err(|e| io_err("make the scratch area under", &self.root)(io::Error::other(e)))?;
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(base)
            .map_err(io_err("create a scratch dir in", base))
    }

    /// The content store, handed to the registry client as it is for pulls and pushes.
    #[must_use]
    pub fn registry_store(&self) -> Arc<dyn ContentStore> {
        Arc::new(self.blobs.clone())
    }

    /// The snapshot directories of `chain`, topmost first, as an overlay stacks them. A chain
    /// deeper than this kernel's overlayfs takes (see [`hoist_executor::overlay::fits`]) has
    /// its lowest layers merged into one snapshot, made once and kept under
    /// `snapshots/merged/` by their diffIDs, instead of failing to mount.
    pub(crate) fn snapshot_dirs(&self, chain: &[Layer]) -> Result<Vec<PathBuf>, WorkerError> {
        let dirs: Vec<PathBuf> = chain
            .iter()
            .rev()
            .map(|l| {
                self.snapshots
                    .get(&l.diff_id)
                    .ok_or(WorkerError::Internal("a snapshot of the chain is missing"))
            })
            .collect::<Result<_, _>>()?;
        let unique = topmost_only(&dirs);
        if fits_in_overlay(&unique) {
            return Ok(unique);
        }
        // Keep as many of the top layers as fit beside the merged one.
        let mut keep = dirs.len() - 1;
        loop {
            let merged = self.merged_path(&chain[..chain.len() - keep]);
            let mut candidate = topmost_only(&dirs[..keep]);
            candidate.push(merged);
            if keep == 0 || fits_in_overlay(&candidate) {
                self.merge(&chain[..chain.len() - keep])?;
                return Ok(candidate);
            }
            keep -= 1;
        }
    }

    /// Where the merged snapshot of `layers` (bottom first) lives.
    pub(crate) fn merged_path(&self, layers: &[Layer]) -> PathBuf {
        let ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_ref()).collect();
        let key = hoist_cache::sha256_of(ids.join("\n").as_bytes());
        self.root
            .join("snapshots/merged")
            .join(key.to_string().trim_start_matches("sha256:"))
    }

    /// Makes the merged snapshot of `layers` unless it exists: their filesystem, flattened
    /// (no whiteouts), which serves as the lowest lowerdir in their place.
    pub(crate) fn merge(&self, layers: &[Layer]) -> Result<(), WorkerError> {
        let target = self.merged_path(layers);
        crate::gc::hold_merged(self, &target);
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
            etc_files: executor.etc_files_for(run.hostname, run.network)?,
            limits: run.limits,
            insecure: run.insecure,
            mounts: run.mounts,
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
    pub(crate) fn commit_layer(
        &self,
        dir: &Path,
        source_date_epoch: Option<i64>,
    ) -> Result<Layer, WorkerError> {
        // Clamped on disk, so that the snapshot is the layer: a blob made of it later, by any
        // build, hashes to this diffID.
        if let Some(epoch) = source_date_epoch {
            hoist_cache::clamp_mtimes(dir, epoch).map_err(io_err("clamp the mtimes under", dir))?;
        }
        let diff_id =
            hoist_cache::upperdir_diff_id(dir, None).map_err(|source| WorkerError::Diff {
                path: dir.to_path_buf(),
                source,
            })?;
        let target = self
            .snapshots
            .path(&diff_id)
            .map_err(|source| WorkerError::Snapshot {
                layer: diff_id.clone(),
                source,
            })?;
        // Held before it is looked at or made: see `hoist_cache::gc::lease`.
        self.snapshots.hold(&diff_id);
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
        self.layer_blobs_as(chain, options, false)
    }

    /// As [`State::layer_blobs`]; with `force` (`-o force-compression=true`), a layer whose
    /// blob has another compression (a base image's) is compressed again as `options` says,
    /// once, and remembered like a built layer's.
    ///
    /// # Errors
    /// As [`State::layer_blobs`], or a base layer's blob cannot be read.
    pub fn layer_blobs_as(
        &self,
        chain: &[Layer],
        options: &DiffOptions,
        force: bool,
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
                    let same = hoist_cache::layer_compression(blob.media_type())
                        == Some(options.compression.compression);
                    if !force || same {
                        return Ok(blob.clone());
                    }
                    return self.recompressed(layer, blob, options, &media_type);
                }
                // A bad record is made again, and replaced below.
                let known = match self.index()?.get_blob(&layer.diff_id, &media_type) {
                    Err(e) if e.is_bad_record() => None,
                    known => known?,
                };
                if let Some(known) = known
                    && self.blobs.has(&known.digest)
                {
                    return Ok(known.descriptor());
                }
                let dir = self.snapshots.get(&layer.diff_id).ok_or_else(|| {
                    WorkerError::SnapshotGone {
                        layer: layer.diff_id.clone(),
                    }
                })?;
                // The snapshot's times are the layer's (see `commit_layer`).
                let options = DiffOptions {
                    source_date_epoch: None,
                    ..*options
                };
                let digests = hoist_cache::store_upperdir_layer(&self.blobs, &dir, &options)
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
                let made = Descriptor::new(media_type.clone(), digests.size, digests.digest);
                self.index()?
                    .put_blob(&layer.diff_id, &BlobRecord::from(&made))?;
                Ok(made)
            })
            .collect()
    }

    /// The blob of a base image's layer, compressed again as `options` says; made once and
    /// remembered by (diffID, media type).
    fn recompressed(
        &self,
        layer: &Layer,
        blob: &Descriptor,
        options: &DiffOptions,
        media_type: &MediaType,
    ) -> Result<Descriptor, WorkerError> {
        let known = match self.index()?.get_blob(&layer.diff_id, media_type) {
            Err(e) if e.is_bad_record() => None,
            known => known?,
        };
        if let Some(known) = known
            && self.blobs.has(&known.digest)
        {
            return Ok(known.descriptor());
        }
        let digests = hoist_cache::store_recompressed_layer(&self.blobs, blob.digest(), options)
            .map_err(|source| WorkerError::Diff {
                path: PathBuf::from(blob.digest().to_string()),
                source,
            })?;
        if digests.diff_id != layer.diff_id {
            return Err(WorkerError::SnapshotChanged {
                path: PathBuf::from(blob.digest().to_string()),
                layer: layer.diff_id.clone(),
                now: digests.diff_id,
            });
        }
        let made = Descriptor::new(media_type.clone(), digests.size, digests.digest);
        self.index()?
            .put_blob(&layer.diff_id, &BlobRecord::from(&made))?;
        Ok(made)
    }
}

/// `dirs` (topmost first) with each directory at its topmost place only. Layers with the same
/// diffID share one snapshot, as every RUN that changes nothing does; overlayfs refuses a
/// directory twice (ELOOP). The lower copy changes nothing: the upper one already shows each
/// of its files and hides what each of its whiteouts hides, in every layer below it.
fn topmost_only(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    dirs.iter().filter(|d| seen.insert(*d)).cloned().collect()
}

/// Whether an overlay of `lowerdirs` can be mounted here, with room to spare for what the
/// sandbox adds to a RUN's rootfs (a layer of mount-point stubs, an upperdir and a workdir).
/// `HOIST_OVERLAY_MAX_LAYERS` lowers the limit, so that tests reach the merging of layers
/// without building hundreds of them.
pub(crate) fn fits_in_overlay(lowerdirs: &[PathBuf]) -> bool {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    /// Snapshots hold images' setuid programs and device nodes: other users of the machine
    /// must not reach them through the state root, new or existing.
    #[test]
    fn only_the_owner_may_enter_the_state_root() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh");
        super::State::open(&fresh).unwrap();
        let mode = |p: &std::path::Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&fresh), 0o700);
        let existing = dir.path().join("existing");
        fs_err::create_dir(&existing).unwrap();
        fs_err::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::State::open(&existing).unwrap();
        assert_eq!(mode(&existing), 0o700);
    }
}
