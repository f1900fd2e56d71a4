//! File ops without a container: COPY and ADD of a [`Selection`] into a new layer directory,
//! and the directories and files that WORKDIR and heredocs create.
//!
//! The output directory holds exactly what the step adds; it becomes a layer as it is (a COPY
//! never deletes, so it has no whiteouts). Parent directories that already exist in the
//! destination image keep their owner and mode, so that the layer does not change them as a side
//! effect; directories the step creates belong to `--chown`'s owner (root without it), as in
//! BuildKit. A destination path follows the image's symlinks as BuildKit does, but inside the
//! root: an absolute link target or `..` never leads out of it.
//!
//! What is copied is what the source is: a FIFO or device node is made anew with `mknod` (never
//! opened), hardlinks within a source stay hardlinks, and a sparse file keeps its holes.

use std::collections::HashMap;
use std::fs::{File, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::context::{Entry, EntryKind, FollowError, Selection, follow_links};
use crate::regular::{copy_sparse, open_regular};

/// A file op that failed, with the path it was working on.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot copy to {dest:?}: {reason}")]
    Destination { dest: String, reason: &'static str },
    #[error("copying {path:?}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Owner and mode overrides of a COPY.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyOptions {
    /// `--chown`, resolved to numbers; `None` means root (0:0), as Docker does.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`: applied to every copied file and directory.
    pub chmod: Option<u32>,
}

/// Copies a selection from `src_root` to `dest` (absolute, a trailing `/` meaning a
/// directory) into `out`, consulting `dest_view` (the destination image as it is) for what
/// already exists there.
///
/// # Errors
/// [`CopyError`] naming the path at fault.
pub fn copy_selection(
    src_root: &Path,
    selection: &Selection,
    dest: &str,
    dest_view: &Path,
    out: &Path,
    opts: CopyOptions,
) -> Result<(), CopyError> {
    let dest_rel = resolve_dest(dest_view, dest)?;
    let owner = opts.chown.unwrap_or((0, 0));
    // A single file that a source names copies to `dest` itself unless `dest` is a directory
    // (by its trailing `/` or because the image already has a directory there). A directory
    // source always brings its contents into a directory, even when it holds one file.
    let single_file = match selection.entries.as_slice() {
        [e] if e.kind != EntryKind::Dir && e.named => Some(e),
        _ => None,
    };
    let dest_is_dir =
        dest.ends_with('/') || single_file.is_none() || view_is_dir(dest_view, &dest_rel);
    // Which source file each regular file written here came from, so that a hardlink is made
    // only to a copy of its own file (a later source may have replaced that copy).
    let mut written: HashMap<PathBuf, (u64, u64)> = HashMap::new();
    for entry in &selection.entries {
        let target = if dest_is_dir {
            dest_rel.join(&entry.dest)
        } else {
            dest_rel.clone()
        };
        if target.as_os_str().is_empty() {
            return Err(CopyError::Destination {
                dest: dest.to_owned(),
                reason: "a file cannot replace the root directory",
            });
        }
        ensure_parents(dest_view, out, &target, owner)?;
        let out_path = out.join(&target);
        let first = entry.hardlink.as_ref().map(|first| dest_rel.join(first));
        if let Some(first) = first
            && entry.file_id().is_some()
            && written.get(&first).copied() == entry.file_id()
        {
            remove_existing(&out_path)?;
            fs_err::hard_link(out.join(&first), &out_path).map_err(io_at(&out_path))?;
            continue;
        }
        let src = src_root.join(&entry.source);
        write_entry(&src, entry, &out_path, opts)?;
        match entry.file_id() {
            Some(id) => written.insert(target, id),
            None => written.remove(&target),
        };
    }
    if dest_is_dir && !dest_rel.as_os_str().is_empty() {
        // The destination directory itself: created if the image lacks it.
        ensure_parents(dest_view, out, &dest_rel.join("x"), owner)?;
    }
    Ok(())
}

/// Cleans a path to a relative one, as text: `/`, `.` and `..` never leave the root, and
/// `a/../b` is `b` whatever `a` is (as Go's `path.Clean`, before any link is followed).
fn clean_relative(path: &Path) -> PathBuf {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts.iter().collect()
}

/// Resolves a destination path through the image's symlinks, as BuildKit does, but inside the
/// root: an absolute target restarts at the root, `..` stops there. Returns the clean relative
/// path to write at; components that do not exist yet are kept as written.
///
/// # Errors
/// [`CopyError::Destination`] when links chain too deep or in a loop.
pub fn resolve_dest(view: &Path, dest: impl AsRef<Path>) -> Result<PathBuf, CopyError> {
    let dest = dest.as_ref();
    let clean = clean_relative(dest);
    // Any failed lookup means "not there yet" (a file on the way is reported when the
    // parents are made).
    match follow_links(view, &clean, |_| true, true) {
        Ok(followed) => Ok(followed.path),
        Err(FollowError::TooDeep) => Err(CopyError::Destination {
            dest: dest.to_string_lossy().into_owned(),
            reason: "symlinks in the image on the way chain too deep or in a loop",
        }),
        Err(FollowError::Io(source)) => Err(CopyError::Io {
            path: view.join(clean),
            source,
        }),
    }
}

/// Creates a directory in `out` (WORKDIR, `COPY` parents), like `mkdir -p` over the image.
///
/// # Errors
/// [`CopyError`] naming the path at fault.
pub fn mkdir(
    dest_view: &Path,
    out: &Path,
    path: impl AsRef<Path>,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let rel = resolve_dest(dest_view, path)?;
    if rel.as_os_str().is_empty() || view_is_dir(dest_view, &rel) {
        return Ok(());
    }
    ensure_parents(dest_view, out, &rel, owner.unwrap_or((0, 0)))?;
    let target = out.join(&rel);
    match fs_err::create_dir(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_at(&target)(e)),
    }
    let (uid, gid) = owner.unwrap_or((0, 0));
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_at(&target))?;
    fs_err::set_permissions(&target, Permissions::from_mode(mode)).map_err(io_at(&target))?;
    Ok(())
}

/// Writes a file with the given content (a heredoc COPY).
///
/// # Errors
/// [`CopyError`] naming the path at fault.
pub fn mkfile(
    dest_view: &Path,
    out: &Path,
    path: impl AsRef<Path>,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let path = path.as_ref();
    let rel = resolve_dest(dest_view, path)?;
    if rel.as_os_str().is_empty() {
        return Err(CopyError::Destination {
            dest: path.to_string_lossy().into_owned(),
            reason: "a file cannot replace the root directory",
        });
    }
    ensure_parents(dest_view, out, &rel, owner.unwrap_or((0, 0)))?;
    let target = out.join(&rel);
    fs_err::write(&target, data).map_err(io_at(&target))?;
    let (uid, gid) = owner.unwrap_or((0, 0));
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_at(&target))?;
    fs_err::set_permissions(&target, Permissions::from_mode(mode)).map_err(io_at(&target))?;
    Ok(())
}

/// Whether the image has a directory at `rel`, resolving no symlink: a link at a destination is
/// never followed out of the root.
fn view_is_dir(view: &Path, rel: &Path) -> bool {
    rel.as_os_str().is_empty()
        || fs_err::symlink_metadata(view.join(rel)).is_ok_and(|m| m.file_type().is_dir())
}

/// Creates the parents of `target` (already resolved, see [`resolve_dest`]) in `out`, copying
/// owner and mode from the image where a parent already exists there, else 0755 owned by
/// `owner`.
fn ensure_parents(
    view: &Path,
    out: &Path,
    target: &Path,
    owner: (u32, u32),
) -> Result<(), CopyError> {
    let not_dir = |reason| CopyError::Destination {
        dest: format!("/{}", target.to_string_lossy()),
        reason,
    };
    let Some(parent) = target.parent() else {
        return Ok(());
    };
    let mut rel = PathBuf::new();
    for part in parent.components() {
        rel.push(part);
        let here = out.join(&rel);
        match fs_err::symlink_metadata(&here) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Err(not_dir("a parent on the way is not a directory")),
            Err(_) => {}
        }
        let existing = fs_err::symlink_metadata(view.join(&rel)).ok();
        if existing.as_ref().is_some_and(|m| !m.is_dir()) {
            return Err(not_dir("a parent in the image is not a directory"));
        }
        fs_err::create_dir(&here).map_err(io_at(&here))?;
        let (uid, gid, mode) = existing.map_or((owner.0, owner.1, 0o755), |m| {
            (m.uid(), m.gid(), m.mode() & 0o7777)
        });
        std::os::unix::fs::lchown(&here, Some(uid), Some(gid)).map_err(io_at(&here))?;
        fs_err::set_permissions(&here, Permissions::from_mode(mode)).map_err(io_at(&here))?;
    }
    Ok(())
}

fn write_entry(
    src: &Path,
    entry: &Entry,
    out_path: &Path,
    opts: CopyOptions,
) -> Result<(), CopyError> {
    let (uid, gid) = opts.chown.unwrap_or((0, 0));
    let mode = opts.chmod.unwrap_or(entry.mode);
    let mtime = Timespec {
        tv_sec: entry.mtime,
        tv_nsec: 0,
    };
    let node = |ft: FileType, major: u32, minor: u32| -> Result<(), CopyError> {
        remove_existing(out_path)?;
        // The node is made, never opened: a FIFO would block, a device could read forever.
        rustix::fs::mknodat(
            CWD,
            out_path,
            ft,
            Mode::from_raw_mode(0o600),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| io_at(out_path)(e.into()))?;
        std::os::unix::fs::lchown(out_path, Some(uid), Some(gid)).map_err(io_at(out_path))?;
        fs_err::set_permissions(out_path, Permissions::from_mode(mode)).map_err(io_at(out_path))?;
        rustix::fs::utimensat(
            CWD,
            out_path,
            &Timestamps {
                last_access: mtime,
                last_modification: mtime,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_at(out_path)(e.into()))
    };
    match &entry.kind {
        EntryKind::Dir => {
            match fs_err::create_dir(out_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_at(out_path)(e)),
            }
            std::os::unix::fs::lchown(out_path, Some(uid), Some(gid)).map_err(io_at(out_path))?;
            fs_err::set_permissions(out_path, Permissions::from_mode(mode))
                .map_err(io_at(out_path))?;
        }
        EntryKind::Symlink { target } => {
            remove_existing(out_path)?;
            std::os::unix::fs::symlink(target, out_path).map_err(io_at(out_path))?;
            std::os::unix::fs::lchown(out_path, Some(uid), Some(gid)).map_err(io_at(out_path))?;
        }
        EntryKind::Fifo => node(FileType::Fifo, 0, 0)?,
        EntryKind::CharDevice { major, minor } => {
            node(FileType::CharacterDevice, *major, *minor)?;
        }
        EntryKind::BlockDevice { major, minor } => {
            node(FileType::BlockDevice, *major, *minor)?;
        }
        EntryKind::File => {
            remove_existing(out_path)?;
            // `src` is the resolved location inside the source root: a named source that is a
            // symlink was followed there, within the root, by the selection. It must still be
            // the regular file that was selected (and hashed): anything else is not opened.
            let source = open_regular(src, entry.file_id()).map_err(io_at(src))?;
            let mut file = File::from(
                rustix::fs::open(
                    out_path,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_at(out_path)(e.into()))?,
            );
            copy_sparse(&source, &mut file).map_err(io_at(out_path))?;
            // Owner before mode: a chown clears setuid and setgid.
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_at(out_path))?;
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(io_at(out_path))?;
            let mtime = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(entry.mtime).unwrap_or(0));
            file.set_modified(mtime).map_err(io_at(out_path))?;
        }
    }
    Ok(())
}

fn remove_existing(path: &Path) -> Result<(), CopyError> {
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(CopyError::Destination {
            dest: String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned(),
            reason: "a directory is in the way of a file",
        }),
        Ok(_) => fs_err::remove_file(path).map_err(io_at(path)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_resolve_through_image_links_without_leaving_the_root() {
        let view = tempfile::tempdir().unwrap();
        let v = view.path();
        fs_err::create_dir_all(v.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", v.join("lib")).unwrap();
        std::os::unix::fs::symlink("/../../..", v.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../etc", v.join("usr/up")).unwrap();
        std::os::unix::fs::symlink("loop", v.join("loop")).unwrap();
        assert_eq!(
            resolve_dest(v, "/lib/x/a.txt").unwrap(),
            Path::new("usr/lib/x/a.txt")
        );
        assert_eq!(resolve_dest(v, "lib").unwrap(), Path::new("usr/lib"));
        assert_eq!(
            resolve_dest(v, "/escape/etc/passwd").unwrap(),
            Path::new("etc/passwd")
        );
        assert_eq!(
            resolve_dest(v, "/usr/up/hosts").unwrap(),
            Path::new("etc/hosts")
        );
        assert_eq!(resolve_dest(v, "/new/../dir/").unwrap(), Path::new("dir"));
        assert!(matches!(
            resolve_dest(v, "/loop/x"),
            Err(CopyError::Destination { .. })
        ));
    }
}
