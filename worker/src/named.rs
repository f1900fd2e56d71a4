//! `--build-context NAME=VALUE`, as buildx takes it: a second local directory (`NAME=DIR`), an
//! image that stands in for a name (`docker-image://REF`), or an image of a local OCI layout
//! (`oci-layout://DIR[:TAG][@sha256:…]`).
//!
//! A local directory is a [`ContextSource`] of its own, with its own `.dockerignore` (BuildKit
//! reads `DIR/.dockerignore`, never the main context's). A layout is read where it is: the
//! frontend gets the image's config here, before lowering, and the source op pinned by the
//! manifest digest brings the blobs into the state's store when it runs.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_cache::oci_spec::image::{
    ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, ImageManifest,
};
use hoist_cache::{BlobStore, sha256_of};
use hoist_solver::Platform;
use hoist_solver::frontend::{HistoryEntry, ImageConfig};

use crate::context::ContextSource;
use crate::error::WorkerError;
use crate::{BuildWorker, Layer};

/// The `--build-context` sources a build was given, by name, as the worker reads them.
#[derive(Clone, Debug, Default)]
pub struct NamedContexts {
    /// `NAME=DIR`.
    pub local: HashMap<String, Arc<dyn ContextSource>>,
    /// `NAME=oci-layout://DIR…`: the layout's directory.
    pub layouts: HashMap<String, PathBuf>,
}

/// What a `--build-context` value names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextValue {
    /// A local directory (relative to the working directory as given).
    Local(PathBuf),
    /// `docker-image://REF`.
    Image(String),
    /// `oci-layout://DIR[:TAG][@sha256:…]`.
    Layout {
        dir: PathBuf,
        tag: Option<String>,
        digest: Option<String>,
    },
}

/// A `--build-context` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NamedContextError {
    #[error("invalid --build-context {value:?}: {reason}")]
    Invalid { value: String, reason: String },
    #[error("--build-context {name}={}: not a directory (it must be the path of a local directory, or docker-image://REF, or oci-layout://DIR)", dir.display())]
    NotADirectory { name: String, dir: PathBuf },
    #[error("--build-context {name}: reading the OCI layout at {}", path.display())]
    LayoutRead {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--build-context {name}: {} is not a valid OCI layout file: {reason}", path.display())]
    LayoutInvalid {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("--build-context {name}: the OCI layout at {} has no image {what}", dir.display())]
    LayoutNoImage {
        name: String,
        dir: PathBuf,
        what: String,
    },
}

/// Parses one `--build-context NAME=VALUE`.
///
/// # Errors
/// [`NamedContextError::Invalid`] naming what is wrong with it.
pub fn parse(arg: &str) -> Result<(String, ContextValue), NamedContextError> {
    let invalid = |reason: &str| NamedContextError::Invalid {
        value: arg.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, value) = arg.split_once('=').ok_or_else(|| {
        invalid("expected NAME=DIR, NAME=docker-image://REF or NAME=oci-layout://DIR")
    })?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '=') {
        return Err(invalid("the name must be a non-empty word"));
    }
    if value.is_empty() {
        return Err(invalid("the value is empty"));
    }
    let value = if let Some(reference) = value.strip_prefix("docker-image://") {
        if reference.is_empty() {
            return Err(invalid("docker-image:// needs an image reference"));
        }
        ContextValue::Image(reference.to_owned())
    } else if let Some(rest) = value.strip_prefix("oci-layout://") {
        let (rest, digest) = match rest.rsplit_once('@') {
            Some((rest, digest)) => {
                if !digest.starts_with("sha256:") || digest.len() != 71 {
                    return Err(invalid("the digest after @ must be sha256:<64 hex digits>"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (rest, None),
        };
        // A tag follows the last `:` after the last `/`.
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (dir, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(rest[last + i + 1..].to_owned())),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(invalid("oci-layout:// needs the layout's directory"));
        }
        ContextValue::Layout {
            dir: PathBuf::from(dir),
            tag,
            digest,
        }
    } else if let Some((scheme, _)) = value.split_once("://") {
        return Err(invalid(&format!(
            "unsupported source {scheme}://: expected a directory, docker-image://REF or oci-layout://DIR"
        )));
    } else {
        ContextValue::Local(PathBuf::from(value))
    };
    Ok((name.to_owned(), value))
}

/// Checks that a named local context is a directory.
///
/// # Errors
/// [`NamedContextError::NotADirectory`].
pub fn check_dir(name: &str, dir: &Path) -> Result<(), NamedContextError> {
    if fs_err::metadata(dir).is_ok_and(|m| m.is_dir()) {
        Ok(())
    } else {
        Err(NamedContextError::NotADirectory {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
        })
    }
}

/// An image of an OCI layout, as the frontend takes it.
#[derive(Clone, Debug)]
pub struct LayoutImage {
    /// `sha256:…` of the image manifest.
    pub manifest: String,
    pub config: ImageConfig,
    pub history: Vec<HistoryEntry>,
}

/// Finds the image `tag` or `digest` names in the layout at `dir` (the only image, or `latest`,
/// when neither is given), for `platform` when it is an index, and reads its config.
///
/// # Errors
/// The layout cannot be read, holds no such image, or a blob is not what its digest says.
pub fn resolve_layout(
    name: &str,
    dir: &Path,
    tag: Option<&str>,
    digest: Option<&str>,
    platform: &Platform,
) -> Result<LayoutImage, NamedContextError> {
    let layout = Layout { name, dir };
    let index: ImageIndex = layout.json(&dir.join("index.json"))?;
    let no_image = |what: String| NamedContextError::LayoutNoImage {
        name: name.to_owned(),
        dir: dir.to_path_buf(),
        what,
    };
    let mut chosen: Descriptor = match (digest, tag) {
        (Some(digest), _) => {
            let digest: Digest = digest
                .parse()
                .map_err(|_| no_image(format!("with the digest {digest}")))?;
            index
                .manifests()
                .iter()
                .find(|d| *d.digest() == digest)
                .cloned()
                .ok_or_else(|| no_image(format!("with the digest {digest} in its index.json")))?
        }
        (None, tag) => {
            let named = |t: &str| {
                index.manifests().iter().find(|d| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_REF_NAME))
                        .is_some_and(|n| n == t)
                })
            };
            match (tag, index.manifests().as_slice()) {
                (Some(t), _) => named(t)
                    .cloned()
                    .ok_or_else(|| no_image(format!("tagged {t:?}")))?,
                (None, [only]) => only.clone(),
                (None, _) => named("latest").cloned().ok_or_else(|| {
                    no_image("tagged \"latest\" (name one with :TAG or @sha256:…)".into())
                })?,
            }
        }
    };
    if hoist_cache::content::is_index(chosen.media_type()) {
        let nested: ImageIndex = layout.blob_json(chosen.digest())?;
        chosen = nested
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == platform.os
                        && p.architecture().to_string() == platform.architecture
                        && (platform.variant.is_none()
                            || p.variant().as_deref() == platform.variant.as_deref())
                })
            })
            .cloned()
            .ok_or_else(|| no_image(format!("for the platform {platform}")))?;
    }
    let manifest: ImageManifest = layout.blob_json(chosen.digest())?;
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        config: Option<ImageConfig>,
        #[serde(default)]
        history: Vec<HistoryEntry>,
    }
    let raw: Raw = layout.blob_json(manifest.config().digest())?;
    Ok(LayoutImage {
        manifest: chosen.digest().to_string(),
        config: raw.config.unwrap_or_default(),
        history: raw.history,
    })
}

/// A layout being read, for errors that name it.
struct Layout<'a> {
    name: &'a str,
    dir: &'a Path,
}

impl Layout<'_> {
    fn read(&self, path: &Path) -> Result<Vec<u8>, NamedContextError> {
        fs_err::read(path).map_err(|source| NamedContextError::LayoutRead {
            name: self.name.to_owned(),
            path: path.to_path_buf(),
            source,
        })
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<T, NamedContextError> {
        let bytes = self.read(path)?;
        self.parse(path, &bytes)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<T, NamedContextError> {
        serde_json::from_slice(bytes).map_err(|e| NamedContextError::LayoutInvalid {
            name: self.name.to_owned(),
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// A blob, checked against its digest.
    fn blob_json<T: serde::de::DeserializeOwned>(
        &self,
        digest: &Digest,
    ) -> Result<T, NamedContextError> {
        let path = self
            .dir
            .join("blobs")
            .join(digest.algorithm().to_string())
            .join(digest.digest());
        let bytes = self.read(&path)?;
        if sha256_of(&bytes) != *digest {
            return Err(NamedContextError::LayoutInvalid {
                name: self.name.to_owned(),
                path,
                reason: format!("its content does not hash to {digest}"),
            });
        }
        self.parse(&path, &bytes)
    }
}

impl BuildWorker {
    /// The image `manifest` of the layout given as `--build-context name=oci-layout://…`: its
    /// blobs copied into the state's store (each checked against its digest), its layers
    /// unpacked.
    pub(crate) async fn layout_image(
        &self,
        name: &str,
        manifest: &str,
    ) -> Result<Vec<Layer>, WorkerError> {
        let dir = self
            .named_contexts
            .layouts
            .get(name)
            .cloned()
            .ok_or_else(|| WorkerError::NamedContext {
                name: name.to_owned(),
            })?;
        let manifest: Digest = manifest.parse().map_err(|_| {
            WorkerError::Internal("a layout source whose manifest digest is not one")
        })?;
        let state = Arc::clone(&self.state);
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let layout = BlobStore::new(&dir);
            let copy_in = |digest: &Digest| -> Result<(), WorkerError> {
                if state.blobs.has(digest) {
                    return Ok(());
                }
                let path = layout.blob_path(digest).map_err(|_| {
                    WorkerError::Internal("a layout blob digest that is not sha256")
                })?;
                let mut file =
                    fs_err::File::open(&path).map_err(crate::error::io_err("open", &path))?;
                state
                    .blobs
                    .ingest(digest, &mut file as &mut dyn std::io::Read)
                    .map(|_| ())
                    .map_err(|e| WorkerError::LayoutBlob {
                        name: name.clone(),
                        path: path.clone(),
                        reason: e.to_string(),
                    })
            };
            copy_in(&manifest)?;
            let raw = state
                .blobs
                .read(&manifest)
                .map_err(|_| WorkerError::Internal("the layout's manifest blob is missing"))?;
            let image: ImageManifest =
                serde_json::from_slice(&raw).map_err(|e| WorkerError::LayoutBlob {
                    name: name.clone(),
                    path: dir.join("blobs/sha256").join(manifest.digest()),
                    reason: e.to_string(),
                })?;
            copy_in(image.config().digest())?;
            let mut config = Vec::new();
            state
                .blobs
                .open(image.config().digest())
                .map_err(|_| WorkerError::Internal("the layout's config blob is missing"))?
                .read_to_end(&mut config)
                .map_err(|_| WorkerError::Internal("the layout's config blob cannot be read"))?;
            crate::source::unpack_layers(&state, image.layers(), &config, copy_in)
        })
        .await
        .map_err(|_| WorkerError::Internal("the layout task panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_context_values_parse_as_buildx_writes_them() {
        assert_eq!(
            parse("lib=../lib").unwrap(),
            ("lib".into(), ContextValue::Local("../lib".into()))
        );
        assert_eq!(
            parse("alpine=docker-image://127.0.0.1:5000/x/y:1").unwrap(),
            (
                "alpine".into(),
                ContextValue::Image("127.0.0.1:5000/x/y:1".into())
            )
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse(&format!("b=oci-layout:///srv/lay:v2@{digest}"))
                .unwrap()
                .1,
            ContextValue::Layout {
                dir: "/srv/lay".into(),
                tag: Some("v2".into()),
                digest: Some(digest),
            }
        );
        assert_eq!(
            parse("b=oci-layout://./x:1/lay").unwrap().1,
            ContextValue::Layout {
                dir: "./x:1/lay".into(),
                tag: None,
                digest: None,
            }
        );
        for bad in [
            "nameonly",
            "=dir",
            "a=",
            "a=git://x",
            "a=docker-image://",
            "a=oci-layout://d@sha256:12",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid --build-context"), "{bad}: {err}");
        }
    }
}
