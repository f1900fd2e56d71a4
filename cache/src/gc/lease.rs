//! Leases: what the running builds of a process hold, published for garbage collectors in
//! other processes (and its own).
//!
//! Each process that builds takes a slot file `leases/<n>` under the state root, and holds an
//! exclusive `flock` on it for as long as it lives: the kernel drops the lock however the
//! process ends, so a slot that another process can lock names nothing anybody holds. Slots
//! are reused, so a process costs no new inode once the root has seen as many at once.
//!
//! A slot lists the items its process held, one per line with the *generation* it was held
//! in: every build ([`Lease::scope`]) starts a new generation, and an item used by a build is
//! (re)written with a generation at least that build's. The slot's header carries the oldest
//! generation still running; the lines below it are what the process's running builds hold,
//! and older ones are released without rewriting anything. A process that runs no build holds
//! nothing.
//!
//! A line is appended under a shared lock on `gc.lock` and the caller looks at the item only
//! afterwards; a collector holds the same lock exclusively from reading the slots until it has
//! moved what it removes out of the way. So either the collector saw the line and kept the
//! item, or the caller's look happens after the removal and finds the item gone (a miss, which
//! the build answers by making it again). If a line cannot be written, the process keeps the
//! shared lock until its builds end, so that no collector runs meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::FlockOperation;

use super::GcError;

/// The directory of the slots, under the state root.
pub(crate) const LEASES: &str = "leases";
/// The lock collectors hold exclusively and holders share.
pub(crate) const GC_LOCK: &str = "gc.lock";

const MAGIC: &str = "hoist-lease 1\n";
const SINCE: &str = "since ";
/// Generations are written with this many digits, so that the header is rewritten in place.
const WIDTH: usize = 20;
const IDLE: u64 = u64::MAX;

/// What a lease names. Its text form (`s <hex>`) is the slot's line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Item {
    /// `snapshots/sha256/<hex>`.
    Snapshot(String),
    /// `snapshots/merged/<hex>`.
    Merged(String),
    /// `blobs/sha256/<hex>`.
    Blob(String),
    /// A cache index record, by its key.
    Key(String),
    /// A build's logs, by the build's id.
    Log(String),
}

impl Item {
    fn line(&self) -> String {
        let (tag, id) = match self {
            Self::Snapshot(id) => ('s', id),
            Self::Merged(id) => ('m', id),
            Self::Blob(id) => ('b', id),
            Self::Key(id) => ('k', id),
            Self::Log(id) => ('l', id),
        };
        format!("{tag} {id}")
    }

    fn parse(text: &str) -> Option<Self> {
        let (tag, id) = text.split_once(' ')?;
        let id = id.to_owned();
        Some(match tag {
            "s" => Self::Snapshot(id),
            "m" => Self::Merged(id),
            "b" => Self::Blob(id),
            "k" => Self::Key(id),
            "l" => Self::Log(id),
            _ => return None,
        })
    }
}

/// This process's lease on a state root. Cheap to hold an item twice: a held item is written
/// once per build generation.
#[derive(Debug)]
pub struct Lease {
    root: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The slot, locked, and how long its content is.
    slot: Option<(fs_err::File, u64)>,
    /// `gc.lock`, opened once.
    gc_lock: Option<fs_err::File>,
    /// A line could not be written: the shared lock is kept until no build runs.
    pinned: bool,
    /// The newest generation started.
    generation: u64,
    /// Running builds by the generation they started in.
    running: BTreeMap<u64, usize>,
    /// Each item written, with the generation it was written in.
    written: HashMap<Item, u64>,
}

/// One build's hold: what the process holds while it lives is kept by every collector. See
/// [`Lease::scope`].
#[derive(Debug)]
pub struct Scope {
    lease: Arc<Lease>,
    generation: u64,
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.lease.end(self.generation);
    }
}

impl Lease {
    /// The lease of this process on the state root `root`; nothing is written before the
    /// first item is held in a build.
    #[must_use]
    pub fn new(root: &Path) -> Arc<Self> {
        Arc::new(Self {
            root: root.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a build: until the returned scope drops, what the process holds is kept.
    #[must_use]
    pub fn scope(self: &Arc<Self>) -> Scope {
        let mut inner = self.inner();
        inner.generation += 1;
        let generation = inner.generation;
        *inner.running.entry(generation).or_default() += 1;
        let since = inner.running.keys().next().copied().unwrap_or(IDLE);
        // Only a slot that exists has a header to change; a new one is written with it.
        if inner.slot.is_some() {
            self.shared(&mut inner, |inner| write_since(inner, since));
        }
        Scope {
            lease: Arc::clone(self),
            generation,
        }
    }

    fn end(&self, generation: u64) {
        let mut inner = self.inner();
        if let Some(n) = inner.running.get_mut(&generation) {
            *n -= 1;
            if *n == 0 {
                inner.running.remove(&generation);
            }
        }
        let since = inner.running.keys().next().copied();
        match since {
            Some(since) => {
                inner.written.retain(|_, g| *g >= since);
                if inner.slot.is_some() {
                    self.shared(&mut inner, |inner| write_since(inner, since));
                }
            }
            None => {
                // Nothing runs: the slot is emptied rather than left to grow.
                inner.written.clear();
                if inner.slot.is_some() {
                    self.shared(&mut inner, |inner| {
                        let (file, len) = inner.slot.as_mut().ok_or_else(no_slot)?;
                        file.set_len(0)?;
                        *len = 0;
                        write_header(inner, IDLE)
                    });
                }
                if inner.pinned {
                    inner.pinned = false;
                    if let Some(lock) = &inner.gc_lock {
                        let _ = rustix::fs::flock(lock, FlockOperation::Unlock);
                    }
                }
            }
        }
    }

    /// Holds `item` for the running builds: call it before looking whether the item exists,
    /// and before making it. Outside a build it does nothing.
    pub fn hold(&self, item: Item) {
        let mut inner = self.inner();
        let Some(&oldest) = inner.running.keys().next() else {
            return;
        };
        let generation = inner.generation;
        if inner.written.get(&item).is_some_and(|g| *g >= generation) {
            return;
        }
        let line = format!("{generation:0WIDTH$} {}\n", item.line());
        let written = self.shared(&mut inner, |inner| {
            if inner.slot.is_none() {
                take_slot(&self.root, inner)?;
                write_header(inner, oldest)?;
            }
            let (file, len) = inner.slot.as_mut().ok_or_else(no_slot)?;
            file.file().write_all_at(line.as_bytes(), *len)?;
            *len += line.len() as u64;
            Ok(())
        });
        if written {
            inner.written.insert(item, generation);
        }
    }

    /// Runs `f` under the shared lock; when it fails, the lock is kept (pinned) until no build
    /// runs. Returns whether `f` succeeded.
    fn shared(&self, inner: &mut Inner, f: impl FnOnce(&mut Inner) -> std::io::Result<()>) -> bool {
        if inner.gc_lock.is_none() {
            let path = self.root.join(GC_LOCK);
            match open_lock(&path) {
                Ok(file) => inner.gc_lock = Some(file),
                // No collector can run on a root where the lock cannot be made either.
                Err(_) => return false,
            }
        }
        let Some(lock) = inner.gc_lock.as_ref() else {
            return false;
        };
        if !inner.pinned && rustix::fs::flock(lock, FlockOperation::LockShared).is_err() {
            return false;
        }
        let done = f(inner).is_ok();
        if done && !inner.pinned {
            if let Some(lock) = &inner.gc_lock {
                let _ = rustix::fs::flock(lock, FlockOperation::Unlock);
            }
        } else {
            inner.pinned = true;
        }
        done
    }
}

fn no_slot() -> std::io::Error {
    std::io::Error::other("no lease slot")
}

pub(crate) fn open_lock(path: &Path) -> std::io::Result<fs_err::File> {
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)?;
    }
    fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Takes the first slot no live process holds, emptied.
fn take_slot(root: &Path, inner: &mut Inner) -> std::io::Result<()> {
    let dir = root.join(LEASES);
    fs_err::create_dir_all(&dir)?;
    for n in 0u32.. {
        let file = open_lock(&dir.join(n.to_string()))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                file.set_len(0)?;
                inner.slot = Some((file, 0));
                return Ok(());
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(no_slot())
}

fn write_header(inner: &mut Inner, since: u64) -> std::io::Result<()> {
    let (file, len) = inner.slot.as_mut().ok_or_else(no_slot)?;
    let header = format!("{MAGIC}{SINCE}{since:0WIDTH$}\n");
    file.file().write_all_at(header.as_bytes(), 0)?;
    *len = (*len).max(header.len() as u64);
    file.flush()
}

fn write_since(inner: &mut Inner, since: u64) -> std::io::Result<()> {
    let (file, _) = inner.slot.as_mut().ok_or_else(no_slot)?;
    let at = (MAGIC.len() + SINCE.len()) as u64;
    file.file()
        .write_all_at(format!("{since:0WIDTH$}").as_bytes(), at)
}

/// Takes `gc.lock` exclusively: no holder adds a line while the guard lives.
///
/// # Errors
/// The lock file cannot be made or locked.
pub(crate) fn lock_exclusive(root: &Path) -> Result<fs_err::File, GcError> {
    let path = root.join(GC_LOCK);
    let file = open_lock(&path).map_err(GcError::io("open", &path))?;
    rustix::fs::flock(&file, FlockOperation::LockExclusive)
        .map_err(|e| GcError::io("lock", &path)(e.into()))?;
    Ok(file)
}

/// Everything the live processes on `root` hold now (this one's included). Call it under
/// [`lock_exclusive`].
///
/// # Errors
/// The slots cannot be listed.
pub(crate) fn held(root: &Path) -> Result<HashSet<Item>, GcError> {
    let dir = root.join(LEASES);
    let mut out = HashSet::new();
    let entries = match fs_err::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(GcError::io("list", &dir)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(file) = open_lock(&path) else { continue };
        // A slot we can lock belongs to no live process: it holds nothing.
        if rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared).is_ok() {
            continue;
        }
        let text = fs_err::read_to_string(&path).map_err(GcError::io("read", &path))?;
        let mut lines = text.lines();
        let since = lines
            .next()
            .filter(|l| format!("{l}\n") == MAGIC)
            .and_then(|_| lines.next())
            .and_then(|l| l.strip_prefix(SINCE))
            .and_then(|n| n.parse::<u64>().ok());
        // A slot being taken has no header yet, and no line: it holds nothing.
        let Some(since) = since else { continue };
        for line in lines {
            let Some((generation, item)) = line.split_once(' ') else {
                continue;
            };
            if generation.parse::<u64>().is_ok_and(|g| g >= since)
                && let Some(item) = Item::parse(item)
            {
                out.insert(item);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8) -> Item {
        Item::Snapshot(format!("{n:064x}"))
    }

    #[test]
    fn a_build_holds_what_it_used_until_it_ends() {
        let root = tempfile::tempdir().unwrap();
        let lease = Lease::new(root.path());
        lease.hold(item(1));
        assert!(held(root.path()).unwrap().is_empty(), "outside a build");
        let first = lease.scope();
        lease.hold(item(2));
        let second = lease.scope();
        lease.hold(item(3));
        let got = held(root.path()).unwrap();
        assert_eq!(got, [item(2), item(3)].into_iter().collect());
        drop(first);
        // Item 2 was held by the first build only.
        assert_eq!(held(root.path()).unwrap(), [item(3)].into_iter().collect());
        // Held again by the running build, it counts again.
        lease.hold(item(2));
        assert_eq!(held(root.path()).unwrap().len(), 2);
        drop(second);
        assert!(held(root.path()).unwrap().is_empty());
    }

    #[test]
    fn the_slot_of_a_process_that_ended_holds_nothing() {
        let root = tempfile::tempdir().unwrap();
        let lease = Lease::new(root.path());
        let scope = lease.scope();
        lease.hold(item(1));
        // The process ends without its scopes ending: its lock goes with it.
        let slot = lease.inner().slot.take();
        drop(slot);
        assert!(held(root.path()).unwrap().is_empty());
        drop(scope);
        // The next process reuses the slot.
        let other = Lease::new(root.path());
        let _scope = other.scope();
        other.hold(item(2));
        assert_eq!(held(root.path()).unwrap(), [item(2)].into_iter().collect());
        assert_eq!(
            fs_err::read_dir(root.path().join(LEASES)).unwrap().count(),
            1
        );
    }
}
