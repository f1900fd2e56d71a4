//! Mount helpers that need no privilege: option parsing and safe resolution of paths inside a
//! rootfs. The init program does the mounting itself (the overlay through [`crate::overlay`]).

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

/// How a spec mount's options split into mount flags, propagation flags and filesystem data.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MountOptions {
    pub(crate) flags: MsFlags,
    /// Flags to clear (such as `rw` clearing `MS_RDONLY`), kept so a remount can honour them.
    pub(crate) cleared: MsFlags,
    pub(crate) propagation: MsFlags,
    /// Whatever is not a flag, joined with commas, for the filesystem (`mode=755`, `size=…`).
    pub(crate) data: String,
}

impl MountOptions {
    pub(crate) fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Splits OCI mount options the way runc's `parseMountOptions` reads them.
pub(crate) fn parse_mount_options<S: AsRef<str>>(options: &[S]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        cleared: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for option in options {
        let option = option.as_ref();
        let (set, clear, propagation) = match option {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            other => {
                data.push(other);
                continue;
            }
        };
        out.flags = (out.flags | set) - clear;
        out.cleared = (out.cleared | clear) - set;
        out.propagation |= propagation;
    }
    out.data = data.join(",");
    out
}

/// Error from resolving a path inside a rootfs without leaving it.
#[derive(Debug, thiserror::Error)]
pub enum SecureJoinError {
    /// Reading a symlink inside the rootfs failed.
    #[error("read link {path}")]
    ReadLink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path went through too many symlinks.
    #[error("too many levels of symbolic links resolving {path} in {root}")]
    TooManyLinks { root: PathBuf, path: PathBuf },
}

/// Resolves `path` as the process inside `root` would see it, following symlinks inside `root`
/// only: an absolute link target or a `..` past the top stays in `root`. The result is a host path
/// under `root` whose last components may not exist yet.
///
/// Without this, an image with `/etc -> /host/etc` would make the runtime create and mount over
/// host files before it pivots.
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, SecureJoinError> {
    // Components still to resolve, in reverse so the next one is at the end.
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    let push_path = |pending: &mut Vec<std::ffi::OsString>, p: &Path| {
        for component in p.components().rev() {
            match component {
                Component::Normal(name) => pending.push(name.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push_path(&mut pending, path);
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&name);
        match fs_err::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(SecureJoinError::TooManyLinks {
                        root: root.to_path_buf(),
                        path: path.to_path_buf(),
                    });
                }
                let target =
                    fs_err::read_link(&candidate).map_err(|source| SecureJoinError::ReadLink {
                        path: candidate.clone(),
                        source,
                    })?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_path(&mut pending, &target);
            }
            // Missing (or unreadable) components are taken literally; creating them later
            // happens inside `root`.
            _ => resolved.push(name),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_mount_options(&["nosuid", "rbind", "ro", "mode=755", "rslave", "size=1k"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(o.data, "mode=755,size=1k");
        assert!(o.is_bind());
        let o = parse_mount_options(&["ro", "rw"]);
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.cleared, MsFlags::MS_RDONLY);
    }

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs_err::create_dir_all(root.join("real/etc")).unwrap();
        std::os::unix::fs::symlink("/real/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(&root, Path::new("/etc/hosts")).unwrap(),
            root.join("real/etc/hosts")
        );
        assert_eq!(
            secure_join(&root, Path::new("/up/etc/passwd")).unwrap(),
            root.join("real/etc/passwd")
        );
        assert_eq!(
            secure_join(&root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert!(matches!(
            secure_join(&root, Path::new("/loop/x")),
            Err(SecureJoinError::TooManyLinks { .. })
        ));
    }
}
