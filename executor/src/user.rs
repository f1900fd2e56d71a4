//! `USER` resolution: `name[:group]` or `uid[:gid]` against the image's `/etc/passwd` and
//! `/etc/group`, the way Docker's `GetExecUser` does it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::User;

/// Error from [`resolve_user`].
#[derive(Debug, thiserror::Error)]
pub enum ResolveUserError {
    /// The user name is not in the image's `/etc/passwd`.
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser { name: String },
    /// The group name is not in the image's `/etc/group`.
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup { name: String },
    /// Reading `/etc/passwd` or `/etc/group` from a layer failed.
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_owned();
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_owned();
            let _password = f.next()?;
            let gid = f.next()?.parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect()
}

/// Reads `rel` from the topmost of `layers` (topmost first) that has it. A whiteout (a 0:0
/// character device, as overlayfs stores deletions) hides it, as does an opaque parent.
fn read_from_layers(layers: &[PathBuf], rel: &Path) -> Result<Option<String>, ResolveUserError> {
    use std::os::unix::fs::FileTypeExt;
    for layer in layers {
        let path = layer.join(rel);
        match fs_err::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_char_device() => return Ok(None),
            Ok(_) => {
                return fs_err::read_to_string(&path)
                    .map(Some)
                    .map_err(|source| ResolveUserError::Read { path, source });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = path.parent().unwrap_or(layer);
                if is_opaque(parent) {
                    return Ok(None);
                }
            }
            Err(source) => return Err(ResolveUserError::Read { path, source }),
        }
    }
    Ok(None)
}

/// Whether overlayfs marks `dir` as opaque (it replaced, rather than merged with, lower dirs).
pub(crate) fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(
        rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut buf),
        Ok(1) if buf[0] == b'y'
    )
}

/// Resolves a Dockerfile `USER` value against the image whose layers are `layers` (topmost
/// first): the uid, the primary gid, and as supplementary groups the primary one and every
/// group that lists the user by name.
///
/// # Errors
/// A name that the image does not define, or a passwd/group file that cannot be read.
pub fn resolve_user(layers: &[PathBuf], spec: &str) -> Result<User, ResolveUserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let passwd = read_from_layers(layers, Path::new("etc/passwd"))?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_from_layers(layers, Path::new("etc/group"))?
        .map(|t| parse_group(&t))
        .unwrap_or_default();

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd
            .iter()
            .find(|e| e.uid == uid)
            .cloned()
            .or(Some(PasswdEntry {
                name: String::new(),
                uid,
                gid: 0,
            })),
        Err(_) => passwd.iter().find(|e| e.name == user_part).cloned(),
    }
    .ok_or_else(|| ResolveUserError::UnknownUser {
        name: user_part.to_owned(),
    })?;

    let gid = match group_part {
        None | Some("") => entry.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| ResolveUserError::UnknownGroup { name: g.to_owned() })?
                    .gid
            }
        },
    };
    // The primary group is a supplementary group too (as in BuildKit and containerd since the
    // fix for CVE-2023-25173: a process that drops it could otherwise read files its group may
    // not), then every group that lists the user, unless USER named the group itself.
    let mut additional: Vec<u32> = vec![gid];
    if group_part.is_none() && !entry.name.is_empty() {
        for group in &groups {
            if group.members.contains(&entry.name) && !additional.contains(&group.gid) {
                additional.push(group.gid);
            }
        }
    }
    let mut user = User::default();
    user.set_uid(entry.uid);
    user.set_gid(gid);
    user.set_additional_gids(Some(additional));
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let top = dir.path().join("top");
        fs_err::create_dir_all(base.join("etc")).unwrap();
        fs_err::create_dir_all(&top).unwrap();
        fs_err::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n\
             bob:x:1001:100::/:/bin/sh\n",
        )
        .unwrap();
        fs_err::write(
            base.join("etc/group"),
            "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nwheel:x:10:alice,bob\n",
        )
        .unwrap();
        (dir, vec![top, base])
    }

    fn triple(u: &User) -> (u32, u32, Vec<u32>) {
        (
            u.uid(),
            u.gid(),
            u.additional_gids().clone().unwrap_or_default(),
        )
    }

    #[test]
    fn names_numbers_and_supplementary_groups() {
        let (_dir, layers) = image();
        assert_eq!(
            triple(&resolve_user(&layers, "alice").unwrap()),
            (1000, 1000, vec![1000, 100, 10])
        );
        assert_eq!(
            triple(&resolve_user(&layers, "bob").unwrap()),
            (1001, 100, vec![100, 10])
        );
        assert_eq!(
            triple(&resolve_user(&layers, "1000").unwrap()),
            (1000, 1000, vec![1000, 100, 10])
        );
        assert_eq!(
            triple(&resolve_user(&layers, "alice:wheel").unwrap()),
            (1000, 10, vec![10])
        );
        assert_eq!(
            triple(&resolve_user(&layers, "4242:4343").unwrap()),
            (4242, 4343, vec![4343])
        );
        assert_eq!(
            triple(&resolve_user(&layers, "4242").unwrap()),
            (4242, 0, vec![0])
        );
        assert!(matches!(
            resolve_user(&layers, "mallory"),
            Err(ResolveUserError::UnknownUser { .. })
        ));
        assert!(matches!(
            resolve_user(&layers, "alice:nogroup"),
            Err(ResolveUserError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn upper_layer_overrides_and_whiteouts_hide() {
        let (_dir, layers) = image();
        fs_err::create_dir_all(layers[0].join("etc")).unwrap();
        fs_err::write(
            layers[0].join("etc/passwd"),
            "alice:x:2000:2000::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(resolve_user(&layers, "alice").unwrap().uid(), 2000);
        fs_err::remove_file(layers[0].join("etc/passwd")).unwrap();
        nix::sys::stat::mknod(
            &layers[0].join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        assert!(resolve_user(&layers, "alice").is_err());
    }
}
