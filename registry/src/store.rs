//! Where pulled blobs go and pushed blobs come from.
//!
//! [`BlobStore`] is deliberately small so that the content store in `hoist-cache` can implement
//! it; [`DirStore`] is a plain `blobs/<alg>/<hex>` directory for tests and simple callers. The
//! store's methods are blocking: the client calls them from `spawn_blocking` threads.

use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::Digest;
use sha2::Digest as _;

/// A store failure, naming the blob and, for I/O, the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {digest} has sha256:{actual}, not the expected digest")]
    DigestMismatch { digest: Digest, actual: String },
    #[error("blob {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} not found in the store")]
    NotFound { digest: Digest },
    #[error("unsupported digest algorithm in {digest}")]
    UnsupportedAlgorithm { digest: Digest },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Read side of a stored blob: seekable, so that an interrupted upload resumes at an offset.
pub trait BlobReader: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobReader for T {}

/// A blob being written. Bytes go in with `Write`; nothing is visible under the digest until
/// [`BlobWriter::commit`], which must verify the bytes against the expected digest. Dropping the
/// writer without committing discards it.
pub trait BlobWriter: Write + Send {
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A content-addressed blob store.
pub trait BlobStore: Send + Sync {
    /// The size of a stored blob, or `None` when the store does not have it.
    fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;
    /// Opens a stored blob for reading.
    fn open(&self, digest: &Digest) -> Result<Box<dyn BlobReader>, StoreError>;
    /// Starts writing a blob that must hash to `expected` (and be `size` bytes when given).
    fn writer(
        &self,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StoreError>;
}

/// A blob store in a directory: `blobs/<alg>/<hex>`, written through `ingest/` temp files that
/// are fsynced and renamed into place once verified.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [root.join("blobs").join("sha256"), root.join("ingest")] {
            fs_err::create_dir_all(&dir).map_err(|source| StoreError::Io {
                op: "create directory",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path a blob lives at, whether or not it exists.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }
}

impl BlobStore for DirStore {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest);
        match fs_err::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                op: "stat",
                path,
                source,
            }),
        }
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn BlobReader>, StoreError> {
        let path = self.blob_path(digest);
        match fs_err::File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                digest: digest.clone(),
            }),
            Err(source) => Err(StoreError::Io {
                op: "open",
                path,
                source,
            }),
        }
    }

    fn writer(
        &self,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StoreError> {
        let hasher = Hasher::for_digest(expected)?;
        let ingest = self.root.join("ingest");
        let file = tempfile::NamedTempFile::new_in(&ingest).map_err(|source| StoreError::Io {
            op: "create temp file in",
            path: ingest,
            source,
        })?;
        let dir = self.root.join("blobs").join(expected.algorithm().as_ref());
        Ok(Box::new(DirWriter {
            file,
            hasher,
            written: 0,
            expected: expected.clone(),
            size,
            dest_dir: dir,
        }))
    }
}

struct DirWriter {
    file: tempfile::NamedTempFile,
    hasher: Hasher,
    written: u64,
    expected: Digest,
    size: Option<u64>,
    dest_dir: PathBuf,
}

impl Write for DirWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter for DirWriter {
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let this = *self;
        if let Some(expected) = this.size
            && expected != this.written
        {
            return Err(StoreError::SizeMismatch {
                digest: this.expected,
                expected,
                actual: this.written,
            });
        }
        let actual = this.hasher.finish_hex();
        if actual != this.expected.digest() {
            return Err(StoreError::DigestMismatch {
                digest: this.expected,
                actual,
            });
        }
        let temp_path = this.file.path().to_path_buf();
        this.file
            .as_file()
            .sync_all()
            .map_err(|source| StoreError::Io {
                op: "fsync",
                path: temp_path.clone(),
                source,
            })?;
        fs_err::create_dir_all(&this.dest_dir).map_err(|source| StoreError::Io {
            op: "create directory",
            path: this.dest_dir.clone(),
            source,
        })?;
        let dest = this.dest_dir.join(this.expected.digest());
        this.file.persist(&dest).map_err(|e| StoreError::Io {
            op: "rename into place",
            path: dest,
            source: e.error,
        })?;
        Ok(())
    }
}

/// A running hash for one of the digest algorithms the registry protocol uses.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn for_digest(digest: &Digest) -> Result<Self, StoreError> {
        match digest.algorithm().as_ref() {
            "sha256" => Ok(Self::Sha256(sha2::Sha256::new())),
            "sha512" => Ok(Self::Sha512(sha2::Sha512::new())),
            _ => Err(StoreError::UnsupportedAlgorithm {
                digest: digest.clone(),
            }),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish_hex(self) -> String {
        match self {
            Self::Sha256(h) => hex::encode(h.finalize()),
            Self::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The sha256 digest of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    // A 64-hex sha256 always parses; the fallback keeps this free of panics.
    format!("sha256:{hex}")
        .parse()
        .unwrap_or_else(|_| unreachable_digest())
}

#[allow(clippy::unwrap_used)] // A constant, valid digest.
fn unreachable_digest() -> Digest {
    "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        .parse()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_verify_before_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let good = sha256_digest(b"hello");
        let mut w = store.writer(&good, Some(5)).unwrap();
        w.write_all(b"hello").unwrap();
        w.commit().unwrap();
        assert_eq!(store.size(&good).unwrap(), Some(5));
        let mut s = String::new();
        store.open(&good).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");

        let other = sha256_digest(b"other");
        let mut w = store.writer(&other, None).unwrap();
        w.write_all(b"not other").unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.size(&other).unwrap(), None);
        assert_eq!(
            fs_err::read_dir(dir.path().join("ingest")).unwrap().count(),
            0
        );
    }
}
