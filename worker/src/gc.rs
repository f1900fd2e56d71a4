//! Garbage collection of the whole state root: the cache crate's records (cache index,
//! named images, snapshots, blobs; see [`hoist_cache::gc`]) with the worker's own, cache
//! mounts and build logs; the hold a build keeps on what it uses; and the automatic
//! collection after builds, which costs one `statvfs` while the root is under its budget.

use std::path::Path;
use std::sync::Arc;

use hoist_cache::gc::{self, Collected, GcError, Item, Policy, Record, Scope, Usage};

use crate::State;
use crate::cache_mounts::CacheMounts;
use crate::logs::LogStore;

/// A build's hold on what it uses, from its start to its end: no collector, in this process
/// or another, removes what the build looked at or made meanwhile. When it drops, the
/// last-used times of the cache records the build found are written, in one commit.
#[derive(Debug)]
pub struct BuildHold {
    scope: Option<Scope>,
    state: Arc<State>,
}

impl BuildHold {
    /// Starts holding for a build on `state`.
    #[must_use]
    pub fn new(state: &Arc<State>) -> Self {
        Self {
            scope: Some(state.lease.scope()),
            state: Arc::clone(state),
        }
    }
}

impl Drop for BuildHold {
    fn drop(&mut self) {
        // Best effort: a time not written makes the record look older, nothing worse. Only an
        // index the holder opened has times to write (a pull or push never opens it).
        if let Some(index) = self.state.opened_index() {
            let _ = index.flush_used();
        }
        drop(self.scope.take());
    }
}

/// Holds the merged snapshot at `path` (`snapshots/merged/<hex>`) for the running builds.
pub(crate) fn hold_merged(state: &State, path: &Path) {
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        state.lease.hold(Item::Merged(name.to_owned()));
    }
}

fn worker_err(what: &'static str, root: &Path) -> impl FnOnce(crate::WorkerError) -> GcError {
    let path = root.to_path_buf();
    move |e| GcError::Io {
        op: what,
        path,
        source: std::io::Error::other(e),
    }
}

fn index_of(state: &State) -> Result<&hoist_cache::index::CacheIndex, GcError> {
    Ok(state.index()?)
}

/// What the state root holds, record by record.
///
/// # Errors
/// The root, the index, the image names or the cache mounts cannot be read.
pub fn usage(state: &Arc<State>) -> Result<Usage, GcError> {
    let mounts = CacheMounts::new(Arc::clone(state));
    let (mut extra, _unlocked) = mounts
        .gc_records(false)
        .map_err(worker_err("list the cache mounts in", &state.root))?;
    extra.extend(LogStore::new(&state.root).gc_records());
    let usage = gc::usage(&state.root, index_of(state)?, extra)?;
    gc::remember(&state.root, usage.total);
    Ok(usage)
}

/// Removes what `policy` lets go, least recently used first; never what a running build
/// (of any process on the root) holds, nor a cache mount a step has mounted.
///
/// # Errors
/// The root, the index or the image names cannot be read or changed.
pub fn prune(state: &Arc<State>, policy: &Policy) -> Result<Collected, GcError> {
    let mounts = CacheMounts::new(Arc::clone(state));
    // The free instances stay locked until the collection ends, so no step takes one that is
    // being removed.
    let (mut extra, locked) = mounts
        .gc_records(true)
        .map_err(worker_err("list the cache mounts in", &state.root))?;
    extra.extend(LogStore::new(&state.root).gc_records());
    let trash = state
        .scratch()
        .map_err(worker_err("make a scratch dir in", &state.root))?;
    let collected = gc::collect(
        &state.root,
        index_of(state)?,
        extra,
        policy,
        &trash.path().join("trash"),
    )?;
    drop(locked);
    mounts
        .remove_empty()
        .map_err(worker_err("tidy the cache mounts in", &state.root))?;
    gc::remember(&state.root, collected.after);
    Ok(collected)
}

/// The automatic collection after a build: when the root may be over `budget` (told cheaply,
/// see [`gc::may_exceed`]), removes the least recently used records until it is not. Named
/// images and what running builds hold stay.
///
/// # Errors
/// As [`prune`].
pub fn auto(state: &Arc<State>, budget: u64) -> Result<Option<Collected>, GcError> {
    if !gc::may_exceed(&state.root, budget) {
        return Ok(None);
    }
    let policy = Policy {
        all: false,
        keep_storage: Some(budget),
        until: None,
        now: gc::now(),
    };
    prune(state, &policy).map(Some)
}

/// A record of the caller's kind, for the cache mounts and logs listings.
pub(crate) fn record(
    kind: gc::Kind,
    id: String,
    description: String,
    last_used: Option<u64>,
    held: bool,
    units: Vec<gc::Unit>,
) -> Record {
    Record {
        kind,
        id,
        description,
        last_used,
        held,
        broken: false,
        units,
    }
}

/// Seconds since the epoch of a file's modification, if it exists.
pub(crate) fn modified(path: &Path) -> Option<u64> {
    let modified = fs_err::metadata(path).ok()?.modified().ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}
