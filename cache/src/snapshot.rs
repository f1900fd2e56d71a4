//! Snapshots: each layer extracted once, in overlay form, into `snapshots/sha256/<diffID>`.
//!
//! A snapshot holds one layer's changes only (whiteouts as 0/0 character devices, opaque
//! directories by xattr), so an image's snapshots stack directly as overlay lowerdirs. Keying
//! by diffID means a layer shared by several images, or pulled with another compression, is
//! extracted once. Extraction goes to a temp directory that is renamed into place only after
//! the diffID checked out, so a crash never leaves a half snapshot under a real name.

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, DigestAlgorithm};

use crate::apply::{ApplyError, ApplyOptions, WhiteoutMode, apply_layer};
use crate::image::Image;
use crate::store::{BlobStore, StoreError};

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The layer blob is not available.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Extracting the layer failed; the temp directory was removed.
    #[error("unpack layer {layer} into snapshot {diff_id}")]
    Unpack {
        /// The layer blob.
        layer: Digest,
        /// The diffID it should have.
        diff_id: Digest,
        /// The cause.
        source: Box<ApplyError>,
    },
    /// A snapshot directory operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Only sha256 diffIDs name snapshots.
    #[error("unsupported diffID {diff_id}")]
    UnsupportedDiffId {
        /// The diffID.
        diff_id: String,
    },
    /// An image's config lists fewer diffIDs than its manifest has layers.
    #[error("image {manifest} has {layers} layers but {diff_ids} diffIDs")]
    LayerCountMismatch {
        /// The manifest digest.
        manifest: Digest,
        /// Number of layers.
        layers: usize,
        /// Number of diffIDs.
        diff_ids: usize,
    },
}

/// Marks `dir` (created if missing) as the top of independent directory trees for the
/// filesystem's allocator: ext4's Orlov allocator then spreads the directories made in it over
/// block groups instead of packing them next to their parent (`chattr +T`). Snapshots and
/// scratch trees are independent, and on ext4 without a journal packing them is slow after
/// deletions: each new inode skips every recently freed one of its group, one buffer lookup
/// each. Best effort: other filesystems do not know the flag, and that is fine.
///
/// # Errors
/// `dir` cannot be created or opened.
pub fn spread_directories(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{IFlags, Mode, OFlags, ioctl_getflags, ioctl_setflags, open};
    fs_err::create_dir_all(dir)?;
    let fd = open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if let Ok(flags) = ioctl_getflags(&fd)
        && !flags.contains(IFlags::TOPDIR)
    {
        let _ = ioctl_setflags(&fd, flags | IFlags::TOPDIR);
    }
    Ok(())
}

/// Unpacked layers under `<state root>/snapshots`.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
    /// Where snapshots are unpacked until their diffID checked out: the process's scratch area
    /// when one was given ([`SnapshotStore::with_scratch`]), else beside them.
    scratch: Option<std::sync::Arc<crate::scratch::ScratchArea>>,
    /// The process's lease: a snapshot looked at or made is held for the running builds.
    lease: Option<std::sync::Arc<crate::gc::Lease>>,
}

impl SnapshotStore {
    /// The snapshot store under the state root `state_root`.
    #[must_use]
    pub fn new(state_root: &Path) -> Self {
        Self {
            root: state_root.join("snapshots"),
            scratch: None,
            lease: None,
        }
    }

    /// The same store, holding in `lease` each snapshot it is asked about or makes, before it
    /// looks (see [`crate::gc::lease`]), so that no collector removes it under a build.
    #[must_use]
    pub fn with_lease(mut self, lease: std::sync::Arc<crate::gc::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Holds the snapshot of `diff_id` for the running builds: call it before looking whether
    /// it exists, or making it.
    pub fn hold(&self, diff_id: &Digest) {
        if let Some(lease) = &self.lease {
            lease.hold(crate::gc::Item::Snapshot(diff_id.digest().to_owned()));
        }
    }

    /// The same store, unpacking into `area` (on the same filesystem), so that an unpack cut
    /// short by a killed process is reclaimed with it.
    #[must_use]
    pub fn with_scratch(mut self, area: std::sync::Arc<crate::scratch::ScratchArea>) -> Self {
        self.scratch = Some(area);
        self
    }

    /// The directory that holds every snapshot (and their unpacking temp dirs).
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// Where the snapshot of `diff_id` lives (whether or not it exists).
    ///
    /// # Errors
    /// The diffID is not sha256.
    pub fn path(&self, diff_id: &Digest) -> Result<PathBuf, SnapshotError> {
        if *diff_id.algorithm() != DigestAlgorithm::Sha256 {
            return Err(SnapshotError::UnsupportedDiffId {
                diff_id: diff_id.to_string(),
            });
        }
        Ok(self.root.join("sha256").join(diff_id.digest()))
    }

    /// The snapshot of `diff_id`, if it has been unpacked.
    #[must_use]
    pub fn get(&self, diff_id: &Digest) -> Option<PathBuf> {
        self.hold(diff_id);
        self.path(diff_id).ok().filter(|p| p.is_dir())
    }

    /// Unpacks `layer` (a blob in `blobs`) unless a snapshot of `diff_id` exists; returns the
    /// snapshot directory. The uncompressed stream must hash to `diff_id`.
    ///
    /// # Errors
    /// The blob is missing, extraction fails, or the diffID differs.
    pub fn unpack(
        &self,
        blobs: &BlobStore,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<PathBuf, SnapshotError> {
        self.unpack_on(blobs, layer, diff_id, &[])
    }

    /// As [`SnapshotStore::unpack`], with the snapshots of the layers below (top first) so that
    /// a hardlink to a file of a lower layer can be resolved (as a copy).
    ///
    /// # Errors
    /// As [`SnapshotStore::unpack`].
    pub fn unpack_on(
        &self,
        blobs: &BlobStore,
        layer: &Descriptor,
        diff_id: &Digest,
        lowers: &[PathBuf],
    ) -> Result<PathBuf, SnapshotError> {
        let dest = self.path(diff_id)?;
        self.hold(diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let parent = self.root.join("sha256");
        fs_err::create_dir_all(&parent).map_err(|source| SnapshotError::Io {
            op: "create",
            path: parent.clone(),
            source,
        })?;
        let scratch = match &self.scratch {
            Some(area) => area.dir().map_err(|e| SnapshotError::Io {
                op: "make the scratch area for",
                path: dest.clone(),
                source: std::io::Error::other(e),
            })?,
            None => &parent,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(scratch)
            .map_err(|source| SnapshotError::Io {
                op: "create temp dir in",
                path: scratch.to_path_buf(),
                source,
            })?;
        let blob = blobs.open(layer.digest())?;
        let options = ApplyOptions {
            whiteouts: WhiteoutMode::Overlay,
            expected_diff_id: Some(diff_id.clone()),
            lower_dirs: lowers.to_vec(),
        };
        let fs_root = tmp.path().join("fs");
        apply_layer(blob, &fs_root, &options).map_err(|source| SnapshotError::Unpack {
            layer: layer.digest().clone(),
            diff_id: diff_id.clone(),
            source: Box::new(source),
        })?;
        match fs_err::rename(&fs_root, &dest) {
            Ok(()) => Ok(dest),
            // Another unpacker of the same layer won the race; its snapshot is as good.
            Err(_) if dest.is_dir() => Ok(dest),
            Err(source) => Err(SnapshotError::Io {
                op: "rename snapshot to",
                path: dest,
                source,
            }),
        }
    }

    /// Unpacks every layer of `image`; returns the snapshot directories bottom layer first.
    /// For an overlay mount, pass them to `lowerdir` in reverse (top first).
    ///
    /// # Errors
    /// As [`SnapshotStore::unpack`], or the config and manifest disagree on the layer count.
    pub fn unpack_image(
        &self,
        blobs: &BlobStore,
        image: &Image,
    ) -> Result<Vec<PathBuf>, SnapshotError> {
        let layers = image.manifest.layers();
        let diff_ids = image.diff_ids();
        if layers.len() != diff_ids.len() {
            return Err(SnapshotError::LayerCountMismatch {
                manifest: image.descriptor.digest().clone(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(layers.len());
        for (layer, id) in layers.iter().zip(diff_ids) {
            let diff_id: Digest = id.parse().map_err(|_| SnapshotError::UnsupportedDiffId {
                diff_id: id.clone(),
            })?;
            let lowers: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
            dirs.push(self.unpack_on(blobs, layer, &diff_id, &lowers)?);
        }
        Ok(dirs)
    }
}
