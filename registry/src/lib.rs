//! The OCI distribution client.
//!
//! Data flow: a [`Reference`] is parsed and normalized as docker does (`busybox` is
//! `docker.io/library/busybox:latest`, served by `registry-1.docker.io`). [`Client::resolve`]
//! turns it into one platform's image manifest: OCI manifests and indexes and Docker schema 2
//! manifests and manifest lists are understood, schema 1 is refused. [`Client::pull`] streams
//! the config and layers into a [`ContentStore`], which hashes every byte on the way and
//! commits a blob only when it matches its digest. [`Client::push`] goes the other way: each blob is
//! skipped when the registry has it (HEAD), mounted from another repository of the same
//! registry when one is named, or uploaded from the store (one PUT, or PATCH chunks for large
//! blobs), a bounded number at a time; then the manifest is put by tag or by digest.
//!
//! Principal types:
//! - [`Reference`], [`Platform`]: what to fetch.
//! - [`Client`] with [`ClientConfig`] and [`RetryPolicy`]: the HTTP layer. Plain HTTP for
//!   localhost, 127.0.0.0/8 and `insecure_registries`, TLS (rustls) elsewhere. Every request is
//!   authenticated on demand (anonymous, basic, or the bearer-token flow from
//!   `WWW-Authenticate`) and retried with backoff on dropped connections, 5xx and 429.
//! - [`Awaited`], [`Stall`]: a registry that stops answering. No request has a total timeout;
//!   one that makes no progress for [`ClientConfig::stall_timeout`] (or gets no connection
//!   within [`ClientConfig::connect_timeout`]) is tried again, at most
//!   [`RetryPolicy::stalled_attempts`] times per manifest or blob, and then fails with
//!   [`RequestError::Stalled`], which names the registry and what was awaited.
//! - [`DockerConfig`], [`Credential`]: credentials from `$DOCKER_CONFIG/config.json` or
//!   `~/.docker/config.json` (`auths`, `credsStore`, `credHelpers`).
//! - [`ContentStore`] (from `hoist-cache`'s [`content`] module, with its digests and media
//!   types; the content store under the state root implements it): where blobs come from and
//!   go to. The client never writes a file of its own.
//! - [`Event`]: progress and retries, reported to an [`Observer`] (the client's, and the one of
//!   the enclosing [`observe`] scope); the library never prints, but an event's `Display` is
//!   the line a progress display shows for it.
//!
//! Resumable transfers: with [`ClientConfig::resume_dir`] set, each upload session is
//! journaled; a push that fails mid-blob and is run again asks the registry how much landed
//! (`GET` on the upload URL) and sends only the rest, and blobs that completed are skipped by
//! the HEAD check. Within one run a failed chunk is resumed the same way. A download whose
//! connection drops continues with a `Range` request from the last byte received.
//!
//! Memory: blob bytes move through bounded channels in pieces of at most 1 MiB between the
//! network and a blocking thread that reads or writes the store, so no blob is ever whole in
//! memory (the push benchmark peaks near 18 MiB RSS for a 162 MiB layer).
//!
//! Why not the `oci-client` crate: it covers pull, push, mounts and streamed uploads, but it has
//! no retries, no docker config or credential helpers, and no way to resume an upload session,
//! and its streamed upload cannot be retried because the stream is consumed. Those are the
//! failure paths this crate is for, so the HTTP layer is our own, on reqwest.
#![forbid(unsafe_code)]

mod auth;
mod client;
mod manifest;
mod platform;
mod pull;
mod push;
mod reference;
mod stall;

use std::sync::Arc;

pub use hoist_cache::content::{self, ContentStore};
pub use oci_spec;
use oci_spec::image::Digest;

pub use auth::{
    Challenge, Credential, CredentialError, CredentialFuture, CredentialSource,
    DOCKER_HUB_AUTH_KEY, DockerConfig, parse_challenge,
};
pub use client::{Client, ClientConfig, RequestError, RetryPolicy};
pub use manifest::{Manifest, ManifestError, detect_media_type, parse_manifest};
pub use platform::Platform;
pub use pull::{BlobFetch, FetchedManifest, PullError, ResolvedImage};
pub use push::{BlobPush, PushError, PushOptions, PushReport};
pub use reference::{
    DEFAULT_TAG, DOCKER_HUB, DOCKER_HUB_API_HOST, ParseReferenceError, Reference, is_loopback_host,
};
pub use stall::{Awaited, Stall, Stalled};

/// Progress of pulls and pushes, for a progress display. Emitted from the tasks doing the work.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Pull: a manifest or index was asked for; the reply is pending.
    ManifestRequested { reference: String },
    /// A reference resolved to a platform manifest.
    Resolved { reference: String, manifest: Digest },
    /// Pull: the store already had the blob.
    BlobPresent { digest: Digest },
    /// Pull: the download of a blob began; it is pending until [`Event::BlobFetched`].
    BlobStarted { digest: Digest, size: u64 },
    /// Pull: the blob was downloaded and verified.
    BlobFetched { digest: Digest, size: u64 },
    /// Push: the registry already had the blob.
    BlobExists { digest: Digest },
    /// Push: the blob was mounted from another repository.
    BlobMounted { digest: Digest, from: String },
    /// Push: an upload began, at `offset` when it resumes an earlier session.
    UploadStarted {
        digest: Digest,
        size: u64,
        offset: u64,
    },
    /// Push: the registry acknowledged a chunk; `offset` bytes have landed.
    UploadProgress {
        digest: Digest,
        offset: u64,
        size: u64,
    },
    /// Push: the blob is complete; `sent` bytes went out in this run.
    BlobUploaded {
        digest: Digest,
        size: u64,
        sent: u64,
    },
    /// Push: a manifest was stored under `reference` (a tag or a digest).
    ManifestPushed { reference: String, digest: Digest },
    /// A request failed and will be tried again.
    Retrying {
        method: String,
        url: String,
        attempt: u32,
        reason: String,
    },
}

/// One line for a progress display. Digests are cut to 12 hex digits, as docker shows layers.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ManifestRequested { reference } => {
                write!(f, "waiting for the manifest of {reference}")
            }
            Self::Resolved {
                reference,
                manifest,
            } => write!(f, "resolved {reference} to {}", short(manifest)),
            Self::BlobPresent { digest } => write!(f, "{} already present", short(digest)),
            Self::BlobStarted { digest, size } => {
                write!(f, "pulling {} ({})", short(digest), human_size(*size))
            }
            Self::BlobFetched { digest, size } => {
                write!(f, "pulled {} ({})", short(digest), human_size(*size))
            }
            Self::BlobExists { digest } => write!(f, "{} already in the registry", short(digest)),
            Self::BlobMounted { digest, from } => {
                write!(f, "mounted {} from {from}", short(digest))
            }
            Self::UploadStarted {
                digest,
                size,
                offset,
            } => {
                write!(f, "pushing {} ({})", short(digest), human_size(*size))?;
                if *offset > 0 {
                    write!(f, " from byte {offset}")?;
                }
                Ok(())
            }
            Self::UploadProgress {
                digest,
                offset,
                size,
            } => write!(
                f,
                "pushing {}: {} of {}",
                short(digest),
                human_size(*offset),
                human_size(*size)
            ),
            Self::BlobUploaded { digest, size, .. } => {
                write!(f, "pushed {} ({})", short(digest), human_size(*size))
            }
            Self::ManifestPushed { reference, digest } => {
                write!(f, "pushed manifest {reference} ({})", short(digest))
            }
            Self::Retrying {
                method,
                url,
                attempt,
                reason,
            } => write!(
                f,
                "retrying {method} {url} after attempt {attempt}: {reason}"
            ),
        }
    }
}

fn short(digest: &Digest) -> String {
    let hex = digest.digest();
    let end = hex.len().min(12);
    format!("{}:{}", digest.algorithm(), &hex[..end])
}

/// Decimal units, as docker's progress shows sizes.
fn human_size(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // a display
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

/// Receives [`Event`]s. Called from worker tasks, so it must be quick and thread-safe.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

tokio::task_local! {
    static SCOPED: Observer;
}

/// Runs `work` (a pull, a push, a resolve) with `observer` receiving its events, besides the
/// client's own observer. One client serves many builds at once; this is how each build's
/// progress gets the events of its own pulls. Events of tasks that `work` spawns are not
/// included (the client spawns none that emit).
pub async fn observe<F: std::future::Future>(observer: Observer, work: F) -> F::Output {
    SCOPED.scope(observer, work).await
}

/// Calls the observer of the enclosing [`observe`] scope, if any.
pub(crate) fn emit_scoped(event: &Event) {
    let _ = SCOPED.try_with(|observer| observer(event));
}
