//! Pull: resolve a reference to a manifest for one platform, then stream its blobs into a
//! [`ContentStore`], which verifies each against its digest before it commits it.

use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use hoist_cache::content::{ContentStore, StoreError, is_manifest, sha256_of};
use oci_spec::image::{Descriptor, Digest, ImageManifest};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use sha2::Digest as _;

use crate::client::{Client, RequestError, SharedStore, Target, error_chain, truncate};
use crate::manifest::{
    ACCEPT_MANIFESTS, MAX_MANIFEST_BYTES, Manifest, ManifestError, detect_media_type,
    parse_manifest,
};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::stall::{Awaited, Stall, Wait, body_stall};
use crate::{Event, manifest};

/// A pull failure, naming the reference or blob it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("manifest {reference} not found")]
    ManifestNotFound { reference: String },
    #[error("fetch {what}: registry answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("manifest {reference}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge { reference: String },
    #[error("manifest {reference} has digest {actual}, expected {expected}")]
    ManifestDigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{reference} has no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("{reference}: index {digest} points at another index")]
    NestedIndex { reference: String, digest: Digest },
    #[error("blob {digest} from {reference} has digest {actual}; nothing was stored")]
    BlobDigestMismatch {
        reference: String,
        digest: Digest,
        actual: Digest,
    },
    #[error(
        "blob {digest} from {reference} is {actual} bytes, expected {expected}; nothing was stored"
    )]
    BlobSizeMismatch {
        reference: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} from {reference}: transfer failed after {attempts} attempts: {message}")]
    BlobTransfer {
        reference: String,
        digest: Digest,
        attempts: u32,
        message: String,
    },
    /// The content store failed (boxed: its errors carry digests and paths, and every
    /// other variant would pay for their size).
    #[error("store blob {digest}")]
    Store {
        digest: Digest,
        #[source]
        source: Box<StoreError>,
    },
    #[error("blob writer task for {digest} failed: {message}")]
    Task { digest: Digest, message: String },
}

/// Manifest bytes as served, with their verified digest and media type.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

impl FetchedManifest {
    /// A descriptor for these bytes.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            manifest::media_type(&self.media_type),
            self.bytes.len() as u64,
            self.digest.clone(),
        )
    }
}

/// A reference resolved to one platform's image manifest.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference asked for, pinned to the digest of what it resolved to (the index when
    /// there was one, as docker pins).
    pub reference: Reference,
    /// The index or manifest list the reference named, if it named one.
    pub index: Option<FetchedManifest>,
    /// The platform's image manifest.
    pub manifest: FetchedManifest,
    pub image: ImageManifest,
}

impl ResolvedImage {
    /// The config and layer descriptors, config first.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut v = vec![self.image.config().clone()];
        v.extend(self.image.layers().iter().cloned());
        v
    }
}

/// What happened to one blob of a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobFetch {
    /// The store already had it.
    Present,
    /// It was downloaded, verified and stored.
    Fetched,
}

impl Client {
    /// Fetches a manifest (or index) by the reference's digest or tag and verifies its digest.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, PullError> {
        let url = self.url(
            reference,
            &format!("manifests/{}", reference.manifest_reference()),
        );
        let target = Target::pull(reference);
        let wait = Wait::new(Awaited::Manifest {
            reference: reference.to_string(),
        });
        self.emit(&Event::ManifestRequested {
            reference: reference.to_string(),
        });
        let mut attempt = 0;
        let (content_type, served_digest, bytes) = loop {
            attempt += 1;
            let response = self
                .send(&target, &wait, true, |http| {
                    http.get(&url).header(ACCEPT, ACCEPT_MANIFESTS)
                })
                .await?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND {
                return Err(PullError::ManifestNotFound {
                    reference: reference.to_string(),
                });
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(PullError::Status {
                    what: format!("manifest {reference}"),
                    status: status.as_u16(),
                    body: truncate(&body),
                });
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let served_digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if response
                .content_length()
                .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
            {
                return Err(PullError::ManifestTooLarge {
                    reference: reference.to_string(),
                });
            }
            let mut bytes = Vec::new();
            let mut stream = response.bytes_stream();
            let mut stalled = None;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(source) => match body_stall(&source) {
                        Some(stall) => {
                            stalled = Some(stall);
                            break;
                        }
                        None => {
                            return Err(RequestError::Transport {
                                method: "GET".into(),
                                url: url.clone(),
                                source,
                            }
                            .into());
                        }
                    },
                };
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_MANIFEST_BYTES {
                    return Err(PullError::ManifestTooLarge {
                        reference: reference.to_string(),
                    });
                }
            }
            match stalled {
                None => break (content_type, served_digest, Bytes::from(bytes)),
                Some(stall) => {
                    let (_, reason) = self.count_stall(&target.host, &wait, stall)?;
                    self.emit(&Event::Retrying {
                        method: "GET".into(),
                        url: url.clone(),
                        attempt,
                        reason,
                    });
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                }
            }
        };
        let manifest_err = |source| PullError::Manifest {
            reference: reference.to_string(),
            source,
        };
        let media_type =
            detect_media_type(&bytes, content_type.as_deref()).map_err(manifest_err)?;
        // The digest is always of the bytes as served; check it against what was asked for.
        let expected = reference.digest().cloned().or_else(|| {
            served_digest
                .as_deref()
                .and_then(|d| Digest::from_str(d).ok())
        });
        let digest = match &expected {
            Some(expected) => {
                let actual = hash_hex(expected, &bytes).map_err(|source| PullError::Store {
                    digest: expected.clone(),
                    source: Box::new(source),
                })?;
                if actual != expected.digest() {
                    return Err(PullError::ManifestDigestMismatch {
                        reference: reference.to_string(),
                        expected: expected.to_string(),
                        actual: format!("{}:{actual}", expected.algorithm()),
                    });
                }
                expected.clone()
            }
            None => sha256_of(&bytes),
        };
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Resolves a reference to the image manifest for `platform`, going through an index or
    /// manifest list when the reference names one.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, PullError> {
        let top = self.fetch_manifest(reference).await?;
        let manifest_err = |source| PullError::Manifest {
            reference: reference.to_string(),
            source,
        };
        let parsed = parse_manifest(&top.bytes, &top.media_type).map_err(manifest_err)?;
        let pinned = reference.with_digest(top.digest.clone());
        let resolved = match parsed {
            Manifest::Image(image) => ResolvedImage {
                reference: pinned,
                index: None,
                manifest: top,
                image,
            },
            Manifest::Index(index) => {
                let chosen = index
                    .manifests()
                    .iter()
                    .find(|d| {
                        d.platform().as_ref().is_some_and(|p| platform.matches(p))
                            && is_manifest(d.media_type())
                    })
                    .ok_or_else(|| PullError::NoMatchingPlatform {
                        reference: reference.to_string(),
                        platform: platform.to_string(),
                        available: index
                            .manifests()
                            .iter()
                            .filter_map(|d| d.platform().as_ref())
                            .map(|p| {
                                let mut s = format!("{}/{}", p.os(), p.architecture());
                                if let Some(v) = p.variant() {
                                    s.push('/');
                                    s.push_str(v);
                                }
                                s
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let child_ref = reference.with_digest(chosen.digest().clone());
                let child = self.fetch_manifest(&child_ref).await?;
                let image =
                    match parse_manifest(&child.bytes, &child.media_type).map_err(manifest_err)? {
                        Manifest::Image(image) => image,
                        Manifest::Index(_) => {
                            return Err(PullError::NestedIndex {
                                reference: reference.to_string(),
                                digest: child.digest,
                            });
                        }
                    };
                ResolvedImage {
                    reference: pinned,
                    index: Some(top),
                    manifest: child,
                    image,
                }
            }
        };
        self.emit(&Event::Resolved {
            reference: resolved.reference.to_string(),
            manifest: resolved.manifest.digest.clone(),
        });
        Ok(resolved)
    }

    /// Resolves and pulls an image: every blob, then the manifest (and the index, if any), into
    /// the store. Blobs move concurrently, at most `max_concurrent_transfers` at a time.
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: Arc<dyn ContentStore>,
    ) -> Result<ResolvedImage, PullError> {
        let resolved = self.resolve(reference, platform).await?;
        let repo = resolved.reference.clone();
        let limit = self.config.max_concurrent_transfers.max(1);
        let results: Vec<Result<BlobFetch, PullError>> =
            futures_util::stream::iter(resolved.blobs())
                .map(|desc| {
                    let store = store.clone();
                    let repo = repo.clone();
                    async move { self.fetch_blob(&repo, &desc, store).await }
                })
                .buffer_unordered(limit)
                .collect()
                .await;
        for r in results {
            r?;
        }
        store_bytes(
            &store,
            &resolved.manifest.digest,
            resolved.manifest.bytes.clone(),
        )
        .await?;
        if let Some(index) = &resolved.index {
            store_bytes(&store, &index.digest, index.bytes.clone()).await?;
        }
        Ok(resolved)
    }

    /// Downloads one blob into the store unless the store has it. The bytes are hashed as they
    /// stream; a blob that does not match its digest or size is never committed. A connection
    /// that drops mid-blob is resumed with a `Range` request from the last byte received.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        store: SharedStore,
    ) -> Result<BlobFetch, PullError> {
        let digest = descriptor.digest().clone();
        let size = descriptor.size();
        let task_err = |e: tokio::task::JoinError| PullError::Task {
            digest: descriptor.digest().clone(),
            message: e.to_string(),
        };
        let store_err = |source| PullError::Store {
            digest: descriptor.digest().clone(),
            source: Box::new(source),
        };
        let present = {
            let store = store.clone();
            let d = digest.clone();
            tokio::task::spawn_blocking(move || store.stat(&d))
                .await
                .map_err(task_err)?
                .map_err(store_err)?
        };
        if present == Some(size) {
            self.emit(&Event::BlobPresent { digest });
            return Ok(BlobFetch::Present);
        }
        // A bounded channel hands the bytes to a blocking thread that hashes and writes them, so
        // at most a few chunks of the blob are in memory at once.
        self.emit(&Event::BlobStarted {
            digest: digest.clone(),
            size,
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<ToWriter>(8);
        let writer = tokio::task::spawn_blocking({
            let digest = digest.clone();
            move || write_blob(store.as_ref(), &digest, size, rx)
        });
        let transfer = self.stream_blob(reference, descriptor, &tx).await;
        if transfer.is_ok() {
            let _ = tx.send(ToWriter::Finish).await;
        }
        drop(tx);
        // The store's verdict first: when it failed, the transfer saw only a writer gone.
        let committed = match writer.await.map_err(task_err)? {
            Ok(committed) => committed,
            Err(StoreError::DigestMismatch { actual, .. }) => {
                return Err(PullError::BlobDigestMismatch {
                    reference: reference.to_string(),
                    digest,
                    actual,
                });
            }
            Err(StoreError::SizeMismatch { actual, .. }) => {
                return Err(PullError::BlobSizeMismatch {
                    reference: reference.to_string(),
                    digest,
                    expected: size,
                    actual,
                });
            }
            Err(e) => return Err(store_err(e)),
        };
        transfer?;
        if !committed {
            return Err(PullError::Task {
                digest,
                message: "blob writer stopped early".into(),
            });
        }
        self.emit(&Event::BlobFetched { digest, size });
        Ok(BlobFetch::Fetched)
    }

    /// Sends the blob's bytes to the writer, resuming after dropped connections.
    async fn stream_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        tx: &tokio::sync::mpsc::Sender<ToWriter>,
    ) -> Result<(), PullError> {
        let digest = descriptor.digest();
        let size = descriptor.size();
        let url = self.url(reference, &format!("blobs/{digest}"));
        let attempts = self.config.retry.attempts.max(1);
        let writer_gone = || PullError::Task {
            digest: digest.clone(),
            message: "blob writer failed".into(),
        };
        let target = Target::pull(reference);
        let wait = Wait::new(Awaited::Blob {
            digest: digest.clone(),
            reference: reference.to_string(),
        });
        let mut received = 0u64;
        let mut last = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                self.emit(&Event::Retrying {
                    method: "GET".into(),
                    url: url.clone(),
                    attempt: attempt - 1,
                    reason: format!("{last}; resuming at byte {received}"),
                });
                tokio::time::sleep(self.config.retry.backoff(attempt - 1)).await;
            }
            let from = received;
            let response = self
                .send(&target, &wait, true, |http| {
                    let request = http.get(&url);
                    if from > 0 {
                        request.header(RANGE, format!("bytes={from}-"))
                    } else {
                        request
                    }
                })
                .await?;
            let status = response.status();
            if status == StatusCode::OK && received > 0 {
                // The server ignored the range: start the blob over.
                tx.send(ToWriter::Restart)
                    .await
                    .map_err(|_| writer_gone())?;
                received = 0;
            } else if !(status.is_success()
                && (status == StatusCode::OK || content_range_start(&response) == Some(received)))
            {
                let body = response.text().await.unwrap_or_default();
                return Err(PullError::Status {
                    what: format!("blob {digest} of {reference}"),
                    status: status.as_u16(),
                    body: truncate(&body),
                });
            }
            let mut stream = response.bytes_stream();
            let mut dropped = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        received += chunk.len() as u64;
                        if received > size {
                            return Err(PullError::BlobSizeMismatch {
                                reference: reference.to_string(),
                                digest: digest.clone(),
                                expected: size,
                                actual: received,
                            });
                        }
                        tx.send(ToWriter::Data(chunk))
                            .await
                            .map_err(|_| writer_gone())?;
                    }
                    Err(e) => {
                        dropped = Some(match body_stall(&e) {
                            // Counted with the bytes of every attempt, as the resume sees them.
                            Some(Stall::Body { .. }) => {
                                let stall = Stall::Body { received };
                                self.count_stall(&target.host, &wait, stall)?.1
                            }
                            Some(stall) => self.count_stall(&target.host, &wait, stall)?.1,
                            None => error_chain(&e),
                        });
                        break;
                    }
                }
            }
            match dropped {
                None if received == size => return Ok(()),
                None => last = format!("connection closed after {received} of {size} bytes"),
                Some(message) => last = message,
            }
        }
        Err(PullError::BlobTransfer {
            reference: reference.to_string(),
            digest: digest.clone(),
            attempts,
            message: last,
        })
    }
}

/// What the pull side tells the blocking blob writer.
enum ToWriter {
    Data(Bytes),
    /// Discard what was written and start again (a server that ignored `Range`).
    Restart,
    /// All bytes are in: verify, and commit when they match.
    Finish,
}

/// Runs on a blocking thread: writes the blob into the store, which hashes it as it goes and
/// commits it only when its size and digest match ([`StoreError::DigestMismatch`] or
/// [`StoreError::SizeMismatch`] otherwise). Returns whether it was committed: `false` when the
/// transfer was abandoned.
fn write_blob(
    store: &dyn ContentStore,
    digest: &Digest,
    size: u64,
    mut rx: tokio::sync::mpsc::Receiver<ToWriter>,
) -> Result<bool, StoreError> {
    let mut writer = store.writer(digest, Some(size))?;
    while let Some(message) = rx.blocking_recv() {
        match message {
            ToWriter::Data(chunk) => writer.append(&chunk)?,
            // The old writer drops here, and its bytes with it.
            ToWriter::Restart => writer = store.writer(digest, Some(size))?,
            ToWriter::Finish => {
                writer.commit()?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The first byte of a 206 reply's `Content-Range: bytes START-END/SIZE`.
fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// The hex hash of `bytes` under `digest`'s algorithm: a manifest may be asked for by a sha512
/// digest, though the content store keeps only sha256 ones.
fn hash_hex(digest: &Digest, bytes: &[u8]) -> Result<String, StoreError> {
    match digest.algorithm().as_ref() {
        "sha256" => Ok(hex::encode(sha2::Sha256::digest(bytes))),
        "sha512" => Ok(hex::encode(sha2::Sha512::digest(bytes))),
        _ => Err(StoreError::UnsupportedAlgorithm {
            digest: digest.clone(),
        }),
    }
}

/// Writes small in-memory bytes (a manifest) into the store under their digest.
pub(crate) async fn store_bytes(
    store: &SharedStore,
    digest: &Digest,
    bytes: Bytes,
) -> Result<(), PullError> {
    let store = store.clone();
    let d = digest.clone();
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        if store.stat(&d)? == Some(bytes.len() as u64) {
            return Ok(());
        }
        let mut w = store.writer(&d, Some(bytes.len() as u64))?;
        w.append(&bytes)?;
        w.commit().map(|_| ())
    })
    .await
    .map_err(|e| PullError::Task {
        digest: digest.clone(),
        message: e.to_string(),
    })?
    .map_err(|source| PullError::Store {
        digest: digest.clone(),
        source: Box::new(source),
    })
}
