//! Content types shared by the content store, the image store, the cache index and the registry
//! client: digests, media types, and the blob-store trait.
//!
//! - Digests are oci-spec's [`Digest`], a validated `algorithm:encoded` value (a sha256 one is
//!   64 lowercase hex digits), re-exported here so that no crate passes digests as strings.
//!   What hoist stores is addressed by sha256 only: [`require_sha256`] says so where a digest
//!   comes from outside (a record on disk).
//! - Media types are oci-spec's [`MediaType`]; Docker's schema 2 types, which it has no
//!   variants for, are the constants here, with the predicates both crates decide by.
//! - [`ContentStore`] is what a registry pull writes into and a push reads from: a size probe,
//!   a seekable reader (an upload resumes at an offset), and a writer that verifies the bytes
//!   against the expected digest before anything is visible under it. Its implementation is
//!   [`BlobStore`], the content store under the state root.

use std::io::{Read, Seek};

pub use oci_spec::image::{Descriptor, Digest, DigestAlgorithm, MediaType};

pub use crate::digest::sha256_of;
pub use crate::store::{BlobStore, BlobWriter, StoreError};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (schema 2's index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker's "foreign" gzip layer (Windows base layers), fetched from elsewhere than the
/// registry that serves the manifest.
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker image manifest, schema 1 (retired; refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 manifest (retired; refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Whether a media type names a single-platform image manifest (OCI, or Docker schema 2).
#[must_use]
pub fn is_manifest<M: AsRef<str> + ?Sized>(media_type: &M) -> bool {
    matches!(media_type.as_ref(), OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Whether a media type names an index or a manifest list.
#[must_use]
pub fn is_index<M: AsRef<str> + ?Sized>(media_type: &M) -> bool {
    matches!(media_type.as_ref(), OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// Whether a media type is a retired Docker schema 1 manifest.
#[must_use]
pub fn is_schema1<M: AsRef<str> + ?Sized>(media_type: &M) -> bool {
    matches!(media_type.as_ref(), DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)
}

/// The digest, if it is a sha256 one: the only algorithm hoist stores content, snapshots and
/// records under. (The digest's own validation already made it 64 lowercase hex digits.)
///
/// # Errors
/// [`StoreError::UnsupportedAlgorithm`] naming the digest.
pub fn require_sha256(digest: &Digest) -> Result<&Digest, StoreError> {
    if *digest.algorithm() == DigestAlgorithm::Sha256 {
        Ok(digest)
    } else {
        Err(StoreError::UnsupportedAlgorithm {
            digest: digest.clone(),
        })
    }
}

/// A stored blob being read: seekable, so that an interrupted upload resumes at an offset.
pub trait ContentReader: Read + Seek + Send {}
impl<T: Read + Seek + Send> ContentReader for T {}

/// A blob being written. Nothing is visible under its digest until [`ContentWriter::commit`]
/// has verified the bytes; dropping the writer without committing discards them.
pub trait ContentWriter: Send {
    /// Appends bytes.
    ///
    /// # Errors
    /// More bytes than the writer's announced size ([`StoreError::SizeMismatch`]), or the
    /// write fails ([`StoreError::Write`], naming the file).
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError>;

    /// Verifies the size and digest, and stores the blob under its digest. Returns the digest
    /// and size.
    ///
    /// # Errors
    /// [`StoreError::DigestMismatch`] or [`StoreError::SizeMismatch`] (then nothing is
    /// stored), or storing fails.
    fn commit(self: Box<Self>) -> Result<(Digest, u64), StoreError>;
}

/// Blobs by digest: what a registry pull writes into and a push reads from. The methods block;
/// async callers run them on blocking threads.
pub trait ContentStore: Send + Sync + std::fmt::Debug {
    /// The size of a stored blob, or `None` when the store does not have it.
    ///
    /// # Errors
    /// The digest is not one the store keeps, or statting fails for another reason than
    /// absence.
    fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Opens a stored blob for reading.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or opening fails.
    fn open(&self, digest: &Digest) -> Result<Box<dyn ContentReader>, StoreError>;

    /// Reads a whole blob: for manifests and configs, which are small.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or reading fails.
    fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError>;

    /// Starts a blob that must hash to `expected` and, when `size` is given, be exactly that
    /// long (more is refused as it arrives).
    ///
    /// # Errors
    /// The digest is not one the store keeps, or the writer cannot be set up.
    fn writer(
        &self,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Box<dyn ContentWriter>, StoreError>;
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn media_type_predicates_take_strings_and_oci_spec_values() {
        assert!(is_manifest(&MediaType::ImageManifest));
        assert!(is_manifest(DOCKER_MANIFEST));
        assert!(is_manifest(&MediaType::from(DOCKER_MANIFEST)));
        assert!(!is_manifest(&MediaType::ImageIndex));
        assert!(is_index(&MediaType::ImageIndex));
        assert!(is_index(DOCKER_MANIFEST_LIST));
        assert!(!is_index(OCI_MANIFEST));
        assert!(is_schema1(DOCKER_SCHEMA1_SIGNED));
        assert!(!is_schema1(DOCKER_MANIFEST));
        assert_eq!(MediaType::ImageManifest.as_ref(), OCI_MANIFEST);
        assert_eq!(MediaType::ImageIndex.as_ref(), OCI_INDEX);
    }

    #[test]
    fn only_sha256_is_required() {
        let good = sha256_of(b"x");
        assert!(require_sha256(&good).is_ok());
        let other = Digest::from_str(&format!("sha512:{}", "a".repeat(128))).unwrap();
        let err = require_sha256(&other).unwrap_err();
        assert!(err.to_string().contains(other.as_ref()), "{err}");
    }
}
