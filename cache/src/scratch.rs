//! Each process's private scratch area under a state root, and the reclaiming of the areas of
//! processes that died without cleaning up (`kill -9`, a crash, a power cut).
//!
//! Everything unfinished that a process writes on the state's filesystem goes into its own
//! area, `tmp/proc-<id>/`: the trees of steps being built, blobs being downloaded or
//! compressed, snapshots being unpacked. Each is renamed out of the area when it is complete,
//! so what is left in an area of a dead process is debris, as large as the layer or blob it
//! was writing.
//!
//! Beside the area, `tmp/proc-<id>.lock` is locked with `flock` by its owner for as long as it
//! lives; the kernel drops the lock when the process ends, however it ends, and so a lock that
//! another process can take marks an area as debris. Pid and start time would tell the same,
//! but a lock also holds for a process in another pid namespace (a second container on a
//! shared state root). The lock file is made under a temporary name, locked, and only then
//! renamed into place, so nobody ever sees an unlocked lock file of a live process.

use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Error of the scratch area.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> ScratchError + 'p {
    move |source| ScratchError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

const PREFIX: &str = "proc-";
const LOCK_SUFFIX: &str = ".lock";
/// The name a lock file has from its creation until it is locked.
const NEW_PREFIX: &str = ".new-";

/// This process's scratch area; the area is this process's for as long as the value lives.
#[derive(Debug)]
pub struct ScratchArea {
    dir: PathBuf,
    /// Holds the flock; `None` only where a test makes the area look abandoned.
    lock: Option<std::fs::File>,
}

impl ScratchArea {
    /// Makes a new area under `tmp` (the state root's `tmp/`, created if missing).
    ///
    /// # Errors
    /// The directory, the lock file or the lock cannot be made.
    pub fn create(tmp: &Path) -> Result<Self, ScratchError> {
        fs_err::create_dir_all(tmp).map_err(io_err("create", tmp))?;
        loop {
            let new = tempfile::Builder::new()
                .prefix(NEW_PREFIX)
                .tempfile_in(tmp)
                .map_err(io_err("create a lock file in", tmp))?;
            flock(new.as_file(), FlockOperation::LockExclusive)
                .map_err(|e| io_err("lock", new.path())(e.into()))?;
            let id = new
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(NEW_PREFIX))
                .unwrap_or_default()
                .to_owned();
            let name = format!("{PREFIX}{id}");
            let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
            let (file, new_path) = new.keep().map_err(|e| io_err("keep", tmp)(e.error))?;
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &new_path,
                rustix::fs::CWD,
                &lock_path,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {}
                // A reclaimer took the new file for debris before it was locked (it was
                // removed), or the name is taken: start over with another.
                Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::EXIST => {
                    let _ = fs_err::remove_file(&new_path);
                    continue;
                }
                Err(e) => return Err(io_err("rename into place", &lock_path)(e.into())),
            }
            let dir = tmp.join(&name);
            fs_err::create_dir(&dir).map_err(io_err("create", &dir))?;
            return Ok(Self {
                dir,
                lock: Some(file),
            });
        }
    }

    /// The area: make temp files and directories here.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchArea {
    /// A process that ends normally leaves nothing: whatever its builds did not finish goes
    /// with the area, and the lock file after it (while still locked, so no reclaimer is
    /// misled).
    fn drop(&mut self) {
        if self.lock.is_none() {
            return;
        }
        let _ = fs_err::remove_dir_all(&self.dir);
        let mut lock = self.dir.clone().into_os_string();
        lock.push(LOCK_SUFFIX);
        let _ = fs_err::remove_file(PathBuf::from(lock));
    }
}

/// What [`reclaim_stale`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// Areas of dead processes.
    pub areas: usize,
    /// The bytes their files held.
    pub bytes: u64,
}

/// Removes the areas under `tmp` whose process is gone, with everything in them.
///
/// # Errors
/// `tmp` cannot be listed, or debris cannot be removed.
pub fn reclaim_stale(tmp: &Path) -> Result<Reclaimed, ScratchError> {
    let mut reclaimed = Reclaimed::default();
    let entries = match fs_err::read_dir(tmp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(reclaimed),
        Err(e) => return Err(io_err("list", tmp)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in &names {
        let path = tmp.join(name);
        if let Some(id) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(LOCK_SUFFIX))
        {
            // Taking the lock proves the owner gone; holding it while removing keeps a
            // second reclaimer off the same area.
            let Ok(lock) = fs_err::File::open(&path) else {
                continue;
            };
            if flock(lock.file(), FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            let area = tmp.join(format!("{PREFIX}{id}"));
            reclaimed.bytes += remove_tree(&area)?;
            reclaimed.areas += 1;
            remove_if_present(&path)?;
        } else if name.starts_with(PREFIX) {
            // An area without its lock file: the lock is always in place before the area is
            // made, and removed only after it, so its owner is gone.
            if !names.contains(&format!("{name}{LOCK_SUFFIX}")) {
                reclaimed.bytes += remove_tree(&path)?;
                reclaimed.areas += 1;
            }
        } else if name.starts_with(NEW_PREFIX) {
            // A lock file that was never renamed into place: its creator locks it at once,
            // so one that can be locked belongs to nobody.
            let Ok(lock) = fs_err::File::open(&path) else {
                continue;
            };
            if flock(lock.file(), FlockOperation::NonBlockingLockExclusive).is_ok() {
                remove_if_present(&path)?;
            }
        }
    }
    Ok(reclaimed)
}

fn remove_if_present(path: &Path) -> Result<(), ScratchError> {
    match fs_err::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Removes `dir` and everything under it; returns the bytes its files held.
fn remove_tree(dir: &Path) -> Result<u64, ScratchError> {
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => bytes += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    match fs_err::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", dir)(e)),
        _ => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs_err::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_live_area_is_kept_and_a_dropped_one_is_reclaimed_with_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let live = ScratchArea::create(tmp.path()).unwrap();
        fs_err::write(live.dir().join("blob-1"), vec![0u8; 1000]).unwrap();
        let dead = ScratchArea::create(tmp.path()).unwrap();
        let dead_dir = dead.dir().to_path_buf();
        fs_err::create_dir_all(dead_dir.join("work-1/upper")).unwrap();
        fs_err::write(dead_dir.join("work-1/upper/big"), vec![0u8; 5000]).unwrap();
        // Its process dies: the lock goes, the files stay.
        let mut dead = dead;
        dead.lock = None;
        drop(dead);
        assert_eq!(names(tmp.path()).len(), 4);

        let reclaimed = reclaim_stale(tmp.path()).unwrap();
        assert_eq!(
            reclaimed,
            Reclaimed {
                areas: 1,
                bytes: 5000
            }
        );
        assert!(!dead_dir.exists());
        assert!(live.dir().join("blob-1").exists());
        assert_eq!(names(tmp.path()).len(), 2);
        // Nothing more to do while the live one lives.
        assert_eq!(reclaim_stale(tmp.path()).unwrap(), Reclaimed::default());
    }

    #[test]
    fn an_area_dropped_at_a_normal_exit_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let area = ScratchArea::create(tmp.path()).unwrap();
        fs_err::create_dir_all(area.dir().join("work-1")).unwrap();
        drop(area);
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn orphans_without_a_lock_and_unlocked_new_files_are_debris() {
        let tmp = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(tmp.path().join("proc-orphan/x")).unwrap();
        fs_err::write(tmp.path().join(".new-abc"), "").unwrap();
        let live = ScratchArea::create(tmp.path()).unwrap();
        let reclaimed = reclaim_stale(tmp.path()).unwrap();
        assert_eq!(reclaimed.areas, 1);
        let left = names(tmp.path());
        let own = live.dir().file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(left, vec![own.clone(), format!("{own}.lock")]);
    }
}
