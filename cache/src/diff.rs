//! Diffs to layers: an overlay upperdir, or an explicit change list, written as a deterministic
//! OCI layer tar and compressed in the same streaming pass.
//!
//! Determinism: entries are sorted by their tar name within each directory (a directory comes
//! before its contents, an opaque marker right after its directory), headers are normalized by
//! [`crate::tarwriter`], and mtimes can be clamped to `SOURCE_DATE_EPOCH`
//! (<https://reproducible-builds.org/specs/source-date-epoch/>). The same tree therefore gives
//! the same diffID and, for a fixed codec and level, the same blob digest.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::apply::{OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::compress::{CompressionOptions, LayerDigests, LayerWriter};
use crate::regular::{SparseReader, open_owned};
use crate::store::{BlobStore, StoreError};
use crate::tarwriter::{TarHeader, TarKind, TarWriter};

/// Options for writing a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// Codec, level and threads.
    pub compression: CompressionOptions,
    /// When set, mtimes later than this (seconds since the epoch) are clamped to it.
    pub source_date_epoch: Option<i64>,
}

/// One change of a COPY-like step, by path relative to the snapshot root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// The path was added or modified: its current state under the root goes in the layer.
    /// A directory contributes only its own entry; list its contents as changes too.
    Upsert(PathBuf),
    /// The path was deleted: the layer gets a whiteout for it.
    Delete(PathBuf),
}

/// Errors of writing a layer.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Reading the source tree failed.
    #[error("read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing the tar or the compressed stream failed.
    #[error("write layer entry for {path}")]
    Write {
        /// The source file being archived.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Finishing the compressed stream failed.
    #[error("finish layer stream")]
    Finish {
        /// The cause.
        source: io::Error,
    },
    /// A change names a path that is absolute or climbs with `..`.
    #[error("change path {path} is not a plain relative path")]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// The upperdir holds an overlay redirect or metacopy entry, whose content lives in a lower
    /// layer: a diff would silently lose it.
    #[error(
        "{path} carries {xattr}; mount the overlay with redirect_dir=off,metacopy=off to diff it"
    )]
    OverlayFeature {
        /// The entry.
        path: PathBuf,
        /// The xattr found.
        xattr: String,
    },
    /// Storing the layer blob failed.
    #[error("store layer blob")]
    Store(#[from] StoreError),
}

/// Writes the changes recorded in an overlay `upper` directory as an OCI layer into `out`.
/// Overlay whiteouts (0/0 character devices) become `.wh.<name>` entries and opaque
/// directories (`trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry.
///
/// # Errors
/// Reading the tree or writing the stream fails.
pub fn diff_upperdir<W: Write + Send + 'static>(
    upper: &Path,
    out: W,
    options: &DiffOptions,
) -> Result<(W, LayerDigests), DiffError> {
    let mut d = Differ::new(out, options)?;
    d.walk(upper, &[])?;
    d.finish()
}

/// Writes an explicit change list as an OCI layer into `out`, reading upserted paths from
/// `root`. Paths are sorted and deduplicated, so the order of `changes` does not matter.
///
/// # Errors
/// A path is not relative and plain, or reading and writing fail.
pub fn diff_changes<W: Write + Send + 'static>(
    root: &Path,
    changes: &[Change],
    out: W,
    options: &DiffOptions,
) -> Result<(W, LayerDigests), DiffError> {
    let mut items: Vec<(Vec<u8>, bool, PathBuf)> = Vec::with_capacity(changes.len());
    for change in changes {
        let (path, delete) = match change {
            Change::Upsert(p) => (p, false),
            Change::Delete(p) => (p, true),
        };
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                std::path::Component::Normal(s) => parts.push(s.as_bytes()),
                std::path::Component::CurDir => {}
                _ => return Err(DiffError::InvalidPath { path: path.clone() }),
            }
        }
        let Some((name, dir)) = parts.split_last() else {
            return Err(DiffError::InvalidPath { path: path.clone() });
        };
        let mut tar_name = dir.join(&b'/');
        if !tar_name.is_empty() {
            tar_name.push(b'/');
        }
        if delete {
            tar_name.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
        }
        tar_name.extend_from_slice(name);
        items.push((tar_name, delete, root.join(path)));
    }
    // Sort by path components, so a directory precedes its contents ("a" < "a/b" < "a.b").
    items.sort_by(|a, b| a.0.split(|c| *c == b'/').cmp(b.0.split(|c| *c == b'/')));
    items.dedup_by(|a, b| a.0 == b.0);
    let mut d = Differ::new(out, options)?;
    for (tar_name, delete, src) in items {
        if delete {
            d.whiteout(&tar_name, &src, None)?;
        } else {
            let meta = fs_err::symlink_metadata(&src).map_err(|source| DiffError::Read {
                path: src.clone(),
                source,
            })?;
            d.entry(&tar_name, &src, &meta)?;
        }
    }
    d.finish()
}

/// The diffID (sha256 of the uncompressed layer tar) of an upperdir, without storing a blob.
///
/// A build records only this; the compressed blob is made from the same directory when the
/// image is exported or pushed ([`store_upperdir_layer`]), and the walk is deterministic, so
/// both passes see the same tar.
///
/// # Errors
/// As [`diff_upperdir`].
pub fn upperdir_diff_id(
    upper: &Path,
    source_date_epoch: Option<i64>,
) -> Result<oci_spec::image::Digest, DiffError> {
    let options = DiffOptions {
        compression: CompressionOptions::new(crate::Compression::None),
        source_date_epoch,
    };
    let (_, digests) = diff_upperdir(upper, io::sink(), &options)?;
    Ok(digests.diff_id)
}

/// Sets every mtime (and atime) under `dir`, and `dir`'s own, that is later than `epoch` to
/// `epoch`, without following symlinks, as BuildKit's `rewrite-timestamp` does. Done on the
/// snapshot itself, every tar ever made of it carries the clamped times, whichever build makes
/// its blob.
///
/// # Errors
/// A directory cannot be listed or a time cannot be set; the error names the path.
pub fn clamp_mtimes(dir: &Path, epoch: i64) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    use std::os::unix::fs::MetadataExt;
    let at = Timespec {
        tv_sec: epoch,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: at,
        last_modification: at,
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in fs_err::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
        if meta.mtime() > epoch || (meta.mtime() == epoch && meta.mtime_nsec() > 0) {
            utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!(
                        "set the mtime of {} to SOURCE_DATE_EPOCH: {e}",
                        path.display()
                    ),
                )
            })?;
        }
    }
    Ok(())
}

/// Writes a layer from an upperdir straight into the content store; returns its digests.
///
/// # Errors
/// As [`diff_upperdir`], or storing the blob fails.
pub fn store_upperdir_layer(
    store: &BlobStore,
    upper: &Path,
    options: &DiffOptions,
) -> Result<LayerDigests, DiffError> {
    let w = store.writer_unverified()?;
    let (w, digests) = diff_upperdir(upper, w, options)?;
    w.commit()?;
    Ok(digests)
}

/// Writes the layer of blob `digest` of the store again, compressed as `options` says
/// (`-o force-compression=true`), into the store; returns its digests. The uncompressed tar is
/// copied byte for byte, so its diffID is the layer's.
///
/// # Errors
/// The blob cannot be read or decompressed, or storing the new one fails.
pub fn store_recompressed_layer(
    store: &BlobStore,
    digest: &oci_spec::image::Digest,
    options: &DiffOptions,
) -> Result<LayerDigests, DiffError> {
    let path = PathBuf::from(digest.to_string());
    let read = |source| DiffError::Read {
        path: path.clone(),
        source,
    };
    let blob = store.open(digest).map_err(|e| read(io::Error::other(e)))?;
    let (_, mut tar) = crate::compress::decompress(blob).map_err(read)?;
    let mut layer = LayerWriter::new(store.writer_unverified()?, &options.compression)
        .map_err(|source| DiffError::Finish { source })?;
    io::copy(&mut tar, &mut layer).map_err(read)?;
    let (w, digests) = layer
        .finish()
        .map_err(|source| DiffError::Finish { source })?;
    w.commit()?;
    Ok(digests)
}

/// Writes a layer from a change list straight into the content store; returns its digests.
///
/// # Errors
/// As [`diff_changes`], or storing the blob fails.
pub fn store_changes_layer(
    store: &BlobStore,
    root: &Path,
    changes: &[Change],
    options: &DiffOptions,
) -> Result<LayerDigests, DiffError> {
    let w = store.writer_unverified()?;
    let (w, digests) = diff_changes(root, changes, w, options)?;
    w.commit()?;
    Ok(digests)
}

struct Differ<W: Write + Send + 'static> {
    tar: TarWriter<LayerWriter<W>>,
    epoch: Option<i64>,
    /// First tar name seen for each (device, inode) with more than one link.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write + Send + 'static> Differ<W> {
    fn new(out: W, options: &DiffOptions) -> Result<Self, DiffError> {
        let lw = LayerWriter::new(out, &options.compression)
            .map_err(|source| DiffError::Finish { source })?;
        Ok(Self {
            tar: TarWriter::new(lw),
            epoch: options.source_date_epoch,
            links: HashMap::new(),
        })
    }
}

impl<W: Write + Send + 'static> Differ<W> {
    fn finish(self) -> Result<(W, LayerDigests), DiffError> {
        let lw = self
            .tar
            .finish()
            .map_err(|source| DiffError::Finish { source })?;
        lw.finish().map_err(|source| DiffError::Finish { source })
    }

    fn mtime(&self, meta: &std::fs::Metadata) -> i64 {
        let m = meta.mtime();
        self.epoch.map_or(m, |e| m.min(e))
    }

    fn walk(&mut self, dir: &Path, rel: &[u8]) -> Result<(), DiffError> {
        let mut children: Vec<(Vec<u8>, PathBuf, std::fs::Metadata)> = Vec::new();
        let rd = fs_err::read_dir(dir).map_err(|source| DiffError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        for ent in rd {
            let ent = ent.map_err(|source| DiffError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = ent.path();
            let meta = fs_err::symlink_metadata(&path).map_err(|source| DiffError::Read {
                path: path.clone(),
                source,
            })?;
            let name = ent.file_name().as_bytes().to_vec();
            let tar_base = if is_overlay_whiteout(&meta) {
                [WHITEOUT_PREFIX.as_bytes(), &name].concat()
            } else {
                name
            };
            children.push((tar_base, path, meta));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (base, path, meta) in children {
            let mut tar_name = rel.to_vec();
            if !tar_name.is_empty() {
                tar_name.push(b'/');
            }
            tar_name.extend_from_slice(&base);
            if is_overlay_whiteout(&meta) {
                self.whiteout(&tar_name, &path, Some(&meta))?;
                continue;
            }
            self.entry(&tar_name, &path, &meta)?;
            if meta.is_dir() {
                self.walk(&path, &tar_name)?;
            }
        }
        Ok(())
    }

    /// A whiteout entry: an empty regular file owned by root, mode 0.
    fn whiteout(
        &mut self,
        tar_name: &[u8],
        src: &Path,
        meta: Option<&std::fs::Metadata>,
    ) -> Result<(), DiffError> {
        let header = TarHeader {
            path: tar_name.to_vec(),
            kind: TarKind::File { size: 0 },
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: meta.map_or(self.epoch.unwrap_or(0), |m| self.mtime(m)),
            xattrs: Vec::new(),
        };
        self.tar
            .append(&header, Some(&mut io::empty()))
            .map_err(|source| DiffError::Write {
                path: src.to_path_buf(),
                source,
            })
    }

    fn entry(
        &mut self,
        tar_name: &[u8],
        src: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<(), DiffError> {
        let ft = meta.file_type();
        let read_err = |source: io::Error| DiffError::Read {
            path: src.to_path_buf(),
            source,
        };
        let xattrs = read_xattrs(src).map_err(read_err)?;
        for (k, _) in &xattrs {
            if k.as_slice() == b"trusted.overlay.redirect"
                || k.as_slice() == b"trusted.overlay.metacopy"
            {
                return Err(DiffError::OverlayFeature {
                    path: src.to_path_buf(),
                    xattr: String::from_utf8_lossy(k).into_owned(),
                });
            }
        }
        let opaque = ft.is_dir()
            && xattrs.iter().any(|(k, v)| {
                k.as_slice() == OVERLAY_OPAQUE_XATTR.as_bytes() && v.as_slice() == b"y"
            });
        let xattrs = xattrs.into_iter().filter(|(k, _)| keep_xattr(k)).collect();
        let mut header = TarHeader {
            path: tar_name.to_vec(),
            kind: TarKind::Dir,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: self.mtime(meta),
            xattrs,
        };
        let dev = meta.rdev();
        let mut file = None;
        header.kind = if ft.is_dir() {
            TarKind::Dir
        } else if ft.is_symlink() {
            let target = fs_err::read_link(src).map_err(read_err)?;
            TarKind::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            match (meta.nlink() > 1).then(|| self.links.get(&key)).flatten() {
                Some(first) => TarKind::Hardlink {
                    target: first.clone(),
                },
                None => {
                    if meta.nlink() > 1 {
                        self.links.insert(key, tar_name.to_vec());
                    }
                    // Never archive what a swapped-in symlink points at, nor wait on a FIFO
                    // put in the file's place. Holes read as zeros without a read.
                    let fd = open_owned(src, Some(key)).map_err(read_err)?;
                    file = Some(SparseReader::new(fd, meta));
                    TarKind::File { size: meta.len() }
                }
            }
        } else if ft.is_char_device() {
            TarKind::Char {
                major: rustix::fs::major(dev),
                minor: rustix::fs::minor(dev),
            }
        } else if ft.is_block_device() {
            TarKind::Block {
                major: rustix::fs::major(dev),
                minor: rustix::fs::minor(dev),
            }
        } else if ft.is_fifo() {
            TarKind::Fifo
        } else {
            // Sockets cannot be represented in a layer; Docker and BuildKit skip them too.
            return Ok(());
        };
        let data = file.as_mut().map(|f| f as &mut dyn io::Read);
        self.tar
            .append(&header, data)
            .map_err(|source| DiffError::Write {
                path: src.to_path_buf(),
                source,
            })?;
        if opaque {
            let mut marker = tar_name.to_vec();
            marker.push(b'/');
            marker.extend_from_slice(WHITEOUT_OPAQUE.as_bytes());
            self.whiteout(&marker, src, Some(meta))?;
        }
        Ok(())
    }
}

fn is_overlay_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// overlayfs bookkeeping (`trusted.overlay.*`) is turned into whiteouts or dropped, and
/// `security.selinux` labels belong to the host that wrote the file, not to the image.
fn keep_xattr(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.overlay.") && name != b"security.selinux"
}

fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path).map_err(io::Error::from)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let present = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(len) => {
                    value.truncate(len);
                    break true;
                }
                Err(rustix::io::Errno::RANGE) => {
                    let len = value.len() * 4;
                    value.resize(len, 0);
                }
                // Removed between list and get.
                Err(rustix::io::Errno::NODATA) => break false,
                Err(e) => return Err(e.into()),
            }
        };
        if present {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}
