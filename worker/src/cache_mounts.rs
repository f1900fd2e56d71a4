//! Cache mounts (`RUN --mount=type=cache`): directories under `cache-mounts/` in the state
//! root that outlive builds and belong to no cache key and no layer.
//!
//! A mount's directory is named by the sha256 of its id, its seed's layers and its source,
//! as BuildKit keys a cache by its id and the ref it starts from. It holds instances `0`,
//! `1`, …, each with a lock file beside it, so that sharing works across steps and across
//! hoist processes on the same root:
//! - `shared`: instance 0 under a shared lock, by every step at once;
//! - `locked`: instance 0 under an exclusive lock, one step at a time;
//! - `private`: the first instance whose exclusive lock is free, a new one when none is.
//!
//! `hoist prune` removes the instances nobody holds.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_solver::op::CacheSharing;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use crate::error::{WorkerError, io_err};
use crate::{Layer, State};

/// Where cache mounts live under the state root.
const DIR: &str = "cache-mounts";

/// What a cache mount asks for.
#[derive(Clone, Debug)]
pub struct CacheMount {
    pub id: String,
    /// The layers a new instance starts from (`from=`); empty without.
    pub seed: Option<Vec<Layer>>,
    /// The directory of the seed that becomes the mount's root (`source=`).
    pub source: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// A tar of the mount's contents (blob in the content store, its diffID) that a new,
    /// unseeded instance starts from: a cache mount restored from `--cache-from`.
    pub restore: Option<(
        hoist_cache::oci_spec::image::Descriptor,
        hoist_cache::Digest,
    )>,
}

impl CacheMount {
    /// The name of the mount's directory: the sha256 of its id, source and seed layers.
    fn key(&self) -> hoist_cache::Digest {
        let mut identity = format!("{}\n{}\n", self.id, self.source);
        for layer in self.seed.iter().flatten() {
            identity.push_str(layer.diff_id.as_ref());
            identity.push('\n');
        }
        hoist_cache::sha256_of(identity.as_bytes())
    }
}

/// One instance in use by a step; the lock is released when it drops.
#[derive(Debug)]
pub struct CacheLease {
    path: PathBuf,
    _lock: fs_err::File,
}

impl CacheLease {
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What `cache-mounts/<key>/meta.json` records, for `hoist du`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    source: String,
    seeded: bool,
}

/// One cache mount as `hoist du` lists it.
#[derive(Debug, Clone)]
pub struct CacheMountUsage {
    pub id: String,
    pub instances: usize,
    pub bytes: u64,
    /// Some step holds an instance now.
    pub in_use: bool,
}

/// What `hoist prune` freed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pruned {
    pub instances: usize,
    pub bytes: u64,
}

/// The cache mounts of a state root.
#[derive(Debug, Clone)]
pub struct CacheMounts {
    state: Arc<State>,
}

impl CacheMounts {
    #[must_use]
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    fn dir(&self) -> PathBuf {
        self.state.root.join(DIR)
    }

    /// An instance of `mount` for one step, made (and seeded) when it does not exist yet.
    /// Waits for the lock that `sharing` needs.
    ///
    /// # Errors
    /// The directory cannot be made or seeded, or a lock cannot be taken.
    pub async fn lease(
        &self,
        mount: CacheMount,
        sharing: CacheSharing,
    ) -> Result<CacheLease, WorkerError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.lease_blocking(&mount, sharing))
            .await
            .map_err(|_| WorkerError::Internal("the cache mount task panicked"))?
    }

    fn lease_blocking(
        &self,
        mount: &CacheMount,
        sharing: CacheSharing,
    ) -> Result<CacheLease, WorkerError> {
        let dir = self.dir().join(mount.key().digest());
        fs_err::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let meta_path = dir.join("meta.json");
        if !meta_path.exists() {
            let meta = Meta {
                id: mount.id.clone(),
                source: mount.source.clone(),
                seeded: mount.seed.is_some(),
            };
            let text = serde_json::to_vec(&meta)
                .map_err(|_| WorkerError::Internal("encode cache mount meta"))?;
            fs_err::write(&meta_path, text).map_err(io_err("write", &meta_path))?;
        }
        for i in 0.. {
            let lock_path = dir.join(format!("{i}.lock"));
            let lock = open_lock(&lock_path)?;
            let operation = match sharing {
                CacheSharing::Shared => FlockOperation::LockShared,
                CacheSharing::Locked => FlockOperation::LockExclusive,
                CacheSharing::Private => FlockOperation::NonBlockingLockExclusive,
            };
            match rustix::fs::flock(&lock, operation) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(io_err("lock", &lock_path)(e.into())),
            }
            // The lock file's time is the instance's last use, which the collector orders by.
            let _ = lock.file().set_modified(std::time::SystemTime::now());
            let path = dir.join(i.to_string());
            self.ensure_instance(&dir, &path, mount)?;
            return Ok(CacheLease { path, _lock: lock });
        }
        Err(WorkerError::Internal("no cache mount instance"))
    }

    /// Makes instance `path` unless it exists, under the mount's creation lock so that two
    /// steps never seed it twice.
    fn ensure_instance(
        &self,
        dir: &Path,
        path: &Path,
        mount: &CacheMount,
    ) -> Result<(), WorkerError> {
        if path.is_dir() {
            return Ok(());
        }
        let lock_path = dir.join("create.lock");
        let lock = open_lock(&lock_path)?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
        if path.is_dir() {
            return Ok(());
        }
        let scratch = self.state.scratch()?;
        let fs = scratch.path().join("fs");
        let root = match &mount.seed {
            Some(layers) => {
                self.state.export_rootfs(layers, &fs)?;
                let root =
                    hoist_executor::secure_join(&fs, Path::new(&mount.source)).map_err(|e| {
                        WorkerError::Mount {
                            what: format!("cache mount {:?} source {:?}", mount.id, mount.source),
                            reason: e.to_string(),
                        }
                    })?;
                if !root.is_dir() {
                    return Err(WorkerError::Mount {
                        what: format!("cache mount {:?}", mount.id),
                        reason: format!(
                            "its source {:?} is not a directory of the stage or image it \
                             starts from",
                            mount.source
                        ),
                    });
                }
                root
            }
            None => {
                fs_err::create_dir(&fs).map_err(io_err("create", &fs))?;
                if let Some((blob, diff_id)) = &mount.restore
                    && self.restore(&fs, blob, diff_id).is_err()
                {
                    // Only a cache: a restore that fails starts the mount empty instead.
                    fs_err::remove_dir_all(&fs).map_err(io_err("remove", &fs))?;
                    fs_err::create_dir(&fs).map_err(io_err("create", &fs))?;
                }
                fs
            }
        };
        // As BuildKit: the owner and mode apply to a cache that starts empty or from the
        // seed's root; a seed's subdirectory keeps its own.
        if mount.seed.is_none() || mount.source == "/" {
            std::os::unix::fs::chown(&root, Some(mount.uid), Some(mount.gid))
                .map_err(io_err("chown", &root))?;
            fs_err::set_permissions(&root, std::fs::Permissions::from_mode(mount.mode))
                .map_err(io_err("chmod", &root))?;
        }
        fs_err::rename(&root, path).map_err(io_err("rename into place", path))?;
        Ok(())
    }

    /// Writes an exported mount's tar into `dest`, checked against its diffID.
    fn restore(
        &self,
        dest: &Path,
        blob: &hoist_cache::oci_spec::image::Descriptor,
        diff_id: &hoist_cache::Digest,
    ) -> Result<(), WorkerError> {
        let reader = self
            .state
            .blobs
            .open(blob.digest())
            .map_err(|e| WorkerError::Io {
                op: "open the cache mount blob for",
                path: dest.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        hoist_cache::apply_layer(
            reader,
            dest,
            &hoist_cache::ApplyOptions {
                whiteouts: hoist_cache::WhiteoutMode::Remove,
                expected_diff_id: Some(diff_id.clone()),
                lower_dirs: Vec::new(),
            },
        )
        .map(|_| ())
        .map_err(|e| WorkerError::Io {
            op: "restore the cache mount into",
            path: dest.to_path_buf(),
            source: std::io::Error::other(e),
        })
    }

    /// Whether `mount` has an instance on this root already (then a restore is not needed).
    #[must_use]
    pub fn exists(&self, mount: &CacheMount) -> bool {
        self.dir().join(mount.key().digest()).join("0").is_dir()
    }

    /// Instance 0 of the unseeded mount `id` with `source`, locked shared so that no `locked`
    /// step writes it meanwhile, for an export; `None` when there is none.
    ///
    /// # Errors
    /// The lock cannot be taken.
    pub fn for_export(&self, id: &str, source: &str) -> Result<Option<CacheLease>, WorkerError> {
        let mount = CacheMount {
            id: id.to_owned(),
            seed: None,
            source: source.to_owned(),
            mode: 0,
            uid: 0,
            gid: 0,
            restore: None,
        };
        let dir = self.dir().join(mount.key().digest());
        let path = dir.join("0");
        if !path.is_dir() {
            return Ok(None);
        }
        let lock_path = dir.join("0.lock");
        let lock = open_lock(&lock_path)?;
        rustix::fs::flock(&lock, FlockOperation::LockShared)
            .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
        Ok(Some(CacheLease { path, _lock: lock }))
    }

    /// Every cache mount with its size, for `hoist du`.
    ///
    /// # Errors
    /// The directory cannot be listed.
    pub fn usage(&self) -> Result<Vec<CacheMountUsage>, WorkerError> {
        let mut out = Vec::new();
        for (dir, meta) in self.entries()? {
            let mut usage = CacheMountUsage {
                id: meta.id,
                instances: 0,
                bytes: 0,
                in_use: false,
            };
            for (instance, lock) in instances(&dir)? {
                usage.instances += 1;
                usage.bytes += tree_bytes(&instance);
                usage.in_use |= try_lock(&lock).is_none();
            }
            if usage.instances > 0 {
                out.push(usage);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Removes every instance that no step holds (one that is in use stays).
    ///
    /// # Errors
    /// A directory cannot be listed or removed.
    pub fn prune(&self) -> Result<Pruned, WorkerError> {
        let mut pruned = Pruned::default();
        for (dir, _) in self.entries()? {
            for (instance, lock_path) in instances(&dir)? {
                let Some(_held) = try_lock(&lock_path) else {
                    continue;
                };
                pruned.bytes += tree_bytes(&instance);
                pruned.instances += 1;
                fs_err::remove_dir_all(&instance).map_err(io_err("remove", &instance))?;
            }
            // A mount with no instance left goes too, unless a step holds one of its locks
            // (it is about to make an instance).
            if instances(&dir)?.is_empty() {
                remove_if_free(&dir)?;
            }
        }
        Ok(pruned)
    }

    /// Every instance as a record for the collector, with when a step last mounted it; one
    /// that a step holds now is marked held. With `lock`, the free ones are locked and the
    /// locks returned: keep them until the collection ends, so that no step takes an instance
    /// that is being removed.
    ///
    /// # Errors
    /// The directory cannot be listed.
    pub fn gc_records(
        &self,
        lock: bool,
    ) -> Result<(Vec<hoist_cache::gc::Record>, Vec<fs_err::File>), WorkerError> {
        let mut records = Vec::new();
        let mut locks = Vec::new();
        for (dir, meta) in self.entries()? {
            for (instance, lock_path) in instances(&dir)? {
                let free = try_lock(&lock_path);
                let held = free.is_none();
                if lock && let Some(free) = free {
                    locks.push(free);
                }
                let name = instance
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                let rel = instance
                    .strip_prefix(&self.state.root)
                    .unwrap_or(&instance)
                    .to_path_buf();
                records.push(crate::gc::record(
                    hoist_cache::gc::Kind::CacheMount,
                    format!("{} #{}", meta.id, name.unwrap_or_default()),
                    format!(
                        "RUN --mount=type=cache,id={}{}",
                        meta.id,
                        if meta.seeded {
                            format!(",from=…,source={}", meta.source)
                        } else {
                            String::new()
                        }
                    ),
                    crate::gc::modified(&lock_path),
                    held,
                    vec![hoist_cache::gc::Unit::Path(rel)],
                ));
            }
        }
        Ok((records, locks))
    }

    /// Removes each mount left with no instance, unless a step holds one of its locks (it is
    /// about to make an instance).
    ///
    /// # Errors
    /// A directory cannot be listed or removed.
    pub fn remove_empty(&self) -> Result<(), WorkerError> {
        for (dir, _) in self.entries()? {
            if instances(&dir)?.is_empty() {
                remove_if_free(&dir)?;
            }
        }
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(PathBuf, Meta)>, WorkerError> {
        let base = self.dir();
        let read = match fs_err::read_dir(&base) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &base)(e)),
        };
        let mut out = Vec::new();
        for entry in read.flatten() {
            let dir = entry.path();
            let meta_path = dir.join("meta.json");
            let Ok(text) = fs_err::read(&meta_path) else {
                continue;
            };
            if let Ok(meta) = serde_json::from_slice::<Meta>(&text) {
                out.push((dir, meta));
            }
        }
        Ok(out)
    }
}

/// Removes a mount's directory unless a step holds one of its locks.
fn remove_if_free(dir: &Path) -> Result<(), WorkerError> {
    let mut held = Vec::new();
    for entry in fs_err::read_dir(dir)
        .map_err(io_err("list", dir))?
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "lock") {
            match try_lock(&entry.path()) {
                Some(lock) => held.push(lock),
                None => return Ok(()),
            }
        }
    }
    fs_err::remove_dir_all(dir).map_err(io_err("remove", dir))
}

/// The instances of a mount's directory, with their lock files.
fn instances(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, WorkerError> {
    let mut out = Vec::new();
    for entry in fs_err::read_dir(dir)
        .map_err(io_err("list", dir))?
        .flatten()
    {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.parse::<u32>().is_ok() && entry.path().is_dir() {
            out.push((entry.path(), dir.join(format!("{name}.lock"))));
        }
    }
    Ok(out)
}

/// A lock file, made if missing.
fn open_lock(path: &Path) -> Result<fs_err::File, WorkerError> {
    fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))
}

/// The lock at `path` if nobody holds it.
fn try_lock(path: &Path) -> Option<fs_err::File> {
    let file = open_lock(path).ok()?;
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(file)
}

/// Bytes of disk that the files under `dir` hold.
pub(crate) fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            bytes += meta.blocks() * 512;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> (tempfile::TempDir, CacheMounts) {
        let root = tempfile::tempdir().unwrap();
        let state = State::open(root.path()).unwrap();
        (root, CacheMounts::new(Arc::new(state)))
    }

    fn empty(id: &str) -> CacheMount {
        CacheMount {
            id: id.to_owned(),
            seed: None,
            source: "/".to_owned(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            restore: None,
        }
    }

    #[tokio::test]
    async fn prune_keeps_what_a_step_holds_and_drops_the_rest() {
        let (_root, mounts) = mounts();
        let held = mounts
            .lease(empty("held"), CacheSharing::Shared)
            .await
            .unwrap();
        fs_err::write(held.path().join("f"), "x").unwrap();
        drop(
            mounts
                .lease(empty("free"), CacheSharing::Locked)
                .await
                .unwrap(),
        );
        let pruned = mounts.prune().unwrap();
        assert_eq!(pruned.instances, 1);
        let ids: Vec<String> = mounts.usage().unwrap().into_iter().map(|u| u.id).collect();
        assert_eq!(ids, ["held"]);
        assert!(held.path().join("f").exists());
    }

    #[test]
    fn prune_leaves_a_mount_whose_lock_a_step_took_before_making_its_instance() {
        let (_root, mounts) = mounts();
        let dir = mounts.dir().join("k");
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::write(
            dir.join("meta.json"),
            r#"{"id":"k","source":"/","seeded":false}"#,
        )
        .unwrap();
        // A step between taking instance 0's lock and making the instance.
        let lock = open_lock(&dir.join("0.lock")).unwrap();
        rustix::fs::flock(&lock, FlockOperation::LockShared).unwrap();
        mounts.prune().unwrap();
        assert!(dir.join("0.lock").exists());
        drop(lock);
        mounts.prune().unwrap();
        assert!(!dir.exists());
    }
}
