//! What can go wrong in a vertex's work.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::io;
use std::path::{Path, PathBuf};

use hoist_cache::context::ContextError;
use hoist_cache::copy::{self};
use hoist_cache::oci_spec::image::Digest;

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
    #[error("invalid --exclude pattern")]
    Exclude(#[from] hoist_parser::ignore::IgnoreError),
    #[error("cannot resolve user {user:?} in the image")]
    User {
        user: String,
        #[source]
        source: hoist_executor::user::ResolveUserError,
    },
    #[error("pulling {reference}")]
    Pull {
        reference: String,
        #[source]
        source: Box<hoist_registry::PullError>,
    },
    #[error("the platform of {reference}")]
    Platform {
        reference: String,
        #[source]
        source: hoist_solver::platform::ParsePlatformError,
    },
    #[error("invalid image reference {reference:?}")]
    Reference {
        reference: String,
        #[source]
        source: hoist_registry::ParseReferenceError,
    },
    #[error("unpacking {layer}")]
    Snapshot {
        layer: Digest,
        #[source]
        source: hoist_cache::SnapshotError,
    },
    #[error("making a layer from {}", path.display())]
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
    #[error("ADD")]
    Archive(#[from] hoist_cache::archive::ArchiveError),
    #[error("the sandbox failed")]
    Run(#[from] hoist_executor::RunError),
    #[error("building the sandbox spec")]
    Spec(#[from] hoist_executor::spec::BuildSpecError),
    #[error("{op} {}", path.display())]
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
    #[error("{what}: {reason}")]
    Mount { what: String, reason: String },
    #[error(
        "secret {id:?} is required by this RUN but the build was not given it: pass it with \
         --secret id={id},src=FILE (or env=VARIABLE)"
    )]
    SecretMissing { id: String },
    #[error(
        "secret {id:?} is not UTF-8 text, so it cannot be a variable: mount it as a file \
         (target=PATH) instead of env="
    )]
    SecretNotText { id: String },
    #[error(
        "ssh agent {id:?} is required by this RUN but the build was not given it: pass \
         --ssh {id}=SOCKET (or --ssh {id} with SSH_AUTH_SOCK set)"
    )]
    SshMissing { id: String },
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error(
        "blob {digest} of an imported cache: {reason}; the steps that need it are built \
         instead"
    )]
    ImportedBlob { digest: Digest, reason: String },
    #[error("blob {digest} is in no store and no imported cache")]
    BlobMissing { digest: Digest },
    #[error("exporting the cache to {target}: {reason}")]
    CacheExport { target: String, reason: String },
    #[error(
        "the build context {name:?} was not given to this build: pass it with \
         --build-context {name}=DIR"
    )]
    NamedContext { name: String },
    #[error("--build-context {name}: the OCI layout's blob {}: {reason}", path.display())]
    LayoutBlob {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("cancelled")]
    Cancelled,
}

pub(crate) fn io_err<'p>(
    op: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> WorkerError + 'p {
    move |source| WorkerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
