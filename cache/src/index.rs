//! The cache index: an embedded transactional store (redb) that maps a step's cache key to the
//! result it produced.
//!
//! A record is written only after everything it names is complete on disk (snapshots renamed
//! into place, blobs committed), and redb commits atomically, so a build killed at any moment
//! leaves either the old record or the new one, never half of one. A record whose snapshots
//! have since gone away is a miss, not an error: the caller rebuilds, or re-applies the layer
//! from its blob.

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use redb::{
    Database, ReadOnlyDatabase, ReadableDatabase as _, ReadableTable as _, TableDefinition,
};
use serde::{Deserialize, Serialize};

/// cache key (`sha256:…`) → JSON of a [`CacheRecord`].
const RESULTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("results.v1");

/// `diffID media-type` → JSON of a [`BlobRecord`]: the compressed blob made for a layer of
/// this machine's building, so that exporting it again does not compress it again.
const BLOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blobs.v1");

/// One layer of a result's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// sha256 of the uncompressed layer tar (`sha256:…`); also names its snapshot directory.
    pub diff_id: String,
    /// The compressed blob, once one has been made: digest, size and media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRecord>,
}

/// A compressed layer blob in the content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// What a step produced: the layer chain that rebuilds its filesystem, bottom first, plus
/// what it took, for the progress report of a later cache hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub layers: Vec<LayerRecord>,
    /// Wall time of the run that produced it, in milliseconds.
    #[serde(default)]
    pub took_ms: u64,
}

/// The index could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot open the cache index {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("cache index {} failed", path.display())]
    Access {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The cache index of one state root.
///
/// Several hoist processes may build on one state root at once: each opens the index in redb's
/// multi-writer mode, and redb serializes their write transactions. A process opens it
/// read-only first and becomes a writer at its first write, so a build that finds everything
/// cached touches nothing on disk (a writer's open and close each cost fsyncs).
pub struct CacheIndex {
    // Declared first so it closes first: the reader's file locks outlive the writer's close.
    writer: Mutex<Option<Arc<Database>>>,
    reader: Option<ReadOnlyDatabase>,
    path: PathBuf,
}

impl std::fmt::Debug for CacheIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheIndex")
            .field("path", &self.path)
            .field("read_only", &self.reader.is_some())
            .finish_non_exhaustive()
    }
}

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    builder
}

impl CacheIndex {
    /// Opens (or creates) the index at `path`.
    ///
    /// # Errors
    /// [`IndexError::Open`] naming the path.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(|e| IndexError::Access {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        }
        let exists = fs_err::metadata(path).is_ok_and(|m| m.len() > 0);
        let reader = if exists {
            builder().open_read_only(path).ok()
        } else {
            None
        };
        let index = Self {
            writer: Mutex::new(None),
            reader,
            path: path.to_path_buf(),
        };
        if index.reader.is_none() {
            // A new index, or one the reader cannot open: the writer creates or repairs it.
            index.writer()?;
        }
        Ok(index)
    }

    /// The writable handle, opened on first use.
    fn writer(&self) -> Result<Arc<Database>, IndexError> {
        let mut slot = self.writer.lock().map_err(|_| IndexError::Access {
            path: self.path.clone(),
            source: "the index lock is poisoned".into(),
        })?;
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(
            builder()
                .create(&self.path)
                .map_err(|source| IndexError::Open {
                    path: self.path.clone(),
                    source: Box::new(source),
                })?,
        );
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, IndexError> {
        let writer = self.writer.lock().ok().and_then(|w| w.clone());
        match (writer, &self.reader) {
            (Some(db), _) => db.begin_read().map_err(self.access()),
            (None, Some(reader)) => reader.begin_read().map_err(self.access()),
            (None, None) => self.writer()?.begin_read().map_err(self.access()),
        }
    }

    fn access<E: std::error::Error + Send + Sync + 'static>(
        &self,
    ) -> impl FnOnce(E) -> IndexError + '_ {
        move |source| IndexError::Access {
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, IndexError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.access()(e)),
        };
        let Some(value) = table.get(key).map_err(self.access())? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(value.value()).ok())
    }

    fn write<T: Serialize>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), IndexError> {
        let bytes = serde_json::to_vec(value).map_err(self.access())?;
        let txn = self.writer()?.begin_write().map_err(self.access())?;
        {
            let mut table = txn.open_table(table).map_err(self.access())?;
            table.insert(key, bytes.as_slice()).map_err(self.access())?;
        }
        txn.commit().map_err(self.access())?;
        Ok(())
    }

    /// The record for a key, if any.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails; a record that does not decode (from another
    /// version) reads as a miss.
    pub fn get(&self, key: &str) -> Result<Option<CacheRecord>, IndexError> {
        self.read(RESULTS, key)
    }

    /// Records a result under a key, atomically.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn put(&self, key: &str, record: &CacheRecord) -> Result<(), IndexError> {
        self.write(RESULTS, key, record)
    }

    /// The compressed blob made earlier for the layer `diff_id` in `media_type`, if any.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn get_blob(
        &self,
        diff_id: &str,
        media_type: &str,
    ) -> Result<Option<BlobRecord>, IndexError> {
        self.read(BLOBS, &format!("{diff_id} {media_type}"))
    }

    /// Remembers the compressed blob made for the layer `diff_id`.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn put_blob(&self, diff_id: &str, blob: &BlobRecord) -> Result<(), IndexError> {
        self.write(BLOBS, &format!("{diff_id} {}", blob.media_type), blob)
    }

    /// Forgets a key.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn remove(&self, key: &str) -> Result<(), IndexError> {
        let txn = self.writer()?.begin_write().map_err(self.access())?;
        {
            let mut table = txn.open_table(RESULTS).map_err(self.access())?;
            table.remove(key).map_err(self.access())?;
        }
        txn.commit().map_err(self.access())?;
        Ok(())
    }

    /// Every key with its record, for `hoist du` and garbage collection.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn entries(&self) -> Result<Vec<(String, CacheRecord)>, IndexError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(RESULTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.access()(e)),
        };
        let mut out = Vec::new();
        for item in table.iter().map_err(self.access())? {
            let (k, v) = item.map_err(self.access())?;
            if let Ok(record) = serde_json::from_slice(v.value()) {
                out.push((k.value().to_owned(), record));
            }
        }
        Ok(out)
    }
}
