//! Build contexts: which files a COPY or ADD selects, and the content hash that is their cache
//! key.
//!
//! A step's key depends on exactly the files it selects: their relative paths, types, permission
//! bits, and bytes (or link targets, or device numbers), and which of them are hardlinks of
//! each other. Never on mtimes, inode numbers or the session. Hashing skips files whose stat is
//! unchanged since the last build, with git's rule for "racy" entries: a file whose mtime or
//! ctime is not safely older than the moment its digest was recorded is hashed again, because it
//! may have changed within the same timestamp tick.
//!
//! Paths are bytes, as on the filesystem: a name that is not UTF-8 is selected, hashed and
//! copied as it is.
//!
//! Special files are never opened. A FIFO or a device node is an entry of its own kind, hashed
//! by its type and device number and recreated by the copy, as BuildKit's context transfer
//! (fsutil) sends them as bare headers. A socket cannot be part of a layer: it is left out and
//! listed in [`Selection::skipped`], so that the caller can warn, as Docker does.
//!
//! Source paths resolve inside the context root only: `..` is cleaned away at the root, and a
//! symlink on the way is followed only while it stays inside the root.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use hoist_parser::ignore::{DirDecision, Matcher};
use hoist_parser::pathmatch::{PathPattern, PatternError};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::regular::{SparseReader, open_regular};

/// How deep symlinks may chain while a source path resolves.
const MAX_LINKS: usize = 40;

/// Where a COPY's sources are looked up, as messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The build context, at this directory.
    Context(PathBuf),
    /// A stage of the Dockerfile, by the name or index that `--from` gave.
    Stage(String),
    /// An image, by the reference that `--from` gave.
    Image(String),
    /// A `--build-context` directory, as a filesystem (`FROM NAME`, `RUN --mount=from=NAME`).
    NamedContext(String),
    /// What `ADD` fetched from a URL or a git remote, as written.
    Remote(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Context(root) => write!(f, "build context {}", root.display()),
            Self::Stage(name) => write!(f, "stage {name:?}"),
            Self::Image(reference) => write!(f, "image {reference:?}"),
            Self::NamedContext(name) => write!(f, "build context {name:?}"),
            Self::Remote(source) => write!(f, "{source}"),
        }
    }
}

impl Origin {
    /// What can hide a path that exists, where that applies.
    fn hiding(&self) -> &'static str {
        match self {
            Self::Context(_) => " (it does not exist, or .dockerignore excludes it)",
            Self::NamedContext(_) => " (it does not exist, or its .dockerignore excludes it)",
            Self::Stage(_) | Self::Image(_) | Self::Remote(_) => "",
        }
    }
}

/// Reading a context, or hashing it, failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path:?}: not found in {origin}{}", origin.hiding())]
    NotFound { origin: Origin, path: String },
    #[error("no source files were specified: {pattern:?} matches nothing in {origin}")]
    NoMatch { origin: Origin, pattern: String },
    #[error("invalid source pattern {pattern:?}: {reason}")]
    Pattern {
        pattern: String,
        reason: PatternError,
    },
    #[error("symlink {path:?} in {origin} leads in a loop or too deep")]
    LinkLoop { origin: Origin, path: String },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saving the context's stat cache at {}", path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What kind of entry a context path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink {
        target: PathBuf,
    },
    /// A named pipe: recreated empty, never opened.
    Fifo,
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
}

/// One selected entry of the context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the context root, without a leading `/`, as named.
    pub path: PathBuf,
    /// Where the bytes are: `path` with any symlink on the way resolved inside the root.
    pub source: PathBuf,
    /// Where the entry lands relative to the copy's destination (see [`Selection`]).
    pub dest: PathBuf,
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    /// A file that an earlier entry of the same source also is (a hardlink): that entry's
    /// `dest`, which this one links to rather than holding a copy. As in BuildKit's copy,
    /// hardlinks are kept within one source of a COPY, not across its sources.
    pub hardlink: Option<PathBuf>,
    /// The stat taken while selecting a regular file, so hashing it needs no second one.
    pub(crate) stat: Option<StatKey>,
    /// Its link count, to find the hardlinks among the selected files.
    pub(crate) nlink: u64,
    /// A source named this entry itself (by name or wildcard), rather than a directory around
    /// it: only such a lone file may be copied to a destination file name.
    pub named: bool,
}

/// The entries that a list of sources selects, in path order, with each source's role.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub entries: Vec<Entry>,
    /// Sockets that the sources reached, left out: a layer cannot hold them.
    pub skipped: Vec<PathBuf>,
}

/// Entries by (dest, path) as bytes: the order of the selection, a directory before its
/// contents.
type EntryMap = BTreeMap<(Vec<u8>, Vec<u8>), Entry>;

fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// Selects the entries that `sources` name in the build context at `root`, as COPY does (see
/// [`select_from`]).
///
/// # Errors
/// As [`select_from`].
pub fn select(
    root: &Path,
    sources: &[String],
    ignore: &Matcher,
) -> Result<Selection, ContextError> {
    select_from(root, &Origin::Context(root.to_path_buf()), sources, ignore)
}

/// Selects the entries that `sources` name under `root`, which holds `origin` (the name that
/// messages use), as COPY does.
///
/// - A source without wildcards names one path; a directory brings its contents (not itself),
///   so its entries land relative to the destination.
/// - A source with wildcards (`*`, `?`, `[…]`, per path component, as Go's `filepath.Match`)
///   names every match; a matched file lands under its own name, a matched directory brings
///   its contents.
/// - `.dockerignore` (`ignore`) and `--exclude` patterns remove entries; a source that is
///   excluded counts as missing.
/// - Files of one source that are hardlinks of each other stay linked ([`Entry::hardlink`]).
///
/// # Errors
/// [`ContextError::NotFound`] for a missing plain source, [`ContextError::NoMatch`] when no
/// source matches anything, and I/O errors with their paths.
pub fn select_from(
    root: &Path,
    origin: &Origin,
    sources: &[String],
    ignore: &Matcher,
) -> Result<Selection, ContextError> {
    let mut entries = EntryMap::new();
    let mut skipped = Vec::new();
    let mut any = false;
    for source in sources {
        let clean = clean_relative(source);
        let matches = if has_wildcard(&clean) {
            glob_paths(root, &clean)?
        } else {
            vec![PathBuf::from(&clean)]
        };
        let mut found = false;
        let mut mine = EntryMap::new();
        for rel in matches {
            if !rel.as_os_str().is_empty() && ignore.matches(&rel.to_string_lossy()) {
                continue;
            }
            let Some(resolved) = resolve_in_root(root, origin, &rel)? else {
                continue;
            };
            // Every link on the way was followed inside the root: this is the thing itself.
            let meta = fs_err::symlink_metadata(&resolved)?;
            found = true;
            let source = resolved
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if meta.is_dir() {
                walk_dir(
                    &resolved,
                    &source,
                    Path::new(""),
                    ignore,
                    &mut mine,
                    &mut skipped,
                )?;
            } else {
                let name = rel.file_name().map_or_else(|| rel.clone(), PathBuf::from);
                match entry_for(&resolved, &rel, &name, &meta)? {
                    Some(mut entry) => {
                        entry.source = source;
                        entry.named = true;
                        mine.insert(key_of(&entry), entry);
                    }
                    None => skipped.push(rel),
                }
            }
        }
        if !found && !has_wildcard(&clean) {
            return Err(ContextError::NotFound {
                origin: origin.clone(),
                path: source.clone(),
            });
        }
        link_hardlinks(&mut mine);
        entries.append(&mut mine);
        any |= found;
    }
    if !any {
        return Err(ContextError::NoMatch {
            origin: origin.clone(),
            pattern: sources.join(" "),
        });
    }
    Ok(Selection {
        entries: entries.into_values().collect(),
        skipped,
    })
}

/// Selects the entries that `sources` name under `root` for `COPY --parents`: each entry keeps
/// its path relative to the root, or to the pivot when the source holds one (`x/./y/a.txt`
/// lands as `y/a.txt`), as BuildKit's Dockerfile labs do.
///
/// - The part before the pivot may hold wildcards: each directory it matches is a pivot.
/// - The part after it is a pattern (with `**` for any number of directories): a matched
///   directory brings its whole tree, and the directories on the way to every match come too,
///   with their own modes.
/// - A source without wildcards that names nothing is an error; a wildcard may match nothing.
///
/// Every entry is unnamed, so the destination is always a directory.
///
/// # Errors
/// [`ContextError::NotFound`] for a missing plain source, [`ContextError::Pattern`] for a
/// malformed one, and I/O errors with their paths.
pub fn select_parents(
    root: &Path,
    origin: &Origin,
    sources: &[String],
    ignore: &Matcher,
) -> Result<Selection, ContextError> {
    let mut entries = EntryMap::new();
    let mut skipped = Vec::new();
    for source in sources {
        let (pivot, pattern) = match source.split_once("/./") {
            Some((pivot, pattern)) => (clean_relative(pivot), clean_relative(pattern)),
            None => (String::new(), clean_relative(source)),
        };
        let wild = has_wildcard(&pivot) || has_wildcard(&pattern);
        let pivots = if has_wildcard(&pivot) {
            glob_paths(root, &pivot)?
        } else {
            vec![PathBuf::from(&pivot)]
        };
        let mut mine = EntryMap::new();
        let mut found = false;
        for pivot_rel in pivots {
            let Some(pivot_abs) = resolve_in_root(root, origin, &pivot_rel)? else {
                continue;
            };
            if !fs_err::metadata(&pivot_abs).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let under = Pivot {
                root,
                origin,
                named: &pivot_rel,
                ignore,
            };
            let before = mine.len();
            if has_wildcard(&pattern) {
                under.select_pattern(&pattern, &mut mine, &mut skipped)?;
            } else {
                under.select_path(&pattern, &mut mine, &mut skipped)?;
            }
            found |= mine.len() > before;
        }
        if !found && !wild {
            return Err(ContextError::NotFound {
                origin: origin.clone(),
                path: source.clone(),
            });
        }
        link_hardlinks(&mut mine);
        entries.append(&mut mine);
    }
    Ok(Selection {
        entries: entries.into_values().collect(),
        skipped,
    })
}

/// One pivot directory of a `--parents` source.
struct Pivot<'a> {
    root: &'a Path,
    origin: &'a Origin,
    /// The pivot as named, relative to the root.
    named: &'a Path,
    ignore: &'a Matcher,
}

impl Pivot<'_> {
    /// A plain path under the pivot: the thing itself (a directory with its tree), and the
    /// directories on the way to it.
    fn select_path(
        &self,
        rel: &str,
        out: &mut EntryMap,
        skipped: &mut Vec<PathBuf>,
    ) -> Result<(), ContextError> {
        let named = self.named.join(rel);
        if !rel.is_empty() && self.ignore.matches(&named.to_string_lossy()) {
            return Ok(());
        }
        let Some(resolved) = resolve_in_root(self.root, self.origin, &named)? else {
            return Ok(());
        };
        self.add(&resolved, &named, Path::new(rel), out, skipped)?;
        self.add_parents(Path::new(rel), out)
    }

    /// A wildcard pattern under the pivot: every path that matches it, found by walking from
    /// the directory before its first wildcard.
    fn select_pattern(
        &self,
        pattern: &str,
        out: &mut EntryMap,
        skipped: &mut Vec<PathBuf>,
    ) -> Result<(), ContextError> {
        // A pattern is not a `.dockerignore` line: a leading `!` is a name, not an exception.
        let text = if pattern.starts_with('!') {
            format!("\\{pattern}")
        } else {
            pattern.to_owned()
        };
        let include = match Matcher::new([text.as_str()]) {
            Ok(include) => include,
            Err(hoist_parser::ignore::IgnoreError::InvalidPattern { reason, .. }) => {
                return Err(ContextError::Pattern {
                    pattern: pattern.to_owned(),
                    reason,
                });
            }
            // One pattern, not read from a file and never a lone `!`.
            Err(_) => return Ok(()),
        };
        let fixed: PathBuf = pattern
            .split('/')
            .take_while(|c| !has_wildcard(c))
            .map(unescape)
            .collect();
        // Without `**` nothing deeper than the pattern can match.
        let depth = (!pattern.split('/').any(|c| c == "**")).then(|| pattern.split('/').count());
        let Some(start) = resolve_in_root(self.root, self.origin, &self.named.join(&fixed))? else {
            return Ok(());
        };
        if !fs_err::metadata(&start).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let mut matched = Vec::new();
        self.walk_pattern(&start, &fixed, &include, depth, out, skipped, &mut matched)?;
        for rel in matched {
            self.add_parents(&rel, out)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // one recursive walk's state
    fn walk_pattern(
        &self,
        abs: &Path,
        rel: &Path,
        include: &Matcher,
        depth: Option<usize>,
        out: &mut EntryMap,
        skipped: &mut Vec<PathBuf>,
        matched: &mut Vec<PathBuf>,
    ) -> Result<(), ContextError> {
        if depth.is_some_and(|d| rel.components().count() >= d) {
            return Ok(());
        }
        let mut children: Vec<_> = fs_err::read_dir(abs)?.collect::<Result<_, _>>()?;
        children.sort_by_key(fs_err::DirEntry::file_name);
        for child in children {
            let child_rel = rel.join(child.file_name());
            let named = self.named.join(&child_rel);
            let meta = child.metadata()?;
            if include.matches(&child_rel.to_string_lossy()) {
                if self.ignore.matches(&named.to_string_lossy()) {
                    continue;
                }
                self.add(&child.path(), &named, &child_rel, out, skipped)?;
                matched.push(child_rel);
            } else if meta.is_dir()
                && self.ignore.dir_decision(&named.to_string_lossy()) != DirDecision::Excluded
            {
                self.walk_pattern(
                    &child.path(),
                    &child_rel,
                    include,
                    depth,
                    out,
                    skipped,
                    matched,
                )?;
            }
        }
        Ok(())
    }

    /// The entry at `abs` (named `named`), landing at `dest`, with its tree if it is a
    /// directory.
    fn add(
        &self,
        abs: &Path,
        named: &Path,
        dest: &Path,
        out: &mut EntryMap,
        skipped: &mut Vec<PathBuf>,
    ) -> Result<(), ContextError> {
        let meta = fs_err::symlink_metadata(abs)?;
        let source = abs
            .strip_prefix(self.root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if meta.is_dir() {
            if !dest.as_os_str().is_empty()
                && let Some(mut entry) = entry_for(abs, &source, dest, &meta)?
            {
                entry.path = named.to_path_buf();
                out.insert(key_of(&entry), entry);
            }
            return walk_dir(abs, &source, dest, self.ignore, out, skipped);
        }
        match entry_for(abs, named, dest, &meta)? {
            Some(mut entry) => {
                entry.source = source;
                out.insert(key_of(&entry), entry);
            }
            None => skipped.push(named.to_path_buf()),
        }
        Ok(())
    }

    /// The directories between the pivot and `dest`, each with its own mode.
    fn add_parents(&self, dest: &Path, out: &mut EntryMap) -> Result<(), ContextError> {
        let mut parent = dest.parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let named = self.named.join(dir);
            if let Some(abs) = resolve_in_root(self.root, self.origin, &named)? {
                let meta = fs_err::symlink_metadata(&abs)?;
                if let Some(mut entry) = entry_for(&abs, &named, dir, &meta)? {
                    entry.source = abs
                        .strip_prefix(self.root)
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    out.entry(key_of(&entry)).or_insert(entry);
                }
            }
            parent = dir.parent();
        }
        Ok(())
    }
}

impl Entry {
    /// The (device, inode) of a regular file as selected, to check that what is opened later
    /// is that file.
    pub(crate) fn file_id(&self) -> Option<(u64, u64)> {
        self.stat.as_ref().map(|s| (s.dev, s.ino))
    }
}

fn key_of(entry: &Entry) -> (Vec<u8>, Vec<u8>) {
    (bytes(&entry.dest).to_vec(), bytes(&entry.path).to_vec())
}

/// Marks each regular file that an earlier entry also is (same device and inode) as a hardlink
/// of that entry.
fn link_hardlinks(entries: &mut EntryMap) {
    let mut first: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for entry in entries.values_mut() {
        let Some(stat) = entry.stat.as_ref().filter(|_| entry.nlink > 1) else {
            continue;
        };
        match first.entry((stat.dev, stat.ino)) {
            std::collections::hash_map::Entry::Occupied(target) => {
                entry.hardlink = Some(target.get().clone());
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(entry.dest.clone());
            }
        }
    }
}

/// The entry for `abs`, whose own (not followed) metadata is `meta`; `None` for a socket.
fn entry_for(
    abs: &Path,
    rel: &Path,
    dest: &Path,
    meta: &std::fs::Metadata,
) -> Result<Option<Entry>, ContextError> {
    let ft = meta.file_type();
    let device = || {
        let dev = meta.rdev();
        (rustix::fs::major(dev), rustix::fs::minor(dev))
    };
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink {
            target: fs_err::read_link(abs)?,
        }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_char_device() {
        let (major, minor) = device();
        EntryKind::CharDevice { major, minor }
    } else if ft.is_block_device() {
        let (major, minor) = device();
        EntryKind::BlockDevice { major, minor }
    } else {
        return Ok(None);
    };
    Ok(Some(Entry {
        path: rel.to_path_buf(),
        source: rel.to_path_buf(),
        dest: dest.to_path_buf(),
        kind,
        mode: meta.mode() & 0o7777,
        size: if ft.is_file() { meta.len() } else { 0 },
        mtime: meta.mtime(),
        hardlink: None,
        stat: ft.is_file().then(|| StatKey::of(meta)),
        nlink: meta.nlink(),
        named: false,
    }))
}

/// Walks a directory's contents (symlinks inside are kept as symlinks).
fn walk_dir(
    abs: &Path,
    rel: &Path,
    dest: &Path,
    ignore: &Matcher,
    out: &mut EntryMap,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), ContextError> {
    let mut children: Vec<_> = fs_err::read_dir(abs)?.collect::<Result<_, _>>()?;
    children.sort_by_key(fs_err::DirEntry::file_name);
    for child in children {
        let name = child.file_name();
        let child_rel = rel.join(&name);
        let child_dest = dest.join(&name);
        // Patterns are text; a name that is not UTF-8 matches as its lossy form.
        let rel_text = child_rel.to_string_lossy();
        // fstatat on the open directory, not following a link: no walk of the whole path.
        let meta = child.metadata()?;
        let child_abs = child.path();
        if meta.is_dir() {
            let entry = || {
                entry_for(&child_abs, &child_rel, &child_dest, &meta)
                    .map(|e| e.map(|e| (key_of(&e), e)))
            };
            match ignore.dir_decision(&rel_text) {
                DirDecision::Excluded => continue,
                DirDecision::Included => {
                    out.extend(entry()?);
                    walk_dir(&child_abs, &child_rel, &child_dest, ignore, out, skipped)?;
                }
                DirDecision::MustDescend => {
                    let before = out.len();
                    walk_dir(&child_abs, &child_rel, &child_dest, ignore, out, skipped)?;
                    if out.len() > before {
                        out.extend(entry()?);
                    }
                }
            }
        } else if !ignore.matches(&rel_text) {
            match entry_for(&child_abs, &child_rel, &child_dest, &meta)? {
                Some(entry) => {
                    out.insert(key_of(&entry), entry);
                }
                None => skipped.push(child_rel),
            }
        }
    }
    Ok(())
}

/// Cleans a source path to a relative one: `/`, `.` and `..` never leave the root.
#[must_use]
pub fn clean_relative(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn has_wildcard(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// A path walked through its symlinks by [`follow_links`].
pub(crate) struct Followed {
    /// The path reached, relative to the root.
    pub(crate) path: PathBuf,
    /// Some component did not exist: the walk stopped there, or (with `keep_going`) kept
    /// the rest of the path as written.
    pub(crate) missing: bool,
}

/// Why [`follow_links`] stopped.
pub(crate) enum FollowError {
    /// More than [`MAX_LINKS`] symlinks on the way: a loop, or a chain too deep.
    TooDeep,
    Io(std::io::Error),
}

fn join_parts(parts: &[Vec<u8>]) -> PathBuf {
    PathBuf::from(OsString::from_vec(parts.join(&b'/')))
}

fn split_parts(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|b| *b == b'/').filter(|p| !p.is_empty())
}

/// Walks `rel` inside `root` component by component, following every symlink it meets, but
/// inside the root only: an absolute target restarts at the root and `..` stops there. A
/// component whose lookup fails with an error `missing_ok` accepts is missing: the walk stops
/// there, or with `keep_going` takes it as written and goes on.
pub(crate) fn follow_links(
    root: &Path,
    rel: &Path,
    missing_ok: impl Fn(&std::io::Error) -> bool,
    keep_going: bool,
) -> Result<Followed, FollowError> {
    let mut pending: Vec<Vec<u8>> = split_parts(bytes(rel)).rev().map(<[u8]>::to_vec).collect();
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut missing = false;
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_slice() {
            b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root
            .join(join_parts(&resolved))
            .join(OsStr::from_bytes(&part));
        let meta = match fs_err::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if missing_ok(&e) => {
                missing = true;
                resolved.push(part);
                if keep_going {
                    continue;
                }
                break;
            }
            Err(e) => return Err(FollowError::Io(e)),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(FollowError::TooDeep);
        }
        let target = fs_err::read_link(&candidate).map_err(FollowError::Io)?;
        let target = bytes(&target);
        if target.starts_with(b"/") {
            // An absolute link is read as relative to the root: it cannot leave it.
            resolved.clear();
        }
        pending.extend(split_parts(target).rev().map(<[u8]>::to_vec));
    }
    Ok(Followed {
        path: join_parts(&resolved),
        missing,
    })
}

/// Resolves a relative path inside `root`, following symlinks only while they stay inside.
/// `None` when a component does not exist.
fn resolve_in_root(
    root: &Path,
    origin: &Origin,
    rel: &Path,
) -> Result<Option<PathBuf>, ContextError> {
    match follow_links(
        root,
        rel,
        |e| e.kind() == std::io::ErrorKind::NotFound,
        false,
    ) {
        Ok(Followed { missing: true, .. }) => Ok(None),
        Ok(Followed { path, .. }) => Ok(Some(root.join(path))),
        Err(FollowError::TooDeep) => Err(ContextError::LinkLoop {
            origin: origin.clone(),
            path: rel.to_string_lossy().into_owned(),
        }),
        Err(FollowError::Io(e)) => Err(ContextError::Io(e)),
    }
}

/// Expands a wildcard source into the relative paths it matches, component by component, each
/// wildcard component matched with Go's `filepath.Match` against the names of a directory.
fn glob_paths(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, ContextError> {
    let mut current = vec![PathBuf::new()];
    for component in pattern.split('/') {
        let mut next = Vec::new();
        if !has_wildcard(component) {
            let name = unescape(component);
            for base in &current {
                let candidate = base.join(&name);
                if fs_err::symlink_metadata(root.join(&candidate)).is_ok() {
                    next.push(candidate);
                }
            }
            current = next;
            continue;
        }
        // Compiled before any directory is read: a malformed pattern is an error even where
        // nothing is there to match it.
        let matcher = PathPattern::new(component).map_err(|reason| ContextError::Pattern {
            pattern: pattern.to_owned(),
            reason,
        })?;
        for base in &current {
            let Ok(read) = fs_err::read_dir(root.join(base)) else {
                continue;
            };
            let mut names: Vec<OsString> =
                read.filter_map(Result::ok).map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                // Patterns are text; a name that is not UTF-8 matches as its lossy form.
                if matcher.matches(&name.to_string_lossy()) {
                    next.push(base.join(&name));
                }
            }
        }
        current = next;
    }
    Ok(current)
}

fn unescape(component: &str) -> String {
    let mut out = String::new();
    let mut chars = component.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A file's identity as the stat cache compares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl StatKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Clone, Debug)]
struct StatEntry {
    stat: StatKey,
    digest: String,
    /// When the digest was taken (ns since the epoch): just before the file was opened.
    recorded_ns: i128,
}

/// Remembers file digests by stat, so that an unchanged context is not read again.
///
/// One cache serves every content key of its context at once (two COPY sources of a build,
/// or two builds in one process): it is locked to look a selection's stats up and to record
/// what was hashed, never while a file is read.
#[derive(Debug, Default)]
pub struct StatCache {
    known: Mutex<Known>,
}

/// What a [`StatCache`] holds behind its lock.
#[derive(Debug, Default)]
struct Known {
    entries: HashMap<String, StatEntry>,
    dirty: bool,
    /// Keys added or changed since the load, in order: a save appends just these when it can.
    changed: Vec<String>,
    /// Entry lines of the file as loaded (an appended key is there twice), or `None` when
    /// nothing valid was loaded.
    file_lines: Option<usize>,
}

/// The first line of a stat cache file; a file with another (an older format) is ignored.
const STAT_CACHE_HEADER: &str = "hoist stat cache v2";

/// Writes one entry line (see [`StatCache::load`]). A name with a newline cannot be a line of
/// its own: it is left out, and hashed every time.
fn push_stat_line(text: &mut String, key: &str, e: &StatEntry) {
    if key.contains('\n') {
        return;
    }
    let k = &e.stat;
    let _ = writeln!(
        text,
        "{} {} {} {} {} {} {} {key}",
        k.size, k.mtime_ns, k.ctime_ns, k.ino, k.dev, e.recorded_ns, e.digest
    );
}

/// One entry line of a stat cache file (see [`StatCache::load`]).
fn parse_stat_line(line: &str) -> Option<(&str, StatEntry)> {
    let mut fields = line.splitn(8, ' ');
    let mut next = || fields.next();
    let size = next()?.parse().ok()?;
    let mtime_ns = next()?.parse().ok()?;
    let ctime_ns = next()?.parse().ok()?;
    let ino = next()?.parse().ok()?;
    let dev = next()?.parse().ok()?;
    let recorded_ns = next()?.parse().ok()?;
    let digest = next()?;
    let key = next()?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || key.is_empty() {
        return None;
    }
    Some((
        key,
        StatEntry {
            stat: StatKey {
                size,
                mtime_ns,
                ctime_ns,
                ino,
                dev,
            },
            digest: digest.to_owned(),
            recorded_ns,
        },
    ))
}

/// Files whose timestamps are this close to the moment their digest was taken are hashed
/// again: filesystems with coarse timestamps (ext4 keeps ns, others 1 s or 2 s) could hide a
/// change made in the same tick. Two seconds covers FAT's 2 s tick.
const RACY_WINDOW_NS: i128 = 2_000_000_000;

impl Known {
    /// The digest recorded for `key`, when `stat` proves the file unchanged since. A key that
    /// is not UTF-8 has no line in the cache file, and so is never known.
    fn lookup(&self, key: Option<&str>, stat: &StatKey) -> Option<&str> {
        let hit = self.entries.get(key?)?;
        (hit.stat == *stat && hit.recorded_ns - stat.mtime_ns.max(stat.ctime_ns) > RACY_WINDOW_NS)
            .then_some(hit.digest.as_str())
    }

    fn record(&mut self, key: &str, entry: StatEntry) {
        self.entries.insert(key.to_owned(), entry);
        self.changed.push(key.to_owned());
        self.dirty = true;
    }

    /// The text a save writes, and whether it is appended to the file as loaded; `None` when
    /// nothing changed.
    fn to_save(&self) -> Option<(String, bool)> {
        if !self.dirty {
            return None;
        }
        // A few changes (a touch, an edit) are appended to the file as it was loaded; the file
        // is written anew once appended lines would make up half of it.
        if let Some(lines) = self.file_lines
            && (lines + self.changed.len()) < 2 * self.entries.len().max(1)
        {
            // Starting with a newline ends whatever a killed writer left half-written; the
            // empty line it may make is skipped on load.
            let mut text = String::from("\n");
            for key in &self.changed {
                if let Some(e) = self.entries.get(key) {
                    push_stat_line(&mut text, key, e);
                }
            }
            return Some((text, true));
        }
        let mut text = String::with_capacity(self.entries.len() * 120);
        text.push_str(STAT_CACHE_HEADER);
        text.push('\n');
        for (key, e) in &self.entries {
            push_stat_line(&mut text, key, e);
        }
        Some((text, false))
    }
}

impl StatCache {
    /// Loads a cache file; a missing or unreadable one is an empty cache (it is only a cache),
    /// and so is a line that does not parse.
    ///
    /// The file is text, a header line and then one entry a line (parsing 5,000 entries of
    /// JSON took a few milliseconds of every build): `size mtime_ns ctime_ns ino dev
    /// recorded_ns digest path`, the path last so that it may hold spaces.
    #[must_use]
    pub fn load(path: &Path) -> Self {
        let mut known = Known::default();
        let Ok(text) = fs_err::read_to_string(path) else {
            return Self::default();
        };
        let mut lines = text.lines();
        if lines.next() != Some(STAT_CACHE_HEADER) {
            return Self::default();
        }
        let mut count = 0;
        for line in lines {
            count += 1;
            // A later line of a key wins: saves append changed entries.
            if let Some((key, entry)) = parse_stat_line(line) {
                known.entries.insert(key.to_owned(), entry);
            }
        }
        known.file_lines = Some(count);
        Self {
            known: Mutex::new(known),
        }
    }

    /// The lock is held only for lookups and records, which cannot panic half-way through a
    /// change; a poisoned lock (a panic elsewhere on that thread) still holds a sound cache.
    fn lock(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the cache, if anything changed: new entries are appended to the file as it was
    /// loaded, or the whole cache replaces it atomically, through a temporary file of its own
    /// (hoist processes that share a state root may save the same cache at once).
    ///
    /// # Errors
    /// I/O errors naming the path.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        // The text is made under the lock; the file is written without it.
        let Some((text, append)) = self.lock().to_save() else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fs_err::create_dir_all(dir)?;
        if append {
            let mut file = fs_err::File::options().append(true).open(path)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            return Ok(());
        }
        let failed = |path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| ContextError::Save { path, source }
        };
        let mut prefix = OsString::from(".");
        prefix.push(path.file_name().unwrap_or(OsStr::new("stat-cache")));
        prefix.push(".");
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(failed(dir))?;
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(failed(tmp.path()))?;
        tmp.persist(path).map_err(|e| failed(path)(e.error))?;
        Ok(())
    }

    /// The sha256 (hex) of a file's content, from the cache when its stat proves it unchanged.
    ///
    /// # Errors
    /// I/O errors naming the path; a path that is not a regular file is one.
    pub fn file_digest(&self, abs: &Path, key: &str) -> Result<String, ContextError> {
        self.file_digest_with_stat(abs, key, &fs_err::symlink_metadata(abs)?)
    }

    /// [`StatCache::file_digest`] with the file's stat already taken (by a walk that read
    /// its directory): an unchanged file then costs no system call at all.
    ///
    /// # Errors
    /// As [`StatCache::file_digest`].
    pub fn file_digest_with_stat(
        &self,
        abs: &Path,
        key: &str,
        meta: &std::fs::Metadata,
    ) -> Result<String, ContextError> {
        let stat = StatKey::of(meta);
        if let Some(digest) = self.lock().lookup(Some(key), &stat) {
            return Ok(digest.to_owned());
        }
        let mut buf = vec![0u8; HASH_BUF];
        let (digest, recorded_ns) = hash_file(abs, (stat.dev, stat.ino), &mut buf)?;
        self.lock().record(
            key,
            StatEntry {
                stat,
                digest: digest.clone(),
                recorded_ns,
            },
        );
        Ok(digest)
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// The read buffer of one hashing thread.
const HASH_BUF: usize = 256 * 1024;

/// The sha256 (hex) of the regular file at `path`, and the moment just before it was opened,
/// which the stat cache records: a change made while the file is read is then within the racy
/// window of the next build, whatever the filesystem's timestamp tick. The file must be the
/// file `id` (device, inode) that the selection saw: anything else in its place is an error,
/// and is never opened. Holes are hashed as the zeros they read as, without reading them.
fn hash_file(path: &Path, id: (u64, u64), buf: &mut [u8]) -> Result<(String, i128), ContextError> {
    let read_err = |source| ContextError::Read {
        path: path.to_path_buf(),
        source,
    };
    let recorded_ns = now_ns();
    let file = open_regular(path, Some(id)).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mut file = SparseReader::new(file, &meta);
    let mut hasher = Sha256::new();
    loop {
        let n = file.read(buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), recorded_ns))
}

/// A selection's content key, and what computing it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentKey {
    /// `sha256:` and the hex digest.
    pub key: String,
    /// Files read and hashed: new, changed, or changed too recently to trust their stat. The
    /// others were known by their stat.
    pub files_read: u64,
    /// Their bytes (their sizes as selected).
    pub bytes_read: u64,
    /// The content digest (hex sha256) of each selected regular file, by entry index of the
    /// selection; `None` for other entries and for hardlinks. Kept so that a step that misses
    /// the cache can name the files that changed without reading them again.
    pub file_digests: Vec<Option<String>>,
}

/// A selected file that its stat does not vouch for: it is read.
struct Miss<'s> {
    abs: PathBuf,
    source: &'s Path,
    stat: StatKey,
}

/// The digest of every selected regular file (by entry index; `None` for other entries and
/// for hardlinks): known ones from the cache, the others read in parallel, with the cache
/// locked only to look them up and to record them.
fn file_digests(
    root: &Path,
    selection: &Selection,
    cache: &StatCache,
    read: &mut ContentKey,
) -> Result<Vec<Option<String>>, ContextError> {
    let entries = &selection.entries;
    let mut stats = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.kind != EntryKind::File || entry.hardlink.is_some() {
            continue;
        }
        let stat = match &entry.stat {
            Some(stat) => stat.clone(),
            None => StatKey::of(&fs_err::symlink_metadata(root.join(&entry.source))?),
        };
        stats.push((i, stat));
    }

    let mut digests = vec![None; entries.len()];
    let mut misses: Vec<Miss<'_>> = Vec::new();
    // Entries whose digest is a miss's (by index): a file that two sources select is read once.
    let mut waiting: Vec<(usize, usize)> = Vec::new();
    {
        let known = cache.lock();
        let mut first: HashMap<(&Path, &StatKey), usize> = HashMap::new();
        for (i, stat) in &stats {
            let source = entries[*i].source.as_path();
            if let Some(digest) = known.lookup(source.to_str(), stat) {
                digests[*i] = Some(digest.to_owned());
                continue;
            }
            let miss = *first.entry((source, stat)).or_insert_with(|| {
                misses.push(Miss {
                    abs: root.join(source),
                    source,
                    stat: stat.clone(),
                });
                misses.len() - 1
            });
            waiting.push((*i, miss));
        }
    }

    let hash = |buf: &mut Vec<u8>, miss: &Miss<'_>| {
        hash_file(&miss.abs, (miss.stat.dev, miss.stat.ino), buf)
    };
    // One file is read on this thread: no hop to the pool for the common one-file change.
    let hashed: Vec<_> = if misses.len() > 1 {
        misses
            .par_iter()
            .map_init(|| vec![0u8; HASH_BUF], hash)
            .collect()
    } else {
        let mut buf = vec![0u8; HASH_BUF];
        misses.iter().map(|miss| hash(&mut buf, miss)).collect()
    };

    let mut read_digests = Vec::with_capacity(misses.len());
    let mut failed = None;
    {
        let mut known = cache.lock();
        for (miss, result) in misses.iter().zip(hashed) {
            match result {
                Ok((digest, recorded_ns)) => {
                    read.files_read += 1;
                    read.bytes_read += miss.stat.size;
                    if let Some(key) = miss.source.to_str() {
                        known.record(
                            key,
                            StatEntry {
                                stat: miss.stat.clone(),
                                digest: digest.clone(),
                                recorded_ns,
                            },
                        );
                    }
                    read_digests.push(Some(digest));
                }
                Err(e) => {
                    // The first failure in selection order is the one reported, as if the
                    // files had been read one by one.
                    failed.get_or_insert(e);
                    read_digests.push(None);
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    for (i, miss) in waiting {
        digests[i].clone_from(&read_digests[miss]);
    }
    Ok(digests)
}

/// The content key of a selection: sha256 over every entry's destination path, source path,
/// permission bits, and kind with what the kind holds: a file's content digest, a link's
/// target, a device's numbers, or for a hardlink the entry it links to. Sizes are implied by
/// content; mtimes, owners, inodes and the root's own path are left out on purpose.
///
/// Files are read in parallel (rayon), and only those whose stat the cache does not vouch
/// for; the cache is not locked while they are read, so other keys of the same context are
/// computed meanwhile.
///
/// # Errors
/// I/O errors naming the path.
pub fn content_key(
    root: &Path,
    selection: &Selection,
    cache: &StatCache,
) -> Result<ContentKey, ContextError> {
    let mut out = ContentKey {
        key: String::new(),
        files_read: 0,
        bytes_read: 0,
        file_digests: Vec::new(),
    };
    let digests = file_digests(root, selection, cache, &mut out)?;
    let mut hasher = Sha256::new();
    hasher.update(b"hoist.context.v1\0");
    for (entry, digest) in selection.entries.iter().zip(&digests) {
        hasher.update(bytes(&entry.dest));
        hasher.update(b"\0");
        hasher.update(bytes(&entry.path));
        hasher.update(b"\0");
        hasher.update(format!("{:o}\0", entry.mode).as_bytes());
        if let Some(target) = &entry.hardlink {
            hasher.update(b"hardlink\0");
            hasher.update(bytes(target));
            hasher.update(b"\0");
            continue;
        }
        match &entry.kind {
            EntryKind::Dir => hasher.update(b"dir\0"),
            EntryKind::Symlink { target } => {
                hasher.update(b"link\0");
                hasher.update(bytes(target));
                hasher.update(b"\0");
            }
            EntryKind::Fifo => hasher.update(b"fifo\0"),
            EntryKind::CharDevice { major, minor } => {
                hasher.update(format!("char\0{major}:{minor}\0").as_bytes());
            }
            EntryKind::BlockDevice { major, minor } => {
                hasher.update(format!("block\0{major}:{minor}\0").as_bytes());
            }
            EntryKind::File => {
                hasher.update(b"file\0");
                hasher.update(digest.as_deref().unwrap_or_default().as_bytes());
                hasher.update(b"\0");
            }
        }
    }
    out.key = format!("sha256:{}", hex::encode(hasher.finalize()));
    out.file_digests = digests;
    Ok(out)
}
