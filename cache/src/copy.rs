//! File ops without a container: COPY and ADD of a [`Selection`] into a new layer directory,
//! and the directories and files that WORKDIR and heredocs create.
//!
//! The output directory holds exactly what the step adds; it becomes a layer as it is (a COPY
//! never deletes, so it has no whiteouts). Parent directories that already exist in the
//! destination image keep their owner and mode, so that the layer does not change them as a side
//! effect; directories the step creates belong to `--chown`'s owner (root without it), as in
//! BuildKit. A destination path follows the image's symlinks as BuildKit does, but inside the
//! root: an absolute link target or `..` never leads out of it.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::context::{Entry, EntryKind, FollowError, Selection, clean_relative, follow_links};

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
    for entry in &selection.entries {
        let target = if dest_is_dir {
            join(&dest_rel, &entry.dest)
        } else {
            dest_rel.clone()
        };
        if target.is_empty() {
            return Err(CopyError::Destination {
                dest: dest.to_owned(),
                reason: "a file cannot replace the root directory",
            });
        }
        ensure_parents(dest_view, out, &target, owner)?;
        let src = src_root.join(&entry.source);
        let out_path = out.join(&target);
        write_entry(&src, entry, &out_path, opts)?;
    }
    if dest_is_dir && !dest_rel.is_empty() {
        // The destination directory itself: created if the image lacks it.
        ensure_parents(dest_view, out, &join(&dest_rel, "x"), owner)?;
    }
    Ok(())
}

/// Resolves a destination path through the image's symlinks, as BuildKit does, but inside the
/// root: an absolute target restarts at the root, `..` stops there. Returns the clean relative
/// path to write at; components that do not exist yet are kept as written.
///
/// # Errors
/// [`CopyError::Destination`] when links chain too deep or in a loop.
pub fn resolve_dest(view: &Path, dest: &str) -> Result<String, CopyError> {
    // Any failed lookup means "not there yet" (a file on the way is reported when the
    // parents are made).
    match follow_links(view, &clean_relative(dest), |_| true, true) {
        Ok(followed) => Ok(followed.path),
        Err(FollowError::TooDeep) => Err(CopyError::Destination {
            dest: dest.to_owned(),
            reason: "symlinks in the image on the way chain too deep or in a loop",
        }),
        Err(FollowError::Io(source)) => Err(CopyError::Io {
            path: view.join(clean_relative(dest)),
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
    path: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let rel = resolve_dest(dest_view, path)?;
    if rel.is_empty() || view_is_dir(dest_view, &rel) {
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
    path: &str,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), CopyError> {
    let rel = resolve_dest(dest_view, path)?;
    if rel.is_empty() {
        return Err(CopyError::Destination {
            dest: path.to_owned(),
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

fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_owned(),
        (_, true) => base.to_owned(),
        _ => format!("{base}/{rel}"),
    }
}

/// Whether the image has a directory at `rel`, resolving no symlink: a link at a destination is
/// never followed out of the root.
fn view_is_dir(view: &Path, rel: &str) -> bool {
    rel.is_empty() || fs_err::symlink_metadata(view.join(rel)).is_ok_and(|m| m.file_type().is_dir())
}

/// Creates the parents of `target` (already resolved, see [`resolve_dest`]) in `out`, copying
/// owner and mode from the image where a parent already exists there, else 0755 owned by
/// `owner`.
fn ensure_parents(
    view: &Path,
    out: &Path,
    target: &str,
    owner: (u32, u32),
) -> Result<(), CopyError> {
    let mut rel = String::new();
    let parts: Vec<&str> = target.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        rel = join(&rel, part);
        let here = out.join(&rel);
        match fs_err::symlink_metadata(&here) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(CopyError::Destination {
                    dest: format!("/{target}"),
                    reason: "a parent on the way is not a directory",
                });
            }
            Err(_) => {}
        }
        let existing = fs_err::symlink_metadata(view.join(&rel)).ok();
        if existing.as_ref().is_some_and(|m| !m.is_dir()) {
            return Err(CopyError::Destination {
                dest: format!("/{target}"),
                reason: "a parent in the image is not a directory",
            });
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
    match &entry.kind {
        EntryKind::Dir => {
            match fs_err::create_dir(out_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_at(out_path)(e)),
            }
            std::os::unix::fs::lchown(out_path, Some(uid), Some(gid)).map_err(io_at(out_path))?;
            let mode = opts.chmod.unwrap_or(entry.mode);
            fs_err::set_permissions(out_path, Permissions::from_mode(mode))
                .map_err(io_at(out_path))?;
        }
        EntryKind::Symlink { target } => {
            remove_existing(out_path)?;
            std::os::unix::fs::symlink(target, out_path).map_err(io_at(out_path))?;
            std::os::unix::fs::lchown(out_path, Some(uid), Some(gid)).map_err(io_at(out_path))?;
        }
        EntryKind::File => {
            remove_existing(out_path)?;
            // `src` is the resolved location inside the source root: a named source that is a
            // symlink was followed there, within the root, by the selection.
            fs_err::copy(src, out_path).map_err(io_at(out_path))?;
            std::os::unix::fs::lchown(out_path, Some(uid), Some(gid)).map_err(io_at(out_path))?;
            let mode = opts.chmod.unwrap_or(entry.mode);
            fs_err::set_permissions(out_path, Permissions::from_mode(mode))
                .map_err(io_at(out_path))?;
            let mtime = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(entry.mtime).unwrap_or(0));
            fs_err::File::options()
                .write(true)
                .open(out_path)
                .and_then(|f| f.set_modified(mtime))
                .map_err(io_at(out_path))?;
        }
    }
    Ok(())
}

fn remove_existing(path: &Path) -> Result<(), CopyError> {
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(CopyError::Destination {
            dest: path.display().to_string(),
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
        assert_eq!(resolve_dest(v, "/lib/x/a.txt").unwrap(), "usr/lib/x/a.txt");
        assert_eq!(resolve_dest(v, "lib").unwrap(), "usr/lib");
        assert_eq!(resolve_dest(v, "/escape/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(resolve_dest(v, "/usr/up/hosts").unwrap(), "etc/hosts");
        assert_eq!(resolve_dest(v, "/new/../dir/").unwrap(), "dir");
        assert!(matches!(
            resolve_dest(v, "/loop/x"),
            Err(CopyError::Destination { .. })
        ));
    }
}
