//! Keeping the upperdir an exact record of the RUN's changes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::protocol::Rootfs;

/// Whether `path` is a mount point in this process's mount namespace.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = fs_err::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    // Field 5 is the mount point, with spaces and other specials octal-escaped.
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == wanted)
}

fn lower_dir_meta(rootfs: &Rootfs, rel: &Path) -> Option<std::fs::Metadata> {
    rootfs
        .lowerdirs
        .iter()
        .find_map(|l| fs_err::symlink_metadata(l.join(rel)).ok())
        .filter(std::fs::Metadata::is_dir)
}

/// Removes from the upperdir the mount points that sandbox setup created (listed relative to
/// the rootfs, parents first), and the copied-up parent directories that only they caused.
/// Anything the RUN itself changed stays: a stub that is no longer an empty file or directory,
/// an opaque directory, or a parent whose owner or mode differ from the lower one.
pub(crate) fn remove_mount_stubs(
    rootfs: &Rootfs,
    created: &[PathBuf],
) -> Result<(), (PathBuf, std::io::Error)> {
    let upper = &rootfs.upperdir;
    let remove_empty_dir = |path: &Path| match fs_err::remove_dir(path) {
        Err(e)
            if e.kind() != std::io::ErrorKind::NotFound
                && e.kind() != std::io::ErrorKind::DirectoryNotEmpty =>
        {
            Err((path.to_path_buf(), e))
        }
        _ => Ok(()),
    };
    for rel in created.iter().rev() {
        let path = upper.join(rel);
        let Ok(meta) = fs_err::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.len() == 0 {
            fs_err::remove_file(&path).map_err(|e| (path.clone(), e))?;
        } else if meta.is_dir() && !crate::user::is_opaque(&path) {
            remove_empty_dir(&path)?;
        }
    }
    let mut parents: Vec<&Path> = created
        .iter()
        .flat_map(|rel| rel.ancestors().skip(1))
        .filter(|p| !p.as_os_str().is_empty() && !created.iter().any(|c| c == p))
        .collect();
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    parents.dedup();
    for rel in parents {
        let path = upper.join(rel);
        let Ok(meta) = fs_err::symlink_metadata(&path) else {
            continue;
        };
        let Some(lower) = lower_dir_meta(rootfs, rel) else {
            continue;
        };
        let unchanged = meta.is_dir()
            && meta.mode() == lower.mode()
            && meta.uid() == lower.uid()
            && meta.gid() == lower.gid()
            && !crate::user::is_opaque(&path);
        if unchanged {
            remove_empty_dir(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_and_their_copied_up_parents_go_real_changes_stay() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        fs_err::create_dir_all(lower.join("etc")).unwrap();
        fs_err::create_dir_all(lower.join("var")).unwrap();
        fs_err::create_dir_all(upper.join("etc")).unwrap();
        fs_err::create_dir_all(upper.join("var")).unwrap();
        fs_err::create_dir_all(upper.join("newdir/sub")).unwrap();
        fs_err::write(upper.join("etc/hosts"), "").unwrap();
        fs_err::write(upper.join("var/hosts"), "").unwrap();
        fs_err::write(upper.join("var/keep"), "changed").unwrap();
        let rootfs = Rootfs {
            lowerdirs: vec![lower],
            upperdir: upper.clone(),
            workdir: dir.path().join("work"),
        };
        remove_mount_stubs(
            &rootfs,
            &[
                "etc/hosts".into(),
                "var/hosts".into(),
                "newdir".into(),
                "newdir/sub".into(),
            ],
        )
        .unwrap();
        assert!(
            !upper.join("etc").exists(),
            "copied-up parent of a stub removed"
        );
        assert!(!upper.join("var/hosts").exists());
        assert!(upper.join("var/keep").exists(), "real change kept");
        assert!(!upper.join("newdir").exists());
    }
}
