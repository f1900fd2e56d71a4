//! The one overlay mount helper, for a RUN's rootfs (read-only layers plus an upperdir that
//! collects the changes) and for read-only views of a chain of layers.
//!
//! mount(2) takes its options as one string of at most a page (4096 bytes); with each
//! snapshot path near 100 bytes, about 38 layers fit. Past that, the new mount API adds one
//! lowerdir at a time (`fsconfig(…, "lowerdir+", …)`, Linux 6.8), up to overlayfs's own limit
//! of 500 layers ([`MAX_LAYERS`]). Where neither takes a chain, [`fits`] says so beforehand,
//! so that the caller can merge the lowest layers into one rather than fail.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
};

/// The most layers overlayfs stacks (`OVL_MAX_STACK` in `fs/overlayfs/params.h`).
pub const MAX_LAYERS: usize = 500;

/// The most bytes of mount(2) options the kernel reads (one page, with its NUL).
const MAX_OPTIONS: usize = 4095;

/// What to mount.
#[derive(Debug, Clone, Copy)]
pub struct Overlay<'a> {
    /// Read-only layers, topmost first.
    pub lowerdirs: &'a [PathBuf],
    /// The upperdir and its workdir on the same filesystem; `None` for a read-only view.
    pub upper: Option<(&'a Path, &'a Path)>,
}

/// Error from mounting an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// mount(2)'s option string separates options with commas and lowerdirs with colons.
    #[error("overlay layer path {path} contains a comma or colon")]
    BadPath { path: PathBuf },
    #[error("an overlay needs at least one lower layer")]
    NoLowerdir,
    /// More layers than this kernel's overlayfs takes; [`fits`] tells beforehand.
    #[error(
        "{layers} layers are more than this kernel's overlayfs stacks ({limit}); merge the lowest ones"
    )]
    TooManyLayers { layers: usize, limit: usize },
    /// A kernel before 6.8 takes all lowerdirs in one page of mount options.
    #[error(
        "the paths of {layers} layers do not fit in the one page of mount options this kernel takes (before Linux 6.8); merge the lowest ones"
    )]
    OptionsTooLong { layers: usize },
    #[error("mount an overlay of {layers} layers on {target}")]
    Mount {
        target: PathBuf,
        layers: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("mount an overlay of {layers} layers on {target}: {step}")]
    NewApi {
        target: PathBuf,
        layers: usize,
        step: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether this kernel adds lowerdirs one at a time (`lowerdir+`, Linux 6.8): asked once, by
/// configuring (not mounting) an overlay of `/`.
#[must_use]
pub fn lowerdir_plus() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .and_then(|fs| fsconfig_set_string(&fs, "lowerdir+", "/"))
            .is_ok()
    })
}

/// Whether `overlay` can be mounted as it is on this kernel, or its lowest layers must be
/// merged first.
#[must_use]
pub fn fits(overlay: &Overlay<'_>) -> bool {
    let layers = overlay.lowerdirs.len();
    layers <= MAX_LAYERS
        && (lowerdir_plus() || options(overlay).is_ok_and(|o| o.len() <= MAX_OPTIONS))
}

/// The mount(2) options of `overlay`.
fn options(overlay: &Overlay<'_>) -> Result<String, OverlayError> {
    if overlay.lowerdirs.is_empty() {
        return Err(OverlayError::NoLowerdir);
    }
    let text = |p: &Path| -> Result<String, OverlayError> {
        let s = p.to_string_lossy();
        if s.contains([',', ':']) {
            return Err(OverlayError::BadPath {
                path: p.to_path_buf(),
            });
        }
        Ok(s.into_owned())
    };
    let lower = overlay
        .lowerdirs
        .iter()
        .map(|p| text(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(":");
    Ok(match overlay.upper {
        // index=off and no xino keep the upperdir free of overlay bookkeeping beyond whiteouts
        // and opaque markers, so it reads as a plain layer diff. `volatile` skips the sync of
        // the whole upper filesystem that unmounting does otherwise: pid 1's exit unmounts the
        // overlay with its mount namespace, and before its parent learns of the exit,
        // `ovl_sync_fs` writes back everything dirty on the upper's filesystem, the RUN's or
        // not. Measured on this VM (unmount time, ext4): 3.6 to 5.6 ms after creating one
        // file; 180 to 240 ms with 256 MB of unrelated dirty data on the filesystem (a layer
        // being written by a parallel step); 0.2 to 0.3 ms with `volatile`, either way. Its
        // price is two more directories in the workdir at mount time (about 0.5 ms on this
        // VM's journal-less ext4, where allocating an inode is slow). The upperdir is read
        // back right after the RUN, and a crash before that discards the RUN anyway.
        // overlayfs then refuses this workdir for another mount, which is never wanted: every
        // RUN gets a fresh one.
        Some((upper, work)) => format!(
            "lowerdir={lower},upperdir={},workdir={},index=off,xino=off,volatile",
            text(upper)?,
            text(work)?
        ),
        None => format!("lowerdir={lower}"),
    })
}

/// Mounts `overlay` on `target` in the caller's mount namespace.
///
/// # Errors
/// Too many layers for this kernel, a path mount(2) cannot carry, or the mount failed.
pub fn mount(target: &Path, overlay: &Overlay<'_>) -> Result<(), OverlayError> {
    let layers = overlay.lowerdirs.len();
    if layers == 0 {
        return Err(OverlayError::NoLowerdir);
    }
    if layers > MAX_LAYERS {
        return Err(OverlayError::TooManyLayers {
            layers,
            limit: MAX_LAYERS,
        });
    }
    let flags = if overlay.upper.is_some() {
        MountFlags::empty()
    } else {
        MountFlags::RDONLY
    };
    match options(overlay) {
        Ok(data) if data.len() <= MAX_OPTIONS => {
            let data = std::ffi::CString::new(data).map_err(|_| OverlayError::BadPath {
                path: target.to_path_buf(),
            })?;
            rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str()).map_err(
                |e| OverlayError::Mount {
                    target: target.to_path_buf(),
                    layers,
                    source: e.into(),
                },
            )
        }
        Ok(_) | Err(OverlayError::BadPath { .. }) if lowerdir_plus() => {
            mount_one_by_one(target, overlay)
        }
        Ok(_) => Err(OverlayError::OptionsTooLong { layers }),
        Err(e) => Err(e),
    }
}

/// The new mount API: a filesystem context configured one lowerdir at a time, then attached
/// at `target`.
fn mount_one_by_one(target: &Path, overlay: &Overlay<'_>) -> Result<(), OverlayError> {
    let layers = overlay.lowerdirs.len();
    let err = |step: String| {
        move |e: rustix::io::Errno| OverlayError::NewApi {
            target: target.to_path_buf(),
            layers,
            step,
            source: e.into(),
        }
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen".into()))?;
    for lower in overlay.lowerdirs {
        fsconfig_set_string(&fs, "lowerdir+", lower)
            .map_err(err(format!("add lower layer {}", lower.display())))?;
    }
    let mut attributes = MountAttrFlags::empty();
    match overlay.upper {
        Some((upper, work)) => {
            fsconfig_set_string(&fs, "upperdir", upper)
                .map_err(err(format!("upperdir {}", upper.display())))?;
            fsconfig_set_string(&fs, "workdir", work)
                .map_err(err(format!("workdir {}", work.display())))?;
            fsconfig_set_string(&fs, "index", "off").map_err(err("index=off".into()))?;
            fsconfig_set_string(&fs, "xino", "off").map_err(err("xino=off".into()))?;
            fsconfig_set_flag(&fs, "volatile").map_err(err("volatile".into()))?;
        }
        None => attributes |= MountAttrFlags::MOUNT_ATTR_RDONLY,
    }
    fsconfig_create(&fs).map_err(err("create".into()))?;
    let mounted =
        fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attributes).map_err(err("fsmount".into()))?;
    move_mount(
        &mounted,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(err("attach".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_order_and_validation() {
        let lowers = ["/l1".into(), "/l2".into()];
        let overlay = Overlay {
            lowerdirs: &lowers,
            upper: Some((Path::new("/u"), Path::new("/w"))),
        };
        assert_eq!(
            options(&overlay).unwrap(),
            "lowerdir=/l1:/l2,upperdir=/u,workdir=/w,index=off,xino=off,volatile"
        );
        let view = Overlay {
            lowerdirs: &lowers,
            upper: None,
        };
        assert_eq!(options(&view).unwrap(), "lowerdir=/l1:/l2");
        let bad = ["/a:b".into()];
        assert!(matches!(
            options(&Overlay {
                lowerdirs: &bad,
                upper: None
            }),
            Err(OverlayError::BadPath { .. })
        ));
        assert!(matches!(
            options(&Overlay {
                lowerdirs: &[],
                upper: None
            }),
            Err(OverlayError::NoLowerdir)
        ));
    }

    #[test]
    fn more_layers_than_overlayfs_stacks_do_not_fit() {
        let lowers: Vec<PathBuf> = (0..=MAX_LAYERS).map(|i| format!("/l{i}").into()).collect();
        let overlay = Overlay {
            lowerdirs: &lowers,
            upper: None,
        };
        assert!(!fits(&overlay));
        assert!(fits(&Overlay {
            lowerdirs: &lowers[..3],
            upper: None
        }));
    }
}
