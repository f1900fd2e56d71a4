//! Cache import and export (`--cache-from`, `--cache-to`), in the format of
//! [`hoist_cache::exchange`].
//!
//! Import is lazy. The small cache documents are fetched in the background when the build
//! starts, while its context is hashed; a step's lookup waits for them only after the local
//! cache missed. A hit yields the layer chain with each layer's blob descriptor and records
//! where the blob can be had ([`State::add_blob_sources`]); nothing is pulled until a step runs
//! on top of it or an output writes files ([`State::materialize`], [`State::fetch_blobs`]). A
//! push to the registry that holds the blob mounts it instead.
//!
//! A cache that cannot be read (missing, corrupt, unauthorized, another version) costs one
//! warning. A blob that cannot be fetched or does not match its digest or diffID is marked bad;
//! the engine then solves again, and the steps that needed it are rebuilt.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture as SharedInner, FutureExt as _, Shared};
use hoist_cache::exchange::{self, CacheDir, CacheDocument, CacheEntry};
use hoist_cache::index::{BlobRecord, LayerRecord};
use hoist_cache::oci_spec::image::{Descriptor, Digest};
use hoist_cache::{Compression, CompressionOptions};
use hoist_registry::{Client, PushOptions, Reference};
use hoist_solver::graph::Vertex;
use hoist_solver::scheduler::{BoxError, BoxFuture, Cache, CacheKey};

use crate::error::WorkerError;
use crate::{Layer, Output, State};

/// Where a cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=REF`, or a bare `REF`.
    Registry(Reference),
    /// `type=local,src=DIR` / `dest=DIR`: an OCI layout directory.
    Local(PathBuf),
    /// `--cache-to type=inline`: in the image's config. An image pushed so is read back by a
    /// `--cache-from` of its reference.
    Inline,
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry(r) => write!(f, "{r}"),
            Self::Local(dir) => write!(f, "{}", dir.display()),
            Self::Inline => f.write_str("the image (inline)"),
        }
    }
}

/// One `--cache-from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheImport {
    pub location: CacheLocation,
}

/// `mode=` of `--cache-to`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportMode {
    /// The final image's steps only.
    #[default]
    Min,
    /// Every step of every stage the build reached.
    Max,
}

/// One `--cache-to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheExport {
    pub location: CacheLocation,
    pub mode: ExportMode,
    /// How layers that have no blob yet are compressed (default: as the image's).
    pub compression: Option<CompressionOptions>,
    /// An export failure is a warning, not a failed build.
    pub ignore_error: bool,
    /// `mounts=true`: the build's cache mounts go too, each as its own blob.
    pub mounts: bool,
    /// `mounts-max=SIZE`: a cache mount bigger than this is left out (default 1 GiB).
    pub mounts_max: u64,
}

/// The default `mounts-max=`.
const DEFAULT_MOUNTS_MAX: u64 = 1 << 30;

/// `512m`, `2g`, `100k` or plain bytes.
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, shift) = match lower.char_indices().last()? {
        (i, 'k') => (&lower[..i], 10),
        (i, 'm') => (&lower[..i], 20),
        (i, 'g') => (&lower[..i], 30),
        _ => (lower, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A `--cache-from` or `--cache-to` that hoist cannot take.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {spec:?}: {reason}")]
pub struct CacheSpecError {
    pub flag: &'static str,
    pub spec: String,
    pub reason: String,
}

/// Splits `k=v,k=v`; a spec without `=` is a bare registry reference.
fn spec_fields(flag: &'static str, spec: &str) -> Result<BTreeMap<String, String>, CacheSpecError> {
    let err = |reason: String| CacheSpecError {
        flag,
        spec: spec.to_owned(),
        reason,
    };
    let mut fields = BTreeMap::new();
    if !spec.contains('=') {
        if spec.is_empty() {
            return Err(err(
                "empty: expected type=registry,ref=REF or a reference".into()
            ));
        }
        fields.insert("type".to_owned(), "registry".to_owned());
        fields.insert("ref".to_owned(), spec.to_owned());
        return Ok(fields);
    }
    for kv in spec.split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(err(format!("{kv:?} is not KEY=VALUE")));
        };
        if fields.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(err(format!("{k} is given twice")));
        }
    }
    Ok(fields)
}

fn check_keys(
    flag: &'static str,
    spec: &str,
    fields: &BTreeMap<String, String>,
    allowed: &[&str],
) -> Result<(), CacheSpecError> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(CacheSpecError {
            flag,
            spec: spec.to_owned(),
            reason: format!(
                "hoist does not know {key}= here; the keys it takes are {}",
                allowed.join(", ")
            ),
        }),
        None => Ok(()),
    }
}

fn location(
    flag: &'static str,
    spec: &str,
    fields: &BTreeMap<String, String>,
    dir_key: &str,
) -> Result<CacheLocation, CacheSpecError> {
    let err = |reason: String| CacheSpecError {
        flag,
        spec: spec.to_owned(),
        reason,
    };
    match fields.get("type").map(String::as_str) {
        Some("registry") => {
            let raw = fields
                .get("ref")
                .ok_or_else(|| err("type=registry needs ref=REF".into()))?;
            let reference: Reference = raw.parse().map_err(|e| err(format!("ref={raw}: {e}")))?;
            Ok(CacheLocation::Registry(reference))
        }
        Some("local") => {
            let dir = fields
                .get(dir_key)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| err(format!("type=local needs {dir_key}=DIR")))?;
            Ok(CacheLocation::Local(PathBuf::from(dir)))
        }
        Some("inline") if flag == "--cache-to" => Ok(CacheLocation::Inline),
        Some(other) => Err(err(format!(
            "unknown cache type {other:?}: expected registry or local{}",
            if flag == "--cache-to" {
                " or inline"
            } else {
                ""
            }
        ))),
        None => Err(err(
            "no type=: expected type=registry,ref=REF or type=local".into(),
        )),
    }
}

impl CacheImport {
    /// Parses a `--cache-from` as buildx does: `type=registry,ref=REF`, a bare `REF`, or
    /// `type=local,src=DIR`.
    ///
    /// # Errors
    /// An unknown type or key, or a missing `ref=`/`src=`.
    pub fn parse(spec: &str) -> Result<Self, CacheSpecError> {
        const FLAG: &str = "--cache-from";
        let fields = spec_fields(FLAG, spec)?;
        let allowed: &[&str] = match fields.get("type").map(String::as_str) {
            Some("local") => &["type", "src"],
            _ => &["type", "ref"],
        };
        check_keys(FLAG, spec, &fields, allowed)?;
        Ok(Self {
            location: location(FLAG, spec, &fields, "src")?,
        })
    }
}

impl CacheExport {
    /// Parses a `--cache-to`: `type=registry,ref=REF` or `type=local,dest=DIR`, with
    /// `mode=min|max`, `compression=gzip|zstd|uncompressed`, `compression-level=N` and
    /// `ignore-error=true|false`.
    ///
    /// # Errors
    /// An unknown type or key, or a value out of range; the message lists the valid ones.
    pub fn parse(spec: &str) -> Result<Self, CacheSpecError> {
        const FLAG: &str = "--cache-to";
        let fields = spec_fields(FLAG, spec)?;
        let err = |reason: String| CacheSpecError {
            flag: FLAG,
            spec: spec.to_owned(),
            reason,
        };
        if fields.get("type").map(String::as_str) == Some("inline") {
            check_keys(FLAG, spec, &fields, &["type", "mode"])?;
            if fields.get("mode").is_some_and(|m| m != "min") {
                return Err(err(
                    "type=inline takes mode=min only: the image carries its own steps".into(),
                ));
            }
            return Ok(Self {
                location: CacheLocation::Inline,
                mode: ExportMode::Min,
                compression: None,
                ignore_error: false,
                mounts: false,
                mounts_max: DEFAULT_MOUNTS_MAX,
            });
        }
        let common = [
            "type",
            "mode",
            "compression",
            "compression-level",
            "ignore-error",
            "mounts",
            "mounts-max",
        ];
        let place = if fields.get("type").map(String::as_str) == Some("local") {
            "dest"
        } else {
            "ref"
        };
        let allowed: Vec<&str> = common.iter().copied().chain([place]).collect();
        check_keys(FLAG, spec, &fields, &allowed)?;
        let mode = match fields.get("mode").map(String::as_str) {
            None | Some("min") => ExportMode::Min,
            Some("max") => ExportMode::Max,
            Some(other) => return Err(err(format!("mode={other}: expected min or max"))),
        };
        let ignore_error = match fields.get("ignore-error").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(err(format!("ignore-error={other}: expected true or false")));
            }
        };
        let mounts = match fields.get("mounts").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(err(format!("mounts={other}: expected true or false"))),
        };
        let mounts_max = match fields.get("mounts-max") {
            None => DEFAULT_MOUNTS_MAX,
            Some(v) => parse_size(v).ok_or_else(|| {
                err(format!(
                    "mounts-max={v}: expected a size in bytes, or with k, m or g"
                ))
            })?,
        };
        Ok(Self {
            location: location(FLAG, spec, &fields, "dest")?,
            mode,
            compression: parse_compression(&fields).map_err(err)?,
            ignore_error,
            mounts,
            mounts_max,
        })
    }
}

/// `compression=` and `compression-level=` as buildx takes them (for `-o` and `--cache-to`):
/// `None` when neither is given.
///
/// # Errors
/// An unknown codec, or a level outside the codec's range; the message says which values are.
pub fn parse_compression(
    fields: &BTreeMap<String, String>,
) -> Result<Option<CompressionOptions>, String> {
    let compression = match fields.get("compression").map(String::as_str) {
        None => None,
        Some("gzip") => Some(Compression::Gzip),
        Some("zstd") => Some(Compression::Zstd),
        Some("uncompressed") => Some(Compression::None),
        Some(other) => {
            return Err(format!(
                "compression={other}: expected gzip, zstd or uncompressed"
            ));
        }
    };
    let level = match fields.get("compression-level") {
        None => None,
        Some(v) => {
            let range = match compression.unwrap_or_default() {
                Compression::Gzip => 0..=9,
                Compression::Zstd => 1..=22,
                Compression::None => {
                    return Err("compression-level= needs compression=gzip or zstd".to_owned());
                }
            };
            let level = v.parse::<i32>().ok().filter(|n| range.contains(n));
            Some(level.ok_or_else(|| {
                format!(
                    "compression-level={v}: expected {} to {} for {}",
                    range.start(),
                    range.end(),
                    fields.get("compression").map_or("gzip", String::as_str)
                )
            })?)
        }
    };
    Ok(match (compression, level) {
        (None, None) => None,
        (c, level) => Some(CompressionOptions {
            level,
            ..CompressionOptions::new(c.unwrap_or_default())
        }),
    })
}

/// Where an imported blob can be had.
#[derive(Debug)]
pub(crate) struct BlobSource {
    pub(crate) from: SourceKind,
    /// The import it came from: a blob that fails is marked bad there.
    pub(crate) bad: Arc<BadBlobs>,
}

#[derive(Debug)]
pub(crate) enum SourceKind {
    Registry {
        client: Arc<Client>,
        reference: Reference,
    },
    Dir(CacheDir),
}

/// Blobs of an import that could not be had or did not match; entries naming them are
/// misses from then on.
#[derive(Debug, Default)]
pub struct BadBlobs {
    blobs: Mutex<HashSet<Digest>>,
}

impl BadBlobs {
    pub(crate) fn mark(&self, digest: &Digest) {
        lock(&self.blobs).insert(digest.clone());
    }

    fn contains(&self, digest: &Digest) -> bool {
        lock(&self.blobs).contains(digest)
    }

    /// How many blobs are marked.
    #[must_use]
    pub fn count(&self) -> usize {
        lock(&self.blobs).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The caches of one build's `--cache-from`, merged: the first that has a key wins.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    entries: HashMap<String, (Vec<Layer>, usize)>,
    sources: Vec<Arc<BlobSource>>,
    /// Cache mounts: id → (entry, source index).
    mounts: BTreeMap<String, (exchange::MountEntry, usize)>,
    /// What the exporting builds recorded of each step, for the reason of a step that misses
    /// here: (stage, position, from-image) → inputs, the first cache's first.
    inputs: HashMap<(String, u32, bool), hoist_solver::scheduler::StepInputs>,
    /// The same by cache key, as exported, so that a build that only hit passes them on
    /// when it exports again.
    inputs_by_key: HashMap<String, serde_json::Value>,
}

type DocumentsFuture = Shared<SharedInner<'static, Arc<Imported>>>;

/// The `--cache-from` caches of one build, as the scheduler's second cache.
#[derive(Clone)]
pub struct ImportedCache {
    state: Arc<State>,
    documents: DocumentsFuture,
    pub bad: Arc<BadBlobs>,
}

impl std::fmt::Debug for ImportedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedCache").finish_non_exhaustive()
    }
}

/// What reading one cache said, for the build's progress.
pub type ImportReport = Box<dyn Fn(&CacheLocation, Result<usize, String>) + Send + Sync>;

impl ImportedCache {
    /// Starts fetching the documents of `imports` in the background. `report` hears, once per
    /// cache, how many records it had or why it could not be read.
    #[must_use]
    pub fn start(
        state: Arc<State>,
        registry: Arc<Client>,
        imports: Vec<CacheImport>,
        report: ImportReport,
    ) -> Self {
        let bad = Arc::new(BadBlobs::default());
        let documents = {
            let state = Arc::clone(&state);
            let bad = Arc::clone(&bad);
            let task = tokio::spawn(async move {
                let mut imported = Imported::default();
                for import in imports {
                    let loaded = load(&state, &registry, &import.location).await;
                    match loaded {
                        Ok((doc, from)) => {
                            report(&import.location, Ok(doc.records.len()));
                            let source = imported.sources.len();
                            imported.sources.push(Arc::new(BlobSource {
                                from,
                                bad: Arc::clone(&bad),
                            }));
                            for (key, entry) in doc.records {
                                if let Some(v) = &entry.inputs {
                                    imported
                                        .inputs_by_key
                                        .entry(key.clone())
                                        .or_insert(v.clone());
                                }
                                if let Some(inputs) = entry.inputs.and_then(|v| {
                                    serde_json::from_value::<hoist_solver::scheduler::StepInputs>(v)
                                        .ok()
                                }) {
                                    let id = &inputs.identity;
                                    let at = (id.stage.clone(), id.position, id.from_image);
                                    imported.inputs.entry(at).or_insert(inputs);
                                }
                                let layers = entry
                                    .layers
                                    .into_iter()
                                    .map(|l| Layer {
                                        diff_id: l.diff_id,
                                        blob: l.blob.as_ref().map(BlobRecord::descriptor),
                                    })
                                    .collect();
                                imported.entries.entry(key).or_insert((layers, source));
                            }
                            for (id, mount) in doc.mounts {
                                imported.mounts.entry(id).or_insert((mount, source));
                            }
                        }
                        Err(e) => report(&import.location, Err(e)),
                    }
                }
                Arc::new(imported)
            });
            async move { task.await.unwrap_or_default() }
                .boxed()
                .shared()
        };
        Self {
            state,
            documents,
            bad,
        }
    }

    /// The layers recorded under `key`, with their sources registered, unless a blob of them
    /// was found bad.
    async fn entry(&self, key: &str) -> Option<Vec<Layer>> {
        let imported = self.documents.clone().await;
        let (layers, source) = imported.entries.get(key)?;
        if layers
            .iter()
            .filter_map(|l| l.blob.as_ref())
            .any(|b| self.bad.contains(b.digest()))
        {
            return None;
        }
        let source = &imported.sources[*source];
        self.state.add_blob_sources(
            layers
                .iter()
                .filter_map(|l| l.blob.as_ref())
                .map(|b| (b.digest().clone(), Arc::clone(source))),
        );
        Some(layers.clone())
    }

    /// The exported contents of cache mount `id` (blob, diffID), with the blob's source
    /// registered, when an imported cache has them.
    pub async fn mount(&self, id: &str) -> Option<(Descriptor, Digest)> {
        let imported = self.documents.clone().await;
        let (entry, source) = imported.mounts.get(id)?;
        let blob = entry.blob.descriptor();
        if self.bad.contains(blob.digest()) {
            return None;
        }
        self.state.add_blob_sources(std::iter::once((
            blob.digest().clone(),
            Arc::clone(&imported.sources[*source]),
        )));
        Some((blob, entry.diff_id.clone()))
    }

    /// The inputs the exporting build recorded for the step at `identity` (matched by stage
    /// and position: the exporter's Dockerfile path is another machine's), as if this build's
    /// Dockerfile had recorded them.
    pub async fn previous(
        &self,
        identity: &hoist_solver::scheduler::StepIdentity,
    ) -> Option<hoist_solver::scheduler::StepInputs> {
        let imported = self.documents.clone().await;
        let at = (
            identity.stage.clone(),
            identity.position,
            identity.from_image,
        );
        let mut inputs = imported.inputs.get(&at)?.clone();
        inputs.identity.dockerfile.clone_from(&identity.dockerfile);
        Some(inputs)
    }

    /// The inputs the caches recorded, by key, for an export that passes them on.
    pub(crate) async fn inputs_by_key(&self) -> Arc<Imported> {
        self.documents.clone().await
    }

    /// The layers recorded under `key`, for an export of a step that this build did not need.
    pub async fn chain_of(&self, key: &CacheKey) -> Option<Vec<Layer>> {
        self.entry(&key.to_string()).await
    }
}

impl Cache<Output> for ImportedCache {
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
    ) -> BoxFuture<'a, Result<Option<Output>, BoxError>> {
        Box::pin(async move {
            Ok(self
                .entry(&key.to_string())
                .await
                .map(|layers| Output::Chain(Arc::new(layers))))
        })
    }

    fn record<'a>(
        &'a self,
        _key: &'a CacheKey,
        _vertex: &'a Vertex,
        _result: &'a Output,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Reads one cache's document; the error is the one-line warning the user sees.
async fn load(
    state: &Arc<State>,
    registry: &Arc<Client>,
    location: &CacheLocation,
) -> Result<(CacheDocument, SourceKind), String> {
    let what = location.to_string();
    match location {
        CacheLocation::Registry(reference) => {
            let manifest = registry
                .fetch_manifest(reference)
                .await
                .map_err(|e| error_text(&e))?;
            let document = match exchange::document_of(&manifest.bytes, &what) {
                Ok(document) => document,
                Err(not_a_cache) => {
                    let doc = inline_document(state, registry, reference, &manifest.bytes, &what)
                        .await?
                        .ok_or_else(|| not_a_cache.to_string())?;
                    return Ok((
                        doc,
                        SourceKind::Registry {
                            client: Arc::clone(registry),
                            reference: reference.clone(),
                        },
                    ));
                }
            };
            registry
                .fetch_blob(reference, &document, state.registry_store())
                .await
                .map_err(|e| error_text(&e))?;
            let bytes = state
                .blobs
                .read(document.digest())
                .map_err(|e| error_text(&e))?;
            let doc = CacheDocument::decode(&bytes, &what).map_err(|e| e.to_string())?;
            Ok((
                doc,
                SourceKind::Registry {
                    client: Arc::clone(registry),
                    reference: reference.clone(),
                },
            ))
        }
        CacheLocation::Inline => {
            Err("an inline cache is read through the image's reference".into())
        }
        CacheLocation::Local(dir) => {
            let dir = CacheDir::new(dir);
            let read = {
                let dir = dir.clone();
                let what = what.clone();
                tokio::task::spawn_blocking(move || -> Result<CacheDocument, String> {
                    let manifest = dir.manifest().map_err(|e| error_text(&e))?;
                    let bytes = read_verified(&dir, &manifest, exchange::MAX_DOCUMENT_BYTES)?;
                    let document =
                        exchange::document_of(&bytes, &what).map_err(|e| e.to_string())?;
                    let bytes = read_verified(&dir, &document, exchange::MAX_DOCUMENT_BYTES)?;
                    CacheDocument::decode(&bytes, &what).map_err(|e| e.to_string())
                })
            };
            let doc = read
                .await
                .map_err(|_| "reading the cache panicked".to_owned())??;
            Ok((doc, SourceKind::Dir(dir)))
        }
    }
}

/// The cache document an image carries in its config (`--cache-to type=inline`), if it is an
/// image that has one.
async fn inline_document(
    state: &Arc<State>,
    registry: &Arc<Client>,
    reference: &Reference,
    manifest: &[u8],
    what: &str,
) -> Result<Option<CacheDocument>, String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Option<Descriptor>,
    }
    let Some(config) = serde_json::from_slice::<Manifest>(manifest)
        .ok()
        .and_then(|m| m.config)
        .filter(|c| {
            c.media_type().as_ref() == hoist_cache::content::DOCKER_CONFIG
                || *c.media_type() == hoist_cache::oci_spec::image::MediaType::ImageConfig
        })
    else {
        return Ok(None);
    };
    if config.size() > exchange::MAX_DOCUMENT_BYTES {
        return Ok(None);
    }
    registry
        .fetch_blob(reference, &config, state.registry_store())
        .await
        .map_err(|e| error_text(&e))?;
    let bytes = state
        .blobs
        .read(config.digest())
        .map_err(|e| error_text(&e))?;
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let Some(inline) = parsed.get(exchange::INLINE_KEY) else {
        return Ok(None);
    };
    let text = serde_json::to_vec(inline).map_err(|e| e.to_string())?;
    CacheDocument::decode(&text, what)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A small blob of a cache directory, checked against its descriptor.
fn read_verified(dir: &CacheDir, d: &Descriptor, max: u64) -> Result<Vec<u8>, String> {
    let path = dir.blob_path(d.digest());
    if d.size() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    let bytes = fs_err::read(&path).map_err(|e| e.to_string())?;
    if hoist_cache::sha256_of(&bytes) != *d.digest() {
        return Err(format!(
            "{} does not match its digest {}",
            path.display(),
            d.digest()
        ));
    }
    Ok(bytes)
}

/// An error with its causes on one line.
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    hoist_solver::progress::error_text(e).replace('\n', ": ")
}

/// Fetches one imported blob into the content store, verified against its digest and size.
pub(crate) async fn fetch(
    state: &Arc<State>,
    source: &BlobSource,
    blob: &Descriptor,
) -> Result<(), String> {
    match &source.from {
        SourceKind::Registry { client, reference } => client
            .fetch_blob(reference, blob, state.registry_store())
            .await
            .map(|_| ())
            .map_err(|e| error_text(&e)),
        SourceKind::Dir(dir) => {
            let path = dir.blob_path(blob.digest());
            let state = Arc::clone(state);
            let blob = blob.clone();
            tokio::task::spawn_blocking(move || {
                let mut file = fs_err::File::open(&path).map_err(|e| e.to_string())?;
                state
                    .blobs
                    .ingest_for(&blob, &mut file)
                    .map(|_| ())
                    .map_err(|e| format!("{}: {}", path.display(), error_text(&e)))
            })
            .await
            .map_err(|_| "the copy panicked".to_owned())?
        }
    }
}

/// What a build exports to each `--cache-to`.
#[derive(Debug)]
pub struct ExportContents<'a> {
    /// Cache key → the step's layer chain.
    pub records: Vec<(CacheKey, Arc<Vec<Layer>>)>,
    /// How layers without a blob are compressed, unless the export says otherwise.
    pub compression: CompressionOptions,
    /// The image's pushed names: their repositories lend their blobs (mounts).
    pub pushed: &'a [Reference],
    /// The build's cache mounts (id, source), for `mounts=true`.
    pub mounts: Vec<(String, String)>,
    /// The build's `--cache-from`: what a step that only hit was made from comes from there.
    pub imported: Option<&'a ImportedCache>,
}

/// What an export did, for the progress log.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub records: usize,
    /// Cache mounts exported, and those left out for their size (id, bytes).
    pub mounts: usize,
    pub skipped_mounts: Vec<(String, u64)>,
    pub blobs: usize,
    /// Blobs the target did not have, sent now.
    pub uploaded: usize,
    pub bytes_sent: u64,
    pub manifest: Option<Digest>,
}

/// Writes the cache of `records` (key → chain) to `export`'s location. Layers without a blob
/// get one (compressed as `compression`, remembered like an image's). Only what the target
/// lacks is sent: a registry is asked for each blob (HEAD, in parallel), a local cache is
/// checked for each file; blobs that a `--cache-from` of the same registry holds are mounted
/// without passing through here.
///
/// # Errors
/// A blob cannot be made or fetched, or the target refuses what is written.
pub async fn export(
    state: &Arc<State>,
    registry: &Arc<Client>,
    export: &CacheExport,
    what: ExportContents<'_>,
) -> Result<ExportReport, WorkerError> {
    let ExportContents {
        records,
        compression,
        pushed,
        mounts,
        imported,
    } = what;
    let mut report_skipped = Vec::new();
    let inputs = Inputs::Exported(match imported {
        Some(i) => Some(i.inputs_by_key().await),
        None => None,
    });
    let compression = export.compression.unwrap_or(compression);
    let mut doc = document(state, records, compression, inputs).await?;
    if export.mounts {
        let (entries, skipped) = mount_entries(state, mounts, export.mounts_max).await?;
        doc.mounts = entries;
        report_skipped = skipped;
    }
    let blobs = doc.blobs();
    let encoded = doc.encode().map_err(export_err(export))?;
    let (doc_digest, doc_size) = state.blobs.put(&encoded).map_err(store_err)?;
    let document = exchange::document_descriptor(doc_digest, doc_size);
    let manifest_bytes = exchange::manifest_json(&document, &blobs).map_err(export_err(export))?;
    let (m_digest, m_size) = state.blobs.put(&manifest_bytes).map_err(store_err)?;
    let manifest = exchange::manifest_descriptor(m_digest.clone(), m_size);
    let mut report = ExportReport {
        records: doc.records.len(),
        mounts: doc.mounts.len(),
        skipped_mounts: report_skipped,
        blobs: blobs.len(),
        manifest: Some(m_digest),
        ..ExportReport::default()
    };
    match &export.location {
        CacheLocation::Registry(reference) => {
            let mut mount_from = state.prepare_push(reference, &blobs).await?;
            // The image pushed just before holds most of the blobs: mount them from it.
            for image in pushed
                .iter()
                .filter(|p| p.registry() == reference.registry())
            {
                if !mount_from.iter().any(|r| r == image.repository()) {
                    mount_from.push(image.repository().to_owned());
                }
            }
            let pushed = registry
                .push(
                    reference,
                    &manifest,
                    state.registry_store(),
                    &PushOptions { mount_from },
                )
                .await
                .map_err(|source| WorkerError::CacheExport {
                    target: reference.to_string(),
                    reason: error_text(&source),
                })?;
            report.uploaded = pushed
                .blobs
                .iter()
                .filter(|(_, b)| matches!(b, hoist_registry::BlobPush::Uploaded { .. }))
                .count();
            report.bytes_sent = pushed.bytes_sent();
        }
        CacheLocation::Inline => {
            return Err(WorkerError::Internal(
                "an inline cache is written with the image config",
            ));
        }
        CacheLocation::Local(dir) => {
            let dir = CacheDir::new(dir);
            let mut wanted = blobs.clone();
            wanted.push(document.clone());
            wanted.push(manifest.clone());
            let missing: Vec<Descriptor> = wanted
                .into_iter()
                .filter(|b| {
                    fs_err::metadata(dir.blob_path(b.digest()))
                        .map(|m| m.len())
                        .ok()
                        != Some(b.size())
                })
                .collect();
            state.fetch_blobs(&missing).await?;
            let state = Arc::clone(state);
            let sent = tokio::task::spawn_blocking(move || -> Result<(usize, u64), WorkerError> {
                let mut bytes = 0;
                for blob in &missing {
                    bytes += copy_blob(&state, &dir, blob)?;
                }
                dir.set_manifest(&manifest)
                    .map_err(|e| WorkerError::CacheExport {
                        target: dir.root.display().to_string(),
                        reason: error_text(&e),
                    })?;
                Ok((missing.len(), bytes))
            })
            .await
            .map_err(|_| WorkerError::Internal("writing the cache panicked"))??;
            // The document and manifest are counted with the blobs.
            report.uploaded = sent.0;
            report.bytes_sent = sent.1;
        }
    }
    Ok(report)
}

/// The cache document of `records` (key → chain): each layer with its blob, made now
/// (compressed as `compression`, and remembered as for an image) where it has none yet.
///
/// # Errors
/// A layer's snapshot is gone, or its blob cannot be stored.
pub(crate) async fn document(
    state: &Arc<State>,
    records: Vec<(CacheKey, Arc<Vec<Layer>>)>,
    compression: CompressionOptions,
    inputs: Inputs,
) -> Result<CacheDocument, WorkerError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || -> Result<CacheDocument, WorkerError> {
        let options = hoist_cache::DiffOptions {
            compression,
            source_date_epoch: None,
        };
        let mut doc = CacheDocument::new();
        let index = state.index()?;
        for (key, chain) in records {
            let blobs = state.layer_blobs(&chain, &options)?;
            let layers = chain
                .iter()
                .zip(blobs)
                .map(|(l, b)| LayerRecord {
                    diff_id: l.diff_id.clone(),
                    blob: Some(BlobRecord::from(&b)),
                })
                .collect();
            let entry = CacheEntry {
                layers,
                inputs: match &inputs {
                    Inputs::None => None,
                    Inputs::Exported(imported) => exported_inputs(index, &key).or_else(|| {
                        imported
                            .as_ref()
                            .and_then(|i| i.inputs_by_key.get(&key.to_string()).cloned())
                    }),
                },
            };
            doc.records.insert(key.to_string(), entry);
        }
        Ok(doc)
    })
    .await
    .map_err(|_| WorkerError::Internal("making the cache's blobs panicked"))?
}

/// The build's cache mounts (id, source), each as a zstd tar in the content store; those
/// bigger than `max` are left out and returned apart.
async fn mount_entries(
    state: &Arc<State>,
    mounts: Vec<(String, String)>,
    max: u64,
) -> Result<(BTreeMap<String, exchange::MountEntry>, Vec<(String, u64)>), WorkerError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let cache_mounts = crate::cache_mounts::CacheMounts::new(Arc::clone(&state));
        let mut entries = BTreeMap::new();
        let mut skipped = Vec::new();
        for (id, source) in mounts {
            if entries.contains_key(&id) {
                continue;
            }
            let Some(lease) = cache_mounts.for_export(&id, &source)? else {
                continue;
            };
            let bytes = crate::cache_mounts::tree_bytes(lease.path());
            if bytes > max {
                skipped.push((id, bytes));
                continue;
            }
            let options = hoist_cache::DiffOptions {
                compression: CompressionOptions::new(Compression::Zstd),
                source_date_epoch: None,
            };
            let digests = hoist_cache::store_upperdir_layer(&state.blobs, lease.path(), &options)
                .map_err(|source| WorkerError::Diff {
                path: lease.path().to_path_buf(),
                source,
            })?;
            entries.insert(
                id,
                exchange::MountEntry {
                    blob: BlobRecord {
                        digest: digests.digest,
                        size: digests.size,
                        media_type: hoist_cache::oci_spec::image::MediaType::Other(
                            exchange::MOUNT_MEDIA_TYPE.to_owned(),
                        ),
                    },
                    diff_id: digests.diff_id,
                },
            );
        }
        Ok((entries, skipped))
    })
    .await
    .map_err(|_| WorkerError::Internal("exporting the cache mounts panicked"))?
}

/// Whether a cache document carries what its steps were made from (for the reasons of later
/// misses).
#[derive(Debug)]
pub(crate) enum Inputs {
    /// Not at all: an inline cache is part of the image, which must not depend on where or
    /// after what it was built.
    None,
    /// This root's records, else those of the imported caches.
    Exported(Option<Arc<Imported>>),
}

/// The most bytes a step's recorded inputs take in an exported cache; beyond, its list of
/// context files is left out (a later miss then says that files changed, without names).
const MAX_INPUTS_BYTES: usize = 64 << 10;

/// What this root recorded of the step with `key`, for the cache document: the reason of a
/// later miss on another machine compares with it.
fn exported_inputs(
    index: &hoist_cache::index::CacheIndex,
    key: &CacheKey,
) -> Option<serde_json::Value> {
    let mut inputs = crate::history::inputs_of(index, key).ok()??;
    // Where the Dockerfile was on this machine is nobody else's business; an importer
    // matches steps by stage and position.
    inputs.identity.dockerfile.clear();
    let size = serde_json::to_vec(&inputs)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_INPUTS_BYTES {
        for input in &mut inputs.inputs {
            if let Some(files) = &mut input.files {
                files.files.clear();
                files.truncated = true;
            }
        }
    }
    serde_json::to_value(&inputs).ok()
}

/// Copies a blob of the content store into a cache directory, atomically.
fn copy_blob(state: &State, dir: &CacheDir, blob: &Descriptor) -> Result<u64, WorkerError> {
    let dest = dir.blob_path(blob.digest());
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| WorkerError::Io { op, path, source }
    };
    let parent = dest
        .parent()
        .ok_or(WorkerError::Internal("a blob path has no parent"))?;
    fs_err::create_dir_all(parent).map_err(io("create", parent))?;
    let src = state.blobs.blob_path(blob.digest()).map_err(store_err)?;
    let tmp = parent.join(format!(".{}.tmp", blob.digest().digest()));
    let n = fs_err::copy(&src, &tmp).map_err(io("copy into", &tmp))?;
    fs_err::rename(&tmp, &dest).map_err(io("rename into place", &dest))?;
    Ok(n)
}

fn store_err(e: hoist_cache::StoreError) -> WorkerError {
    WorkerError::Io {
        op: "store the cache document in",
        path: PathBuf::from("blobs"),
        source: std::io::Error::other(e),
    }
}

fn export_err(export: &CacheExport) -> impl Fn(exchange::ExchangeError) -> WorkerError + '_ {
    move |e| WorkerError::CacheExport {
        target: export.location.to_string(),
        reason: error_text(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_buildx_writes_them() {
        let i = CacheImport::parse("localhost:5000/app:cache").unwrap();
        assert!(matches!(i.location, CacheLocation::Registry(r) if r.repository() == "app"));
        let i = CacheImport::parse("type=local,src=/tmp/c").unwrap();
        assert_eq!(i.location, CacheLocation::Local("/tmp/c".into()));
        let e = CacheExport::parse(
            "type=registry,ref=localhost:5000/app:cache,mode=max,compression=zstd,ignore-error=true",
        )
        .unwrap();
        assert_eq!(e.mode, ExportMode::Max);
        assert!(e.ignore_error);
        assert_eq!(e.compression.unwrap().compression, Compression::Zstd);
        let e = CacheExport::parse("type=local,dest=/tmp/c").unwrap();
        assert_eq!(e.mode, ExportMode::Min);
    }

    #[test]
    fn bad_specs_say_what_is_valid() {
        for (spec, says) in [
            ("type=gha", "expected registry or local"),
            ("type=registry", "needs ref=REF"),
            ("type=local", "needs dest=DIR"),
            ("type=registry,ref=r/a,mode=all", "expected min or max"),
            ("type=registry,ref=r/a,colour=red", "the keys it takes are"),
            (
                "type=registry,ref=r/a,compression-level=30,compression=zstd",
                "1 to 22",
            ),
            ("type=inline,mode=max", "mode=min only"),
            (
                "type=registry,ref=r/a,mounts=yes",
                "mounts=yes: expected true or false",
            ),
            (
                "type=registry,ref=r/a,mounts-max=lots",
                "mounts-max=lots: expected a size",
            ),
        ] {
            let err = CacheExport::parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
        let err = CacheImport::parse("type=local,dest=/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("src"), "{err}");
    }
}
