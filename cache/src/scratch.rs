//! Each process's private scratch area under a state root, and the reclaiming of the areas of
//! processes that died without cleaning up (`kill -9`, a crash, a power cut).
//!
//! Everything unfinished that a process writes on the state's filesystem goes into its own
//! area, `tmp/proc-<id>/`: the trees of steps being built, blobs being downloaded or
//! compressed, snapshots being unpacked. Each is renamed out of the area when it is complete,
//! so what is left in an area of a dead process is debris, as large as the layer or blob it
//! was writing.
//!
//! The area is its own lock: its owner holds an `flock` on the directory for as long as it
//! lives, and the kernel drops the lock when the process ends, however it ends; an area that
//! another process can lock is debris. (Pid and start time would tell the same, but a lock also
//! holds for a process in another pid namespace, such as a second container on a shared state
//! root.) The directory is made under a temporary name, locked, and only then renamed into
//! place, so nobody ever sees an unlocked area of a live process. It is made on first use: a
//! fully cached build writes nothing and makes no area, since every new inode costs about a
//! millisecond on some filesystems (journal-less ext4 after many deletions).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
/// The name an area has from its creation until it is locked.
const NEW_PREFIX: &str = ".new-";

/// Opens a directory, for its lock.
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether another process holds the lock of the directory at `path`; when not, returns it
/// locked (by us).
fn lock_if_free(path: &Path) -> Option<OwnedFd> {
    let fd = open_dir(path).ok()?;
    flock(&fd, FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(fd)
}

/// A made area: its path and the descriptor that holds its lock.
#[derive(Debug)]
struct Made {
    dir: PathBuf,
    lock: Option<OwnedFd>,
}

/// This process's scratch area: made on first use, its for as long as the value lives, and
/// removed when it drops.
#[derive(Debug)]
pub struct ScratchArea {
    tmp: PathBuf,
    made: OnceLock<Made>,
    making: std::sync::Mutex<()>,
}

impl ScratchArea {
    /// An area under `tmp` (the state root's `tmp/`), not made yet.
    #[must_use]
    pub fn new(tmp: &Path) -> Self {
        Self {
            tmp: tmp.to_path_buf(),
            made: OnceLock::new(),
            making: std::sync::Mutex::new(()),
        }
    }

    /// The area, made now if it is not yet: make temp files and directories here.
    ///
    /// # Errors
    /// The directory cannot be made or locked.
    pub fn dir(&self) -> Result<&Path, ScratchError> {
        if let Some(made) = self.made.get() {
            return Ok(&made.dir);
        }
        let _making = self
            .making
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(made) = self.made.get() {
            return Ok(&made.dir);
        }
        let made = self.make()?;
        Ok(&self.made.get_or_init(|| made).dir)
    }

    fn make(&self) -> Result<Made, ScratchError> {
        let tmp = &self.tmp;
        fs_err::create_dir_all(tmp).map_err(io_err("create", tmp))?;
        loop {
            let new = tempfile::Builder::new()
                .prefix(NEW_PREFIX)
                .tempdir_in(tmp)
                .map_err(io_err("create a scratch area in", tmp))?
                .keep();
            let lock = match open_dir(&new) {
                Ok(lock) => lock,
                // Another process's start-up reclaimed it as debris before it could be
                // opened and locked here: start over with another.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &new)(e)),
            };
            flock(&lock, FlockOperation::LockExclusive)
                .map_err(|e| io_err("lock", &new)(e.into()))?;
            let id = new
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(NEW_PREFIX))
                .unwrap_or_default()
                .to_owned();
            let dir = tmp.join(format!("{PREFIX}{id}"));
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &new,
                rustix::fs::CWD,
                &dir,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    // Directories made in it spread over the filesystem (see
                    // `spread_directories`); best effort.
                    let _ = crate::spread_directories(&dir);
                    return Ok(Made {
                        dir,
                        lock: Some(lock),
                    });
                }
                // A reclaimer took the new directory for debris before it was locked (it was
                // removed), or the name is taken: start over with another.
                Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::EXIST => {
                    let _ = fs_err::remove_dir(&new);
                }
                Err(e) => return Err(io_err("rename into place", &dir)(e.into())),
            }
        }
    }
}

impl Drop for ScratchArea {
    /// A process that ends normally leaves nothing: whatever its builds did not finish goes
    /// with the area, removed while still locked, so no reclaimer is misled.
    fn drop(&mut self) {
        if let Some(made) = self.made.get_mut()
            && made.lock.is_some()
        {
            let _ = fs_err::remove_dir_all(&made.dir);
        }
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
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let area = name.starts_with(PREFIX);
        if !area && !name.starts_with(NEW_PREFIX) {
            continue;
        }
        let path = entry.path();
        // Taking the lock proves the owner gone (a new area is locked by its maker at once);
        // holding it while removing keeps a second reclaimer off the same area.
        let Some(_lock) = lock_if_free(&path) else {
            continue;
        };
        let bytes = remove_tree(&path)?;
        if area {
            reclaimed.bytes += bytes;
            reclaimed.areas += 1;
        }
    }
    Ok(reclaimed)
}

/// The mount points at or under `dir` in this process's mount namespace, deepest first, from
/// `/proc/self/mountinfo` (whose paths escape space, tab, newline and backslash in octal).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let Ok(text) = fs_err::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| {
            let mut path = Vec::with_capacity(field.len());
            let mut i = 0;
            while i < field.len() {
                let octal = field.get(i + 1..i + 4).and_then(|d| {
                    std::str::from_utf8(d)
                        .ok()
                        .and_then(|d| u8::from_str_radix(d, 8).ok())
                });
                match (field[i], octal) {
                    (b'\\', Some(byte)) => {
                        path.push(byte);
                        i += 4;
                    }
                    (byte, _) => {
                        path.push(byte);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(path))
        })
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Removes `dir` and everything under it; returns the bytes its files held. What a dead
/// process left mounted there (a read-only view of layers, a step's secrets on a tmpfs) is
/// unmounted first, so that nothing is deleted through a mount and the removal can succeed.
fn remove_tree(dir: &Path) -> Result<u64, ScratchError> {
    for mount in mounts_under(dir) {
        let _ = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH);
    }
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

    /// The area's process dies: its lock goes, its files stay.
    fn abandon(area: ScratchArea) {
        let mut area = area;
        if let Some(made) = area.made.get_mut() {
            made.lock = None;
        }
    }

    #[test]
    fn an_area_is_made_on_first_use_only() {
        let tmp = tempfile::tempdir().unwrap();
        let area = ScratchArea::new(tmp.path());
        assert!(names(tmp.path()).is_empty());
        let dir = area.dir().unwrap().to_path_buf();
        assert_eq!(area.dir().unwrap(), dir);
        assert_eq!(names(tmp.path()).len(), 1);
    }

    #[test]
    fn a_live_area_is_kept_and_a_dead_one_is_reclaimed_with_its_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let live = ScratchArea::new(tmp.path());
        fs_err::write(live.dir().unwrap().join("blob-1"), vec![0u8; 1000]).unwrap();
        let dead = ScratchArea::new(tmp.path());
        let dead_dir = dead.dir().unwrap().to_path_buf();
        fs_err::create_dir_all(dead_dir.join("work-1/upper")).unwrap();
        fs_err::write(dead_dir.join("work-1/upper/big"), vec![0u8; 5000]).unwrap();
        abandon(dead);
        assert_eq!(names(tmp.path()).len(), 2);

        let reclaimed = reclaim_stale(tmp.path()).unwrap();
        assert_eq!(
            reclaimed,
            Reclaimed {
                areas: 1,
                bytes: 5000
            }
        );
        assert!(!dead_dir.exists());
        assert!(live.dir().unwrap().join("blob-1").exists());
        assert_eq!(names(tmp.path()).len(), 1);
        // Nothing more to do while the live one lives.
        assert_eq!(reclaim_stale(tmp.path()).unwrap(), Reclaimed::default());
    }

    #[test]
    fn what_a_dead_process_left_mounted_in_its_area_is_unmounted_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = ScratchArea::new(tmp.path());
        let dead_dir = dead.dir().unwrap().to_path_buf();
        // A read-only mount with a file, as a view of layers or a step's secrets would be;
        // the name has a space, which mountinfo escapes.
        let mounted = dead_dir.join("work 1/view");
        fs_err::create_dir_all(&mounted).unwrap();
        rustix::mount::mount(
            "tmpfs",
            &mounted,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap();
        fs_err::write(mounted.join("kept"), "x").unwrap();
        rustix::mount::mount_remount(&mounted, rustix::mount::MountFlags::RDONLY, c"").unwrap();
        abandon(dead);
        assert_eq!(mounts_under(&dead_dir), [mounted]);
        let reclaimed = reclaim_stale(tmp.path()).unwrap();
        assert_eq!(reclaimed.areas, 1);
        assert!(!dead_dir.exists());
        assert!(mounts_under(tmp.path()).is_empty());
    }

    #[test]
    fn an_area_dropped_at_a_normal_exit_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let area = ScratchArea::new(tmp.path());
        fs_err::create_dir_all(area.dir().unwrap().join("work-1")).unwrap();
        drop(area);
        assert!(names(tmp.path()).is_empty());
    }

    #[test]
    fn an_unlocked_new_area_is_debris() {
        let tmp = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(tmp.path().join(".new-abc/x")).unwrap();
        let live = ScratchArea::new(tmp.path());
        let own = live.dir().unwrap().file_name().unwrap().to_owned();
        // A new area whose maker died before locking it is removed, but is no area's debris.
        assert_eq!(reclaim_stale(tmp.path()).unwrap().areas, 0);
        assert_eq!(names(tmp.path()), vec![own.into_string().unwrap()]);
    }
}
