//! Manifest detection and parsing.
//!
//! OCI image manifests and Docker schema 2 manifests share one JSON shape, as do OCI indexes and
//! Docker manifest lists, so both parse into the oci-spec types. Schema 1 is refused. The media
//! types themselves are the shared ones of [`hoist_cache::content`].

use hoist_cache::content::{
    DOCKER_SCHEMA1, OCI_INDEX, OCI_MANIFEST, is_index, is_manifest, is_schema1,
};
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};

/// The `Accept` header for manifest requests: every type this client can use.
pub(crate) const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests are small; refuse anything bigger than this rather than buffer it.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A parsed manifest.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // One per pull or push, never in bulk.
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "image manifest schema 1 ({media_type}) is not supported; it was retired in 2019, \
         re-push the image with a current client"
    )]
    Schema1 { media_type: String },
    #[error("unsupported manifest media type {media_type:?}")]
    UnsupportedMediaType { media_type: String },
    #[error("parse manifest of type {media_type}")]
    Parse {
        media_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Works out a manifest's media type: the `mediaType` field when present, else the
/// `Content-Type` the registry sent, else the document's shape.
pub fn detect_media_type(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<String, ManifestError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u32>,
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        layers: Option<serde_json::Value>,
        #[serde(rename = "fsLayers", default)]
        fs_layers: Option<serde_json::Value>,
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
        .filter(|c| !c.is_empty());
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
        media_type: content_type.clone().unwrap_or_default(),
        source,
    })?;
    if probe.schema_version == Some(1) || probe.fs_layers.is_some() {
        return Err(ManifestError::Schema1 {
            media_type: content_type.unwrap_or_else(|| DOCKER_SCHEMA1.to_owned()),
        });
    }
    let media_type = probe
        .media_type
        .or_else(|| content_type.filter(|c| c != "application/json" && c != "text/plain"))
        .or_else(|| {
            if probe.manifests.is_some() {
                Some(OCI_INDEX.to_owned())
            } else if probe.layers.is_some() {
                Some(OCI_MANIFEST.to_owned())
            } else {
                None
            }
        })
        .unwrap_or_default();
    if is_schema1(&media_type) {
        return Err(ManifestError::Schema1 { media_type });
    }
    Ok(media_type)
}

/// Parses manifest bytes of a known media type.
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<Manifest, ManifestError> {
    let parse_err = |source| ManifestError::Parse {
        media_type: media_type.to_owned(),
        source,
    };
    if is_index(media_type) {
        serde_json::from_slice(bytes)
            .map(Manifest::Index)
            .map_err(parse_err)
    } else if is_manifest(media_type) {
        serde_json::from_slice(bytes)
            .map(Manifest::Image)
            .map_err(parse_err)
    } else if is_schema1(media_type) {
        Err(ManifestError::Schema1 {
            media_type: media_type.to_owned(),
        })
    } else {
        Err(ManifestError::UnsupportedMediaType {
            media_type: media_type.to_owned(),
        })
    }
}

/// The oci-spec media type for a string.
pub(crate) fn media_type(s: &str) -> MediaType {
    MediaType::from(s)
}

#[cfg(test)]
mod tests {
    use hoist_cache::content::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_SCHEMA1_SIGNED};

    use super::*;

    const DIGEST: &str = "sha256:6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d";

    #[test]
    fn docker_and_oci_shapes_parse() {
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"{DIGEST}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2,"digest":"{DIGEST}"}}]}}"#
        );
        let mt = detect_media_type(docker.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        let Manifest::Image(m) = parse_manifest(docker.as_bytes(), &mt).unwrap() else {
            panic!("not an image manifest");
        };
        assert_eq!(m.layers().len(), 1);

        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","size":2,"digest":"{DIGEST}","platform":{{"architecture":"arm","os":"linux","variant":"v7"}}}}]}}"#
        );
        let mt = detect_media_type(list.as_bytes(), None).unwrap();
        assert!(matches!(
            parse_manifest(list.as_bytes(), &mt).unwrap(),
            Manifest::Index(_)
        ));

        let bare_oci = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            detect_media_type(bare_oci.as_bytes(), Some("application/json")).unwrap(),
            OCI_INDEX
        );
    }

    #[test]
    fn schema1_is_refused_clearly() {
        let v1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[],"history":[]}"#;
        let err = detect_media_type(v1.as_bytes(), Some(DOCKER_SCHEMA1_SIGNED)).unwrap_err();
        assert!(matches!(err, ManifestError::Schema1 { .. }));
        assert!(err.to_string().contains("schema 1"), "{err}");
        assert!(matches!(
            parse_manifest(b"{}", DOCKER_SCHEMA1),
            Err(ManifestError::Schema1 { .. })
        ));
        assert!(matches!(
            parse_manifest(b"{}", "application/x-unknown"),
            Err(ManifestError::UnsupportedMediaType { .. })
        ));
    }
}
