//! Push: blobs first (skipped when the registry has them, mounted from another repository of
//! the same registry when possible, else uploaded), then the manifest.
//!
//! Uploads stream from the store: one PUT for blobs up to `monolithic_threshold`, PATCH chunks
//! for larger ones. After each acknowledged chunk the upload URL is journaled (when the client
//! has a `resume_dir`); a failure, or a later run of the same push, asks the registry how much
//! landed (`GET` on the upload URL answers with `Range: 0-N`) and continues from there.

use std::io::{Read, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use hoist_cache::content::{ContentStore, StoreError};
use oci_spec::image::{Descriptor, Digest};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use sha2::Digest as _;

use crate::Event;
use crate::client::{
    Client, RequestError, SharedStore, Target, error_chain, registry_error_code, truncate,
};
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError, parse_manifest};
use crate::reference::Reference;
use crate::stall::{Awaited, Wait};

/// A push failure, naming the blob, manifest or URL it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{op} {url}: registry answered {status}: {body}")]
    Status {
        op: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("registry rejected blob {digest}: its bytes do not match the digest")]
    DigestRejected { digest: Digest },
    #[error("{op} {url}: reply has no usable Location header")]
    NoLocation { op: &'static str, url: String },
    #[error("blob {digest} is {stored} bytes in the store, but the manifest says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        stored: u64,
    },
    #[error("blob {digest} is not in the store")]
    MissingBlob { digest: Digest },
    #[error("upload of blob {digest} to {reference} failed after {attempts} attempts: {message}")]
    UploadFailed {
        reference: String,
        digest: Digest,
        attempts: u32,
        message: String,
    },
    #[error("manifest {digest}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("manifest {digest} is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge { digest: Digest },
    #[error("registry stored manifest {pushed} as {answered}")]
    ManifestDigestMismatch { pushed: Digest, answered: String },
    /// The content store failed (boxed: its errors carry digests and paths, and every
    /// other variant would pay for their size).
    #[error("store blob {digest}")]
    Store {
        digest: Digest,
        #[source]
        source: Box<StoreError>,
    },
    #[error("resume journal {path}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blocking task for {digest} failed: {message}")]
    Task { digest: Digest, message: String },
}

/// How a push may save work.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Repositories on the same registry that may already hold the blobs (for example the base
    /// image's); each blob is mounted from the first that has it.
    pub mount_from: Vec<String>,
}

/// What happened to one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobPush {
    /// The registry already had it (HEAD).
    Exists,
    /// Mounted from another repository of the registry.
    Mounted { from: String },
    /// Uploaded: `resumed_from` bytes had landed before, `sent` bytes went out in this run.
    Uploaded { resumed_from: u64, sent: u64 },
}

/// The result of a push.
#[derive(Clone, Debug)]
pub struct PushReport {
    /// The target pinned to the pushed manifest's digest.
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub blobs: Vec<(Digest, BlobPush)>,
}

impl PushReport {
    /// Bytes of blob data sent in this run.
    pub fn bytes_sent(&self) -> u64 {
        self.blobs
            .iter()
            .map(|(_, b)| match b {
                BlobPush::Uploaded { sent, .. } => *sent,
                _ => 0,
            })
            .sum()
    }
}

impl Client {
    /// Whether the repository has a blob (HEAD).
    pub async fn blob_exists(
        &self,
        target: &Reference,
        digest: &Digest,
    ) -> Result<bool, PushError> {
        let wait = Wait::new(Awaited::BlobPush {
            digest: digest.clone(),
            reference: target.to_string(),
        });
        self.has_blob(target, digest, &wait).await
    }

    async fn has_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        wait: &Wait,
    ) -> Result<bool, PushError> {
        let url = self.url(target, &format!("blobs/{digest}"));
        let response = self
            .send(&Target::push(target), wait, true, |http| http.head(&url))
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(PushError::Status {
                op: "HEAD",
                url,
                status: s.as_u16(),
                body: String::new(),
            }),
        }
    }

    /// Pushes the manifest (or index) `manifest` from the store with everything it references,
    /// and tags it with the target's tag (or stores it by digest when the target has none).
    pub async fn push(
        &self,
        target: &Reference,
        manifest: &Descriptor,
        store: Arc<dyn ContentStore>,
        options: &PushOptions,
    ) -> Result<PushReport, PushError> {
        let mut blobs = Vec::new();
        self.push_tree(target, manifest, &store, options, &mut blobs)
            .await?;
        let bytes = read_manifest(&store, manifest.digest()).await?;
        let tag_or_digest = match target.tag() {
            Some(tag) if target.digest().is_none() => tag.to_owned(),
            _ => manifest.digest().to_string(),
        };
        self.put_manifest(
            target,
            &tag_or_digest,
            manifest.media_type().as_ref(),
            bytes,
            manifest.digest(),
        )
        .await?;
        Ok(PushReport {
            reference: target.with_digest(manifest.digest().clone()),
            manifest_digest: manifest.digest().clone(),
            blobs,
        })
    }

    /// Pushes the blobs of a manifest, and for an index its child manifests by digest.
    async fn push_tree(
        &self,
        target: &Reference,
        manifest: &Descriptor,
        store: &SharedStore,
        options: &PushOptions,
        out: &mut Vec<(Digest, BlobPush)>,
    ) -> Result<(), PushError> {
        let bytes = read_manifest(store, manifest.digest()).await?;
        let parsed = parse_manifest(&bytes, manifest.media_type().as_ref()).map_err(|source| {
            PushError::Manifest {
                digest: manifest.digest().clone(),
                source,
            }
        })?;
        match parsed {
            Manifest::Image(image) => {
                let mut descs = vec![image.config().clone()];
                descs.extend(image.layers().iter().cloned());
                descs.retain(|d| !out.iter().any(|(seen, _)| seen == d.digest()));
                let limit = self.config.max_concurrent_transfers.max(1);
                let results: Vec<Result<(Digest, BlobPush), PushError>> =
                    futures_util::stream::iter(descs)
                        .map(|desc| async move {
                            let r = self
                                .push_blob(target, &desc, store.clone(), options)
                                .await?;
                            Ok((desc.digest().clone(), r))
                        })
                        .buffer_unordered(limit)
                        .collect()
                        .await;
                for r in results {
                    out.push(r?);
                }
            }
            Manifest::Index(index) => {
                for child in index.manifests() {
                    Box::pin(self.push_tree(target, child, store, options, out)).await?;
                    let child_bytes = read_manifest(store, child.digest()).await?;
                    self.put_manifest(
                        target,
                        child.digest().as_ref(),
                        child.media_type().as_ref(),
                        child_bytes,
                        child.digest(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// PUTs manifest bytes under a tag or digest and checks the digest the registry reports.
    pub async fn put_manifest(
        &self,
        target: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Bytes,
        digest: &Digest,
    ) -> Result<(), PushError> {
        let url = self.url(target, &format!("manifests/{tag_or_digest}"));
        let wait = Wait::new(Awaited::ManifestPush {
            reference: format!("{}:{tag_or_digest}", target.name()),
        });
        let response = self
            .send(&Target::push(target), &wait, true, |http| {
                http.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(PushError::Status {
                op: "PUT manifest",
                url,
                status: status.as_u16(),
                body: truncate(&body),
            });
        }
        if let Some(answered) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && answered != digest.as_ref()
        {
            return Err(PushError::ManifestDigestMismatch {
                pushed: digest.clone(),
                answered: answered.to_owned(),
            });
        }
        self.emit(&Event::ManifestPushed {
            reference: format!("{}:{tag_or_digest}", target.name()),
            digest: digest.clone(),
        });
        Ok(())
    }

    /// Pushes one blob from the store: HEAD, then mount, then a resumed or new upload.
    pub async fn push_blob(
        &self,
        target: &Reference,
        descriptor: &Descriptor,
        store: SharedStore,
        options: &PushOptions,
    ) -> Result<BlobPush, PushError> {
        let digest = descriptor.digest().clone();
        let size = descriptor.size();
        let stored = {
            let store = store.clone();
            let d = digest.clone();
            blocking(&digest, move || store.stat(&d)).await?
        };
        // A blob the store lacks may still be pushed without its bytes: the target may have
        // it, or mount it from another repository (a blob an imported build cache named).
        match stored {
            None => {}
            Some(n) if n != size => {
                return Err(PushError::SizeMismatch {
                    digest,
                    expected: size,
                    stored: n,
                });
            }
            Some(_) => {}
        }
        // Every request for this blob shares one count of stalls.
        let wait = Wait::new(Awaited::BlobPush {
            digest: digest.clone(),
            reference: target.to_string(),
        });
        if self.has_blob(target, &digest, &wait).await? {
            self.emit(&Event::BlobExists { digest });
            return Ok(BlobPush::Exists);
        }
        let journal = self.journal_path(target, &digest);
        let mut session: Option<String> = None;
        for from in options
            .mount_from
            .iter()
            .filter(|r| r.as_str() != target.repository())
        {
            let url = format!(
                "{}?mount={digest}&from={from}",
                self.url(target, "blobs/uploads/")
            );
            let response = self
                .send(&Target::push(target).also_pull(from), &wait, true, |http| {
                    http.post(&url).header(CONTENT_LENGTH, 0)
                })
                .await?;
            match response.status() {
                StatusCode::CREATED => {
                    self.emit(&Event::BlobMounted {
                        digest,
                        from: from.clone(),
                    });
                    return Ok(BlobPush::Mounted { from: from.clone() });
                }
                // The registry could not mount and opened an ordinary upload instead: keep the
                // last such session for the upload and cancel the ones it replaces.
                StatusCode::ACCEPTED => {
                    let location = self.location(&response, "POST mount", &url)?;
                    if let Some(abandoned) = session.replace(location) {
                        self.cancel_upload(target, &abandoned, &wait).await;
                    }
                }
                // Anything else (say, no pull access to the source): try the next source.
                _ => {}
            }
        }
        if stored.is_none() {
            if let Some(abandoned) = session {
                self.cancel_upload(target, &abandoned, &wait).await;
            }
            return Err(PushError::MissingBlob { digest });
        }
        let mut offset = 0u64;
        let mut resumed_from = 0u64;
        if session.is_none()
            && let Some(location) = read_journal(journal.as_ref())?
        {
            match self.upload_status(target, &location, &wait).await? {
                Some(landed) if landed <= size => {
                    offset = landed;
                    resumed_from = landed;
                    session = Some(location);
                }
                _ => remove_journal(journal.as_ref())?,
            }
        }
        self.emit(&Event::UploadStarted {
            digest: digest.clone(),
            size,
            offset,
        });
        let attempts = self.config.retry.attempts.max(1);
        let mut sent = 0u64;
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(self.config.retry.backoff(attempt - 1)).await;
                // Ask what landed before the failure; an unknown session starts over.
                if let Some(location) = session.clone() {
                    match self.upload_status(target, &location, &wait).await {
                        Ok(Some(landed)) if landed <= size => offset = landed,
                        Ok(_) => {
                            session = None;
                            offset = 0;
                        }
                        Err(PushError::Request(e)) if self.stalls_spent(&e) => {
                            return Err(e.into());
                        }
                        Err(e) => {
                            last_error = error_chain(&e);
                            continue;
                        }
                    }
                }
            }
            let location = match session.clone() {
                Some(l) => l,
                None => match self.start_upload(target, &wait).await {
                    Ok(l) => {
                        write_journal(journal.as_ref(), &l)?;
                        offset = 0;
                        session = Some(l.clone());
                        l
                    }
                    Err(PushError::Request(e)) if self.stalls_spent(&e) => {
                        return Err(e.into());
                    }
                    Err(e) => {
                        last_error = error_chain(&e);
                        continue;
                    }
                },
            };
            let step = if offset == 0 && size <= self.config.monolithic_threshold {
                self.put_whole(target, &wait, &location, &digest, size, &store, &mut sent)
                    .await
                    .map(|()| None)
            } else {
                self.put_chunks(
                    target,
                    &wait,
                    &location,
                    &digest,
                    size,
                    &mut offset,
                    &store,
                    &mut sent,
                    journal.as_ref(),
                )
                .await
                .map(Some)
            };
            match step {
                Ok(_) => {
                    remove_journal(journal.as_ref())?;
                    self.emit(&Event::BlobUploaded {
                        digest: digest.clone(),
                        size,
                        sent,
                    });
                    return Ok(BlobPush::Uploaded { resumed_from, sent });
                }
                Err(Step::Fatal(e)) => return Err(e),
                Err(Step::Retry { message, restart }) => {
                    last_error = message;
                    if restart {
                        session = None;
                        offset = 0;
                    }
                    self.emit(&Event::Retrying {
                        method: "upload".into(),
                        url: location,
                        attempt,
                        reason: last_error.clone(),
                    });
                }
            }
        }
        Err(PushError::UploadFailed {
            reference: target.to_string(),
            digest,
            attempts,
            message: last_error,
        })
    }

    /// Cancels an upload session; a failure only leaves it for the registry to expire.
    async fn cancel_upload(&self, target: &Reference, location: &str, wait: &Wait) {
        let _ = self
            .send(&Target::push(target), wait, false, |http| {
                http.delete(location)
            })
            .await;
    }

    async fn start_upload(&self, target: &Reference, wait: &Wait) -> Result<String, PushError> {
        let url = self.url(target, "blobs/uploads/");
        let response = self
            .send(&Target::push(target), wait, true, |http| {
                http.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(PushError::Status {
                op: "POST upload",
                url,
                status,
                body: truncate(&body),
            });
        }
        self.location(&response, "POST upload", &url)
    }

    /// How many bytes of an upload session landed, or `None` when the registry no longer knows
    /// the session.
    async fn upload_status(
        &self,
        target: &Reference,
        location: &str,
        wait: &Wait,
    ) -> Result<Option<u64>, PushError> {
        let response = self
            .send(&Target::push(target), wait, true, |http| http.get(location))
            .await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Some(
                response
                    .headers()
                    .get("range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_end)
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            s => {
                let body = response.text().await.unwrap_or_default();
                Err(PushError::Status {
                    op: "GET upload status",
                    url: location.to_owned(),
                    status: s.as_u16(),
                    body: truncate(&body),
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // One upload's state, as put_chunks.
    async fn put_whole(
        &self,
        target: &Reference,
        wait: &Wait,
        location: &str,
        digest: &Digest,
        size: u64,
        store: &SharedStore,
        sent: &mut u64,
    ) -> Result<(), Step> {
        let url = with_digest_query(location, digest);
        *sent += size;
        let response = self
            .send(&Target::push(target), wait, false, |http| {
                http.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(file_body(store.clone(), digest.clone(), 0, size))
            })
            .await
            .map_err(|e| self.step_error(e, true))?;
        self.finish(response, digest, &url, true).await
    }

    #[allow(clippy::too_many_arguments)] // One upload's state, threaded through its chunks.
    async fn put_chunks(
        &self,
        target: &Reference,
        wait: &Wait,
        location: &str,
        digest: &Digest,
        size: u64,
        offset: &mut u64,
        store: &SharedStore,
        sent: &mut u64,
        journal: Option<&PathBuf>,
    ) -> Result<(), Step> {
        let mut location = location.to_owned();
        let chunk = self.config.chunk_size.max(1);
        while *offset < size {
            let len = chunk.min(size - *offset);
            let start = *offset;
            *sent += len;
            let response = self
                .send(&Target::push(target), wait, false, |http| {
                    http.patch(&location)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len)
                        .header("content-range", format!("{start}-{}", start + len - 1))
                        .body(file_body(store.clone(), digest.clone(), start, len))
                })
                .await
                .map_err(|e| self.step_error(e, false))?;
            let status = response.status();
            if status != StatusCode::ACCEPTED && status != StatusCode::NO_CONTENT {
                let retryable = status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::RANGE_NOT_SATISFIABLE;
                let body = response.text().await.unwrap_or_default();
                let message = format!("PATCH {location}: {status}: {}", truncate(&body));
                if retryable {
                    return Err(Step::Retry {
                        message,
                        restart: false,
                    });
                }
                return Err(Step::Fatal(PushError::Status {
                    op: "PATCH upload",
                    url: location,
                    status: status.as_u16(),
                    body: truncate(&body),
                }));
            }
            let landed = response
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(range_end)
                .unwrap_or(start + len);
            location = self
                .location(&response, "PATCH upload", &location)
                .unwrap_or(location);
            write_journal(journal, &location).map_err(Step::Fatal)?;
            *offset = landed;
            self.emit(&Event::UploadProgress {
                digest: digest.clone(),
                offset: landed,
                size,
            });
        }
        let url = with_digest_query(&location, digest);
        let response = self
            .send(&Target::push(target), wait, false, |http| {
                http.put(&url).header(CONTENT_LENGTH, 0)
            })
            .await
            .map_err(|e| self.step_error(e, false))?;
        self.finish(response, digest, &url, false).await
    }

    async fn finish(
        &self,
        response: reqwest::Response,
        digest: &Digest,
        url: &str,
        restart_on_retry: bool,
    ) -> Result<(), Step> {
        let status = response.status();
        if status == StatusCode::CREATED || status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        if registry_error_code(&body).as_deref() == Some("DIGEST_INVALID") {
            return Err(Step::Fatal(PushError::DigestRejected {
                digest: digest.clone(),
            }));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Step::Retry {
                message: format!("PUT {url}: {status}: {}", truncate(&body)),
                restart: restart_on_retry,
            });
        }
        Err(Step::Fatal(PushError::Status {
            op: "PUT upload",
            url: url.to_owned(),
            status: status.as_u16(),
            body: truncate(&body),
        }))
    }

    /// The absolute upload URL from a reply's `Location`, which may be relative.
    fn location(
        &self,
        response: &reqwest::Response,
        op: &'static str,
        url: &str,
    ) -> Result<String, PushError> {
        let no_location = || PushError::NoLocation {
            op,
            url: url.to_owned(),
        };
        let value = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(no_location)?;
        response
            .url()
            .join(value)
            .map(|u| u.to_string())
            .map_err(|_| no_location())
    }

    /// A failed request of an upload: tried again (in a new session when `restart`), unless
    /// it cannot succeed or the blob's stalls are spent.
    fn step_error(&self, e: RequestError, restart: bool) -> Step {
        match e {
            RequestError::Stalled(_) if self.stalls_spent(&e) => Step::Fatal(PushError::Request(e)),
            RequestError::Transport { .. }
            | RequestError::Exhausted { .. }
            | RequestError::Stalled(_) => Step::Retry {
                message: error_chain(&e),
                restart,
            },
            other => Step::Fatal(PushError::Request(other)),
        }
    }

    fn journal_path(&self, target: &Reference, digest: &Digest) -> Option<PathBuf> {
        let dir = self.config.resume_dir.as_ref()?;
        let key = format!("{}/{}@{digest}", target.api_host(), target.repository());
        Some(dir.join(format!("{}.upload", hex::encode(sha2::Sha256::digest(key)))))
    }
}

/// A failed upload step: retry (in the same session, or a new one when `restart`), or give up.
enum Step {
    Retry { message: String, restart: bool },
    Fatal(PushError),
}

/// `Range: 0-N` → N+1 bytes landed.
fn range_end(range: &str) -> Option<u64> {
    let range = range.trim().trim_start_matches("bytes=");
    let (_, end) = range.split_once('-')?;
    end.trim().parse::<u64>().ok().map(|e| e + 1)
}

fn with_digest_query(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// A request body that streams `len` bytes of a stored blob from `offset`, read on a blocking
/// thread in 1 MiB pieces with at most four in flight.
fn file_body(store: SharedStore, digest: Digest, offset: u64, len: u64) -> reqwest::Body {
    const PIECE: u64 = 1 << 20;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut reader = match store.open(&digest) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                return;
            }
        };
        if let Err(e) = reader.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let n = PIECE.min(left);
            let mut buf = vec![0u8; usize::try_from(n).unwrap_or(1 << 20)];
            if let Err(e) = reader.read_exact(&mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            left -= buf.len() as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    reqwest::Body::wrap_stream(stream)
}

async fn blocking<T, F>(digest: &Digest, f: F) -> Result<T, PushError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PushError::Task {
            digest: digest.clone(),
            message: e.to_string(),
        })?
        .map_err(|source| PushError::Store {
            digest: digest.clone(),
            source: Box::new(source),
        })
}

async fn read_manifest(store: &SharedStore, digest: &Digest) -> Result<Bytes, PushError> {
    let store = store.clone();
    let d = digest.clone();
    // Stored blobs never change, so the size checked is the size read.
    let bytes = blocking(digest, move || match store.stat(&d)? {
        Some(size) if size > MAX_MANIFEST_BYTES as u64 => Ok(None),
        _ => store.read(&d).map(Some),
    })
    .await?;
    let Some(bytes) = bytes else {
        return Err(PushError::ManifestTooLarge {
            digest: digest.clone(),
        });
    };
    Ok(Bytes::from(bytes))
}

fn read_journal(path: Option<&PathBuf>) -> Result<Option<String>, PushError> {
    let Some(path) = path else { return Ok(None) };
    match fs_err::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PushError::Journal {
            path: path.clone(),
            source,
        }),
    }
}

fn write_journal(path: Option<&PathBuf>, location: &str) -> Result<(), PushError> {
    let Some(path) = path else { return Ok(()) };
    let err = |source| PushError::Journal {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs_err::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, location).map_err(err)?;
    fs_err::rename(&tmp, path).map_err(err)
}

fn remove_journal(path: Option<&PathBuf>) -> Result<(), PushError> {
    let Some(path) = path else { return Ok(()) };
    match fs_err::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PushError::Journal {
            path: path.clone(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_queries() {
        assert_eq!(range_end("0-1023"), Some(1024));
        assert_eq!(range_end("bytes=0-9"), Some(10));
        assert_eq!(range_end("garbage"), None);
        let d: Digest = "sha256:6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
            .parse()
            .unwrap();
        assert_eq!(
            with_digest_query("http://h/v2/r/blobs/uploads/u?_state=x", &d),
            format!("http://h/v2/r/blobs/uploads/u?_state=x&digest={d}")
        );
        assert_eq!(
            with_digest_query("http://h/u", &d),
            format!("http://h/u?digest={d}")
        );
    }
}
