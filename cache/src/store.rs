//! The content store: blobs by digest at `blobs/sha256/<hex>` under the state root.
//!
//! Every write goes to a temp file in `ingest/` on the same filesystem, is hashed while it
//! streams, fsynced, and renamed into place only when its digest is the one expected. A reader
//! therefore never sees a partial or wrong blob under a digest's name.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest};
use sha2::{Digest as _, Sha256};

use crate::content::{ContentReader, ContentStore, ContentWriter, require_sha256};
use crate::digest::sha256_digest;

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The process's scratch area could not be made.
    #[error(transparent)]
    Scratch(#[from] crate::scratch::ScratchError),
    /// Only sha256 content addresses are stored.
    #[error("unsupported digest algorithm in {digest}: only sha256 is stored")]
    UnsupportedAlgorithm {
        /// The digest asked for.
        digest: Digest,
    },
    /// A directory of the store could not be created.
    #[error("create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The temp file for an incoming blob could not be created.
    #[error("create temp file in {dir}")]
    CreateTemp {
        /// The ingest directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing or syncing an incoming blob failed.
    #[error("write blob to {path}")]
    Write {
        /// The temp file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading the source of a blob failed.
    #[error("read blob source for {expected}")]
    ReadSource {
        /// The digest being ingested.
        expected: Digest,
        /// The cause.
        source: io::Error,
    },
    /// The bytes written do not hash to the digest they were announced under; nothing was
    /// stored.
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes)")]
    DigestMismatch {
        /// The digest the caller announced.
        expected: Digest,
        /// The digest of the bytes that arrived.
        actual: Digest,
        /// How many bytes arrived.
        size: u64,
    },
    /// Moving a verified blob into place failed.
    #[error("commit blob {digest} to {path}")]
    Commit {
        /// The blob's digest.
        digest: Digest,
        /// The final path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// More or fewer bytes arrived than the descriptor announced; nothing was stored.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob's digest.
        digest: Digest,
        /// The size the descriptor announced.
        expected: u64,
        /// The bytes that arrived (at least this many, when writing stopped early).
        actual: u64,
    },
    /// The blob is not in the store.
    #[error("blob {digest} not found at {path}")]
    NotFound {
        /// The digest asked for.
        digest: Digest,
        /// Where it would be.
        path: PathBuf,
    },
    /// Opening, reading or statting a stored blob failed.
    #[error("read blob {digest} at {path}")]
    Read {
        /// The blob's digest.
        digest: Digest,
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Blobs by digest under a state root: `<root>/blobs/sha256/<hex>`.
///
/// The layout is the OCI image layout's, so the same root doubles as the local image store
/// (see [`crate::ImageStore`]).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Where blobs are written until they are complete: the process's scratch area when one
    /// was given ([`BlobStore::with_scratch`]), else `<root>/ingest`.
    scratch: Option<std::sync::Arc<crate::scratch::ScratchArea>>,
    /// The process's lease: a blob looked at or stored is held for the running builds.
    lease: Option<std::sync::Arc<crate::gc::Lease>>,
}

impl BlobStore {
    /// A store rooted at `root`; directories are created on first write.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            scratch: None,
            lease: None,
        }
    }

    /// The same store, holding in `lease` each blob it is asked about or stores, before it
    /// looks (see [`crate::gc::lease`]), so that no collector removes it under a build.
    #[must_use]
    pub fn with_lease(mut self, lease: std::sync::Arc<crate::gc::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    fn hold(&self, digest: &Digest) {
        if let Some(lease) = &self.lease {
            lease.hold(crate::gc::Item::Blob(digest.digest().to_owned()));
        }
    }

    /// The same store, writing unfinished blobs into `area` (on the same filesystem), so that
    /// a blob left half-written by a killed process is reclaimed with that area.
    #[must_use]
    pub fn with_scratch(mut self, area: std::sync::Arc<crate::scratch::ScratchArea>) -> Self {
        self.scratch = Some(area);
        self
    }

    /// The state root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it is present).
    ///
    /// # Errors
    /// The digest is not sha256.
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        let digest = require_sha256(digest)?;
        Ok(self.root.join("blobs").join("sha256").join(digest.digest()))
    }

    /// Whether the blob is present.
    #[must_use]
    pub fn has(&self, digest: &Digest) -> bool {
        self.hold(digest);
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// The size of a stored blob.
    ///
    /// # Errors
    /// The blob is missing or cannot be statted.
    pub fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.existing(digest)?;
        fs_err::metadata(&path)
            .map(|m| m.len())
            .map_err(|source| StoreError::Read {
                digest: digest.clone(),
                path,
                source,
            })
    }

    /// The size of a stored blob, or `None` when it is absent.
    ///
    /// # Errors
    /// The digest is not sha256, or statting fails for another reason than absence.
    pub fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest)?;
        self.hold(digest);
        match fs_err::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                digest: digest.clone(),
                path,
                source,
            }),
        }
    }

    /// Opens a stored blob for reading.
    ///
    /// # Errors
    /// The blob is missing or cannot be opened.
    pub fn open(&self, digest: &Digest) -> Result<fs_err::File, StoreError> {
        let path = self.existing(digest)?;
        fs_err::File::open(&path).map_err(|source| StoreError::Read {
            digest: digest.clone(),
            path,
            source,
        })
    }

    /// Reads a whole blob: for manifests, configs and indexes, which are small.
    ///
    /// # Errors
    /// The blob is missing or unreadable.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.existing(digest)?;
        fs_err::read(&path).map_err(|source| StoreError::Read {
            digest: digest.clone(),
            path,
            source,
        })
    }

    fn existing(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(digest)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::NotFound {
                digest: digest.clone(),
                path,
            })
        }
    }

    /// A writer for a blob that must hash to `expected` and, when `size` is given, be exactly
    /// that long (more is refused as it arrives); [`BlobWriter::commit`] verifies and stores
    /// it. Dropping the writer without committing discards it.
    ///
    /// # Errors
    /// The digest is not sha256 or the temp file cannot be created.
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter, StoreError> {
        self.blob_path(expected)?;
        self.new_writer(Some(expected.clone()), size)
    }

    /// A writer for the blob a descriptor names: the digest is verified at commit, and the size
    /// as bytes arrive, so a source that sends more than announced is cut off at once.
    ///
    /// # Errors
    /// The digest is not sha256 or the temp file cannot be created.
    pub fn writer_for(&self, descriptor: &Descriptor) -> Result<BlobWriter, StoreError> {
        self.blob_path(descriptor.digest())?;
        self.new_writer(Some(descriptor.digest().clone()), Some(descriptor.size()))
    }

    /// A writer for content whose digest is not known yet (a layer or config being produced);
    /// the digest is whatever the bytes hash to.
    ///
    /// # Errors
    /// The temp file cannot be created.
    pub fn writer_unverified(&self) -> Result<BlobWriter, StoreError> {
        self.new_writer(None, None)
    }

    fn new_writer(
        &self,
        expected: Option<Digest>,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        let dir = match &self.scratch {
            Some(area) => area.dir()?.to_path_buf(),
            None => self.root.join("ingest"),
        };
        let dir = &dir;
        fs_err::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(dir)
            .map_err(|source| StoreError::CreateTemp {
                dir: dir.clone(),
                source,
            })?;
        Ok(BlobWriter {
            store: self.clone(),
            path: file.path().to_path_buf(),
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            expected,
            expected_size,
        })
    }

    /// Streams `reader` into the store, verified against `expected`. Returns the size.
    ///
    /// # Errors
    /// Reading fails, or the content does not match `expected` (then nothing is stored).
    pub fn ingest(&self, expected: &Digest, reader: &mut dyn Read) -> Result<u64, StoreError> {
        let w = self.writer(expected, None)?;
        Self::copy_in(w, expected, reader)
    }

    /// Streams `reader` into the store as the blob `descriptor` names, checking digest and
    /// size. Returns the size.
    ///
    /// # Errors
    /// Reading fails, or the content does not match (then nothing is stored).
    pub fn ingest_for(
        &self,
        descriptor: &Descriptor,
        reader: &mut dyn Read,
    ) -> Result<u64, StoreError> {
        let w = self.writer_for(descriptor)?;
        Self::copy_in(w, descriptor.digest(), reader)
    }

    fn copy_in(
        mut w: BlobWriter,
        expected: &Digest,
        reader: &mut dyn Read,
    ) -> Result<u64, StoreError> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(StoreError::ReadSource {
                        expected: expected.clone(),
                        source,
                    });
                }
            };
            w.write_chunk(&buf[..n])?;
        }
        Ok(w.commit()?.1)
    }

    /// Stores `bytes` (a manifest, config or index) and returns its digest and size.
    ///
    /// # Errors
    /// Writing fails.
    pub fn put(&self, bytes: &[u8]) -> Result<(Digest, u64), StoreError> {
        let digest = sha256_digest(&Sha256::digest(bytes).into());
        if self.has(&digest) {
            return Ok((digest, bytes.len() as u64));
        }
        let mut w = self.writer(&digest, None)?;
        w.write_chunk(bytes)?;
        w.commit()
    }
}

/// An incoming blob: a temp file hashed as it is written. See [`BlobStore::writer`].
#[derive(Debug)]
pub struct BlobWriter {
    store: BlobStore,
    path: PathBuf,
    file: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    size: u64,
    expected: Option<Digest>,
    expected_size: Option<u64>,
}

impl BlobWriter {
    /// Bytes written so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest this writer must produce, if one was given.
    #[must_use]
    pub fn expected(&self) -> Option<&Digest> {
        self.expected.as_ref()
    }

    /// Writes all of `buf`; more than the announced size is a [`StoreError::SizeMismatch`]
    /// naming the digest, other failures name the temp file.
    fn write_chunk(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if let (Some(limit), Some(digest)) = (self.expected_size, &self.expected)
            && self.size + buf.len() as u64 > limit
        {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: limit,
                actual: self.size + buf.len() as u64,
            });
        }
        self.write_all(buf).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Verifies the digest, fsyncs, and renames the blob into place. Returns its digest and
    /// size. On a mismatch the temp file is removed and nothing is stored.
    ///
    /// # Errors
    /// Syncing or renaming fails, or the digest differs from the expected one.
    pub fn commit(mut self) -> Result<(Digest, u64), StoreError> {
        let Some(file) = self.file.take() else {
            return Err(StoreError::Write {
                path: self.path.clone(),
                source: io::Error::other("blob writer already committed"),
            });
        };
        if let (Some(expected), Some(digest)) = (self.expected_size, &self.expected)
            && expected != self.size
        {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected,
                actual: self.size,
            });
        }
        let actual = sha256_digest(&std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = &self.expected
            && *expected != actual
        {
            // `file` drops here and removes the temp file.
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
                size: self.size,
            });
        }
        file.as_file()
            .sync_all()
            .map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            })?;
        let dest = self.store.blob_path(&actual)?;
        self.store.hold(&actual);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        fs_err::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        file.persist(&dest).map_err(|e| StoreError::Commit {
            digest: actual.clone(),
            path: dest.clone(),
            source: e.error,
        })?;
        // The rename is durable only once the directory entry is on disk too.
        fs_err::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Commit {
                digest: actual.clone(),
                path: dest.clone(),
                source,
            })?;
        Ok((actual, self.size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(limit) = self.expected_size
            && self.size + buf.len() as u64 > limit
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob larger than its announced {limit} bytes"),
            ));
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer committed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl ContentWriter for BlobWriter {
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_chunk(bytes)
    }

    fn commit(self: Box<Self>) -> Result<(Digest, u64), StoreError> {
        BlobWriter::commit(*self)
    }
}

/// The content store as the registry client (and any other [`ContentStore`] user) sees it.
impl ContentStore for BlobStore {
    fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        BlobStore::stat(self, digest)
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn ContentReader>, StoreError> {
        Ok(Box::new(BlobStore::open(self, digest)?))
    }

    fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        BlobStore::read(self, digest)
    }

    fn writer(
        &self,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<Box<dyn ContentWriter>, StoreError> {
        Ok(Box::new(BlobStore::writer(self, expected, size)?))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Seek as _;
    use std::str::FromStr;

    use super::*;
    use crate::digest::sha256_of;

    #[test]
    fn a_verified_blob_lands_under_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let d = sha256_of(b"hello");
        let n = store.ingest(&d, &mut &b"hello"[..]).unwrap();
        assert_eq!(n, 5);
        assert!(store.has(&d));
        assert_eq!(store.size(&d).unwrap(), 5);
        assert_eq!(store.stat(&d).unwrap(), Some(5));
        assert_eq!(store.stat(&sha256_of(b"absent")).unwrap(), None);
        assert_eq!(store.read(&d).unwrap(), b"hello");
        let p = dir.path().join("blobs/sha256").join(d.digest());
        assert_eq!(fs_err::read(p).unwrap(), b"hello");
    }

    #[test]
    fn a_mismatch_names_both_digests_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let claimed = sha256_of(b"hello");
        let err = store.ingest(&claimed, &mut &b"hellO"[..]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&claimed.to_string()), "{msg}");
        assert!(msg.contains(&sha256_of(b"hellO").to_string()), "{msg}");
        assert!(!store.has(&claimed));
        assert!(!store.has(&sha256_of(b"hellO")));
        let leftovers = fs_err::read_dir(dir.path().join("ingest")).unwrap().count();
        assert_eq!(leftovers, 0, "temp file removed");
    }

    #[test]
    fn a_descriptor_writer_checks_the_size_as_bytes_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let d = sha256_of(b"hello");
        let desc = Descriptor::new(oci_spec::image::MediaType::ImageLayerGzip, 5, d.clone());
        let mut w = store.writer_for(&desc).unwrap();
        w.write_all(b"hel").unwrap();
        assert!(
            w.write_all(b"lo!").is_err(),
            "more than announced is refused"
        );
        drop(w);
        let mut w = store.writer_for(&desc).unwrap();
        w.write_all(b"hell").unwrap();
        assert!(matches!(
            w.commit(),
            Err(StoreError::SizeMismatch {
                expected: 5,
                actual: 4,
                ..
            })
        ));
        let mut w = store.writer_for(&desc).unwrap();
        w.write_all(b"hello").unwrap();
        assert_eq!(w.commit().unwrap(), (d.clone(), 5));
        assert!(store.has(&d));
    }

    #[test]
    fn through_the_content_store_trait_only_verified_blobs_land() {
        let dir = tempfile::tempdir().unwrap();
        let store: &dyn ContentStore = &BlobStore::new(dir.path());
        let d = sha256_of(b"hello");

        // More than announced is refused when it arrives, naming the blob.
        let mut w = store.writer(&d, Some(5)).unwrap();
        w.append(b"hel").unwrap();
        let err = w.append(b"lo!").unwrap_err();
        assert!(
            matches!(&err, StoreError::SizeMismatch { digest, expected: 5, actual: 6 } if *digest == d),
            "{err}"
        );
        drop(w);

        // Bytes that hash to another digest are not committed, and leave nothing behind.
        let mut w = store.writer(&d, Some(5)).unwrap();
        w.append(b"hellO").unwrap();
        let err = w.commit().unwrap_err();
        assert!(
            matches!(&err, StoreError::DigestMismatch { expected, actual, size: 5 }
                if *expected == d && *actual == sha256_of(b"hellO")),
            "{err}"
        );
        assert_eq!(store.stat(&d).unwrap(), None);
        assert_eq!(
            fs_err::read_dir(dir.path().join("ingest")).unwrap().count(),
            0
        );

        let mut w = store.writer(&d, Some(5)).unwrap();
        w.append(b"hello").unwrap();
        assert_eq!(w.commit().unwrap(), (d.clone(), 5));
        assert_eq!(store.stat(&d).unwrap(), Some(5));
        assert_eq!(store.read(&d).unwrap(), b"hello");
        let mut tail = String::new();
        let mut r = store.open(&d).unwrap();
        r.seek(io::SeekFrom::Start(3)).unwrap();
        r.read_to_string(&mut tail).unwrap();
        assert_eq!(tail, "lo");
    }

    #[test]
    fn other_algorithms_are_refused() {
        let store = BlobStore::new("/nonexistent");
        let d = Digest::from_str(&format!("sha512:{}", "a".repeat(128))).unwrap();
        assert!(matches!(
            store.writer(&d, None),
            Err(StoreError::UnsupportedAlgorithm { .. })
        ));
        assert!(!store.has(&d));
    }
}
