//! The `Cas` service: blobs and the Merkle trees of uploaded build contexts.
//!
//! A [`CasStore`] is a directory:
//! - `blobs/sha256/<hex>`: verified blobs, file contents and [`Directory`] messages alike;
//! - `ingest/<hex>`: the bytes of a streamed upload so far, which a later `Write` continues at
//!   their length (the committed size);
//! - `trees/<hex>/context`: a root Directory materialized as a directory once, shared by every
//!   build of that tree, with `trees/<hex>/lock`, which each [`TreeLease`] holds shared;
//! - `tmp/`: files and trees being made, renamed into place once complete.
//!
//! Nothing a client sends is trusted: a blob becomes visible only after its bytes match its
//! digest, and a Directory is validated (decoded, sorted, unique and valid names, well-formed
//! digests, within [`CasLimits`]) each time it is used, since any bytes may have been stored
//! under a digest that a client then names as a directory.
//!
//! A Directory's digest is that of its encoding with every `mtime_ns` set to 0, so a store
//! accepts under that digest the encoding with mtimes too, and keeps the first one it gets.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hoist_proto::v1::cas_server::{Cas, CasServer};
use hoist_proto::v1::special_node::Kind;
use hoist_proto::v1::{
    BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, Digest, Directory, FindMissingBlobsRequest,
    FindMissingBlobsResponse, FindMissingTreeRequest, FindMissingTreeResponse, NodeMeta,
    QueryWriteStatusRequest, QueryWriteStatusResponse, WriteRequest, WriteResponse,
    batch_update_blobs_response,
};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::{Code, Request, Response, Status, Streaming};

/// What a store accepts; past these a request is refused, never half-done.
#[derive(Clone, Debug)]
pub struct CasLimits {
    /// The largest blob.
    pub max_blob: u64,
    /// The largest Directory message.
    pub max_directory: u64,
    /// The most entries (of the four kinds together) in one Directory.
    pub max_entries: usize,
    /// The deepest a tree may nest, its root at depth 0.
    pub max_depth: usize,
    /// The most distinct Directory messages in one tree.
    pub max_tree_directories: usize,
    /// The most entries a checked-out tree may hold. A Directory may appear at many places of
    /// a tree, so a few small messages could otherwise describe a tree too big for any disk.
    pub max_tree_entries: u64,
    /// The largest BatchUpdateBlobs request, all data together: under gRPC's default 4 MiB
    /// message limit, so a client that keeps to it is never cut off by the transport.
    pub max_batch: u64,
    /// How long a `Write` stream may go without a message before it is ended; what it
    /// committed is kept for a resume.
    pub idle: Duration,
}

impl Default for CasLimits {
    fn default() -> Self {
        Self {
            max_blob: 8 << 30,
            max_directory: 4 << 20,
            max_entries: 1_000_000,
            max_depth: 256,
            max_tree_directories: 1_000_000,
            max_tree_entries: 10_000_000,
            max_batch: (4 << 20) - (64 << 10),
            idle: Duration::from_secs(60),
        }
    }
}

/// The most digests one FindMissingTree answer holds, so that it stays under gRPC's 4 MiB
/// message limit (a digest takes about 75 bytes); the client asks again after uploading them.
const MAX_MISSING_PER_ANSWER: usize = 40_000;

/// A blob name that passed [`BlobId::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId {
    pub hex: String,
    pub size: u64,
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}/{}", self.hex, self.size)
    }
}

impl BlobId {
    /// Checks a wire digest: 64 lowercase hex digits and a size from 0 up.
    ///
    /// # Errors
    /// [`CasError::BadDigest`].
    pub fn parse(digest: &Digest) -> Result<Self, CasError> {
        let bad = |reason| CasError::BadDigest {
            hash: digest.hash.chars().take(80).collect(),
            size: digest.size_bytes,
            reason,
        };
        if digest.hash.len() != 64
            || !digest
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the hash is not 64 lowercase hex digits"));
        }
        let size = u64::try_from(digest.size_bytes).map_err(|_| bad("the size is negative"))?;
        Ok(Self {
            hex: digest.hash.clone(),
            size,
        })
    }

    #[must_use]
    pub fn to_digest(&self) -> Digest {
        Digest {
            hash: self.hex.clone(),
            size_bytes: i64::try_from(self.size).unwrap_or(i64::MAX),
        }
    }

    fn of(bytes: &[u8]) -> Self {
        Self {
            hex: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("invalid digest {hash:?}/{size}: {reason}")]
    BadDigest {
        hash: String,
        size: i64,
        reason: &'static str,
    },
    #[error("blob {digest}: the bytes received hash to {actual}; the blob was not stored")]
    Mismatch { digest: BlobId, actual: BlobId },
    #[error("blob {digest}: {what} of {size} bytes is past the limit of {limit} bytes")]
    TooBig {
        digest: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("directory {digest}: {reason}")]
    BadDirectory { digest: BlobId, reason: String },
    #[error("tree {root}: {reason}")]
    BadTree { root: BlobId, reason: String },
    #[error("tree {root}: blob {digest} is missing; upload it (FindMissingTree names what is)")]
    Missing { root: BlobId, digest: BlobId },
    #[error(
        "write of blob {digest}: data at offset {offset}, but {committed} bytes are committed; \
         resume at the committed size (QueryWriteStatus)"
    )]
    WrongOffset {
        digest: BlobId,
        offset: i64,
        committed: u64,
    },
    #[error("write of blob {digest}: {reason}")]
    BadWrite { digest: String, reason: String },
    #[error("write of blob {digest}: another upload of it is under way")]
    Busy { digest: BlobId },
    #[error(
        "write of blob {digest}: no data for {idle:?}; {committed} bytes are kept, resume there"
    )]
    Idle {
        digest: BlobId,
        idle: Duration,
        committed: u64,
    },
    #[error(transparent)]
    Fs(std::io::Error),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CasError {
    fn code(&self) -> Code {
        match self {
            Self::BadDigest { .. }
            | Self::Mismatch { .. }
            | Self::BadDirectory { .. }
            | Self::BadTree { .. }
            | Self::BadWrite { .. } => Code::InvalidArgument,
            Self::TooBig { .. } => Code::ResourceExhausted,
            Self::Missing { .. } => Code::FailedPrecondition,
            Self::WrongOffset { .. } => Code::OutOfRange,
            Self::Busy { .. } => Code::Aborted,
            Self::Idle { .. } => Code::DeadlineExceeded,
            Self::Io { .. } | Self::Fs(_) => Code::Internal,
        }
    }
}

impl From<CasError> for Status {
    fn from(err: CasError) -> Self {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(err.code(), text)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CasError + '_ {
    move |source| CasError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes whose hash is a Directory's digest: its encoding with every mtime at 0.
#[must_use]
pub fn canonical_directory(dir: &Directory) -> Vec<u8> {
    let mut dir = dir.clone();
    let zero = |meta: &mut Option<NodeMeta>| {
        if let Some(meta) = meta {
            meta.mtime_ns = 0;
        }
    };
    dir.files.iter_mut().for_each(|n| zero(&mut n.meta));
    dir.directories.iter_mut().for_each(|n| zero(&mut n.meta));
    dir.symlinks.iter_mut().for_each(|n| zero(&mut n.meta));
    dir.specials.iter_mut().for_each(|n| zero(&mut n.meta));
    dir.encode_to_vec()
}

/// A Directory's digest (see [`canonical_directory`]).
#[must_use]
pub fn directory_digest(dir: &Directory) -> Digest {
    BlobId::of(&canonical_directory(dir)).to_digest()
}

/// Why a name cannot be an entry of a Directory, if it cannot.
fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == b"." || name == b".." {
        Some("a name that is \".\" or \"..\"")
    } else if name.contains(&b'/') {
        Some("a name with '/'")
    } else if name.contains(&0) {
        Some("a name with NUL")
    } else if name.len() > 255 {
        Some("a name longer than 255 bytes")
    } else {
        None
    }
}

fn check_meta(meta: Option<&NodeMeta>) -> Result<&NodeMeta, String> {
    let meta = meta.ok_or("an entry without metadata")?;
    if meta.mode & !0o7777 != 0 {
        return Err(format!("mode {:o} has bits beyond 0o7777", meta.mode));
    }
    for x in &meta.xattrs {
        if x.name.is_empty() || x.name.contains(&0) {
            return Err("an xattr name that is empty or holds NUL".to_owned());
        }
    }
    Ok(meta)
}

/// Decodes and validates a Directory stored under `digest`: names valid, sorted and unique
/// across its four lists, digests well-formed, within the limits.
///
/// # Errors
/// [`CasError::BadDirectory`] saying what is wrong, or [`CasError::TooBig`].
pub fn decode_directory(
    digest: &BlobId,
    bytes: &[u8],
    limits: &CasLimits,
) -> Result<Directory, CasError> {
    if bytes.len() as u64 > limits.max_directory {
        return Err(CasError::TooBig {
            digest: digest.to_string(),
            what: "a directory",
            size: bytes.len() as u64,
            limit: limits.max_directory,
        });
    }
    let bad = |reason: String| CasError::BadDirectory {
        digest: digest.clone(),
        reason,
    };
    let dir = Directory::decode(bytes).map_err(|e| bad(format!("not a Directory message: {e}")))?;
    let count = dir.files.len() + dir.directories.len() + dir.symlinks.len() + dir.specials.len();
    if count > limits.max_entries {
        return Err(bad(format!(
            "{count} entries, past the limit of {}",
            limits.max_entries
        )));
    }
    let check_list = |list: &[&[u8]], what: &str| -> Result<(), CasError> {
        for (i, name) in list.iter().enumerate() {
            if let Some(reason) = bad_name(name) {
                return Err(bad(format!(
                    "{what} {:?}: {reason}",
                    String::from_utf8_lossy(name)
                )));
            }
            if i > 0 && list[i - 1] >= *name {
                return Err(bad(format!(
                    "{what} {:?} is not sorted after {:?}, or repeats it",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(list[i - 1])
                )));
            }
        }
        Ok(())
    };
    let lists: [(Vec<&[u8]>, &str); 4] = [
        (dir.files.iter().map(|n| &n.name[..]).collect(), "file"),
        (
            dir.directories.iter().map(|n| &n.name[..]).collect(),
            "directory",
        ),
        (
            dir.symlinks.iter().map(|n| &n.name[..]).collect(),
            "symlink",
        ),
        (
            dir.specials.iter().map(|n| &n.name[..]).collect(),
            "special",
        ),
    ];
    let mut names: Vec<&[u8]> = Vec::with_capacity(count);
    for (list, what) in &lists {
        check_list(list, what)?;
        names.extend(list);
    }
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!(
            "name {:?} appears twice",
            String::from_utf8_lossy(w[0])
        )));
    }
    let named = |name: &[u8], e: String| bad(format!("{:?}: {e}", String::from_utf8_lossy(name)));
    let digest_of = |name: &[u8], d: Option<&Digest>, limit: u64| -> Result<(), CasError> {
        let d = d.ok_or_else(|| named(name, "no digest".to_owned()))?;
        let id = BlobId::parse(d).map_err(|e| named(name, e.to_string()))?;
        if id.size > limit {
            return Err(named(
                name,
                format!("size {} is past the limit of {limit}", id.size),
            ));
        }
        Ok(())
    };
    for n in &dir.files {
        digest_of(&n.name, n.digest.as_ref(), limits.max_blob)?;
        check_meta(n.meta.as_ref()).map_err(|e| named(&n.name, e))?;
        if !n.hardlink.is_empty()
            && (n.hardlink.len() > 4095
                || n.hardlink
                    .split(|b| *b == b'/')
                    .any(|c| c.is_empty() || c == b"." || c == b".." || c.contains(&0)))
        {
            return Err(named(
                &n.name,
                "a hardlink path that is not the relative path of a file in the tree".to_owned(),
            ));
        }
    }
    for n in &dir.directories {
        digest_of(&n.name, n.digest.as_ref(), limits.max_directory)?;
        check_meta(n.meta.as_ref()).map_err(|e| named(&n.name, e))?;
    }
    for n in &dir.symlinks {
        if n.target.is_empty() || n.target.contains(&0) || n.target.len() > 4095 {
            return Err(named(
                &n.name,
                "a symlink target that is empty, holds NUL or is longer than 4095 bytes".to_owned(),
            ));
        }
        check_meta(n.meta.as_ref()).map_err(|e| named(&n.name, e))?;
    }
    for n in &dir.specials {
        if !matches!(
            Kind::try_from(n.kind),
            Ok(Kind::Fifo | Kind::CharDevice | Kind::BlockDevice)
        ) {
            return Err(named(&n.name, format!("unknown special kind {}", n.kind)));
        }
        check_meta(n.meta.as_ref()).map_err(|e| named(&n.name, e))?;
    }
    Ok(dir)
}

/// A blob that `bytes` may be stored as under `digest`: its hash and size match, or it is a
/// Directory whose canonical form does (see [`canonical_directory`]).
fn verify(digest: &BlobId, bytes: &[u8], limits: &CasLimits) -> Result<(), CasError> {
    let actual = BlobId::of(bytes);
    if actual == *digest {
        return Ok(());
    }
    if bytes.len() as u64 <= limits.max_directory
        && let Ok(dir) = Directory::decode(bytes)
        && BlobId::of(&canonical_directory(&dir)) == *digest
    {
        return Ok(());
    }
    Err(CasError::Mismatch {
        digest: digest.clone(),
        actual,
    })
}

/// One record of the store, as `hoist du` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasUsage {
    /// `blobs`, `ingest` or `tree <hex>`.
    pub name: String,
    /// How many files the record holds.
    pub count: u64,
    pub bytes: u64,
    /// A build holds it (for blobs: some of them are under a held tree).
    pub in_use: bool,
    /// When it was last used, for a tree; the newest upload, for blobs.
    pub last_used: Option<SystemTime>,
}

/// What a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub blobs: u64,
    pub trees: u64,
    pub bytes: u64,
}

/// What a prune without `all` keeps: records used within this long.
pub const PRUNE_KEEP_RECENT: Duration = Duration::from_secs(3600);

/// The content-addressed store behind the `Cas` service.
#[derive(Debug)]
pub struct CasStore {
    root: PathBuf,
    limits: CasLimits,
    received: AtomicU64,
    /// Where blob data received is counted too (`hoist_bytes_uploaded_total`), when served.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Blobs known to be stored, so that asking about an unchanged tree of 50,000 files costs
    /// no 50,000 stats. Only this process removes blobs (prune), and it forgets them here
    /// first: the store belongs to one server.
    present: Mutex<HashSet<String>>,
    /// Blobs with a `Write` stream open, so that two streams never append to one ingest file.
    writing: Mutex<HashSet<String>>,
    /// Trees held by leases of this process, by root hex.
    leased: Arc<Mutex<HashMap<String, usize>>>,
    /// Serializes materializing a tree within this process (another process is kept out by
    /// the rename of a complete tree into place).
    making: Mutex<()>,
}

impl CasStore {
    /// A store in `root`, made if missing.
    ///
    /// # Errors
    /// The directories cannot be made.
    pub fn open(root: &Path, limits: CasLimits) -> Result<Self, CasError> {
        for sub in ["blobs/sha256", "ingest", "trees", "tmp"] {
            let dir = root.join(sub);
            fs_err::create_dir_all(&dir).map_err(CasError::Fs)?;
        }
        // Trees hold what clients sent, setuid files owned by root and device nodes among
        // them: no one but the server may reach into the store.
        fs_err::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(CasError::Fs)?;
        Ok(Self {
            root: root.to_path_buf(),
            limits,
            received: AtomicU64::new(0),
            metrics: None,
            present: Mutex::new(HashSet::new()),
            writing: Mutex::new(HashSet::new()),
            leased: Arc::new(Mutex::new(HashMap::new())),
            making: Mutex::new(()),
        })
    }

    #[must_use]
    pub fn limits(&self) -> &CasLimits {
        &self.limits
    }

    /// Counts the blob data uploads send into `metrics` too, as it arrives.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Blob data received so far, by every upload.
    #[must_use]
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn count_received(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.uploaded(bytes);
        }
    }

    /// The gRPC service over this store.
    #[must_use]
    pub fn service(self: Arc<Self>) -> CasServer<CasService> {
        CasServer::new(CasService { store: self })
    }

    fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.root.join("blobs/sha256").join(&id.hex)
    }

    fn ingest_path(&self, id: &BlobId) -> PathBuf {
        self.root.join("ingest").join(&id.hex)
    }

    /// Whether the store has this blob.
    #[must_use]
    pub fn has(&self, id: &BlobId) -> bool {
        if self.present_set().contains(&id.hex) {
            return true;
        }
        let there = self.blob_path(id).exists();
        if there {
            self.present_set().insert(id.hex.clone());
        }
        there
    }

    fn present_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.present.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `bytes` under `id` once they are verified; a blob already there is kept.
    ///
    /// # Errors
    /// [`CasError::Mismatch`], [`CasError::TooBig`] or I/O.
    pub fn put(&self, id: &BlobId, bytes: &[u8]) -> Result<(), CasError> {
        self.count_received(bytes.len() as u64);
        if bytes.len() as u64 > self.limits.max_blob {
            return Err(CasError::TooBig {
                digest: id.to_string(),
                what: "a blob",
                size: bytes.len() as u64,
                limit: self.limits.max_blob,
            });
        }
        verify(id, bytes, &self.limits)?;
        let dest = self.blob_path(id);
        if dest.exists() {
            return Ok(());
        }
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        tmp.persist(&dest).map_err(|e| CasError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    fn read_blob(&self, id: &BlobId) -> Result<Option<Vec<u8>>, CasError> {
        let path = self.blob_path(id);
        match fs_err::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CasError::Fs(e)),
        }
    }

    /// The Directory `id`, validated; `None` when the store lacks it.
    fn directory(&self, id: &BlobId) -> Result<Option<Directory>, CasError> {
        match self.read_blob(id)? {
            Some(bytes) => decode_directory(id, &bytes, &self.limits).map(Some),
            None => Ok(None),
        }
    }

    /// The Directory digests and file blobs of the tree under `root` that the store lacks,
    /// at most `max` of them; a missing Directory hides its children.
    ///
    /// # Errors
    /// An invalid Directory on the way, or a tree past the limits.
    pub fn find_missing_tree(&self, root: &BlobId, max: usize) -> Result<Vec<BlobId>, CasError> {
        let mut missing = Vec::new();
        let mut seen_files = HashSet::new();
        self.walk(root, &mut |event| {
            match event {
                Walk::MissingDir(id) => missing.push(id.clone()),
                Walk::Dir(_, dir) => {
                    for f in &dir.files {
                        if let Some(id) = f.digest.as_ref().and_then(|d| BlobId::parse(d).ok())
                            && !self.has(&id)
                            && seen_files.insert(id.clone())
                        {
                            missing.push(id);
                        }
                    }
                }
            }
            missing.len() < max
        })?;
        missing.truncate(max);
        Ok(missing)
    }

    /// Visits each distinct Directory of the tree under `root` once, parents first; `visit`
    /// returns false to stop.
    fn walk(&self, root: &BlobId, visit: &mut dyn FnMut(Walk<'_>) -> bool) -> Result<(), CasError> {
        let mut seen = HashSet::new();
        let mut level = vec![root.clone()];
        seen.insert(root.clone());
        let mut depth = 0;
        while !level.is_empty() {
            if depth > self.limits.max_depth {
                return Err(CasError::BadTree {
                    root: root.clone(),
                    reason: format!(
                        "nested deeper than the limit of {} directories",
                        self.limits.max_depth
                    ),
                });
            }
            let mut next = Vec::new();
            for id in level {
                let Some(dir) = self.directory(&id)? else {
                    if !visit(Walk::MissingDir(&id)) {
                        return Ok(());
                    }
                    continue;
                };
                for d in &dir.directories {
                    if let Some(child) = d.digest.as_ref().and_then(|d| BlobId::parse(d).ok())
                        && seen.insert(child.clone())
                    {
                        next.push(child);
                    }
                }
                if seen.len() > self.limits.max_tree_directories {
                    return Err(CasError::BadTree {
                        root: root.clone(),
                        reason: format!(
                            "more than the limit of {} directories",
                            self.limits.max_tree_directories
                        ),
                    });
                }
                if !visit(Walk::Dir(&id, &dir)) {
                    return Ok(());
                }
            }
            level = next;
            depth += 1;
        }
        Ok(())
    }

    /// Every blob of the complete tree under `root` (Directories and files).
    fn tree_blobs(&self, root: &BlobId) -> Result<HashSet<String>, CasError> {
        let mut all = HashSet::new();
        self.walk(root, &mut |event| {
            if let Walk::Dir(id, dir) = event {
                all.insert(id.hex.clone());
                for f in &dir.files {
                    if let Some(d) = &f.digest {
                        all.insert(d.hash.clone());
                    }
                }
            }
            true
        })?;
        Ok(all)
    }

    /// The committed size of a streamed upload, and whether the blob is complete.
    fn write_status(&self, id: &BlobId) -> Result<(u64, bool), CasError> {
        if self.has(id) {
            return Ok((id.size, true));
        }
        let path = self.ingest_path(id);
        match fs_err::metadata(&path) {
            Ok(meta) => Ok((meta.len(), false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((0, false)),
            Err(e) => Err(CasError::Fs(e)),
        }
    }

    async fn write_stream(
        self: Arc<Self>,
        mut stream: impl WriteSource,
    ) -> Result<WriteResponse, CasError> {
        let idle = self.limits.idle;
        let first = match tokio::time::timeout(idle, stream.next_message()).await {
            Ok(first) => first?,
            Err(_) => {
                return Err(CasError::Idle {
                    digest: BlobId {
                        hex: "(not named yet)".to_owned(),
                        size: 0,
                    },
                    idle,
                    committed: 0,
                });
            }
        };
        let Some(first) = first else {
            return Err(CasError::BadWrite {
                digest: String::new(),
                reason: "an empty stream".to_owned(),
            });
        };
        let id = BlobId::parse(first.digest.as_ref().unwrap_or(&Digest::default()))?;
        if id.size > self.limits.max_blob {
            return Err(CasError::TooBig {
                digest: id.to_string(),
                what: "a blob",
                size: id.size,
                limit: self.limits.max_blob,
            });
        }
        if self.has(&id) {
            return Ok(WriteResponse {
                committed_size: first_size(&id),
            });
        }
        // Two clients that send the same new file at once: the second waits for the first's
        // upload, which is then its own; only if that one stops short is it told to resume.
        let waited_since = tokio::time::Instant::now();
        while !self
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.hex.clone())
        {
            if waited_since.elapsed() > idle {
                return Err(CasError::Busy { digest: id });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.has(&id) {
                return Ok(WriteResponse {
                    committed_size: first_size(&id),
                });
            }
        }
        if self.has(&id) {
            self.writing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id.hex);
            return Ok(WriteResponse {
                committed_size: first_size(&id),
            });
        }
        let _writing = WritingGuard {
            store: &self,
            hex: id.hex.clone(),
        };
        let store = Arc::clone(&self);
        let ingest = self.ingest_path(&id);
        let open_id = id.clone();
        // The hasher takes the committed bytes first, so that a resumed write is verified
        // whole without reading it twice.
        let (mut file, mut hasher, mut committed) =
            tokio::task::spawn_blocking(move || open_ingest(&store, &open_id))
                .await
                .map_err(|e| CasError::BadWrite {
                    digest: id.to_string(),
                    reason: e.to_string(),
                })??;
        let mut message = Some(first);
        loop {
            let req = match message.take() {
                Some(req) => req,
                None => match tokio::time::timeout(idle, stream.next_message()).await {
                    Ok(Ok(Some(req))) => req,
                    Ok(Ok(None)) => {
                        return Err(CasError::BadWrite {
                            digest: id.to_string(),
                            reason: format!(
                                "the stream ended without finish_write; {committed} bytes are \
                                 kept, resume there"
                            ),
                        });
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(CasError::Idle {
                            digest: id,
                            idle,
                            committed,
                        });
                    }
                },
            };
            if let Some(d) = &req.digest
                && (d.hash != id.hex || d.size_bytes != first_size(&id))
            {
                return Err(CasError::BadWrite {
                    digest: id.to_string(),
                    reason: "a later message names another blob".to_owned(),
                });
            }
            if u64::try_from(req.write_offset).ok() != Some(committed) {
                return Err(CasError::WrongOffset {
                    digest: id,
                    offset: req.write_offset,
                    committed,
                });
            }
            let len = req.data.len() as u64;
            self.count_received(len);
            if committed + len > id.size {
                return Err(CasError::BadWrite {
                    digest: id.to_string(),
                    reason: format!("{} bytes sent, past the blob's size", committed + len),
                });
            }
            if len > 0 {
                hasher.update(&req.data);
                let path = self.ingest_path(&id);
                file = tokio::task::spawn_blocking(move || {
                    let mut file = file;
                    file.write_all(&req.data).map(|()| file)
                })
                .await
                .map_err(|e| CasError::BadWrite {
                    digest: id.to_string(),
                    reason: e.to_string(),
                })?
                .map_err(io_err(&path))?;
                committed += len;
            }
            if req.finish_write {
                let actual = BlobId {
                    hex: hex::encode(hasher.finalize()),
                    size: committed,
                };
                if actual != id {
                    // Nothing of it can be trusted: the next write starts afresh.
                    let _ = fs_err::remove_file(&ingest);
                    return Err(CasError::Mismatch { digest: id, actual });
                }
                drop(file);
                let dest = self.blob_path(&id);
                fs_err::rename(&ingest, &dest).map_err(CasError::Fs)?;
                return Ok(WriteResponse {
                    committed_size: first_size(&id),
                });
            }
        }
    }

    /// Materializes the tree under `root` once, and holds it until the lease is dropped.
    /// Blocking: call it off the async runtime.
    ///
    /// # Errors
    /// A missing blob, an invalid tree, or I/O.
    pub fn checkout(&self, root: &Digest) -> Result<TreeLease, CasError> {
        let root = BlobId::parse(root)?;
        let dir = self.root.join("trees").join(&root.hex);
        loop {
            if let Some(lease) = self.try_lease(&root, &dir)? {
                return Ok(lease);
            }
            let _making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
            if dir.exists() {
                continue;
            }
            self.materialize(&root, &dir)?;
        }
    }

    /// A lease on the complete tree at `dir`, if it is there.
    fn try_lease(&self, root: &BlobId, dir: &Path) -> Result<Option<TreeLease>, CasError> {
        let lock_path = dir.join("lock");
        let lock = match fs_err::File::open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CasError::Fs(e)),
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| io_err(&lock_path)(e.into()))?;
        // A prune may have taken the tree between the open and the lock: the lock file is
        // then no longer at its path.
        let now = fs_err::metadata(&lock_path).ok();
        let held = lock.metadata().map_err(CasError::Fs)?;
        if now.is_none_or(|m| m.ino() != held.ino() || m.dev() != held.dev()) {
            return Ok(None);
        }
        // The lock file's mtime is the tree's last use, which prune reads.
        let _ = lock.file().set_modified(SystemTime::now());
        *self
            .leased
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(root.hex.clone())
            .or_default() += 1;
        Ok(Some(TreeLease {
            path: dir.join("context"),
            hex: root.hex.clone(),
            leased: Arc::clone(&self.leased),
            _lock: lock,
        }))
    }

    fn materialize(&self, root: &BlobId, dest: &Path) -> Result<(), CasError> {
        // The whole tree is checked before anything is made.
        let mut dirs: HashMap<BlobId, Directory> = HashMap::new();
        let mut missing = None;
        self.walk(root, &mut |event| match event {
            Walk::MissingDir(id) => {
                missing = Some(id.clone());
                false
            }
            Walk::Dir(id, dir) => {
                dirs.insert(id.clone(), dir.clone());
                true
            }
        })?;
        if let Some(digest) = missing {
            return Err(CasError::Missing {
                root: root.clone(),
                digest,
            });
        }
        for dir in dirs.values() {
            for f in &dir.files {
                let id = BlobId::parse(f.digest.as_ref().unwrap_or(&Digest::default()))?;
                // On disk, not from the set of known blobs: this is what the copy will read.
                if !self.blob_path(&id).exists() {
                    return Err(CasError::Missing {
                        root: root.clone(),
                        digest: id,
                    });
                }
            }
        }
        let tmp_base = self.root.join("tmp");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("tree-{}-", &root.hex[..16]))
            .tempdir_in(&tmp_base)
            .map_err(io_err(&tmp_base))?;
        let context = tmp.path().join("context");
        fs_err::create_dir(&context).map_err(CasError::Fs)?;
        let maker = Maker {
            store: self,
            root,
            dirs: &dirs,
            made: std::cell::Cell::new(0),
            files: std::cell::RefCell::new(HashMap::new()),
        };
        maker.fill(&context, b"", root, 0)?;
        let lock = tmp.path().join("lock");
        fs_err::File::create(&lock).map_err(CasError::Fs)?;
        let made = tmp.keep();
        if let Err(e) = fs_err::rename(&made, dest) {
            let _ = fs_err::remove_dir_all(&made);
            // Another process put the same tree in place first: use it.
            if !dest.exists() {
                return Err(CasError::Fs(e));
            }
        }
        Ok(())
    }

    /// The store's records: its blobs, its partial uploads, and each tree.
    ///
    /// # Errors
    /// I/O.
    pub fn usage(&self) -> Result<Vec<CasUsage>, CasError> {
        let leased = self.leased_roots();
        let mut protected = HashSet::new();
        for hex in &leased {
            protected.extend(self.tree_blobs(&root_id(hex))?);
        }
        let mut out = Vec::new();
        for (name, sub) in [("blobs", "blobs/sha256"), ("ingest", "ingest")] {
            let mut rec = CasUsage {
                name: name.to_owned(),
                count: 0,
                bytes: 0,
                in_use: false,
                last_used: None,
            };
            for (hex, meta) in list(&self.root.join(sub))? {
                rec.count += 1;
                rec.bytes += meta.len();
                rec.in_use |= protected.contains(&hex);
                let modified = meta.modified().ok();
                rec.last_used = rec.last_used.max(modified);
            }
            out.push(rec);
        }
        for (hex, _) in list(&self.root.join("trees"))? {
            let dir = self.root.join("trees").join(&hex);
            let (count, bytes) = du(&dir)?;
            out.push(CasUsage {
                name: format!("tree {hex}"),
                count,
                bytes,
                in_use: leased.contains(&hex) || tree_locked(&dir),
                last_used: fs_err::metadata(dir.join("lock"))
                    .ok()
                    .and_then(|m| m.modified().ok()),
            });
        }
        Ok(out)
    }

    fn leased_roots(&self) -> HashSet<String> {
        let mut out: HashSet<String> = self
            .leased
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        // Leases of other processes sharing the store show as held locks.
        if let Ok(trees) = list(&self.root.join("trees")) {
            for (hex, _) in trees {
                if tree_locked(&self.root.join("trees").join(&hex)) {
                    out.insert(hex);
                }
            }
        }
        out
    }

    /// Removes trees and blobs. Never a leased tree, nor a blob of a leased tree. Without
    /// `all`, a tree checked out within [`PRUNE_KEEP_RECENT`] stays with its blobs, and so does
    /// a blob or partial upload written within it (an upload whose build has not started yet).
    ///
    /// # Errors
    /// I/O.
    pub fn prune(&self, all: bool) -> Result<Pruned, CasError> {
        let _making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        let now = SystemTime::now();
        let recent = |meta: &std::fs::Metadata| {
            !all && meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age < PRUNE_KEEP_RECENT)
        };
        let mut pruned = Pruned::default();
        let mut keep = HashSet::new();
        let trees = self.root.join("trees");
        for (hex, _) in list(&trees)? {
            let dir = trees.join(&hex);
            let lock_path = dir.join("lock");
            let in_process = self
                .leased
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&hex);
            let lock = fs_err::File::open(&lock_path).ok();
            let exclusive = lock.as_ref().is_some_and(|l| {
                rustix::fs::flock(l, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            });
            let used_recently = fs_err::metadata(&lock_path).is_ok_and(|m| recent(&m));
            if in_process || !exclusive || used_recently {
                keep.insert(hex);
                continue;
            }
            // Moved aside under the lock, so a checkout that opened the old lock file sees
            // that it is gone.
            let doomed = self.root.join("tmp").join(format!("prune-{hex}"));
            let (_, bytes) = du(&dir)?;
            fs_err::rename(&dir, &doomed).map_err(CasError::Fs)?;
            drop(lock);
            let _ = fs_err::remove_dir_all(&doomed);
            pruned.trees += 1;
            pruned.bytes += bytes;
        }
        let mut protected = HashSet::new();
        for hex in &keep {
            // A tree's blobs stay with it; an invalid tree protects nothing more.
            if let Ok(blobs) = self.tree_blobs(&root_id(hex)) {
                protected.extend(blobs);
            }
        }
        for sub in ["blobs/sha256", "ingest"] {
            let dir = self.root.join(sub);
            for (hex, meta) in list(&dir)? {
                if protected.contains(&hex) || recent(&meta) {
                    continue;
                }
                if sub == "ingest"
                    && self
                        .writing
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&hex)
                {
                    continue;
                }
                let path = dir.join(&hex);
                self.present_set().remove(&hex);
                if fs_err::remove_file(&path).is_ok() {
                    pruned.blobs += 1;
                    pruned.bytes += meta.len();
                }
            }
        }
        Ok(pruned)
    }
}

/// A tree's root as [`CasStore::walk`] takes it; the size is not read on the way.
fn root_id(hex: &str) -> BlobId {
    BlobId {
        hex: hex.to_owned(),
        size: 0,
    }
}

fn first_size(id: &BlobId) -> i64 {
    i64::try_from(id.size).unwrap_or(i64::MAX)
}

/// Whether another open file holds the tree's lock.
fn tree_locked(dir: &Path) -> bool {
    let Ok(lock) = fs_err::File::open(dir.join("lock")) else {
        return false;
    };
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
}

/// The entries of a directory with their metadata, skipping names that are not hex digests.
fn list(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>, CasError> {
    let mut out = Vec::new();
    let entries = fs_err::read_dir(dir).map_err(CasError::Fs)?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            out.push((name.to_owned(), meta));
        }
    }
    Ok(out)
}

/// Files and bytes under `dir`, without following links.
fn du(dir: &Path) -> Result<(u64, u64), CasError> {
    let mut count = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            count += 1;
            bytes += meta.len();
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((count, bytes))
}

enum Walk<'a> {
    MissingDir(&'a BlobId),
    Dir(&'a BlobId, &'a Directory),
}

struct WritingGuard<'a> {
    store: &'a CasStore,
    hex: String,
}

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        self.store
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.hex);
    }
}

/// Opens a blob's ingest file for appending, with a hasher that has taken what it holds.
fn open_ingest(store: &CasStore, id: &BlobId) -> Result<(std::fs::File, Sha256, u64), CasError> {
    let path = store.ingest_path(id);
    let mut file = fs_err::File::options()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(CasError::Fs)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut committed = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(&path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        committed += n as u64;
    }
    if committed > id.size {
        // Left by an older, broken write: not a prefix of this blob.
        file.file().set_len(0).map_err(io_err(&path))?;
        hasher = Sha256::new();
        committed = 0;
    }
    Ok((file.into_parts().0, hasher, committed))
}

/// Where a `Write` stream's messages come from (a trait, so tests can drive it directly).
trait WriteSource: Send {
    fn next_message(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<WriteRequest>, CasError>> + Send;
}

impl WriteSource for Streaming<WriteRequest> {
    async fn next_message(&mut self) -> Result<Option<WriteRequest>, CasError> {
        self.message().await.map_err(|s| CasError::BadWrite {
            digest: String::new(),
            reason: format!("the stream failed: {}", s.message()),
        })
    }
}

/// Makes a tree's entries inside directories it made itself, so that no path it writes
/// through can be a link a client planted.
struct Maker<'a> {
    store: &'a CasStore,
    root: &'a BlobId,
    dirs: &'a HashMap<BlobId, Directory>,
    /// Entries made so far, against [`CasLimits::max_tree_entries`].
    made: std::cell::Cell<u64>,
    /// Regular files made so far, by their path from the root, with their digests: what a
    /// later hardlink may name.
    files: std::cell::RefCell<HashMap<Vec<u8>, (PathBuf, String)>>,
}

impl Maker<'_> {
    /// Makes the entries of Directory `id` in `path`, which is `rel` from the tree's root.
    fn fill(&self, path: &Path, rel: &[u8], id: &BlobId, depth: usize) -> Result<(), CasError> {
        let limits = &self.store.limits;
        let bad = |reason: String| CasError::BadTree {
            root: self.root.clone(),
            reason,
        };
        // The walk saw each Directory once, at its shallowest; one that is also deeper, or
        // repeated, is caught here, before it is made.
        if depth > limits.max_depth {
            return Err(bad(format!(
                "nested deeper than the limit of {} directories",
                limits.max_depth
            )));
        }
        let Some(dir) = self.dirs.get(id) else {
            return Err(bad(format!(
                "directory {id} vanished while the tree was made"
            )));
        };
        let entries =
            (dir.files.len() + dir.directories.len() + dir.symlinks.len() + dir.specials.len())
                as u64;
        self.made.set(self.made.get() + entries);
        if self.made.get() > limits.max_tree_entries {
            return Err(bad(format!(
                "more than the limit of {} entries",
                limits.max_tree_entries
            )));
        }
        let name_of = |name: &[u8]| path.join(std::ffi::OsStr::from_bytes(name));
        let rel_of = |name: &[u8]| {
            let mut rel_name = rel.to_vec();
            if !rel_name.is_empty() {
                rel_name.push(b'/');
            }
            rel_name.extend_from_slice(name);
            rel_name
        };
        for f in &dir.files {
            let blob = BlobId::parse(f.digest.as_ref().unwrap_or(&Digest::default()))?;
            let dest = name_of(&f.name);
            if !f.hardlink.is_empty() {
                // Only a regular file this checkout made before may be linked to: never a
                // path through a link, nor one outside the tree.
                let files = self.files.borrow();
                let Some((target, hex)) = files.get(&f.hardlink) else {
                    return Err(bad(format!(
                        "{:?} is a hardlink of {:?}, which is not a file made before it",
                        String::from_utf8_lossy(&rel_of(&f.name)),
                        String::from_utf8_lossy(&f.hardlink)
                    )));
                };
                if *hex != blob.hex {
                    return Err(bad(format!(
                        "{:?} is a hardlink of {:?} but names other content",
                        String::from_utf8_lossy(&rel_of(&f.name)),
                        String::from_utf8_lossy(&f.hardlink)
                    )));
                }
                fs_err::hard_link(target, &dest).map_err(CasError::Fs)?;
                continue;
            }
            self.files
                .borrow_mut()
                .insert(rel_of(&f.name), (dest.clone(), blob.hex.clone()));
            let src_path = self.store.blob_path(&blob);
            let mut src = fs_err::File::open(&src_path).map_err(CasError::Fs)?;
            // A copy, not a hardlink of the blob: COPY keeps hardlinks among context files,
            // so a shared inode would change what a build makes.
            let mut out = fs_err::File::options()
                .write(true)
                .create_new(true)
                .open(&dest)
                .map_err(CasError::Fs)?;
            std::io::copy(src.file_mut(), out.file_mut()).map_err(io_err(&dest))?;
            apply_meta(&dest, meta(f.meta.as_ref()), Some(out.file()))?;
        }
        for s in &dir.symlinks {
            let dest = name_of(&s.name);
            rustix::fs::symlink(std::ffi::OsStr::from_bytes(&s.target), &dest)
                .map_err(|e| io_err(&dest)(e.into()))?;
            apply_meta(&dest, meta(s.meta.as_ref()), None)?;
        }
        for s in &dir.specials {
            let dest = name_of(&s.name);
            let m = meta(s.meta.as_ref());
            let (kind, dev) = match Kind::try_from(s.kind) {
                Ok(Kind::CharDevice) => (
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::makedev(s.major, s.minor),
                ),
                Ok(Kind::BlockDevice) => (
                    rustix::fs::FileType::BlockDevice,
                    rustix::fs::makedev(s.major, s.minor),
                ),
                _ => (rustix::fs::FileType::Fifo, 0),
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &dest,
                kind,
                rustix::fs::Mode::from_raw_mode(0o600),
                dev,
            )
            .map_err(|e| io_err(&dest)(e.into()))?;
            apply_meta(&dest, m, None)?;
        }
        for d in &dir.directories {
            let child = BlobId::parse(d.digest.as_ref().unwrap_or(&Digest::default()))?;
            let dest = name_of(&d.name);
            fs_err::create_dir(&dest).map_err(CasError::Fs)?;
            self.fill(&dest, &rel_of(&d.name), &child, depth + 1)?;
            // Last, once its entries are made: a read-only directory cannot take them, and
            // making them would move its mtime.
            apply_meta(&dest, meta(d.meta.as_ref()), None)?;
        }
        Ok(())
    }
}

fn meta(meta: Option<&NodeMeta>) -> NodeMeta {
    meta.cloned().unwrap_or_default()
}

/// Owner, mode, xattrs and mtime of an entry just made, never following a link.
///
/// Only `user.*` xattrs are applied: `security.*` (file capabilities, SELinux labels) and
/// `trusted.*` would let a client grant privileges on the server's filesystem, and `system.*`
/// holds ACLs the kernel enforces; `user.*` carries data only.
fn apply_meta(path: &Path, meta: NodeMeta, file: Option<&std::fs::File>) -> Result<(), CasError> {
    use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid};
    let err = |e: rustix::io::Errno| io_err(path)(e.into());
    let is_link =
        file.is_none() && fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    // Owner before mode: chown clears setuid and setgid.
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(err)?;
    for x in &meta.xattrs {
        if x.name.starts_with(b"user.") && !is_link {
            rustix::fs::lsetxattr(
                path,
                std::ffi::OsStr::from_bytes(&x.name),
                &x.value,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(err)?;
        }
    }
    if !is_link {
        let mode = Mode::from_raw_mode(meta.mode & 0o7777);
        match file {
            Some(file) => rustix::fs::fchmod(file, mode).map_err(err)?,
            None => {
                rustix::fs::chmodat(rustix::fs::CWD, path, mode, AtFlags::empty()).map_err(err)?
            }
        }
    }
    let time = Timespec {
        tv_sec: meta.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: meta.mtime_ns.rem_euclid(1_000_000_000),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: time,
            last_modification: time,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(err)?;
    Ok(())
}

/// A hold on a materialized tree: while any lease on it lives, no prune removes the tree or
/// its blobs, in this process or another sharing the store.
#[derive(Debug)]
pub struct TreeLease {
    path: PathBuf,
    hex: String,
    leased: Arc<Mutex<HashMap<String, usize>>>,
    /// Held shared for the life of the lease; the lock goes with the file.
    _lock: fs_err::File,
}

impl TreeLease {
    /// The directory holding the tree's entries.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tree's root digest (hex).
    #[must_use]
    pub fn root_hex(&self) -> &str {
        &self.hex
    }
}

impl Drop for TreeLease {
    fn drop(&mut self) {
        let mut leased = self.leased.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = leased.get_mut(&self.hex) {
            *count -= 1;
            if *count == 0 {
                leased.remove(&self.hex);
            }
        }
    }
}

/// The `Cas` gRPC service over a [`CasStore`].
#[derive(Debug, Clone)]
pub struct CasService {
    store: Arc<CasStore>,
}

impl CasService {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&CasStore) -> Result<T, CasError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("a store task failed: {e}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Cas for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let ids = request
            .into_inner()
            .blob_digests
            .iter()
            .map(BlobId::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self
            .blocking(move |store| {
                Ok(ids
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|id| !store.has(id))
                    .map(|id| id.to_digest())
                    .collect())
            })
            .await?;
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let requests = request.into_inner().requests;
        let total: u64 = requests.iter().map(|r| r.data.len() as u64).sum();
        let limit = self.store.limits.max_batch;
        if total > limit {
            return Err(CasError::TooBig {
                digest: format!("batch of {} blobs", requests.len()),
                what: "a batch",
                size: total,
                limit,
            }
            .into());
        }
        let responses = self
            .blocking(move |store| {
                Ok(requests
                    .into_iter()
                    .map(|r| {
                        let digest = r.digest.unwrap_or_default();
                        let result = BlobId::parse(&digest).and_then(|id| store.put(&id, &r.data));
                        let (code, message) = match result {
                            Ok(()) => (0, String::new()),
                            Err(e) => {
                                let status = Status::from(e);
                                (status.code() as i32, status.message().to_owned())
                            }
                        };
                        batch_update_blobs_response::Response {
                            digest: Some(digest),
                            code,
                            message,
                        }
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        Arc::clone(&self.store)
            .write_stream(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let id = BlobId::parse(&request.into_inner().digest.unwrap_or_default())?;
        let (committed, complete) = self.blocking(move |store| store.write_status(&id)).await?;
        Ok(Response::new(QueryWriteStatusResponse {
            committed_size: i64::try_from(committed).unwrap_or(i64::MAX),
            complete,
        }))
    }

    async fn find_missing_tree(
        &self,
        request: Request<FindMissingTreeRequest>,
    ) -> Result<Response<FindMissingTreeResponse>, Status> {
        let root = BlobId::parse(&request.into_inner().root.unwrap_or_default())?;
        let missing = self
            .blocking(move |store| store.find_missing_tree(&root, MAX_MISSING_PER_ANSWER))
            .await?;
        Ok(Response::new(FindMissingTreeResponse {
            missing_blob_digests: missing.iter().map(BlobId::to_digest).collect(),
        }))
    }
}
