//! Shared helpers: a raw tar writer for crafting hostile archives, a tree fingerprint for
//! comparing directories, and tool lookup that fails under CI.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step should fail the test loudly"
)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

/// Builds tar bytes header by header, with no validation at all: hostile archives need names
/// that well-behaved builders refuse.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

impl RawTar {
    pub fn entry(
        &mut self,
        name: &str,
        typeflag: u8,
        link: &str,
        data: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let put = |h: &mut [u8; 512], range: std::ops::Range<usize>, v: u64| {
            let w = range.len() - 1;
            let s = format!("{v:0w$o}");
            h[range.start..range.start + w].copy_from_slice(s.as_bytes());
        };
        put(&mut h, 100..108, u64::from(mode));
        put(&mut h, 108..116, 0);
        put(&mut h, 116..124, 0);
        put(&mut h, 124..136, data.len() as u64);
        put(&mut h, 136..148, 1_600_000_000);
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, b'0', "", data, 0o644)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, b'5', "", b"", 0o755)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, b'2', target, b"", 0o777)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, b'1', target, b"", 0o644)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// Everything a user would compare about one tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: String,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For files with several links: the first path (sorted) of the inode's group.
    pub link_group: Option<String>,
}

/// Fingerprints a tree: relative path → node. Directory mtimes are included.
pub fn fingerprint(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let mut names: Vec<_> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = fs_err::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let (kind, content) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                fs_err::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        } else if ft.is_file() {
            (
                "file",
                hex::encode(sha2::Sha256::digest(fs_err::read(&p).unwrap())),
            )
        } else if ft.is_char_device() {
            (
                "char",
                format!(
                    "{}:{}",
                    rustix::fs::major(m.rdev()),
                    rustix::fs::minor(m.rdev())
                ),
            )
        } else if ft.is_block_device() {
            (
                "block",
                format!(
                    "{}:{}",
                    rustix::fs::major(m.rdev()),
                    rustix::fs::minor(m.rdev())
                ),
            )
        } else if ft.is_fifo() {
            ("fifo", String::new())
        } else {
            ("other", String::new())
        };
        let link_group = (ft.is_file() && m.nlink() > 1)
            .then(|| inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone());
        out.insert(
            rel.clone(),
            Node {
                kind: kind.to_string(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: if ft.is_symlink() { 0 } else { m.mtime() },
                content,
                xattrs: xattrs(&p),
                link_group,
            },
        );
        if ft.is_dir() {
            walk(root, &p, out, inodes);
        }
    }
}

pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut list = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut list[..]).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let mut v = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..]).unwrap();
        v.truncate(len);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

/// The path of a tool the test needs. Missing: the test fails under `CI=true`; elsewhere
/// too, with a hint, because a skipped check is not a passed one.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is required for this test (apt-get install {name})");
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A VFS capability xattr (revision 2) granting CAP_NET_BIND_SERVICE, effective.
pub fn cap_net_bind_service() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// Sets mtime on a path without following symlinks.
pub fn set_mtime(p: &Path, secs: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A tree with every kind of entry and attribute a layer must carry.
pub fn rich_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mk = |rel: &str| root.join(rel);
    fs_err::create_dir_all(mk("usr/bin")).unwrap();
    fs_err::create_dir_all(mk("tmp")).unwrap();
    fs_err::create_dir_all(mk("etc/deep/er")).unwrap();
    fs_err::write(mk("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs_err::set_permissions(mk("usr/bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    fs_err::write(mk("usr/bin/sg"), b"setgid").unwrap();
    rustix::fs::chown(
        mk("usr/bin/sg"),
        Some(rustix::fs::Uid::from_raw(0)),
        Some(rustix::fs::Gid::from_raw(50)),
    )
    .unwrap();
    fs_err::set_permissions(mk("usr/bin/sg"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    fs_err::set_permissions(mk("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    fs_err::write(mk("usr/bin/ping"), b"ping binary").unwrap();
    rustix::fs::setxattr(
        mk("usr/bin/ping"),
        "security.capability",
        &cap_net_bind_service(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs_err::write(mk("etc/owned"), b"owned by 1234:5678").unwrap();
    rustix::fs::chown(
        mk("etc/owned"),
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
    )
    .unwrap();
    fs_err::write(mk("etc/bigid"), b"big ids need PAX").unwrap();
    rustix::fs::chown(
        mk("etc/bigid"),
        Some(rustix::fs::Uid::from_raw(3_000_000)),
        Some(rustix::fs::Gid::from_raw(4_000_000)),
    )
    .unwrap();
    rustix::fs::setxattr(
        mk("etc/owned"),
        "user.note",
        b"hello\0binary",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        mk("etc/deep"),
        "trusted.keep",
        b"t",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs_err::write(mk("etc/hard1"), b"linked").unwrap();
    fs_err::hard_link(mk("etc/hard1"), mk("etc/deep/hard2")).unwrap();
    fs_err::hard_link(mk("etc/hard1"), mk("usr/hard3")).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", mk("etc/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", mk("etc/abs-link")).unwrap();
    let long = "n".repeat(120);
    fs_err::write(mk(&format!("etc/deep/er/{long}")), b"long name").unwrap();
    std::os::unix::fs::symlink(format!("/{}", "t".repeat(150)), mk("etc/long-target")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        mk("etc/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        mk("etc/loop9"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 9),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        mk("etc/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::chmod(mk("etc/null"), rustix::fs::Mode::from_raw_mode(0o666)).unwrap();
    rustix::fs::chmod(mk("etc/fifo"), rustix::fs::Mode::from_raw_mode(0o640)).unwrap();
    fs_err::write(mk("empty"), b"").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs_err::write(mk("usr/big.bin"), big).unwrap();
    // Fixed mtimes everywhere, directories last (writing children bumps them).
    let mut all = Vec::new();
    collect(root, &mut all);
    for (i, p) in all.iter().enumerate().rev() {
        set_mtime(p, 1_500_000_000 + i as i64);
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<_> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        out.push(p.clone());
        if fs_err::symlink_metadata(&p).unwrap().is_dir() {
            collect(&p, out);
        }
    }
}

/// Lists a tar stream's entry names in order (through the `tar` crate).
pub fn tar_names(bytes: &[u8]) -> Vec<String> {
    let (_, r) = hoist_cache::decompress(bytes).unwrap();
    let mut ar = tar::Archive::new(r);
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

/// An overlay mount that is unmounted when dropped.
pub struct Overlay {
    pub merged: PathBuf,
}

impl Overlay {
    pub fn mount(lowers: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> Self {
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut opts = format!("lowerdir={lower}");
        if let Some((u, w)) = upper {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(merged));
        Self {
            merged: merged.to_path_buf(),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}
