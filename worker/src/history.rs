//! Why steps ran: the cache index as the solver's [`History`] (see
//! `hoist_solver::scheduler::reason`), and the files of a context selection as a reason names
//! them.
//!
//! For `--cache-from`: the inputs of a key are a [`StepInputs`] (serde), read with
//! [`inputs_of`] and exported with the key; a step that misses both caches and that this root
//! never built is compared with the inputs the exporting build recorded (see
//! [`crate::exchange::ImportedCache::previous`]).

use std::sync::Arc;

use hoist_cache::context::{EntryKind, Selection};
use hoist_cache::index::{CacheIndex, IndexError};
use hoist_solver::scheduler::{
    BoxError, BoxFuture, CacheKey, ContextFiles, History, MAX_FILES, StepIdentity, StepInputs,
};

use crate::State;

/// The state root's cache index as the solver's history of step inputs.
#[derive(Debug)]
pub struct IndexHistory {
    pub state: Arc<State>,
    /// The build's `--cache-from` caches: a step this root never built is compared with the
    /// build that exported it.
    pub imported: Option<crate::exchange::ImportedCache>,
}

impl History for IndexHistory {
    fn previous<'a>(
        &'a self,
        identity: &'a StepIdentity,
    ) -> BoxFuture<'a, Result<Option<StepInputs>, BoxError>> {
        let state = Arc::clone(&self.state);
        let row = identity.to_key();
        Box::pin(async move {
            // A record may hold the digests of many thousand files: decoded off the runtime.
            let previous = tokio::task::spawn_blocking(move || {
                match state.index()?.last_step_inputs::<StepInputs>(&row) {
                    // A record this version cannot read is as good as none.
                    Err(e) if e.is_bad_record() => Ok(None),
                    other => other,
                }
            })
            .await
            .map_err(|_| "reading the step's last record panicked")??;
            match (previous, &self.imported) {
                (None, Some(imported)) => Ok(imported.previous(identity).await),
                (previous, _) => Ok(previous),
            }
        })
    }

    fn record<'a>(&'a self, inputs: &'a StepInputs) -> BoxFuture<'a, Result<(), BoxError>> {
        let state = Arc::clone(&self.state);
        let inputs = inputs.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                state.index()?.put_step_inputs(
                    &inputs.identity.to_key(),
                    &inputs.key.to_string(),
                    &inputs,
                )
            })
            .await
            .map_err(|_| "recording the step's inputs panicked")??;
            Ok(())
        })
    }
}

/// The inputs a build here recorded for a cache key (exported with it by `--cache-to`).
///
/// # Errors
/// The index cannot be read, or the record does not decode.
pub fn inputs_of(index: &CacheIndex, key: &CacheKey) -> Result<Option<StepInputs>, IndexError> {
    index.step_inputs(&key.to_string())
}

/// The files of a selection as a reason names them: each path (a directory with a trailing
/// `/`) with what decides its part of the content key, in short: kind, mode, and the first 16
/// hex digits of a file's content digest or a link's target. At most [`MAX_FILES`].
#[must_use]
pub fn context_files(selection: &Selection, file_digests: &[Option<String>]) -> ContextFiles {
    let mut out = ContextFiles {
        truncated: selection.entries.len() > MAX_FILES,
        ..ContextFiles::default()
    };
    for (i, entry) in selection.entries.iter().take(MAX_FILES).enumerate() {
        let mut path = entry.path.to_string_lossy().into_owned();
        let mode = entry.mode;
        let what = if let Some(target) = &entry.hardlink {
            format!("h {}", target.display())
        } else {
            match &entry.kind {
                EntryKind::File => {
                    let digest = file_digests.get(i).cloned().flatten().unwrap_or_default();
                    format!("f {mode:o} {}", &digest[..digest.len().min(16)])
                }
                EntryKind::Dir => {
                    path.push('/');
                    format!("d {mode:o}")
                }
                EntryKind::Symlink { target } => format!("l {}", target.display()),
                EntryKind::Fifo => format!("p {mode:o}"),
                EntryKind::CharDevice { major, minor } => format!("c {major}:{minor}"),
                EntryKind::BlockDevice { major, minor } => format!("b {major}:{minor}"),
            }
        };
        out.files.insert(path, what);
    }
    out
}
