//! Garbage collection and disk accounting of a state root: what it holds, record by record
//! (`hoist du`), and removing what no build needs (`hoist prune`, the automatic GC).
//!
//! # Records and units
//!
//! The root is measured as *units*, each a piece of disk that goes as a whole: a snapshot, a
//! merged snapshot, a blob, a cache mount instance, a build's logs, debris; plus what is never
//! collected (the index and image names, live scratch areas, a server's uploads). Every byte
//! under the root belongs to exactly one unit, so the units add up to what `du -sb` says.
//!
//! A *record* is what a user keeps or drops, and names the units it needs:
//! - a cache record (key → layer chain): the chain's snapshots, the blobs of its pulled
//!   layers and the compressed blobs made for its layers (`blobs.v1`), the merged snapshots of
//!   its chain's lower parts;
//! - a named image: its manifest (or index), config and layer blobs;
//! - a cache mount instance, a build's logs;
//! - unreferenced units and debris, one record each.
//!
//! A unit named by several records is *shared*; it goes when the last of them goes.
//!
//! # Collection
//!
//! Collection removes records least recently used first ([`Policy`]), never one a running
//! build holds ([`lease`]). It runs as one critical section under `gc.lock`: read the leases,
//! read the records, drop the chosen index records and image names, and rename the freed
//! units into the collector's scratch area; the renamed trees are deleted after the lock is
//! released, so builds wait for renames, not for deletions.

pub mod lease;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::index::{CacheIndex, CacheRecord, IndexError};
use crate::layout::{ImageStore, LayoutError};

pub use lease::{Item, Lease, Scope};

/// Error of measuring or collecting a state root.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading or updating the cache index")]
    Index(#[from] IndexError),
    #[error("reading or updating the image names")]
    Layout(#[from] LayoutError),
}

impl GcError {
    pub(crate) fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> Self + 'p {
        move |source| Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A piece of the state root that takes space and goes as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// `snapshots/sha256/<hex>`.
    Snapshot(String),
    /// `snapshots/merged/<hex>`.
    Merged(String),
    /// `blobs/sha256/<hex>`.
    Blob(String),
    /// `logs/<build>.*`.
    Log(String),
    /// A tree or file, relative to the root: a cache mount instance, debris.
    Path(PathBuf),
    /// The live scratch areas (`tmp/`) of running processes.
    Scratch,
    /// A server's uploaded trees (`serve/`): the server accounts and prunes them.
    Server,
    /// Everything else: the index, the image names, leases, locks, directories.
    Metadata,
}

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A file or tree that an interrupted write left: `ingest/`, `.unpack-` directories.
    Debris,
    /// A snapshot or blob that no record names.
    Unreferenced,
    /// A cache index record: a step's result.
    Cache,
    /// A cache mount instance (`RUN --mount=type=cache`).
    CacheMount,
    /// A build's logs.
    Log,
    /// A named image of the local store.
    Image,
    /// Live scratch areas; never collected.
    Scratch,
    /// A server's uploads; collected by the server.
    Server,
    /// The index and names themselves; never collected.
    Metadata,
}

impl Kind {
    /// The name `hoist du` shows.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Debris => "debris",
            Self::Unreferenced => "unreferenced",
            Self::Cache => "cache",
            Self::CacheMount => "cache-mount",
            Self::Log => "logs",
            Self::Image => "image",
            Self::Scratch => "scratch",
            Self::Server => "uploads",
            Self::Metadata => "metadata",
        }
    }
}

/// Something a user keeps or drops, and the units it needs.
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    pub id: String,
    /// What it is, for `hoist du --verbose`.
    pub description: String,
    /// When a build last used it, in seconds since the epoch; `None` when never recorded.
    pub last_used: Option<u64>,
    /// A running build holds it.
    pub held: bool,
    /// It names a unit that is gone (a cache record whose snapshot was removed): it can only
    /// be a miss, and goes whatever the policy.
    pub broken: bool,
    pub units: Vec<Unit>,
}

impl Record {
    fn new(kind: Kind, id: String, description: String, units: Vec<Unit>) -> Self {
        Self {
            kind,
            id,
            description,
            last_used: None,
            held: false,
            broken: false,
            units,
        }
    }
}

/// The bytes of every unit of a root.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub units: HashMap<Unit, u64>,
    /// The sum, as `du -sb` counts it: every file and directory, a hard-linked file once.
    pub total: u64,
}

/// How old a file in `ingest/` or an `.unpack-` directory must be (since it last changed)
/// before it counts as debris: a live writer changes it all along.
pub const DEBRIS_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The unit that the entry at `rel` (relative to the root) and everything under it belongs
/// to, or `None` for a directory whose entries are classified one by one.
fn classify(rel: &Path, is_dir: bool) -> Option<Unit> {
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let owned = |s: &str| s.to_owned();
    match parts.as_slice() {
        ["snapshots", "sha256", name] if name.starts_with('.') => Some(Unit::Path(rel.into())),
        ["snapshots", "sha256", name] => Some(Unit::Snapshot(owned(name))),
        ["snapshots", "merged", name] => Some(Unit::Merged(owned(name))),
        ["blobs", "sha256", name] => Some(Unit::Blob(owned(name))),
        ["cache-mounts", _, name] if name.parse::<u32>().is_ok() && is_dir => {
            Some(Unit::Path(rel.into()))
        }
        ["logs", name] if !is_dir => Some(Unit::Log(owned(
            name.split_once('.').map_or(*name, |(build, _)| build),
        ))),
        ["ingest", _] => Some(Unit::Path(rel.into())),
        ["tmp", _] => Some(Unit::Scratch),
        ["serve"] => Some(Unit::Server),
        _ => None,
    }
}

/// Measures every unit under `root`: apparent sizes, as `du -sb` (and `du --apparent-size`)
/// counts them.
///
/// # Errors
/// The root cannot be read.
pub fn measure(root: &Path) -> Result<Measured, GcError> {
    let mut measured = Measured::default();
    let meta = fs_err::symlink_metadata(root).map_err(GcError::io("stat", root))?;
    let mut seen = HashSet::new();
    let mut add = |unit: &Unit, meta: &std::fs::Metadata, measured: &mut Measured| {
        if !meta.is_dir() && meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        *measured.units.entry(unit.clone()).or_default() += meta.len();
        measured.total += meta.len();
    };
    add(&Unit::Metadata, &meta, &mut measured);
    let mut stack: Vec<(PathBuf, Option<Unit>)> = vec![(root.to_path_buf(), None)];
    while let Some((dir, unit)) = stack.pop() {
        let entries = match fs_err::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed meanwhile (a build renamed it, a collector deleted it).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(GcError::io("list", &dir)(e)),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            let unit = unit.clone().or_else(|| {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                classify(rel, meta.is_dir())
            });
            add(
                unit.as_ref().unwrap_or(&Unit::Metadata),
                &meta,
                &mut measured,
            );
            if meta.is_dir() {
                stack.push((path, unit));
            }
        }
    }
    Ok(measured)
}

/// Whether a record may go, and in which order: a lower rank goes first.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Also named images and build logs.
    pub all: bool,
    /// Stop once the root is at most this large; `None` removes everything the policy lets.
    pub keep_storage: Option<u64>,
    /// Only what was last used at least this long ago.
    pub until: Option<std::time::Duration>,
    /// Now, in seconds since the epoch.
    pub now: u64,
}

impl Policy {
    /// Whether `record` may go under this policy (when nothing holds it).
    fn allows(&self, record: &Record) -> bool {
        if record.held {
            return false;
        }
        let old_enough = self.until.is_none_or(|until| {
            record
                .last_used
                .unwrap_or(0)
                .saturating_add(until.as_secs())
                <= self.now
        });
        match record.kind {
            Kind::Debris | Kind::Unreferenced => true,
            Kind::Cache => record.broken || old_enough,
            Kind::CacheMount => old_enough,
            // Logs are kept by number (see the worker's logs); a budget or --all reaches them.
            Kind::Log => (self.all || self.keep_storage.is_some()) && old_enough,
            // Like `docker builder prune`, which never removes images: only --all does.
            Kind::Image => self.all && old_enough,
            Kind::Scratch | Kind::Server | Kind::Metadata => false,
        }
    }
}

/// What a record takes, as `hoist du` shows it.
#[derive(Clone, Debug)]
pub struct RecordUsage {
    pub record: Record,
    /// Bytes of units no other record names: what removing it alone frees.
    pub exclusive: u64,
    /// Bytes of units other records name too.
    pub shared: u64,
}

/// A state root, record by record.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub records: Vec<RecordUsage>,
    /// Totals by kind.
    pub kinds: BTreeMap<Kind, KindUsage>,
    /// Every byte under the root.
    pub total: u64,
}

/// The records of one kind together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindUsage {
    pub records: usize,
    /// Bytes of the units they name, each unit once.
    pub bytes: u64,
    /// Bytes of the units that no record of another kind names: what removing them all frees.
    pub exclusive: u64,
}

/// Everything a collection needs to know about the root, read under the lock.
struct Inventory {
    records: Vec<Record>,
    /// `blobs.v1` keys with the blob each names.
    blob_entries: Vec<(String, String)>,
    /// `used.v1` keys that name no result.
    stale_used: Vec<String>,
    held: HashSet<Item>,
}

/// The state root's records: cache records from the index, named images, and (from the
/// caller) cache mounts and logs; every measured unit no record names is a record of its own.
fn inventory(
    root: &Path,
    index: &CacheIndex,
    measured: &Measured,
    extra: Vec<Record>,
    now: u64,
) -> Result<Inventory, GcError> {
    let held = lease::held(root)?;
    let mut records = extra;
    for r in &mut records {
        if r.kind == Kind::Log && held.contains(&Item::Log(r.id.clone())) {
            r.held = true;
        }
    }

    let entries = index.gc_entries()?;
    // The compressed blobs made for each layer.
    let mut made: HashMap<String, Vec<String>> = HashMap::new();
    for (key, blob) in &entries.blobs {
        let diff_id = key.split_once(' ').map_or(key.as_str(), |(d, _)| d);
        made.entry(hex(diff_id).to_owned())
            .or_default()
            .push(hex(blob.digest.as_ref()).to_owned());
    }
    let merged: HashSet<&str> = measured
        .units
        .keys()
        .filter_map(|u| match u {
            Unit::Merged(hex) => Some(hex.as_str()),
            _ => None,
        })
        .collect();
    let mut used_keys = HashSet::new();
    for (key, record, used) in entries.results {
        used_keys.insert(key.clone());
        let Some(record) = record else {
            // A record that does not decode names nothing: it goes.
            let mut r = Record::new(
                Kind::Cache,
                key,
                "a record that does not decode".into(),
                Vec::new(),
            );
            r.broken = true;
            records.push(r);
            continue;
        };
        let mut units = Vec::new();
        let mut broken = false;
        for layer in &record.layers {
            let diff = hex(layer.diff_id.as_ref()).to_owned();
            let snapshot = Unit::Snapshot(diff.clone());
            broken |= !measured.units.contains_key(&snapshot);
            units.push(snapshot);
            if let Some(blob) = &layer.blob {
                let blob = Unit::Blob(hex(blob.digest.as_ref()).to_owned());
                broken |= !measured.units.contains_key(&blob);
                units.push(blob);
            }
            for blob in made.get(&diff).into_iter().flatten() {
                units.push(Unit::Blob(blob.clone()));
            }
        }
        if !merged.is_empty() {
            units.extend(
                merged_prefixes(&record)
                    .into_iter()
                    .filter(|m| merged.contains(m.as_str()))
                    .map(Unit::Merged),
            );
        }
        units.sort();
        units.dedup();
        let mut r = Record::new(Kind::Cache, key.clone(), describe(&record), units);
        r.last_used = used;
        r.broken = broken;
        r.held = held.contains(&Item::Key(key));
        records.push(r);
    }
    let stale_used = entries
        .used
        .into_iter()
        .filter(|k| !used_keys.contains(k))
        .collect();

    let images = ImageStore::open(root)?;
    for (name, descriptor) in images.list()? {
        let units = image_units(&images, &descriptor);
        let mut r = Record::new(
            Kind::Image,
            name,
            format!("named image {}", descriptor.digest()),
            units,
        );
        r.last_used = image_time(root);
        records.push(r);
    }

    // Every unit no record names is a record of its own.
    let named: HashSet<&Unit> = records.iter().flat_map(|r| r.units.iter()).collect();
    let mut alone = Vec::new();
    for unit in measured.units.keys() {
        if named.contains(unit) {
            continue;
        }
        let (kind, id, description) = match unit {
            Unit::Snapshot(h) => (Kind::Unreferenced, format!("snapshot sha256:{h}"), ""),
            Unit::Merged(h) => (Kind::Unreferenced, format!("merged {h}"), ""),
            Unit::Blob(h) => (Kind::Unreferenced, format!("blob sha256:{h}"), ""),
            Unit::Log(b) => (Kind::Log, b.clone(), "a build's logs"),
            Unit::Path(p) => match age(&root.join(p), now) {
                Some(age) if age >= DEBRIS_AGE.as_secs() => (
                    Kind::Debris,
                    p.display().to_string(),
                    "left by an interrupted write",
                ),
                // Young: a live writer may be filling it.
                _ => (
                    Kind::Scratch,
                    p.display().to_string(),
                    "being written, or a cache mount's instance",
                ),
            },
            Unit::Scratch => (Kind::Scratch, "tmp".into(), "live processes' scratch areas"),
            Unit::Server => (Kind::Server, "serve".into(), "a server's uploaded trees"),
            Unit::Metadata => (
                Kind::Metadata,
                "metadata".into(),
                "the cache index, image names, leases and directories",
            ),
        };
        let mut r = Record::new(kind, id, description.to_owned(), vec![unit.clone()]);
        r.held = match unit {
            Unit::Snapshot(h) => held.contains(&Item::Snapshot(h.clone())),
            Unit::Merged(h) => held.contains(&Item::Merged(h.clone())),
            Unit::Blob(h) => held.contains(&Item::Blob(h.clone())),
            Unit::Log(b) => held.contains(&Item::Log(b.clone())),
            _ => false,
        };
        alone.push(r);
    }
    records.extend(alone);

    Ok(Inventory {
        records,
        blob_entries: entries
            .blobs
            .into_iter()
            .map(|(k, b)| (k, hex(b.digest.as_ref()).to_owned()))
            .collect(),
        stale_used,
        held,
    })
}

/// The hex part of `sha256:<hex>`.
fn hex(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

/// What a cache record is, in a line.
fn describe(record: &CacheRecord) -> String {
    match record.layers.last() {
        Some(top) => format!(
            "a step's result: {} layer(s), top {}",
            record.layers.len(),
            top.diff_id
        ),
        None => "a step's result: no layer".to_owned(),
    }
}

/// The names of the merged snapshots that a chain's lower parts would have (see the
/// worker's `State::merged_path`): the sha256 of their diffIDs, one a line.
fn merged_prefixes(record: &CacheRecord) -> Vec<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut out = Vec::with_capacity(record.layers.len());
    for (i, layer) in record.layers.iter().enumerate() {
        if i > 0 {
            hasher.update(b"\n");
        }
        hasher.update(layer.diff_id.as_ref().as_bytes());
        out.push(hex::encode(hasher.clone().finalize()));
    }
    out
}

/// The blobs a named image needs; what cannot be read names only the top blob (the image is
/// broken, and stays so until it is removed).
fn image_units(images: &ImageStore, descriptor: &Descriptor) -> Vec<Unit> {
    let mut units = vec![Unit::Blob(hex(descriptor.digest().as_ref()).to_owned())];
    if let Ok(reachable) = images.reachable(descriptor) {
        units.extend(
            reachable
                .iter()
                .map(|d| Unit::Blob(hex(d.digest().as_ref()).to_owned())),
        );
    }
    units.sort();
    units.dedup();
    units
}

/// When the image names last changed: the best a named image has for "last used".
fn image_time(root: &Path) -> Option<u64> {
    let modified = fs_err::metadata(root.join("index.json"))
        .ok()?
        .modified()
        .ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}

/// Seconds since `path` last changed, if it exists.
fn age(path: &Path, now: u64) -> Option<u64> {
    let meta = fs_err::symlink_metadata(path).ok()?;
    Some(now.saturating_sub(u64::try_from(meta.mtime()).unwrap_or(0)))
}

/// The records with their exclusive and shared bytes.
fn usage_of(records: Vec<Record>, measured: &Measured) -> Usage {
    let mut refs: HashMap<&Unit, usize> = HashMap::new();
    for r in &records {
        for u in &r.units {
            *refs.entry(u).or_default() += 1;
        }
    }
    let sized: Vec<(u64, u64)> = records
        .iter()
        .map(|r| {
            r.units.iter().fold((0, 0), |(ex, sh), u| {
                let bytes = measured.units.get(u).copied().unwrap_or(0);
                if refs.get(u).copied().unwrap_or(0) > 1 {
                    (ex, sh + bytes)
                } else {
                    (ex + bytes, sh)
                }
            })
        })
        .collect();
    let mut kinds: BTreeMap<Kind, KindUsage> = BTreeMap::new();
    let mut kinds_of: HashMap<&Unit, HashSet<Kind>> = HashMap::new();
    for r in &records {
        kinds.entry(r.kind).or_default().records += 1;
        for u in &r.units {
            kinds_of.entry(u).or_default().insert(r.kind);
        }
    }
    for (unit, of) in &kinds_of {
        let bytes = measured.units.get(*unit).copied().unwrap_or(0);
        for kind in of {
            let k = kinds.entry(*kind).or_default();
            k.bytes += bytes;
            if of.len() == 1 {
                k.exclusive += bytes;
            }
        }
    }
    drop(kinds_of);
    let mut out: Vec<RecordUsage> = records
        .into_iter()
        .zip(sized)
        .map(|(record, (exclusive, shared))| RecordUsage {
            record,
            exclusive,
            shared,
        })
        .collect();
    out.sort_by(|a, b| {
        (
            a.record.kind,
            std::cmp::Reverse(a.exclusive + a.shared),
            &a.record.id,
        )
            .cmp(&(
                b.record.kind,
                std::cmp::Reverse(b.exclusive + b.shared),
                &b.record.id,
            ))
    });
    Usage {
        records: out,
        kinds,
        total: measured.total,
    }
}

/// What the state root holds, record by record. `extra` are the caller's records (cache
/// mounts, logs), whose units the measure finds under the root.
///
/// # Errors
/// The root, the index or the image names cannot be read.
pub fn usage(root: &Path, index: &CacheIndex, extra: Vec<Record>) -> Result<Usage, GcError> {
    let measured = measure(root)?;
    let inventory = inventory(root, index, &measured, extra, now())?;
    Ok(usage_of(inventory.records, &measured))
}

/// Seconds since the epoch.
#[must_use]
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a collection removed.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// The records removed, with the bytes their removal freed.
    pub removed: Vec<(Record, u64)>,
    /// Every byte freed.
    pub bytes: u64,
    /// The root's size before and after.
    pub before: u64,
    pub after: u64,
}

/// Chooses what goes: every record the policy allows, least recently used first (debris,
/// unreferenced units and broken records before all), until the root fits the budget.
fn plan(inventory: &Inventory, measured: &Measured, policy: &Policy) -> Vec<(usize, Vec<Unit>)> {
    let mut refs: HashMap<&Unit, usize> = HashMap::new();
    for r in &inventory.records {
        for u in &r.units {
            *refs.entry(u).or_default() += 1;
        }
    }
    let mut order: Vec<usize> = (0..inventory.records.len())
        .filter(|&i| policy.allows(&inventory.records[i]))
        .collect();
    let rank = |r: &Record| {
        let first = matches!(r.kind, Kind::Debris | Kind::Unreferenced) || r.broken;
        (!first, r.last_used.unwrap_or(0), r.kind)
    };
    order.sort_by_key(|&i| rank(&inventory.records[i]));
    let held_unit = |u: &Unit| match u {
        Unit::Snapshot(h) => inventory.held.contains(&Item::Snapshot(h.clone())),
        Unit::Merged(h) => inventory.held.contains(&Item::Merged(h.clone())),
        Unit::Blob(h) => inventory.held.contains(&Item::Blob(h.clone())),
        Unit::Log(b) => inventory.held.contains(&Item::Log(b.clone())),
        _ => false,
    };
    let mut size = measured.total;
    let mut victims = Vec::new();
    for i in order {
        let record = &inventory.records[i];
        // Broken records and debris go whatever the budget: they serve nobody.
        let must = matches!(record.kind, Kind::Debris) || record.broken;
        if !must && policy.keep_storage.is_some_and(|keep| size <= keep) {
            continue;
        }
        let mut freed = Vec::new();
        for u in &record.units {
            let Some(n) = refs.get_mut(u) else { continue };
            *n -= 1;
            if *n == 0 && !held_unit(u) {
                size = size.saturating_sub(measured.units.get(u).copied().unwrap_or(0));
                freed.push(u.clone());
            }
        }
        victims.push((i, freed));
    }
    victims
}

/// Removes what `policy` lets go, least recently used first, keeping whatever a running
/// build (of any process) holds. Freed trees are moved into `trash` (a directory on the
/// root's filesystem that the caller owns, such as its scratch area) and deleted there after
/// the lock is released.
///
/// # Errors
/// The root, the index or the image names cannot be read or changed.
pub fn collect(
    root: &Path,
    index: &CacheIndex,
    extra: Vec<Record>,
    policy: &Policy,
    trash: &Path,
) -> Result<Collected, GcError> {
    // Measured before the lock: what appears meanwhile is not in it, so it is not removed.
    let measured = measure(root)?;
    let lock = lease::lock_exclusive(root)?;
    index.fold_used()?;
    let inventory = inventory(root, index, &measured, extra, policy.now)?;
    let victims = plan(&inventory, &measured, policy);
    let freed: Vec<&Unit> = victims.iter().flat_map(|(_, units)| units).collect();
    let freed_set: HashSet<&Unit> = freed.iter().copied().collect();
    let keys: Vec<String> = victims
        .iter()
        .map(|(i, _)| &inventory.records[*i])
        .filter(|r| r.kind == Kind::Cache)
        .map(|r| r.id.clone())
        .collect();
    let blob_keys: Vec<String> = inventory
        .blob_entries
        .iter()
        .filter(|(_, blob)| {
            let unit = Unit::Blob(blob.clone());
            freed_set.contains(&unit) || !measured.units.contains_key(&unit)
        })
        .map(|(k, _)| k.clone())
        .collect();
    index.remove_for_gc(&keys, &blob_keys, &inventory.stale_used)?;
    let images = ImageStore::open(root)?;
    for (i, _) in &victims {
        let r = &inventory.records[*i];
        if r.kind == Kind::Image {
            images.untag(&r.id)?;
        }
    }
    fs_err::create_dir_all(trash).map_err(GcError::io("create", trash))?;
    for (n, unit) in freed.iter().enumerate() {
        move_out(root, unit, &trash.join(n.to_string()))?;
    }
    drop(lock);
    remove_trash(trash)?;

    let bytes_of = |units: &[Unit]| -> u64 {
        units
            .iter()
            .map(|u| measured.units.get(u).copied().unwrap_or(0))
            .sum()
    };
    // Each freed unit counts for the record whose removal freed it: the last that named it.
    let removed: Vec<(Record, u64)> = victims
        .iter()
        .map(|(i, units)| (inventory.records[*i].clone(), bytes_of(units)))
        .collect();
    let bytes = removed.iter().map(|(_, b)| b).sum();
    Ok(Collected {
        removed,
        bytes,
        before: measured.total,
        after: measured.total.saturating_sub(bytes),
    })
}

/// Moves a unit out of the root into `to` (a log's files are deleted at once: they are few).
fn move_out(root: &Path, unit: &Unit, to: &Path) -> Result<(), GcError> {
    let from = match unit {
        Unit::Snapshot(h) => root.join("snapshots/sha256").join(h),
        Unit::Merged(h) => root.join("snapshots/merged").join(h),
        Unit::Blob(h) => root.join("blobs/sha256").join(h),
        Unit::Path(p) => root.join(p),
        Unit::Log(build) => {
            let dir = root.join("logs");
            let prefix = format!("{build}.");
            let entries = match fs_err::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(GcError::io("list", &dir)(e)),
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_if_present(&entry.path())?;
                }
            }
            return Ok(());
        }
        Unit::Scratch | Unit::Server | Unit::Metadata => return Ok(()),
    };
    match fs_err::rename(&from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(GcError::io("move out", &from)(e)),
        _ => Ok(()),
    }
}

fn remove_if_present(path: &Path) -> Result<(), GcError> {
    match fs_err::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(GcError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Deletes what was moved into `trash`, and `trash` with it.
fn remove_trash(trash: &Path) -> Result<(), GcError> {
    // Snapshots keep their modes: a directory without write permission cannot be emptied as
    // it is (root passes anyway; this keeps rootless collectors working).
    match fs_err::remove_dir_all(trash) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(GcError::io("remove", trash)(e)),
        _ => Ok(()),
    }
}

/// The automatic collector's budget when none is given: a tenth of the root's filesystem,
/// at most 20 GB.
#[must_use]
pub fn default_budget(root: &Path) -> u64 {
    const CAP: u64 = 20 * 1000 * 1000 * 1000;
    let Ok(fs) = rustix::fs::statvfs(root) else {
        return CAP;
    };
    (fs.f_blocks.saturating_mul(fs.f_frsize) / 10).min(CAP)
}

/// The last measure, kept in `gc.state` so that an automatic collection can tell cheaply
/// that the root is under its budget.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LastMeasure {
    /// The root's bytes.
    bytes: u64,
    /// The bytes in use on its filesystem then.
    fs_used: u64,
}

const LAST_MEASURE: &str = "gc.state";

fn fs_used(root: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(root).ok()?;
    Some(
        fs.f_blocks
            .saturating_sub(fs.f_bfree)
            .saturating_mul(fs.f_frsize),
    )
}

/// Whether the root may be over `budget`, told without walking it: the last measure plus
/// what the filesystem gained since (one `statvfs`). It overestimates when other files on
/// the filesystem grew, which costs a measure, never a missed collection.
#[must_use]
pub fn may_exceed(root: &Path, budget: u64) -> bool {
    let Ok(text) = fs_err::read(root.join(LAST_MEASURE)) else {
        return true;
    };
    let (Ok(last), Some(used)) = (serde_json::from_slice::<LastMeasure>(&text), fs_used(root))
    else {
        return true;
    };
    last.bytes.saturating_add(used.saturating_sub(last.fs_used)) > budget
}

/// Remembers the root's size for [`may_exceed`]; best effort.
pub fn remember(root: &Path, bytes: u64) {
    let Some(fs_used) = fs_used(root) else { return };
    let Ok(text) = serde_json::to_vec(&LastMeasure { bytes, fs_used }) else {
        return;
    };
    let path = root.join(LAST_MEASURE);
    let tmp = root.join(format!("{LAST_MEASURE}.{}", std::process::id()));
    if fs_err::write(&tmp, text).is_ok() && fs_err::rename(&tmp, &path).is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_of_the_root_belongs_to_one_unit() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for (path, bytes) in [
            ("snapshots/sha256/aa/f", 10),
            ("snapshots/sha256/.unpack-1/f", 5),
            ("blobs/sha256/bb", 7),
            ("logs/abc.steps", 3),
            ("logs/abc.2.log", 4),
            ("cache-mounts/k/0/f", 6),
            ("cache-mounts/k/meta.json", 2),
            ("ingest/blob-1", 1),
            ("cache.redb", 9),
        ] {
            let p = r.join(path);
            fs_err::create_dir_all(p.parent().unwrap()).unwrap();
            fs_err::write(&p, vec![0u8; bytes]).unwrap();
        }
        let m = measure(r).unwrap();
        assert_eq!(m.units.values().sum::<u64>(), m.total);
        assert_eq!(m.units[&Unit::Blob("bb".into())], 7);
        assert_eq!(m.units[&Unit::Log("abc".into())], 7);
        assert!(
            m.units[&Unit::Snapshot("aa".into())] > 10,
            "the dir counts too"
        );
        assert!(m.units.contains_key(&Unit::Path("cache-mounts/k/0".into())));
        assert!(m.units.contains_key(&Unit::Path("ingest/blob-1".into())));
    }
}
