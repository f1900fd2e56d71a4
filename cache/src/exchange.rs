//! The portable build cache: what `--cache-to` writes and `--cache-from` reads.
//!
//! A cache is an OCI 1.1 artifact: an image manifest whose `artifactType` is
//! [`ARTIFACT_TYPE`], whose config is the cache document ([`CacheDocument`], media type
//! [`DOCUMENT_MEDIA_TYPE`]), and whose layers are the layer blobs the document names, as they
//! are in the images that use them. The spec is `docs/cache-format.md`.
//!
//! The document maps a step's cache key to the layer chain that rebuilds its filesystem. Keys
//! are hoist's own (see the solver's `CacheKey`): BuildKit's keys digest its LLB encoding and
//! could never match, so its `cacheconfig.v0` is neither read nor written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, MediaType};
use serde::{Deserialize, Serialize};

use crate::index::{BlobRecord, LayerRecord};

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.hoist.cache.v1";
/// The media type of the cache document (the manifest's config).
pub const DOCUMENT_MEDIA_TYPE: &str = "application/vnd.hoist.cache.document.v1+json";
/// The media type of an exported cache mount's contents (a zstd tar).
pub const MOUNT_MEDIA_TYPE: &str = "application/vnd.hoist.cache.mount.v1.tar+zstd";
/// The top-level key of an image config that carries an inline cache document
/// (`--cache-to type=inline`).
pub const INLINE_KEY: &str = "io.hoist.cache.v1";
/// The version of the document this hoist writes, and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The most bytes a cache document may have: it is read whole, before any step runs.
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// The cache document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDocument {
    /// [`FORMAT_VERSION`]; a reader refuses any other.
    pub version: u32,
    /// Cache key (`sha256:…`) → what the step produced.
    pub records: BTreeMap<String, CacheEntry>,
    /// Cache mount id → its exported contents (`--cache-to …,mounts=true`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mounts: BTreeMap<String, MountEntry>,
}

/// One step's result: its layer chain, bottom first. Every layer has its blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub layers: Vec<LayerRecord>,
    /// What the step's key was made of, for explaining a later miss; opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
}

/// One cache mount's exported contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// The tar (zstd) of the mount's directory.
    pub blob: BlobRecord,
    /// sha256 of the uncompressed tar: an unchanged mount is not uploaded again.
    #[serde(with = "crate::index::sha256")]
    pub diff_id: Digest,
}

/// A cache that cannot be read. Every variant says what was wrong with which cache; the build
/// that meets one warns and goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{what} is not a hoist cache: {reason}")]
    NotACache { what: String, reason: String },
    #[error(
        "{what} is a hoist cache of format version {found}; this hoist reads version \
         {FORMAT_VERSION} (export the cache again with this hoist)"
    )]
    Version { what: String, found: u32 },
    #[error("{what}: the cache document does not decode")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{what}: the cache document is {size} bytes, more than the {MAX_DOCUMENT_BYTES} allowed"
    )]
    TooLarge { what: String, size: u64 },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the cache document")]
    Encode(#[source] serde_json::Error),
}

impl CacheDocument {
    /// An empty document of this version.
    #[must_use]
    pub fn new() -> Self {
        Self {
            version: FORMAT_VERSION,
            ..Self::default()
        }
    }

    /// Reads a document; `what` names the cache in errors. Every record must name sha256
    /// digests and give every layer its blob.
    ///
    /// # Errors
    /// Not JSON, another version, or a record that is not whole.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self, ExchangeError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let versioned: Versioned =
            serde_json::from_slice(bytes).map_err(|source| ExchangeError::Decode {
                what: what.to_owned(),
                source,
            })?;
        match versioned.version {
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(ExchangeError::Version {
                    what: what.to_owned(),
                    found,
                });
            }
            None => {
                return Err(ExchangeError::NotACache {
                    what: what.to_owned(),
                    reason: "its document has no version".to_owned(),
                });
            }
        }
        let doc: Self = serde_json::from_slice(bytes).map_err(|source| ExchangeError::Decode {
            what: what.to_owned(),
            source,
        })?;
        for (key, entry) in &doc.records {
            let valid_key = key
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
            if !valid_key {
                return Err(ExchangeError::Invalid {
                    what: what.to_owned(),
                    reason: format!("record key {key:?} is not a sha256 cache key"),
                });
            }
            if entry.layers.iter().any(|l| l.blob.is_none()) {
                return Err(ExchangeError::Invalid {
                    what: what.to_owned(),
                    reason: format!("a layer of record {key} has no blob"),
                });
            }
        }
        Ok(doc)
    }

    /// The document as stored: canonical JSON, so an unchanged cache exports the same bytes.
    ///
    /// # Errors
    /// A digest that does not encode (not sha256).
    pub fn encode(&self) -> Result<Vec<u8>, ExchangeError> {
        crate::canonical_json(self).map_err(ExchangeError::Encode)
    }

    /// Every blob the document names, each once, in a stable order: the manifest's layers.
    #[must_use]
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        let records = self
            .records
            .values()
            .flat_map(|e| e.layers.iter().filter_map(|l| l.blob.as_ref()));
        let mounts = self.mounts.values().map(|m| &m.blob);
        for blob in records.chain(mounts) {
            if seen.insert(blob.digest.to_string()) {
                out.push(blob.descriptor());
            }
        }
        out
    }
}

/// The manifest of a cache whose document is `document` (a descriptor of the stored document)
/// and whose layers are `blobs`, as canonical JSON.
///
/// # Errors
/// The manifest does not encode.
pub fn manifest_json(
    document: &Descriptor,
    blobs: &[Descriptor],
) -> Result<Vec<u8>, ExchangeError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        schema_version: u32,
        media_type: &'static str,
        artifact_type: &'static str,
        config: &'a Descriptor,
        layers: &'a [Descriptor],
        annotations: BTreeMap<&'static str, String>,
    }
    let mut annotations = BTreeMap::new();
    annotations.insert("io.hoist.cache.version", FORMAT_VERSION.to_string());
    crate::canonical_json(&Manifest {
        schema_version: 2,
        media_type: crate::content::OCI_MANIFEST,
        artifact_type: ARTIFACT_TYPE,
        config: document,
        layers: blobs,
        annotations,
    })
    .map_err(ExchangeError::Encode)
}

/// The document descriptor of a cache manifest, after checking that the manifest is one.
///
/// # Errors
/// It is not a hoist cache manifest (another artifact, an image, an index).
pub fn document_of(manifest: &[u8], what: &str) -> Result<Descriptor, ExchangeError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest {
        artifact_type: Option<String>,
        config: Option<Descriptor>,
    }
    let not = |reason: &str| ExchangeError::NotACache {
        what: what.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed: Manifest = serde_json::from_slice(manifest)
        .map_err(|_| not("its manifest is not an OCI image manifest"))?;
    let config = parsed
        .config
        .ok_or_else(|| not("its manifest has no config"))?;
    if config.media_type() != &MediaType::Other(DOCUMENT_MEDIA_TYPE.to_owned()) {
        return Err(match parsed.artifact_type.as_deref() {
            Some(ARTIFACT_TYPE) => not("its config is not a cache document"),
            Some(other) => not(&format!("it is an artifact of type {other}")),
            None => not(&format!(
                "it is an image or artifact whose config is {}",
                config.media_type()
            )),
        });
    }
    if config.size() > MAX_DOCUMENT_BYTES {
        return Err(ExchangeError::TooLarge {
            what: what.to_owned(),
            size: config.size(),
        });
    }
    Ok(config)
}

/// The descriptor of the document as stored.
#[must_use]
pub fn document_descriptor(digest: Digest, size: u64) -> Descriptor {
    Descriptor::new(
        MediaType::Other(DOCUMENT_MEDIA_TYPE.to_owned()),
        size,
        digest,
    )
}

/// The descriptor of a cache manifest.
#[must_use]
pub fn manifest_descriptor(digest: Digest, size: u64) -> Descriptor {
    let mut d = Descriptor::new(MediaType::ImageManifest, size, digest);
    d.set_artifact_type(Some(MediaType::Other(ARTIFACT_TYPE.to_owned())));
    d
}

/// A local cache directory (`type=local`): an OCI image layout whose `index.json` names the
/// cache manifest; blobs under `blobs/sha256/`.
#[derive(Clone, Debug)]
pub struct CacheDir {
    pub root: PathBuf,
}

impl CacheDir {
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// Where a blob lives.
    #[must_use]
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    /// The cache manifest the layout's `index.json` names.
    ///
    /// # Errors
    /// No layout there, or its index names no cache manifest.
    pub fn manifest(&self) -> Result<Descriptor, ExchangeError> {
        let path = self.root.join("index.json");
        let bytes = fs_err::read(&path).map_err(|source| ExchangeError::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        #[derive(Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|source| ExchangeError::Decode {
                what: path.display().to_string(),
                source,
            })?;
        let artifact = MediaType::Other(ARTIFACT_TYPE.to_owned());
        index
            .manifests
            .into_iter()
            .find(|d| d.artifact_type().as_ref() == Some(&artifact))
            .ok_or_else(|| ExchangeError::NotACache {
                what: self.root.display().to_string(),
                reason: format!("{} names no hoist cache manifest", path.display()),
            })
    }

    /// Writes `index.json` (and `oci-layout`) naming `manifest`, atomically: a reader sees the
    /// old cache or the new one.
    ///
    /// # Errors
    /// The directory cannot be written.
    pub fn set_manifest(&self, manifest: &Descriptor) -> Result<(), ExchangeError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ExchangeError::Io { op, path, source }
        };
        fs_err::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let layout = self.root.join("oci-layout");
        fs_err::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| io("write", &layout)(e))?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::content::OCI_INDEX,
            "manifests": [manifest],
        });
        let bytes = serde_json::to_vec(&index).map_err(ExchangeError::Encode)?;
        let path = self.root.join("index.json");
        let tmp = self.root.join(".index.json.tmp");
        fs_err::write(&tmp, bytes).map_err(|e| io("write", &tmp)(e))?;
        fs_err::rename(&tmp, &path).map_err(|e| io("rename into place", &path)(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32])).parse().unwrap()
    }

    fn entry(n: u8) -> CacheEntry {
        CacheEntry {
            layers: vec![LayerRecord {
                diff_id: digest(n),
                blob: Some(BlobRecord {
                    digest: digest(n + 100),
                    size: 10,
                    media_type: MediaType::ImageLayerGzip,
                }),
            }],
            inputs: None,
        }
    }

    #[test]
    fn documents_round_trip_and_name_each_blob_once() {
        let mut doc = CacheDocument::new();
        doc.records.insert(digest(1).to_string(), entry(1));
        doc.records.insert(digest(2).to_string(), entry(1));
        let bytes = doc.encode().unwrap();
        assert_eq!(CacheDocument::decode(&bytes, "t").unwrap(), doc);
        assert_eq!(doc.blobs().len(), 1);
    }

    #[test]
    fn other_versions_and_partial_records_are_refused() {
        let err = CacheDocument::decode(br#"{"version":2,"records":{}}"#, "ref").unwrap_err();
        assert!(err.to_string().contains("format version 2"), "{err}");
        let err = CacheDocument::decode(br#"{"records":{}}"#, "ref").unwrap_err();
        assert!(err.to_string().contains("not a hoist cache"), "{err}");
        let bad = format!(
            r#"{{"version":1,"records":{{"{}":{{"layers":[{{"diff_id":"{}"}}]}}}}}}"#,
            digest(1),
            digest(2)
        );
        let err = CacheDocument::decode(bad.as_bytes(), "ref").unwrap_err();
        assert!(err.to_string().contains("has no blob"), "{err}");
        let bad = r#"{"version":1,"records":{"../x":{"layers":[]}}}"#;
        assert!(CacheDocument::decode(bad.as_bytes(), "ref").is_err());
    }

    #[test]
    fn only_cache_manifests_are_taken() {
        let doc = document_descriptor(digest(3), 5);
        let manifest = manifest_json(&doc, &[]).unwrap();
        assert_eq!(document_of(&manifest, "r").unwrap(), doc);
        let image = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::content::OCI_MANIFEST,
            "config": Descriptor::new(MediaType::ImageConfig, 5, digest(3)),
            "layers": [],
        });
        let err = document_of(&serde_json::to_vec(&image).unwrap(), "r").unwrap_err();
        assert!(err.to_string().contains("not a hoist cache"), "{err}");
    }
}
