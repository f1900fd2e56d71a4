//! Layer apply: a layer blob (gzip, zstd or plain tar) extracted into a snapshot directory.
//!
//! Every entry is created relative to a directory descriptor of its parent, and that parent is
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the snapshot root. The
//! kernel then refuses any resolution that would leave the root, including through symlinks the
//! archive itself planted, so a hostile tar cannot write outside the snapshot. Names with `..`
//! and absolute names are refused before that. The final component is never followed: files are
//! created with `O_EXCL | O_NOFOLLOW` after whatever was there is removed.
//!
//! The same code extracts Dockerfile `ADD` archives (see the `archive` module) under
//! `AddRules`: names relative to the destination, `.wh.*` as plain files, best-effort xattrs.
//!
//! OCI whiteouts become the overlayfs form ([`WhiteoutMode::Overlay`]) so a snapshot stacks as a
//! lowerdir, or are carried out by deletion ([`WhiteoutMode::Remove`]) when layers are
//! flattened into one directory. See the OCI image spec, "Representing Changes"
//! (layer.md#whiteouts) and the kernel's overlayfs documentation for the two forms.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::image::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::compress::{Compression, HashingReader, decompress};
use crate::regular::write_sparse;

/// The xattr overlayfs reads to mark a directory opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The OCI whiteout prefix.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";

/// What to do with whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Write them in overlayfs form: a 0/0 character device for a deleted name and the
    /// `trusted.overlay.opaque=y` xattr for an opaque directory. For snapshots that stack as
    /// overlay lowerdirs.
    #[default]
    Overlay,
    /// Delete what they name from the destination. For applying layers on top of each other
    /// into one flattened directory.
    Remove,
}

/// Options for [`apply_layer`].
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// How whiteouts are represented.
    pub whiteouts: WhiteoutMode,
    /// When set, the uncompressed tar must hash to this diffID.
    pub expected_diff_id: Option<Digest>,
    /// Snapshots of the layers below this one, top first. A hardlink whose target is not in
    /// this layer (it lives in a lower one) becomes a copy of that lower file, since a link
    /// cannot cross snapshot directories. Empty: such a hardlink is an error.
    pub lower_dirs: Vec<PathBuf>,
}

/// What [`apply_layer`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// The compression detected from the blob's magic bytes.
    pub compression: Compression,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Number of tar entries applied (whiteouts included).
    pub entries: u64,
}

/// Errors of applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The snapshot directory could not be created or opened.
    #[error("open snapshot root {path}")]
    OpenRoot {
        /// The snapshot directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The layer stream could not be decompressed or read as tar.
    #[error("read layer archive")]
    ReadArchive {
        /// The cause.
        source: io::Error,
    },
    /// An entry's name is not a safe relative path.
    #[error("refusing tar entry {entry:?}: {reason}")]
    UnsafePath {
        /// The entry name as found in the archive.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Resolving an entry's parent (or a hardlink's target) would leave the snapshot.
    #[error("refusing tar entry {entry:?}: {path:?} resolves outside the snapshot")]
    Escapes {
        /// The entry name.
        entry: String,
        /// The path whose resolution escaped.
        path: String,
    },
    /// A filesystem operation for an entry failed.
    #[error("{op} for tar entry {entry:?}")]
    Entry {
        /// The entry name.
        entry: String,
        /// The operation, such as "create file" or "set xattr security.capability".
        op: String,
        /// The cause.
        source: io::Error,
    },
    /// The entry type is not one a layer may carry.
    #[error("unsupported tar entry type {typeflag:?} for {entry:?}")]
    UnsupportedType {
        /// The entry name.
        entry: String,
        /// The raw type flag.
        typeflag: char,
    },
    /// The uncompressed layer did not hash to the expected diffID.
    #[error("layer diffID mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// The diffID asked for.
        expected: Digest,
        /// The diffID of the bytes read.
        actual: Digest,
    },
}

/// Extracts the layer in `reader` (compression detected by magic bytes) into `dest`, creating
/// `dest` if needed.
///
/// # Errors
/// See [`ApplyError`]. On error `dest` holds a partial tree; callers extract into a temp dir
/// and rename (as [`crate::SnapshotStore`] does).
pub fn apply_layer(
    reader: impl Read,
    dest: &Path,
    options: &ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    fs_err::create_dir_all(dest).map_err(|source| ApplyError::OpenRoot {
        path: dest.to_path_buf(),
        source,
    })?;
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ApplyError::OpenRoot {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;

    let (compression, stream) =
        decompress(reader).map_err(|source| ApplyError::ReadArchive { source })?;
    let mut archive = tar::Archive::new(HashingReader::new(stream));
    let mut applier = Applier::new(root.as_fd(), options.whiteouts, &options.lower_dirs, None);
    let count = applier
        .apply_all(&mut archive)
        .map_err(|failure| failure.error)?;

    // The tar reader stops at the end-of-archive blocks; read the rest so the diffID covers the
    // whole stream and the decompressor checks its trailer.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(|source| ApplyError::ReadArchive { source })?;
    let (diff_id, uncompressed_size) = hashing.finish();
    if let Some(expected) = &options.expected_diff_id
        && *expected != diff_id
    {
        return Err(ApplyError::DiffIdMismatch {
            expected: expected.clone(),
            actual: diff_id,
        });
    }
    Ok(ApplyReport {
        diff_id,
        compression,
        uncompressed_size,
        entries: count,
    })
}

/// Rules for extracting a Dockerfile `ADD` archive rather than a layer, as Docker does it
/// (`pkg/archive.Untar`, BuildKit's file op with `AttemptUnpack`): `.wh.` names are ordinary
/// files, a leading `/` is dropped, `..` is resolved lexically and refused only when it climbs
/// above the destination, the destination's own `./` entry leaves the destination untouched,
/// and xattrs are set on a best-effort basis (overlayfs' own `trusted.overlay.*` never).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AddRules {
    /// `--chown`: every entry gets this owner instead of the one in the archive.
    pub(crate) chown: Option<(u32, u32)>,
}

/// An extraction that failed, with the name of the entry it failed on (none when the archive
/// stream itself broke between entries).
#[derive(Debug)]
pub(crate) struct EntryFailure {
    pub(crate) entry: Option<String>,
    pub(crate) error: ApplyError,
}

/// Extracts an `ADD` archive (an uncompressed tar stream) into the existing directory `dest`
/// under [`AddRules`], with the same confinement as [`apply_layer`]. Returns the number of
/// entries extracted.
pub(crate) fn extract_add(
    tar: impl Read,
    dest: &Path,
    rules: AddRules,
) -> Result<u64, EntryFailure> {
    let fail = |error| EntryFailure { entry: None, error };
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        fail(ApplyError::OpenRoot {
            path: dest.to_path_buf(),
            source: e.into(),
        })
    })?;
    let mut archive = tar::Archive::new(tar);
    let mut applier = Applier::new(root.as_fd(), WhiteoutMode::Remove, &[], Some(rules));
    applier.apply_all(&mut archive)
}

impl ApplyError {
    /// The archive entry this error is about, when it is about one.
    #[must_use]
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::UnsafePath { entry, .. }
            | Self::Escapes { entry, .. }
            | Self::Entry { entry, .. }
            | Self::UnsupportedType { entry, .. } => Some(entry),
            Self::OpenRoot { .. } | Self::ReadArchive { .. } | Self::DiffIdMismatch { .. } => None,
        }
    }
}

/// Splits an archive name into components: `.` and empty parts dropped, a NUL refused. A
/// layer (`add` false) refuses absolute names and any `..`; under ADD's rules a leading `/` is
/// dropped (a `tar -P` name lands under the destination) and `..` climbs back, but never above
/// the destination.
fn components<'a>(raw: &'a [u8], entry: &str, add: bool) -> Result<Vec<&'a [u8]>, ApplyError> {
    let refuse = |reason| ApplyError::UnsafePath {
        entry: entry.to_string(),
        reason,
    };
    if !add && raw.first() == Some(&b'/') {
        return Err(refuse("absolute path"));
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if add => {
                if out.pop().is_none() {
                    return Err(refuse("path climbs out of the destination with '..'"));
                }
            }
            b".." => return Err(refuse("path contains '..'")),
            p if p.contains(&0) => return Err(refuse("path contains a NUL byte")),
            p => out.push(p),
        }
    }
    Ok(out)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

fn os(bytes: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(bytes)
}

/// Metadata of one entry beyond what the ustar header holds, gathered from PAX records.
#[derive(Default)]
struct Extended {
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10)?;
        nanos += d * 10u32.pow(8 - u32::try_from(i).ok()?);
    }
    Some((secs, nanos))
}

struct Applier<'fd> {
    root: BorrowedFd<'fd>,
    mode: WhiteoutMode,
    /// The last parent directory resolved, reused while entries share it (archives are
    /// usually sorted, so they do).
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directory mtimes, set last: creating children would otherwise bump them.
    dir_times: Vec<(Vec<u8>, Timespec)>,
    /// Paths this layer created, so an opaque marker in remove mode spares them.
    created: HashSet<Vec<u8>>,
    buf: Vec<u8>,
    lowers: &'fd [PathBuf],
    /// Set when extracting a Dockerfile `ADD` archive instead of a layer.
    add: Option<AddRules>,
}

impl<'fd> Applier<'fd> {
    fn new(
        root: BorrowedFd<'fd>,
        mode: WhiteoutMode,
        lowers: &'fd [PathBuf],
        add: Option<AddRules>,
    ) -> Self {
        Applier {
            root,
            mode,
            parent_cache: None,
            dir_times: Vec::new(),
            created: HashSet::new(),
            buf: vec![0; 256 * 1024],
            lowers,
            add,
        }
    }

    /// Applies every entry of `archive`, then the directory mtimes. Returns the entry count.
    fn apply_all<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<u64, EntryFailure> {
        let stream = |source| EntryFailure {
            entry: None,
            error: ApplyError::ReadArchive { source },
        };
        let mut count = 0u64;
        for entry in archive.entries().map_err(stream)? {
            let mut entry = entry.map_err(stream)?;
            if let Err(error) = self.apply_entry(&mut entry) {
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(EntryFailure {
                    entry: Some(name),
                    error,
                });
            }
            count += 1;
        }
        self.finish_dir_times().map_err(|error| EntryFailure {
            entry: error.entry().map(str::to_owned),
            error,
        })?;
        Ok(count)
    }

    fn err(entry: &str, op: impl Into<String>) -> impl FnOnce(Errno) -> ApplyError + '_ {
        let op = op.into();
        move |e| ApplyError::Entry {
            entry: entry.to_string(),
            op,
            source: e.into(),
        }
    }

    /// Opens `rel` (a directory path below the root) without ever leaving the root. With
    /// `create`, missing directories are made (0755, like `mkdir -p`) one component at a time.
    fn open_dir(
        &self,
        rel: &[&[u8]],
        entry: &str,
        create: bool,
        flags: OFlags,
    ) -> Result<OwnedFd, ApplyError> {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let path = join(rel);
        let target: &[u8] = if path.is_empty() { b"." } else { &path };
        let open = |p: &[u8]| {
            rustix::fs::openat2(
                self.root,
                os(p),
                flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            )
        };
        let escape = |p: &[u8]| ApplyError::Escapes {
            entry: entry.to_string(),
            path: String::from_utf8_lossy(p).into_owned(),
        };
        match open(target) {
            Ok(fd) => return Ok(fd),
            Err(Errno::XDEV | Errno::LOOP) => return Err(escape(target)),
            Err(Errno::NOENT) if create => {}
            Err(e) => return Err(Self::err(entry, "open parent directory")(e)),
        }
        let mut parent = open(b".").map_err(Self::err(entry, "open snapshot root"))?;
        for i in 1..=rel.len() {
            let prefix = join(&rel[..i]);
            let fd = match open(&prefix) {
                Ok(fd) => fd,
                Err(Errno::XDEV | Errno::LOOP) => return Err(escape(&prefix)),
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&parent, os(rel[i - 1]), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Self::err(entry, "create parent directory")(e)),
                    }
                    open(&prefix).map_err(|e| match e {
                        Errno::XDEV | Errno::LOOP => escape(&prefix),
                        e => Self::err(entry, "open parent directory")(e),
                    })?
                }
                Err(e) => return Err(Self::err(entry, "open parent directory")(e)),
            };
            parent = fd;
        }
        Ok(parent)
    }

    fn parent(&mut self, rel: &[&[u8]], entry: &str) -> Result<BorrowedFd<'_>, ApplyError> {
        let key = join(rel);
        let hit = self.parent_cache.as_ref().is_some_and(|(k, _)| *k == key);
        if !hit {
            let fd = self.open_dir(rel, entry, true, OFlags::PATH)?;
            self.parent_cache = Some((key, fd));
        }
        match &self.parent_cache {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Err(ApplyError::Entry {
                entry: entry.to_string(),
                op: "open parent directory".into(),
                source: io::Error::other("parent cache empty"),
            }),
        }
    }

    fn apply_entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw = e.path_bytes().into_owned();
        let entry = String::from_utf8_lossy(&raw).into_owned();
        let parts = components(&raw, &entry, self.add.is_some())?;
        let header = e.header();
        let mut kind = header.entry_type();
        if self.add.is_some() && kind.is_gnu_sparse() {
            // `tar -S` archives: the tar reader expands the holes, so the data reads as a
            // regular file's (Go's archive/tar does the same for Docker).
            kind = tar::EntryType::Regular;
        }
        let map_read = |source: io::Error| ApplyError::ReadArchive { source };
        let mut ext = Extended::default();
        if let Some(pax) = e.pax_extensions().map_err(map_read)? {
            for rec in pax {
                let rec = rec.map_err(map_read)?;
                let key = rec.key_bytes();
                let value = rec.value_bytes();
                let num = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                };
                match key {
                    b"uid" => ext.uid = num(),
                    b"gid" => ext.gid = num(),
                    b"mtime" => ext.mtime = parse_pax_time(value),
                    k if k.starts_with(b"SCHILY.xattr.") => {
                        ext.xattrs.push((k[13..].to_vec(), value.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        let header = e.header();
        let uid = ext.uid.or_else(|| header.uid().ok()).unwrap_or(0);
        let gid = ext.gid.or_else(|| header.gid().ok()).unwrap_or(0);
        let perm = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = ext.mtime.unwrap_or_else(|| {
            (
                header
                    .mtime()
                    .ok()
                    .and_then(|m| i64::try_from(m).ok())
                    .unwrap_or(0),
                0,
            )
        });
        let mtime = Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1.into(),
        };
        let (uid, gid) = match self.add.and_then(|rules| rules.chown) {
            Some((u, g)) => (u.into(), g.into()),
            None => (uid, gid),
        };
        let mut xattrs = ext.xattrs;
        if self.add.is_some() {
            // An ADD archive must not be able to mark directories opaque or redirect them once
            // the result is stacked as an overlay lowerdir.
            xattrs.retain(|(k, _)| !k.starts_with(b"trusted.overlay."));
        }
        let meta = Meta {
            uid,
            gid,
            perm,
            mtime,
            xattrs,
            xattrs_best_effort: self.add.is_some(),
        };

        let Some((name, dir_parts)) = parts.split_last() else {
            // The root itself ("./"): only a directory entry may name it. For ADD it is the
            // destination, which keeps its own metadata (`ADD app.tar /tmp/` leaves /tmp 1777),
            // as Docker's Untar skips ".".
            if kind.is_dir() && self.add.is_some() {
                return Ok(());
            }
            if kind.is_dir() {
                let fd = self.open_dir(&[], &entry, false, OFlags::RDONLY)?;
                set_fd_meta(&fd, &meta, &entry)?;
                self.dir_times.push((Vec::new(), meta.mtime));
                return Ok(());
            }
            return Err(ApplyError::UnsafePath {
                entry,
                reason: "a non-directory entry names the root",
            });
        };
        let name = *name;

        if self.add.is_none()
            && let Some(target) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            return self.whiteout(dir_parts, target, &entry);
        }

        let rel = join(&parts);
        self.created.insert(rel.clone());
        let link = e.link_name_bytes().map(std::borrow::Cow::into_owned);
        match kind {
            tar::EntryType::Directory => {
                let parent = self
                    .parent(dir_parts, &entry)?
                    .try_clone_to_owned()
                    .map_err(|err| ApplyError::Entry {
                        entry: entry.clone(),
                        op: "dup parent fd".into(),
                        source: err,
                    })?;
                let existing = stat_nofollow(&parent, name);
                if existing.is_some_and(|t| t != FileType::Directory) {
                    self.remove_existing(&parent, name, &entry)?;
                }
                match rustix::fs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => return Err(Self::err(&entry, "create directory")(err)),
                }
                let fd = rustix::fs::openat2(
                    &parent,
                    os(name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                )
                .map_err(Self::err(&entry, "open directory"))?;
                if existing.is_some() && self.add.is_none() {
                    // The entry describes the directory's whole metadata: xattrs of an earlier
                    // layer's version of it go, except overlay markers this layer set.
                    drop_stale_xattrs(&fd, &meta, &entry)?;
                }
                set_fd_meta(&fd, &meta, &entry)?;
                self.dir_times.push((rel, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let parent = self.owned_parent(dir_parts, &entry)?;
                self.remove_existing(&parent, name, &entry)?;
                let fd = rustix::fs::openat(
                    &parent,
                    os(name),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(Self::err(&entry, "create file"))?;
                let mut file = std::fs::File::from(fd);
                let (expected, mut written) = (e.size(), 0u64);
                loop {
                    let n = e.read(&mut self.buf).map_err(map_read)?;
                    if n == 0 {
                        if written < expected {
                            // The tar reader reports a cut stream only when it skips to the
                            // next header; here the entry it cut is still known.
                            return Err(map_read(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("archive ends after {written} of {expected} bytes"),
                            )));
                        }
                        break;
                    }
                    // Zero blocks become holes: a sparse file that was copied with its holes
                    // (its tar holds the zeros) does not fill the disk when it is unpacked.
                    write_sparse(&mut file, written, &self.buf[..n]).map_err(|source| {
                        ApplyError::Entry {
                            entry: entry.clone(),
                            op: "write file".into(),
                            source,
                        }
                    })?;
                    written += n as u64;
                }
                file.set_len(written).map_err(|source| ApplyError::Entry {
                    entry: entry.clone(),
                    op: "write file".into(),
                    source,
                })?;
                set_fd_meta(&file, &meta, &entry)?;
                rustix::fs::futimens(
                    &file,
                    &Timestamps {
                        last_access: meta.mtime,
                        last_modification: meta.mtime,
                    },
                )
                .map_err(Self::err(&entry, "set mtime"))?;
            }
            tar::EntryType::Symlink => {
                let Some(target) = link else {
                    return Err(ApplyError::UnsafePath {
                        entry,
                        reason: "symlink without a target",
                    });
                };
                let parent = self.owned_parent(dir_parts, &entry)?;
                self.remove_existing(&parent, name, &entry)?;
                // The target is stored as text and never followed here, so it may point
                // anywhere; what it points at is resolved inside the container, not on the host.
                rustix::fs::symlinkat(os(&target), &parent, os(name))
                    .map_err(Self::err(&entry, "create symlink"))?;
                set_node_meta(&parent, name, &meta, &entry, true)?;
            }
            tar::EntryType::Link => {
                let Some(target) = link else {
                    return Err(ApplyError::UnsafePath {
                        entry,
                        reason: "hardlink without a target",
                    });
                };
                let target_entry = String::from_utf8_lossy(&target).into_owned();
                // tar -P stores absolute link targets; under ADD's rules they are taken
                // relative to the destination, like the names.
                let add = self.add.is_some();
                let tparts =
                    components(&target, &entry, add).map_err(|_| ApplyError::UnsafePath {
                        entry: entry.clone(),
                        reason: if add {
                            "hardlink target climbs out of the destination with '..'"
                        } else {
                            "hardlink target is absolute or contains '..'"
                        },
                    })?;
                let Some((tname, tdir)) = tparts.split_last() else {
                    return Err(ApplyError::UnsafePath {
                        entry,
                        reason: "hardlink to the root",
                    });
                };
                let tparent = match self.open_dir(tdir, &entry, false, OFlags::PATH) {
                    Ok(fd) => Some(fd),
                    Err(ApplyError::Escapes { entry, .. }) => {
                        return Err(ApplyError::Escapes {
                            entry,
                            path: target_entry,
                        });
                    }
                    Err(ApplyError::Entry { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        None
                    }
                    Err(other) => return Err(other),
                };
                let parent = self.owned_parent(dir_parts, &entry)?;
                self.remove_existing(&parent, name, &entry)?;
                // Flags 0: link the target itself, never what it might point to.
                let linked = match &tparent {
                    Some(tp) => {
                        rustix::fs::linkat(tp, os(tname), &parent, os(name), AtFlags::empty())
                    }
                    None => Err(Errno::NOENT),
                };
                match linked {
                    Ok(()) => {}
                    Err(Errno::NOENT)
                        if self.copy_from_lower(&tparts, &parent, name, &entry)? => {}
                    Err(e) => {
                        return Err(Self::err(&entry, format!("hardlink to {target_entry:?}"))(
                            e,
                        ));
                    }
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let parent = self.owned_parent(dir_parts, &entry)?;
                self.remove_existing(&parent, name, &entry)?;
                rustix::fs::mknodat(
                    &parent,
                    os(name),
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(Self::err(&entry, "create device node"))?;
                set_node_meta(&parent, name, &meta, &entry, false)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(ApplyError::UnsupportedType {
                    entry,
                    typeflag: char::from(other.as_byte()),
                });
            }
        }
        Ok(())
    }

    /// Creates `parent/name` as a copy of `target` from the topmost lower snapshot that has it,
    /// honouring whiteouts and opaque directories above it. Returns false when no lower has it.
    fn copy_from_lower(
        &self,
        target: &[&[u8]],
        parent: &OwnedFd,
        name: &[u8],
        entry: &str,
    ) -> Result<bool, ApplyError> {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let rel = join(target);
        for lower in self.lowers {
            let lerr = |op: &str| {
                let op = format!("{op} in lower snapshot {}", lower.display());
                move |e: Errno| ApplyError::Entry {
                    entry: entry.to_string(),
                    op,
                    source: e.into(),
                }
            };
            let root = rustix::fs::open(
                lower,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(lerr("open"))?;
            let found = rustix::fs::openat2(
                &root,
                os(&rel),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            );
            let fd = match found {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR) => {
                    // Not here: lower layers are hidden if any ancestor here is opaque.
                    let mut hidden = false;
                    for i in 0..target.len() {
                        let dir = join(&target[..i]);
                        let dir: &[u8] = if dir.is_empty() { b"." } else { &dir };
                        if let Ok(d) = rustix::fs::openat2(
                            &root,
                            os(dir),
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                            resolve,
                        ) {
                            let mut v = [0u8; 1];
                            if rustix::fs::fgetxattr(&d, OVERLAY_OPAQUE_XATTR, &mut v[..])
                                .is_ok_and(|n| n == 1 && v[0] == b'y')
                            {
                                hidden = true;
                            }
                        }
                    }
                    if hidden {
                        return Ok(false);
                    }
                    continue;
                }
                Err(Errno::XDEV | Errno::LOOP) => {
                    return Err(ApplyError::Escapes {
                        entry: entry.to_string(),
                        path: String::from_utf8_lossy(&rel).into_owned(),
                    });
                }
                Err(e) => return Err(lerr("find hardlink target")(e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(lerr("stat hardlink target"))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft == FileType::CharacterDevice && st.st_rdev == 0 {
                return Ok(false); // whited out in that lower layer
            }
            if ft != FileType::RegularFile {
                return Ok(false);
            }
            let src_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let mut src = fs_err::File::open(&src_path).map_err(|source| ApplyError::Entry {
                entry: entry.to_string(),
                op: format!("open hardlink target in lower snapshot {}", lower.display()),
                source,
            })?;
            let out = rustix::fs::openat(
                parent,
                os(name),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(Self::err(entry, "create copy of lower hardlink target"))?;
            let mut out = std::fs::File::from(out);
            io::copy(&mut src, &mut out).map_err(|source| ApplyError::Entry {
                entry: entry.to_string(),
                op: "copy lower hardlink target".into(),
                source,
            })?;
            let mut xattrs = Vec::new();
            let mut list = vec![0u8; 64 * 1024];
            let n = rustix::fs::flistxattr(src.file(), &mut list[..]).unwrap_or(0);
            for xname in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
                let mut v = vec![0u8; 64 * 1024];
                if let Ok(len) = rustix::fs::fgetxattr(src.file(), os(xname), &mut v[..]) {
                    v.truncate(len);
                    xattrs.push((xname.to_vec(), v));
                }
            }
            let mtime = Timespec {
                tv_sec: st.st_mtime,
                tv_nsec: i64::try_from(st.st_mtime_nsec).unwrap_or(0),
            };
            let meta = Meta {
                uid: st.st_uid.into(),
                gid: st.st_gid.into(),
                perm: st.st_mode & 0o7777,
                mtime,
                xattrs,
                xattrs_best_effort: false,
            };
            set_fd_meta(&out, &meta, entry)?;
            rustix::fs::futimens(
                &out,
                &Timestamps {
                    last_access: mtime,
                    last_modification: mtime,
                },
            )
            .map_err(Self::err(entry, "set mtime"))?;
            return Ok(true);
        }
        Ok(false)
    }

    fn owned_parent(&mut self, dir_parts: &[&[u8]], entry: &str) -> Result<OwnedFd, ApplyError> {
        self.parent(dir_parts, entry)?
            .try_clone_to_owned()
            .map_err(|source| ApplyError::Entry {
                entry: entry.to_string(),
                op: "dup parent fd".into(),
                source,
            })
    }

    /// Removes whatever is at `parent/name` (a whole tree for a directory); absent is fine.
    fn remove_existing(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        entry: &str,
    ) -> Result<(), ApplyError> {
        match stat_nofollow(parent, name) {
            None => Ok(()),
            Some(FileType::Directory) => {
                // Cached parents below this directory would point into the removed tree.
                self.parent_cache = None;
                let path = proc_path(parent, name);
                fs_err::remove_dir_all(&path).map_err(|source| ApplyError::Entry {
                    entry: entry.to_string(),
                    op: "remove existing directory".into(),
                    source,
                })
            }
            Some(_) => rustix::fs::unlinkat(parent, os(name), AtFlags::empty())
                .map_err(Self::err(entry, "remove existing file")),
        }
    }

    fn whiteout(
        &mut self,
        dir_parts: &[&[u8]],
        target: &[u8],
        entry: &str,
    ) -> Result<(), ApplyError> {
        let parent = if self.mode == WhiteoutMode::Remove {
            // Deleting from a directory that does not exist deletes nothing; creating it here
            // would add an empty directory the image never had.
            match self.open_dir(dir_parts, entry, false, OFlags::PATH) {
                Ok(fd) => fd,
                Err(ApplyError::Entry { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        } else {
            self.owned_parent(dir_parts, entry)?
        };
        if target == &WHITEOUT_OPAQUE.as_bytes()[WHITEOUT_PREFIX.len()..] {
            match self.mode {
                WhiteoutMode::Overlay => {
                    let dir = rustix::fs::openat(
                        &parent,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(Self::err(entry, "open opaque directory"))?;
                    rustix::fs::fsetxattr(
                        &dir,
                        OVERLAY_OPAQUE_XATTR,
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .map_err(Self::err(
                        entry,
                        format!("set xattr {OVERLAY_OPAQUE_XATTR}"),
                    ))?;
                }
                WhiteoutMode::Remove => {
                    let dir_rel = join(dir_parts);
                    let dir_path = proc_path(&parent, b".");
                    let children =
                        fs_err::read_dir(&dir_path).map_err(|source| ApplyError::Entry {
                            entry: entry.to_string(),
                            op: "list opaque directory".into(),
                            source,
                        })?;
                    for child in children {
                        let child = child.map_err(|source| ApplyError::Entry {
                            entry: entry.to_string(),
                            op: "list opaque directory".into(),
                            source,
                        })?;
                        use std::os::unix::ffi::OsStrExt;
                        let cname = child.file_name().as_bytes().to_vec();
                        let mut crel = dir_rel.clone();
                        if !crel.is_empty() {
                            crel.push(b'/');
                        }
                        crel.extend_from_slice(&cname);
                        if !self.created.contains(&crel) {
                            self.remove_existing(&parent, &cname, entry)?;
                        }
                    }
                }
            }
            return Ok(());
        }
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs metadata (hardlink dirs); they carry no change.
            return Ok(());
        }
        if target.is_empty() {
            return Err(ApplyError::UnsafePath {
                entry: entry.to_string(),
                reason: "whiteout without a name",
            });
        }
        self.remove_existing(&parent, target, entry)?;
        if self.mode == WhiteoutMode::Overlay {
            rustix::fs::mknodat(
                &parent,
                os(target),
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(Self::err(entry, "create whiteout device"))?;
            rustix::fs::chownat(
                &parent,
                os(target),
                Some(rustix::fs::Uid::ROOT),
                Some(rustix::fs::Gid::ROOT),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(Self::err(entry, "chown whiteout device"))?;
        }
        Ok(())
    }

    fn finish_dir_times(&mut self) -> Result<(), ApplyError> {
        self.parent_cache = None;
        let times = std::mem::take(&mut self.dir_times);
        for (rel, mtime) in times.iter().rev() {
            let parts: Vec<&[u8]> = rel
                .split(|b| *b == b'/')
                .filter(|p| !p.is_empty())
                .collect();
            let entry = String::from_utf8_lossy(rel).into_owned();
            // A later entry may have replaced or whited out the directory; then its time is moot.
            let Ok(fd) = self.open_dir(&parts, &entry, false, OFlags::RDONLY) else {
                continue;
            };
            rustix::fs::futimens(
                &fd,
                &Timestamps {
                    last_access: *mtime,
                    last_modification: *mtime,
                },
            )
            .map_err(Self::err(&entry, "set directory mtime"))?;
        }
        Ok(())
    }
}

struct Meta {
    uid: u64,
    gid: u64,
    perm: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Skip xattrs the filesystem or the kernel refuses (Docker's `BestEffortXattrs` for ADD)
    /// instead of failing the entry.
    xattrs_best_effort: bool,
}

/// Whether a failed setxattr may be skipped for `meta`.
fn skippable_xattr_error(meta: &Meta, err: Errno) -> bool {
    meta.xattrs_best_effort && matches!(err, Errno::NOTSUP | Errno::PERM | Errno::ACCESS)
}

fn ids(meta: &Meta, entry: &str) -> Result<(rustix::fs::Uid, rustix::fs::Gid), ApplyError> {
    let bad = || ApplyError::UnsafePath {
        entry: entry.to_string(),
        reason: "uid or gid out of range",
    };
    let uid = u32::try_from(meta.uid).map_err(|_| bad())?;
    let gid = u32::try_from(meta.gid).map_err(|_| bad())?;
    Ok((
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    ))
}

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown also drops
/// security.capability), on an open file or directory.
fn set_fd_meta(fd: impl AsFd, meta: &Meta, entry: &str) -> Result<(), ApplyError> {
    let (uid, gid) = ids(meta, entry)?;
    rustix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(Applier::err(entry, "chown"))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.perm))
        .map_err(Applier::err(entry, "chmod"))?;
    for (name, value) in &meta.xattrs {
        match rustix::fs::fsetxattr(&fd, os(name), value, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if skippable_xattr_error(meta, e) => {}
            Err(e) => {
                return Err(Applier::err(
                    entry,
                    format!("set xattr {}", String::from_utf8_lossy(name)),
                )(e));
            }
        }
    }
    Ok(())
}

fn drop_stale_xattrs(fd: &OwnedFd, meta: &Meta, entry: &str) -> Result<(), ApplyError> {
    let mut list = vec![0u8; 64 * 1024];
    let n = match rustix::fs::flistxattr(fd, &mut list[..]) {
        Ok(n) => n,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(Applier::err(entry, "list xattrs")(e)),
    };
    for name in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let wanted = meta.xattrs.iter().any(|(k, _)| k.as_slice() == name);
        if !wanted && !name.starts_with(b"trusted.overlay.") {
            rustix::fs::fremovexattr(fd, os(name)).map_err(Applier::err(
                entry,
                format!("remove xattr {}", String::from_utf8_lossy(name)),
            ))?;
        }
    }
    Ok(())
}

/// The same for a node that must not be opened (symlink, device, fifo), by name in `parent`.
fn set_node_meta(
    parent: &OwnedFd,
    name: &[u8],
    meta: &Meta,
    entry: &str,
    symlink: bool,
) -> Result<(), ApplyError> {
    let (uid, gid) = ids(meta, entry)?;
    rustix::fs::chownat(
        parent,
        os(name),
        Some(uid),
        Some(gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Applier::err(entry, "chown"))?;
    if !symlink {
        // The node was just created by mknodat and is not a symlink, so this cannot follow one.
        rustix::fs::chmodat(
            parent,
            os(name),
            Mode::from_raw_mode(meta.perm),
            AtFlags::empty(),
        )
        .map_err(Applier::err(entry, "chmod"))?;
    }
    if !meta.xattrs.is_empty() {
        // l*xattr on the /proc/self/fd path of the parent: the parent is pinned by its fd and
        // the final component is not followed.
        let path = proc_path(parent, name);
        for (xname, value) in &meta.xattrs {
            match rustix::fs::lsetxattr(&path, os(xname), value, rustix::fs::XattrFlags::empty()) {
                // The kernel allows user.* xattrs only on files and directories.
                Err(Errno::PERM) if xname.starts_with(b"user.") => {}
                Err(e) if skippable_xattr_error(meta, e) => {}
                Err(e) => {
                    return Err(Applier::err(
                        entry,
                        format!("set xattr {}", String::from_utf8_lossy(xname)),
                    )(e));
                }
                Ok(()) => {}
            }
        }
    }
    rustix::fs::utimensat(
        parent,
        os(name),
        &Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Applier::err(entry, "set mtime"))
}

fn stat_nofollow(parent: &OwnedFd, name: &[u8]) -> Option<FileType> {
    rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

fn proc_path(parent: &OwnedFd, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd()));
    if name != b"." {
        p.push(os(name));
    }
    p
}
