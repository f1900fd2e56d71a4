//! A remote build's context: an uploaded tree, checked out by the [`crate::cas`] store, read
//! as a local directory.
//!
//! [`RemoteContext`] hands every question to a [`LocalContext`] over the checked-out tree, so
//! a selection and its content key are exactly those of a local build of the same files: a
//! step cached by a local build is a hit for a remote one, and the other way round.

use std::path::Path;

use hoist_cache::context::{ContextError, Selection};
use hoist_parser::ignore::Matcher;
use hoist_worker::context::Keyed;
use hoist_worker::{ContextSource, LocalContext};

use crate::cas::TreeLease;

/// An uploaded context, held under its lease for as long as the build keeps this.
#[derive(Debug)]
pub struct RemoteContext {
    local: LocalContext,
    ignore_patterns: Vec<String>,
    /// Dropped with the context, after the build is done with the tree.
    lease: TreeLease,
}

impl RemoteContext {
    /// The tree that `lease` holds, with the `.dockerignore` patterns the client applied when
    /// it chose what to send (the server applies them again, so a selection is the same as a
    /// local build's even when the client sent more). The stat cache of the checked-out tree
    /// lives under `state_root`, as a local context's does.
    #[must_use]
    pub fn new(lease: TreeLease, ignore_patterns: Vec<String>, state_root: &Path) -> Self {
        Self {
            local: LocalContext::new(lease.path(), state_root),
            ignore_patterns,
            lease,
        }
    }

    /// The lease on the tree.
    #[must_use]
    pub fn lease(&self) -> &TreeLease {
        &self.lease
    }
}

impl ContextSource for RemoteContext {
    fn select(&self, sources: &[String], ignore: &Matcher) -> Result<Selection, ContextError> {
        self.local.select(sources, ignore)
    }

    fn content_key(&self, selection: &Selection) -> Result<Keyed, ContextError> {
        self.local.content_key(selection)
    }

    fn root(&self) -> &Path {
        self.local.root()
    }

    /// The client's patterns: the ignore files were read on the client, where the Dockerfile
    /// is (it may lie outside the context), and are not part of the uploaded tree.
    fn ignore_patterns(
        &self,
        _dockerfile: Option<&Path>,
    ) -> Result<Vec<String>, hoist_parser::ignore::IgnoreError> {
        Ok(self.ignore_patterns.clone())
    }

    fn finish(&self) {
        self.local.finish();
    }
}
