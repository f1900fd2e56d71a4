//! Image assembly: layer descriptors, the image config (with `rootfs.diff_ids`, history and
//! Docker's extra fields), and the manifest, stored as canonical JSON in the content store.

use std::collections::HashMap;
use std::io;

use oci_spec::image::{
    Descriptor, Digest, History, ImageConfiguration, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::{Deserialize, Serialize};

use crate::compress::{Compression, LayerDigests};
use crate::content::{
    DOCKER_CONFIG, DOCKER_FOREIGN_LAYER_GZIP, DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_MANIFEST,
    is_manifest,
};
use crate::store::{BlobStore, StoreError};

/// Which family of media types an image is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTypes {
    /// OCI image spec media types (the default, `oci-mediatypes=true`).
    #[default]
    Oci,
    /// Docker image manifest v2 schema 2 (`oci-mediatypes=false`).
    Docker,
}

/// Errors of image assembly.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Docker schema 2 has no zstd layer media type.
    #[error("zstd layers need OCI media types (oci-mediatypes=true)")]
    ZstdNeedsOci,
    /// Encoding or decoding image JSON failed.
    #[error("{what} json for {digest}")]
    Json {
        /// What was being encoded or decoded ("manifest", "config").
        what: &'static str,
        /// The blob's digest, or "(new)" when encoding.
        digest: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A blob of the image could not be stored or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest or config is not one this store can use.
    #[error("unsupported {what} media type {media_type} in {digest}")]
    UnsupportedMediaType {
        /// What it was ("manifest", "layer").
        what: &'static str,
        /// The media type found.
        media_type: String,
        /// The blob's digest.
        digest: Digest,
    },
}

impl MediaTypes {
    /// The manifest media type.
    #[must_use]
    pub fn manifest(self) -> MediaType {
        match self {
            Self::Oci => MediaType::ImageManifest,
            Self::Docker => MediaType::Other(DOCKER_MANIFEST.into()),
        }
    }

    /// The config media type.
    #[must_use]
    pub fn config(self) -> MediaType {
        match self {
            Self::Oci => MediaType::ImageConfig,
            Self::Docker => MediaType::Other(DOCKER_CONFIG.into()),
        }
    }

    /// The layer media type for a compression.
    ///
    /// # Errors
    /// zstd with Docker media types, which have none for it.
    pub fn layer(self, compression: Compression) -> Result<MediaType, ImageError> {
        Ok(match (self, compression) {
            (Self::Oci, Compression::None) => MediaType::ImageLayer,
            (Self::Oci, Compression::Gzip) => MediaType::ImageLayerGzip,
            (Self::Oci, Compression::Zstd) => MediaType::ImageLayerZstd,
            (Self::Docker, Compression::None) => MediaType::Other(DOCKER_LAYER.into()),
            (Self::Docker, Compression::Gzip) => MediaType::Other(DOCKER_LAYER_GZIP.into()),
            (Self::Docker, Compression::Zstd) => return Err(ImageError::ZstdNeedsOci),
        })
    }
}

/// The compression a layer media type announces, if it is a layer type this crate knows.
#[must_use]
pub fn layer_compression(media_type: &MediaType) -> Option<Compression> {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Some(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Some(Compression::Zstd)
        }
        MediaType::Other(s) => match s.as_str() {
            DOCKER_LAYER => Some(Compression::None),
            DOCKER_LAYER_GZIP | DOCKER_FOREIGN_LAYER_GZIP => Some(Compression::Gzip),
            _ => None,
        },
        _ => None,
    }
}

/// The descriptor of a layer written by [`crate::LayerWriter`].
///
/// # Errors
/// zstd with Docker media types.
pub fn layer_descriptor(layer: &LayerDigests, media: MediaTypes) -> Result<Descriptor, ImageError> {
    Ok(Descriptor::new(
        media.layer(layer.compression)?,
        layer.size,
        layer.digest.clone(),
    ))
}

/// A Docker healthcheck (`HEALTHCHECK`), as Docker writes it in the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", cmd]`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub test: Vec<String>,
    /// Nanoseconds between checks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub interval: Option<i64>,
    /// Nanoseconds before a check is considered hung.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout: Option<i64>,
    /// Nanoseconds of start period.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_period: Option<i64>,
    /// Nanoseconds between checks during the start period.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_interval: Option<i64>,
    /// Consecutive failures before unhealthy.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retries: Option<i64>,
}

/// The config fields Docker keeps beyond the OCI spec: `Healthcheck`, `OnBuild`, `Shell`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfigExtras {
    /// `HEALTHCHECK`.
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers.
    pub on_build: Vec<String>,
    /// `SHELL`.
    pub shell: Vec<String>,
    /// hoist's inline build cache (`--cache-to type=inline`): a cache document, written at
    /// the config's top level under [`crate::exchange::INLINE_KEY`].
    pub inline_cache: Option<serde_json::Value>,
}

impl DockerConfigExtras {
    /// Reads the extras from raw config JSON (they are ignored by oci-spec's parser).
    #[must_use]
    pub fn from_config_json(raw: &[u8]) -> Self {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) else {
            return Self::default();
        };
        let cfg = &v["config"];
        let strings = |key: &str| -> Vec<String> {
            cfg[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            healthcheck: serde_json::from_value(cfg["Healthcheck"].clone()).ok(),
            on_build: strings("OnBuild"),
            shell: strings("Shell"),
            inline_cache: v.get(crate::exchange::INLINE_KEY).cloned(),
        }
    }
}

/// Appends a layer to a config: its diffID to `rootfs.diff_ids` and an entry to `history`.
pub fn append_layer(config: &mut ImageConfiguration, diff_id: &Digest, history: History) {
    config.rootfs_mut().diff_ids_mut().push(diff_id.to_string());
    let mut h = history;
    h.set_empty_layer(None);
    config.history_mut().get_or_insert_with(Vec::new).push(h);
}

/// Records a step that changed only the config (ENV, CMD, …): history with `empty_layer`.
pub fn append_empty_layer_history(config: &mut ImageConfiguration, history: History) {
    let mut h = history;
    h.set_empty_layer(Some(true));
    config.history_mut().get_or_insert_with(Vec::new).push(h);
}

/// JSON with object keys sorted at every level, so a digest does not depend on map order.
///
/// # Errors
/// The value cannot be serialized.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&sorted(serde_json::to_value(value)?))
}

/// `v` with the keys of every object in order. It takes the value over, so a large document is
/// not copied to be sorted.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Counts and hashes what is written, to learn a document's digest without keeping its bytes.
struct HashingSink {
    hasher: sha2::Sha256,
    size: u64,
}

impl io::Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(&mut self.hasher, buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `config` (plus Docker extras: Healthcheck, OnBuild, Shell) into the store as
/// canonical JSON. Returns its descriptor; its digest is the image ID.
///
/// # Errors
/// Encoding or storing fails.
pub fn write_config(
    store: &BlobStore,
    config: &ImageConfiguration,
    extras: &DockerConfigExtras,
    media: MediaTypes,
) -> Result<Descriptor, ImageError> {
    let json_err = |source| ImageError::Json {
        what: "config",
        digest: "(new)".into(),
        source,
    };
    let mut value = serde_json::to_value(config).map_err(json_err)?;
    if let (Some(obj), Some(cache)) = (value.as_object_mut(), &extras.inline_cache) {
        obj.insert(crate::exchange::INLINE_KEY.into(), cache.clone());
    }
    if let Some(obj) = value.as_object_mut() {
        let cfg = obj.entry("config").or_insert_with(|| serde_json::json!({}));
        if let Some(cfg) = cfg.as_object_mut() {
            if let Some(h) = &extras.healthcheck {
                cfg.insert(
                    "Healthcheck".into(),
                    serde_json::to_value(h).map_err(json_err)?,
                );
            }
            if !extras.on_build.is_empty() {
                cfg.insert("OnBuild".into(), serde_json::json!(extras.on_build));
            }
            if !extras.shell.is_empty() {
                cfg.insert("Shell".into(), serde_json::json!(extras.shell));
            }
        }
    }
    // A Dockerfile of many ENV or LABEL lines makes a config of hundreds of megabytes: its
    // bytes are never held whole. One pass hashes them; a second writes them, only when the
    // store lacks them (a cached rebuild writes nothing), and the store checks the digest.
    let value = sorted(value);
    let mut sink = HashingSink {
        hasher: sha2::Sha256::default(),
        size: 0,
    };
    serde_json::to_writer(&mut sink, &value).map_err(json_err)?;
    let config_digest = crate::digest::sha256_digest(&sha2::Digest::finalize(sink.hasher).into());
    if !store.has(&config_digest) {
        let mut writer = store.writer(&config_digest, Some(sink.size))?;
        let mut buffered = io::BufWriter::new(&mut writer);
        serde_json::to_writer(&mut buffered, &value).map_err(json_err)?;
        io::Write::flush(&mut buffered).map_err(|e| json_err(serde_json::Error::io(e)))?;
        drop(buffered);
        writer.commit()?;
    }
    Ok(Descriptor::new(media.config(), sink.size, config_digest))
}

/// Writes `config` (plus Docker extras) and a manifest over `layers` into the store. Returns the
/// manifest's descriptor, ready to be named in the image store or pushed.
///
/// # Errors
/// Encoding or storing fails.
pub fn write_image(
    store: &BlobStore,
    config: &ImageConfiguration,
    extras: &DockerConfigExtras,
    layers: &[Descriptor],
    media: MediaTypes,
    annotations: Option<HashMap<String, String>>,
) -> Result<Descriptor, ImageError> {
    let config_desc = write_config(store, config, extras, media)?;
    let mut builder = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(media.manifest())
        .config(config_desc)
        .layers(layers.to_vec());
    if let Some(a) = annotations {
        builder = builder.annotations(a);
    }
    let manifest = builder.build().map_err(|e| ImageError::Json {
        what: "manifest",
        digest: "(new)".into(),
        source: serde_json::Error::io(io::Error::other(e.to_string())),
    })?;
    let bytes = canonical_json(&manifest).map_err(|source| ImageError::Json {
        what: "manifest",
        digest: "(new)".into(),
        source,
    })?;
    let (digest, size) = store.put(&bytes)?;
    Ok(Descriptor::new(media.manifest(), size, digest))
}

/// An image read back from the store: its manifest and config.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest's descriptor.
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config as parsed by oci-spec.
    pub config: ImageConfiguration,
    /// Docker's extra config fields.
    pub extras: DockerConfigExtras,
}

impl Image {
    /// Loads the image whose manifest `descriptor` names.
    ///
    /// # Errors
    /// A blob is missing or malformed, or the descriptor is not a single manifest.
    pub fn load(store: &BlobStore, descriptor: &Descriptor) -> Result<Self, ImageError> {
        if !is_manifest(descriptor.media_type()) {
            return Err(ImageError::UnsupportedMediaType {
                what: "manifest",
                media_type: descriptor.media_type().to_string(),
                digest: descriptor.digest().clone(),
            });
        }
        let raw = store.read(descriptor.digest())?;
        let manifest: ImageManifest =
            serde_json::from_slice(&raw).map_err(|source| ImageError::Json {
                what: "manifest",
                digest: descriptor.digest().to_string(),
                source,
            })?;
        let cfg_digest = manifest.config().digest().clone();
        let cfg_raw = store.read(&cfg_digest)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&cfg_raw).map_err(|source| ImageError::Json {
                what: "config",
                digest: cfg_digest.to_string(),
                source,
            })?;
        let extras = DockerConfigExtras::from_config_json(&cfg_raw);
        Ok(Self {
            descriptor: descriptor.clone(),
            manifest,
            config,
            extras,
        })
    }

    /// The layers' diffIDs, bottom first, as recorded in the config.
    #[must_use]
    pub fn diff_ids(&self) -> &[String] {
        self.config.rootfs().diff_ids()
    }
}
