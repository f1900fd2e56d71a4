//! The cache index: an embedded transactional store (redb) that maps a step's cache key to the
//! result it produced.
//!
//! A record is written only after everything it names is complete on disk (snapshots renamed
//! into place, blobs committed), and redb commits atomically, so a build killed at any moment
//! leaves either the old record or the new one, never half of one. A record whose snapshots
//! have since gone away is a miss, not an error: the caller rebuilds, or re-applies the layer
//! from its blob.
//!
//! Records hold digests as [`Digest`]s and media types as [`MediaType`]s. On disk they are the
//! same JSON strings as when the records held strings (`"sha256:<hex>"`, the media type as
//! written), so indexes written before read unchanged and the tables keep their `v1` names. A
//! record whose digest is not a sha256 one does not decode: [`IndexError::Decode`] names its
//! key (see [`CacheIndex::get`]).

use std::path::{Path, PathBuf};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use oci_spec::image::{Descriptor, Digest, MediaType};
use redb::{
    Database, ReadOnlyDatabase, ReadableDatabase as _, ReadableTable as _, TableDefinition,
    TableHandle as _,
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
    /// sha256 of the uncompressed layer tar; also names its snapshot directory.
    #[serde(with = "sha256")]
    pub diff_id: Digest,
    /// The compressed blob, once one has been made: digest, size and media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRecord>,
}

/// A compressed layer blob in the content store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    #[serde(with = "sha256")]
    pub digest: Digest,
    pub size: u64,
    pub media_type: MediaType,
}

impl BlobRecord {
    /// The blob's descriptor, for a manifest.
    #[must_use]
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.size, self.digest.clone())
    }
}

impl From<&Descriptor> for BlobRecord {
    fn from(d: &Descriptor) -> Self {
        Self {
            digest: d.digest().clone(),
            size: d.size(),
            media_type: d.media_type().clone(),
        }
    }
}

/// A record's digests are sha256 ones, written and read as `"sha256:<hex>"`: the blobs and
/// snapshots they name are stored under no other algorithm, so any other is a bad record.
pub(crate) mod sha256 {
    use oci_spec::image::Digest;
    use serde::{Deserialize as _, Deserializer, Serializer, de, ser};

    use crate::content::require_sha256;

    pub(crate) fn serialize<S: Serializer>(digest: &Digest, s: S) -> Result<S::Ok, S::Error> {
        let digest = require_sha256(digest).map_err(ser::Error::custom)?;
        s.serialize_str(digest.as_ref())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        let digest: Digest = text
            .parse()
            .map_err(|e| de::Error::custom(format_args!("digest {text:?}: {e}")))?;
        require_sha256(&digest).map_err(de::Error::custom)?;
        Ok(digest)
    }
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

/// The index could not be opened, read or written, or a record in it is bad.
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
    /// A record that is not one this index writes (a digest that is not sha256, a field
    /// missing): it is refused rather than handed out. Nothing else of the index is affected;
    /// writing the key again replaces it.
    #[error("cache index {}: the record for {key} in {table} does not decode", path.display())]
    Decode {
        path: PathBuf,
        table: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be encoded (a digest that is not sha256); nothing was written.
    #[error("cache index {}: the record for {key} in {table} does not encode", path.display())]
    Encode {
        path: PathBuf,
        table: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl IndexError {
    /// Whether this is a bad record ([`IndexError::Decode`]) rather than a failing index: a
    /// caller that uses the index as a cache can treat it as a miss and write the key anew.
    #[must_use]
    pub fn is_bad_record(&self) -> bool {
        matches!(self, Self::Decode { .. })
    }
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
    /// The process's lease: a key found or written is held for the running builds.
    lease: Option<Arc<crate::gc::Lease>>,
    /// Keys found since the last [`CacheIndex::flush_used`].
    touched: Mutex<HashSet<String>>,
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
            lease: None,
            touched: Mutex::default(),
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
        table_def: TableDefinition<'_, &str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, IndexError> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(table_def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.access()(e)),
        };
        let Some(value) = table.get(key).map_err(self.access())? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|source| IndexError::Decode {
                path: self.path.clone(),
                table: table_def.name().to_owned(),
                key: key.to_owned(),
                source,
            })
    }

    fn write<T: Serialize>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), IndexError> {
        let bytes = serde_json::to_vec(value).map_err(|source| IndexError::Encode {
            path: self.path.clone(),
            table: table.name().to_owned(),
            key: key.to_owned(),
            source,
        })?;
        let txn = self.writer()?.begin_write().map_err(self.access())?;
        {
            if table.name() == RESULTS.name() {
                // A result is used when it is recorded, in the same commit.
                let mut used = txn.open_table(USED).map_err(self.access())?;
                used.insert(key, crate::gc::now()).map_err(self.access())?;
            }
            let mut table = txn.open_table(table).map_err(self.access())?;
            table.insert(key, bytes.as_slice()).map_err(self.access())?;
        }
        txn.commit().map_err(self.access())?;
        Ok(())
    }

    /// The record for a key, if any.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails; [`IndexError::Decode`], naming the key, for
    /// a record that does not decode. The index does not turn a bad record into a miss itself,
    /// so that what is wrong stays visible; a cache may (see [`IndexError::is_bad_record`]).
    pub fn get(&self, key: &str) -> Result<Option<CacheRecord>, IndexError> {
        let found: Option<CacheRecord> = self.read(RESULTS, key)?;
        if found.is_some() {
            self.used(key);
        }
        Ok(found)
    }

    /// Records a result under a key, atomically.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails, [`IndexError::Encode`] for a digest that
    /// is not sha256.
    pub fn put(&self, key: &str, record: &CacheRecord) -> Result<(), IndexError> {
        if let Some(lease) = &self.lease {
            lease.hold(crate::gc::Item::Key(key.to_owned()));
        }
        self.write(RESULTS, key, record)
    }

    /// The compressed blob made earlier for the layer `diff_id` in `media_type`, if any.
    ///
    /// # Errors
    /// As [`CacheIndex::get`].
    pub fn get_blob(
        &self,
        diff_id: &Digest,
        media_type: &MediaType,
    ) -> Result<Option<BlobRecord>, IndexError> {
        self.read(BLOBS, &blob_key(diff_id, media_type))
    }

    /// Remembers the compressed blob made for the layer `diff_id`.
    ///
    /// # Errors
    /// As [`CacheIndex::put`].
    pub fn put_blob(&self, diff_id: &Digest, blob: &BlobRecord) -> Result<(), IndexError> {
        self.write(BLOBS, &blob_key(diff_id, &blob.media_type), blob)
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

    /// Every key with its record, for `hoist du` and garbage collection. A record that does
    /// not decode is left out: it names nothing that could be kept or reclaimed.
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

// ---- Garbage collection: last-used times, leases, and what a collector reads and removes.

/// cache key → when a build last found or recorded it, in seconds since the epoch: the order
/// in which the collector drops records (least recently used first).
const USED: TableDefinition<'_, &str, u64> = TableDefinition::new("used.v1");

/// How large the log of found keys' times may grow before a build folds it into `used.v1`.
const USED_LOG_FOLD: u64 = 1 << 20;

/// What a collector reads of the index (see [`CacheIndex::gc_entries`]).
#[derive(Debug, Default)]
pub struct GcEntries {
    /// Every result: its key, its record (`None` when it does not decode) and when it was last
    /// used (`None` for a record written before times were kept).
    pub results: Vec<(String, Option<CacheRecord>, Option<u64>)>,
    /// Every compressed-blob record, by its key.
    pub blobs: Vec<(String, BlobRecord)>,
    /// Every key with a last-used time.
    pub used: Vec<String>,
}

impl CacheIndex {
    /// The same index, holding each key it finds or writes in `lease`.
    #[must_use]
    pub fn with_lease(mut self, lease: Arc<crate::gc::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// A key was found: it is held for the running builds, and its last-used time is written
    /// at the next [`CacheIndex::flush_used`], once per build rather than once per step.
    fn used(&self, key: &str) {
        if let Some(lease) = &self.lease {
            lease.hold(crate::gc::Item::Key(key.to_owned()));
        }
        if let Ok(mut touched) = self.touched.lock() {
            touched.insert(key.to_owned());
        }
    }

    /// Where found keys' times wait to be folded into `used.v1`: `<index>.used`.
    fn used_log(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".used");
        self.path.with_file_name(name)
    }

    /// Notes the last-used time of every key found since the last call. A write transaction
    /// costs a fully cached build more than the build itself (its commit syncs the file), so
    /// the times are appended to a log without syncing instead, one `write` per build, and
    /// folded into `used.v1` by the collector (or here, once the log is large). A time lost
    /// in a crash only makes a record look older.
    ///
    /// # Errors
    /// The log cannot be written, or folding it fails.
    pub fn flush_used(&self) -> Result<(), IndexError> {
        use std::io::Write as _;
        let touched: Vec<String> = match self.touched.lock() {
            Ok(mut touched) => touched.drain().collect(),
            Err(_) => return Ok(()),
        };
        if touched.is_empty() {
            return Ok(());
        }
        let now = crate::gc::now();
        let mut text = String::new();
        for key in &touched {
            text.push_str(&format!("{now} {key}\n"));
        }
        let path = self.used_log();
        let access = |source: std::io::Error| IndexError::Access {
            path: path.clone(),
            source: Box::new(source),
        };
        // One append: concurrent builds' lines do not interleave.
        let mut log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(access)?;
        log.write_all(text.as_bytes()).map_err(access)?;
        if log.metadata().map_err(access)?.len() > USED_LOG_FOLD {
            self.fold_used()?;
        }
        Ok(())
    }

    /// The times in the log, the newest of each key.
    fn read_used_log(&self) -> std::collections::HashMap<String, u64> {
        let mut out = std::collections::HashMap::new();
        let Ok(text) = fs_err::read_to_string(self.used_log()) else {
            return out;
        };
        for line in text.lines() {
            if let Some((at, key)) = line.split_once(' ')
                && let Ok(at) = at.parse::<u64>()
            {
                let e = out.entry(key.to_owned()).or_insert(at);
                *e = (*e).max(at);
            }
        }
        out
    }

    /// Moves the logged times into `used.v1` (for keys that still have a result) and empties
    /// the log. A line appended between the read and the truncation is lost: its record only
    /// looks older.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store or the log fails.
    pub fn fold_used(&self) -> Result<(), IndexError> {
        let logged = self.read_used_log();
        if logged.is_empty() {
            return Ok(());
        }
        let txn = self.writer()?.begin_write().map_err(self.access())?;
        {
            let results = txn.open_table(RESULTS).map_err(self.access())?;
            let mut used = txn.open_table(USED).map_err(self.access())?;
            for (key, at) in &logged {
                if results.get(key.as_str()).map_err(self.access())?.is_none() {
                    continue;
                }
                let stored = used
                    .get(key.as_str())
                    .map_err(self.access())?
                    .map(|v| v.value());
                if stored.is_none_or(|s| s < *at) {
                    used.insert(key.as_str(), *at).map_err(self.access())?;
                }
            }
        }
        txn.commit().map_err(self.access())?;
        let path = self.used_log();
        match fs_err::OpenOptions::new().write(true).open(&path) {
            Ok(log) => log.set_len(0).map_err(|source| IndexError::Access {
                path,
                source: Box::new(source),
            }),
            Err(_) => Ok(()),
        }
    }

    /// Everything a collector needs from the index, read in one transaction.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn gc_entries(&self) -> Result<GcEntries, IndexError> {
        let logged = self.read_used_log();
        let txn = self.begin_read()?;
        let mut out = GcEntries::default();
        let mut times = std::collections::HashMap::new();
        match txn.open_table(USED) {
            Ok(table) => {
                for item in table.iter().map_err(self.access())? {
                    let (k, v) = item.map_err(self.access())?;
                    times.insert(k.value().to_owned(), v.value());
                    out.used.push(k.value().to_owned());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.access()(e)),
        }
        match txn.open_table(RESULTS) {
            Ok(table) => {
                for item in table.iter().map_err(self.access())? {
                    let (k, v) = item.map_err(self.access())?;
                    let key = k.value().to_owned();
                    let record = serde_json::from_slice(v.value()).ok();
                    let used = times.get(&key).copied().max(logged.get(&key).copied());
                    out.results.push((key, record, used));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.access()(e)),
        }
        match txn.open_table(BLOBS) {
            Ok(table) => {
                for item in table.iter().map_err(self.access())? {
                    let (k, v) = item.map_err(self.access())?;
                    if let Ok(blob) = serde_json::from_slice(v.value()) {
                        out.blobs.push((k.value().to_owned(), blob));
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.access()(e)),
        }
        Ok(out)
    }

    /// Removes results (with their times and recorded inputs), compressed-blob records and
    /// stray times, in one commit.
    ///
    /// # Errors
    /// [`IndexError::Access`] when the store fails.
    pub fn remove_for_gc(
        &self,
        keys: &[String],
        blob_keys: &[String],
        used_keys: &[String],
    ) -> Result<(), IndexError> {
        if keys.is_empty() && blob_keys.is_empty() && used_keys.is_empty() {
            return Ok(());
        }
        let txn = self.writer()?.begin_write().map_err(self.access())?;
        {
            let mut results = txn.open_table(RESULTS).map_err(self.access())?;
            let mut used = txn.open_table(USED).map_err(self.access())?;
            let mut blobs = txn.open_table(BLOBS).map_err(self.access())?;
            for key in keys {
                results.remove(key.as_str()).map_err(self.access())?;
                used.remove(key.as_str()).map_err(self.access())?;
            }
            for key in used_keys {
                used.remove(key.as_str()).map_err(self.access())?;
            }
            for key in blob_keys {
                blobs.remove(key.as_str()).map_err(self.access())?;
            }
            // What the removed steps were made from goes with them, and so does each step's
            // pointer to one of them (the next build of that step says it has none).
            let mut steps = txn.open_table(STEPS).map_err(self.access())?;
            let removed: std::collections::HashSet<&str> =
                keys.iter().map(String::as_str).collect();
            let mut dangling = Vec::new();
            for row in steps.range("h ".."h!").map_err(self.access())? {
                let (row, value) = row.map_err(self.access())?;
                let points_at: Option<String> = serde_json::from_slice(value.value()).ok();
                if points_at.is_some_and(|k| removed.contains(k.as_str())) {
                    dangling.push(row.value().to_owned());
                }
            }
            for row in dangling {
                steps.remove(row.as_str()).map_err(self.access())?;
            }
            for key in keys {
                steps
                    .remove(inputs_row(key).as_str())
                    .map_err(self.access())?;
            }
        }
        txn.commit().map_err(self.access())?;
        Ok(())
    }
}

/// The key of a layer's blob record: `diffID media-type`.
fn blob_key(diff_id: &Digest, media_type: &MediaType) -> String {
    format!("{diff_id} {media_type}")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn digest(n: u64) -> Digest {
        Digest::from_str(&format!("sha256:{n:064x}")).unwrap()
    }

    fn record(n: u64) -> CacheRecord {
        CacheRecord {
            layers: vec![LayerRecord {
                diff_id: digest(n),
                blob: Some(BlobRecord {
                    digest: digest(n + 1),
                    size: n,
                    media_type: MediaType::ImageLayerGzip,
                }),
            }],
            took_ms: n,
        }
    }

    fn raw(index: &CacheIndex, table: TableDefinition<'_, &str, &[u8]>, key: &str) -> Vec<u8> {
        let txn = index.begin_read().unwrap();
        let table = txn.open_table(table).unwrap();
        table.get(key).unwrap().unwrap().value().to_vec()
    }

    #[test]
    fn a_record_whose_digest_is_not_sha256_is_refused_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndex::open(&dir.path().join("cache.redb")).unwrap();
        let sha512 = format!("sha512:{}", "a".repeat(128));
        let upper = format!("sha256:{}", "A".repeat(64));
        for (n, bad) in [
            "sha256:abc",
            "md5:0123",
            upper.as_str(),
            sha512.as_str(),
            "x",
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("sha256:{n:064x}");
            let written = serde_json::json!({"layers": [{"diff_id": bad}], "took_ms": 1});
            index.write(RESULTS, &key, &written).unwrap();
            let err = index.get(&key).unwrap_err();
            assert!(err.is_bad_record(), "{bad}: {err}");
            let shown = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(shown.contains(&key), "{shown}");
            assert!(shown.contains(bad), "{shown}");

            // The blob table refuses the same way.
            let blob = serde_json::json!({"digest": bad, "size": 1, "media_type": "x"});
            index
                .write(BLOBS, &blob_key(&digest(0), &MediaType::ImageLayer), &blob)
                .unwrap();
            let err = index
                .get_blob(&digest(0), &MediaType::ImageLayer)
                .unwrap_err();
            assert!(err.is_bad_record(), "{bad}: {err}");
        }

        // The rest of the index is unaffected, and writing the key again replaces the record.
        index.put("good", &record(3)).unwrap();
        assert_eq!(
            index.entries().unwrap(),
            vec![("good".to_owned(), record(3))]
        );
        let key = format!("sha256:{:064x}", 0);
        index.put(&key, &record(4)).unwrap();
        assert_eq!(index.get(&key).unwrap(), Some(record(4)));
    }

    #[test]
    fn a_digest_that_is_not_sha256_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndex::open(&dir.path().join("cache.redb")).unwrap();
        let mut bad = record(1);
        bad.layers[0].diff_id = Digest::from_str(&format!("sha512:{}", "b".repeat(128))).unwrap();
        let err = index.put("k", &bad).unwrap_err();
        assert!(
            matches!(&err, IndexError::Encode { key, .. } if key == "k"),
            "{err}"
        );
        assert_eq!(index.get("k").unwrap(), None);
    }

    /// Pins the on-disk form: records written when they held strings read back as digests
    /// and media types, and are written again byte for byte, so the tables keep `v1`.
    #[test]
    fn records_written_with_strings_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndex::open(&dir.path().join("cache.redb")).unwrap();
        let (a, b) = (digest(7), digest(8));
        let old_result = format!(
            r#"{{"layers":[{{"diff_id":"{a}","blob":{{"digest":"{b}","size":5,"media_type":"application/vnd.docker.image.rootfs.diff.tar.gzip"}}}},{{"diff_id":"{b}"}}],"took_ms":9}}"#
        );
        let old_blob = format!(
            r#"{{"digest":"{b}","size":5,"media_type":"application/vnd.oci.image.layer.v1.tar+zstd"}}"#
        );
        let write_raw = |table, key: &str, bytes: &[u8]| {
            let txn = index.writer().unwrap().begin_write().unwrap();
            txn.open_table(table).unwrap().insert(key, bytes).unwrap();
            txn.commit().unwrap();
        };
        write_raw(RESULTS, "k", old_result.as_bytes());
        let blob_key = format!("{a} application/vnd.oci.image.layer.v1.tar+zstd");
        write_raw(BLOBS, &blob_key, old_blob.as_bytes());

        let got = index.get("k").unwrap().unwrap();
        assert_eq!(got.layers[0].diff_id, a);
        let blob = got.layers[0].blob.clone().unwrap();
        assert_eq!(blob.digest, b);
        assert_eq!(blob.media_type.as_ref(), crate::content::DOCKER_LAYER_GZIP);
        assert_eq!(got.layers[1].blob, None);
        let known = index
            .get_blob(&a, &MediaType::ImageLayerZstd)
            .unwrap()
            .unwrap();
        assert_eq!(known.descriptor().digest(), &b);

        index.put("k", &got).unwrap();
        index.put_blob(&a, &known).unwrap();
        assert_eq!(raw(&index, RESULTS, "k"), old_result.as_bytes());
        assert_eq!(raw(&index, BLOBS, &blob_key), old_blob.as_bytes());
    }
}

/// Why steps ran: `k <cache key>` → JSON of the inputs a step that ran under that key was made
/// from, and `h <step identity>` → JSON of the cache key last recorded for that place in a
/// Dockerfile. The solver owns both encodings (`hoist_solver::scheduler::StepInputs`); the
/// index keeps them. Written once per step that ran, read only for a step that missed.
const STEPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("history.v1");

fn inputs_row(key: &str) -> String {
    format!("k {key}")
}

fn identity_row(identity: &str) -> String {
    format!("h {identity}")
}

impl CacheIndex {
    /// The inputs recorded for a cache key, if any.
    ///
    /// # Errors
    /// As [`CacheIndex::get`].
    pub fn step_inputs<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, IndexError> {
        self.read(STEPS, &inputs_row(key))
    }

    /// The inputs last recorded for a step identity, if any.
    ///
    /// # Errors
    /// As [`CacheIndex::get`].
    pub fn last_step_inputs<T: serde::de::DeserializeOwned>(
        &self,
        identity: &str,
    ) -> Result<Option<T>, IndexError> {
        let Some(key) = self.read::<String>(STEPS, &identity_row(identity))? else {
            return Ok(None);
        };
        self.step_inputs(&key)
    }

    /// Records the inputs of a step that ran under `key`, as the last of `identity`, in one
    /// transaction.
    ///
    /// # Errors
    /// As [`CacheIndex::put`].
    pub fn put_step_inputs<T: Serialize>(
        &self,
        identity: &str,
        key: &str,
        inputs: &T,
    ) -> Result<(), IndexError> {
        self.write_step_inputs(identity, key, inputs)
    }

    fn write_step_inputs<T: Serialize>(
        &self,
        identity: &str,
        key: &str,
        inputs: &T,
    ) -> Result<(), IndexError> {
        let (inputs_key, identity_key) = (inputs_row(key), identity_row(identity));
        let inputs = self.encode_step_row(&inputs_key, inputs)?;
        let pointer = self.encode_step_row(&identity_key, &key)?;
        let txn = self.writer()?.begin_write().map_err(self.access())?;
        {
            let mut table = txn.open_table(STEPS).map_err(self.access())?;
            table
                .insert(inputs_key.as_str(), inputs.as_slice())
                .map_err(self.access())?;
            table
                .insert(identity_key.as_str(), pointer.as_slice())
                .map_err(self.access())?;
        }
        txn.commit().map_err(self.access())?;
        Ok(())
    }

    fn encode_step_row<T: Serialize + ?Sized>(
        &self,
        row: &str,
        value: &T,
    ) -> Result<Vec<u8>, IndexError> {
        serde_json::to_vec(value).map_err(|source| IndexError::Encode {
            path: self.path.clone(),
            table: STEPS.name().to_owned(),
            key: row.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn the_last_inputs_of_a_step_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndex::open(&dir.path().join("cache.redb")).unwrap();
        assert_eq!(
            index.last_step_inputs::<String>("df stage 1").unwrap(),
            None
        );
        index.put_step_inputs("df stage 1", "k1", &"one").unwrap();
        index.put_step_inputs("df stage 1", "k2", &"two").unwrap();
        let last = index.last_step_inputs::<String>("df stage 1").unwrap();
        assert_eq!(last.as_deref(), Some("two"));
        assert_eq!(
            index.step_inputs::<String>("k1").unwrap().as_deref(),
            Some("one")
        );
    }

    #[test]
    fn gc_takes_the_inputs_of_removed_steps_and_the_pointers_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let index = CacheIndex::open(&dir.path().join("cache.redb")).unwrap();
        index.put_step_inputs("df stage 1", "k1", &"one").unwrap();
        index.put_step_inputs("df stage 2", "k2", &"two").unwrap();
        index.remove_for_gc(&["k2".to_owned()], &[], &[]).unwrap();
        assert_eq!(index.step_inputs::<String>("k2").unwrap(), None);
        assert_eq!(
            index.last_step_inputs::<String>("df stage 2").unwrap(),
            None
        );
        assert_eq!(
            index
                .last_step_inputs::<String>("df stage 1")
                .unwrap()
                .as_deref(),
            Some("one")
        );
        let txn = index.writer().unwrap().begin_read().unwrap();
        let rows = txn.open_table(STEPS).unwrap().iter().unwrap().count();
        assert_eq!(rows, 2, "only k1 and its pointer are left");
    }
}
