//! A build context as a Merkle tree of `Directory` messages: which files the Dockerfile can
//! reach, hashed with the stat cache, with every blob the tree names.
//!
//! Only what a COPY, ADD or `RUN --mount=type=bind` source of the main context can select is
//! sent, less what `.dockerignore` excludes. A source that cannot be known before the build
//! (a variable in it) or that is the context itself sends the whole context; a wildcard sends
//! the whole directory before it; a symlink on the way sends its target too. Sending more than
//! a build reads costs bytes, never correctness: the server selects again, as a local build
//! does.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hoist_cache::context::{StatCache, clean_relative};
use hoist_parser::ast::Instruction;
use hoist_parser::ignore::{DirDecision, Matcher};
use hoist_proto::v1::special_node::Kind;
use hoist_proto::v1::{
    Digest, Directory, DirectoryNode, FileNode, NodeMeta, SpecialNode, SymlinkNode, Xattr,
};
use hoist_server::cas::canonical_directory;
use prost::Message as _;
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

/// What part of the context a Dockerfile can read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Everything: a source is the context, or cannot be known before the build.
    pub(crate) whole: bool,
    /// Paths (relative, clean) whose subtrees are sent, with the directories above them.
    pub(crate) roots: BTreeSet<String>,
}

impl Scope {
    fn add(&mut self, source: &str) {
        if source.contains('$') {
            self.whole = true;
            return;
        }
        let clean = clean_relative(source);
        // The directory before the first wildcard: a conservative cover of what it matches.
        let fixed: Vec<&str> = clean
            .split('/')
            .take_while(|c| !c.contains(['*', '?', '[', '\\']))
            .filter(|c| !c.is_empty())
            .collect();
        if fixed.is_empty() {
            self.whole = true;
        } else {
            self.roots.insert(fixed.join("/"));
        }
    }

    /// Whether `rel` is sent: inside a root, or a directory on the way to one.
    fn wants(&self, rel: &str) -> bool {
        self.whole
            || self
                .roots
                .iter()
                .any(|root| under(rel, root) || under(root, rel))
    }

    /// Whether all of `rel`'s subtree is sent.
    fn wants_all_under(&self, rel: &str) -> bool {
        self.whole || self.roots.iter().any(|root| under(rel, root))
    }
}

/// `path` is `base` or inside it.
fn under(path: &str, base: &str) -> bool {
    path == base
        || (path.len() > base.len()
            && path.starts_with(base)
            && path.as_bytes()[base.len()] == b'/')
}

/// The context paths a Dockerfile's instructions can read (see the module's doc).
pub(crate) fn scope(dockerfile_text: &str) -> Scope {
    let mut scope = Scope::default();
    let Ok(file) = hoist_parser::parse(dockerfile_text) else {
        // The build will fail with the parser's message; send everything rather than guess.
        scope.whole = true;
        return scope;
    };
    let has_from = |flags: &[hoist_parser::ast::Flag]| flags.iter().any(|f| f.name == "from");
    for instruction in &file.instructions {
        match instruction {
            Instruction::Copy(copy) if !has_from(&copy.flags) => {
                for source in copy.sources() {
                    if !source.value.starts_with("<<") {
                        scope.add(&source.value);
                    }
                }
            }
            Instruction::Add(add) if !has_from(&add.flags) => {
                for source in add.sources() {
                    let v = &source.value;
                    let remote = v.contains("://") || v.starts_with("git@");
                    if !remote && !v.starts_with("<<") {
                        scope.add(v);
                    }
                }
            }
            Instruction::Run(run) => {
                for flag in run.flags.iter().filter(|f| f.name == "mount") {
                    bind_source(flag.value.as_deref().unwrap_or(""), &mut scope);
                }
            }
            _ => {}
        }
    }
    scope
}

/// Adds the context path a `--mount` reads, if it is a bind mount of the context (bind is
/// the default type).
fn bind_source(spec: &str, scope: &mut Scope) {
    let mut kind = "bind";
    let mut source = "";
    let mut from = false;
    for field in spec.split(',') {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match key.trim().to_ascii_lowercase().as_str() {
            "type" => kind = value,
            "source" | "src" => source = value,
            "from" => from = true,
            _ => {}
        }
    }
    if kind.eq_ignore_ascii_case("bind") && !from {
        scope.add(source);
    }
}

/// Where the bytes of a blob of the tree are.
#[derive(Debug, Clone)]
pub(crate) enum Blob {
    /// A context file, as hashed.
    File { path: PathBuf, size: u64 },
    /// A Directory's encoding (with mtimes when it fits a batch).
    Directory(Vec<u8>),
}

/// A context as a tree, ready to be sent.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) root: Digest,
    /// Every blob the tree names, by hex digest.
    pub(crate) blobs: HashMap<String, (Digest, Blob)>,
    pub(crate) files: u64,
}

/// Directory encodings at most this big are sent with their mtimes, in a batch; a bigger one
/// goes by `Write` in its canonical form (mtimes at 0), whose bytes match its digest exactly.
pub(crate) const MAX_DIRECTORY_WITH_MTIMES: usize = 3 << 20;

/// One directory as walked, before it is hashed.
#[derive(Default)]
struct Walked {
    files: Vec<(Vec<u8>, FileRef, NodeMeta)>,
    dirs: Vec<(Vec<u8>, Walked, NodeMeta)>,
    symlinks: Vec<SymlinkNode>,
    specials: Vec<SpecialNode>,
    /// Where the symlinks met below lead inside the context, as clean relative paths.
    link_targets: BTreeSet<String>,
}

/// A file to hash, with the stat the walk took (the stat cache's check needs no second one).
struct FileRef {
    abs: PathBuf,
    /// The stat cache's key.
    rel: String,
    meta: std::fs::Metadata,
}

impl Walked {
    /// The files of this directory and those below, in the order [`assemble`] takes them.
    fn file_refs<'a>(&'a self, out: &mut Vec<&'a FileRef>) {
        out.extend(self.files.iter().map(|(_, f, _)| f));
        for (_, child, _) in &self.dirs {
            child.file_refs(out);
        }
    }
}

struct Walker<'a> {
    scope: &'a Scope,
    ignore: &'a Matcher,
}

impl Walker<'_> {
    /// Walks the directory `abs` (`rel` in the context); its subdirectories are walked in
    /// parallel.
    fn walk(&self, abs: &Path, rel: &str) -> anyhow::Result<Walked> {
        let mut out = Walked::default();
        let mut children: Vec<_> = fs_err::read_dir(abs)?.collect::<Result<_, _>>()?;
        children.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        let mut subdirs = Vec::new();
        for child in children {
            let name = child.file_name();
            let child_rel = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            if !self.scope.wants(&child_rel) {
                continue;
            }
            let meta = child.metadata()?;
            let child_abs = child.path();
            let ft = meta.file_type();
            if ft.is_dir() {
                let decision = self.ignore.dir_decision(&child_rel);
                if decision == DirDecision::Excluded {
                    continue;
                }
                subdirs.push((name, child_abs, child_rel, meta, decision));
                continue;
            }
            // A symlink on the way to a source is sent, and so is where it leads (see
            // `build`); anything else only inside a source.
            let wanted = ft.is_symlink() || self.scope.wants_all_under(&child_rel);
            if self.ignore.matches(&child_rel) || !wanted {
                continue;
            }
            let node = node_meta(&child_abs, &meta);
            let name = name.as_bytes().to_vec();
            if ft.is_file() {
                out.files.push((
                    name,
                    FileRef {
                        abs: child_abs,
                        rel: child_rel,
                        meta,
                    },
                    node,
                ));
            } else if ft.is_symlink() {
                let target = fs_err::read_link(&child_abs)?;
                let target_bytes = target.as_os_str().as_bytes().to_vec();
                let base = if target.is_absolute() {
                    String::new()
                } else {
                    rel.to_owned()
                };
                let inside = clean_relative(&format!("{base}/{}", target.to_string_lossy()));
                out.link_targets.insert(inside);
                out.symlinks.push(SymlinkNode {
                    name,
                    target: target_bytes,
                    meta: Some(node),
                });
            } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
                let kind = if ft.is_fifo() {
                    Kind::Fifo
                } else if ft.is_char_device() {
                    Kind::CharDevice
                } else {
                    Kind::BlockDevice
                };
                let dev = meta.rdev();
                out.specials.push(SpecialNode {
                    name,
                    kind: kind as i32,
                    major: if ft.is_fifo() {
                        0
                    } else {
                        rustix::fs::major(dev)
                    },
                    minor: if ft.is_fifo() {
                        0
                    } else {
                        rustix::fs::minor(dev)
                    },
                    meta: Some(node),
                });
            }
            // Sockets cannot be part of a layer: a build leaves them out, and so does this.
        }
        let walked: Vec<anyhow::Result<Walked>> = subdirs
            .par_iter()
            .map(|(_, child_abs, child_rel, _, _)| self.walk(child_abs, child_rel))
            .collect();
        for ((name, child_abs, child_rel, meta, decision), walked) in
            subdirs.into_iter().zip(walked)
        {
            let mut walked = walked?;
            out.link_targets.append(&mut walked.link_targets);
            let empty = walked.files.is_empty()
                && walked.dirs.is_empty()
                && walked.symlinks.is_empty()
                && walked.specials.is_empty();
            // A directory the patterns exclude is sent only for what it holds that they
            // let back in; one on the way to a source, only if the source is there.
            let on_the_way = !self.scope.wants_all_under(&child_rel);
            if empty && (decision == DirDecision::MustDescend || on_the_way) {
                continue;
            }
            out.dirs.push((
                name.as_bytes().to_vec(),
                walked,
                node_meta(&child_abs, &meta),
            ));
        }
        Ok(out)
    }
}

/// Mode with setuid, setgid and sticky, owners, mtime and xattrs of an entry.
fn node_meta(path: &Path, meta: &std::fs::Metadata) -> NodeMeta {
    NodeMeta {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        xattrs: xattrs(path),
    }
}

/// An entry's xattrs by name. An SELinux label says where the file sits on this host, not
/// what it is, so it is left out.
fn xattrs(path: &Path) -> Vec<Xattr> {
    let mut names = vec![0u8; 1024];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 64 << 10];
        if let Ok(len) = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]) {
            value.truncate(len);
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Selects, hashes and builds the tree of the context at `root` that `scope` covers, less
/// what `ignore` excludes.
pub(crate) fn build(
    root: &Path,
    scope: &Scope,
    ignore: &Matcher,
    cache: &StatCache,
) -> anyhow::Result<Tree> {
    // A symlink reached may lead elsewhere in the context, which COPY follows when the link
    // is on a source's path: walk again with its target until nothing new is reached.
    let mut scope_now = Scope {
        whole: scope.whole,
        roots: scope.roots.clone(),
    };
    let mut walked;
    let mut rounds = 0;
    loop {
        let walker = Walker {
            scope: &scope_now,
            ignore,
        };
        walked = walker
            .walk(root, "")
            .with_context(|| format!("reading the build context {}", root.display()))?;
        let new: Vec<String> = walked
            .link_targets
            .iter()
            .filter(|t| !t.is_empty() && !scope_now.wants_all_under(t))
            .cloned()
            .collect();
        let targets_whole = walked.link_targets.iter().any(String::is_empty);
        rounds += 1;
        if (new.is_empty() && (!targets_whole || scope_now.whole)) || rounds > 40 {
            break;
        }
        let mut roots = scope_now.roots.clone();
        roots.extend(new);
        scope_now = Scope {
            whole: scope_now.whole || targets_whole,
            roots,
        };
    }
    let mut files = Vec::new();
    walked.file_refs(&mut files);
    let digests: Vec<String> = files
        .par_iter()
        .map(|f| {
            cache
                .file_digest_with_stat(&f.abs, &f.rel, &f.meta)
                .with_context(|| format!("hashing {}", f.abs.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut blobs = HashMap::new();
    for (f, hex) in files.iter().zip(&digests) {
        let digest = Digest {
            hash: hex.clone(),
            size_bytes: i64::try_from(f.meta.len()).unwrap_or(i64::MAX),
        };
        blobs.insert(
            hex.clone(),
            (
                digest,
                Blob::File {
                    path: f.abs.clone(),
                    size: f.meta.len(),
                },
            ),
        );
    }
    let count = files.len() as u64;
    drop(files);
    let root_digest = assemble(
        walked,
        b"",
        &mut digests.into_iter(),
        &mut HashMap::new(),
        &mut blobs,
    );
    Ok(Tree {
        root: root_digest,
        blobs,
        files: count,
    })
}
/// The Directory of `walked`, its digest, and those of the directories below, into `blobs`.
///
/// `rel` is the directory's path from the root; `linked` holds the first path met of each
/// file with more than one link, so that the later ones go as hardlinks of it (COPY keeps
/// hardlinks, so the server's tree must have them too).
fn assemble(
    walked: Walked,
    rel: &[u8],
    digests: &mut impl Iterator<Item = String>,
    linked: &mut HashMap<(u64, u64), Vec<u8>>,
    blobs: &mut HashMap<String, (Digest, Blob)>,
) -> Digest {
    let path_of = |name: &[u8]| {
        let mut path = rel.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        path
    };
    let mut dir = Directory {
        files: walked
            .files
            .into_iter()
            .map(|(name, file, meta)| {
                let hardlink = if file.meta.nlink() > 1 {
                    let id = (file.meta.dev(), file.meta.ino());
                    match linked.get(&id) {
                        Some(first) => first.clone(),
                        None => {
                            linked.insert(id, path_of(&name));
                            Vec::new()
                        }
                    }
                } else {
                    Vec::new()
                };
                FileNode {
                    digest: Some(Digest {
                        hash: digests.next().unwrap_or_default(),
                        size_bytes: i64::try_from(file.meta.len()).unwrap_or(i64::MAX),
                    }),
                    name,
                    meta: Some(meta),
                    hardlink,
                }
            })
            .collect(),
        directories: Vec::new(),
        symlinks: walked.symlinks,
        specials: walked.specials,
    };
    for (name, child, meta) in walked.dirs {
        let digest = assemble(child, &path_of(&name), digests, linked, blobs);
        dir.directories.push(DirectoryNode {
            name,
            digest: Some(digest),
            meta: Some(meta),
        });
    }
    let canonical = canonical_directory(&dir);
    let digest = Digest {
        hash: hex::encode(Sha256::digest(&canonical)),
        size_bytes: i64::try_from(canonical.len()).unwrap_or(i64::MAX),
    };
    let full = dir.encode_to_vec();
    let bytes = if full.len() <= MAX_DIRECTORY_WITH_MTIMES {
        full
    } else {
        canonical
    };
    blobs.insert(
        digest.hash.clone(),
        (digest.clone(), Blob::Directory(bytes)),
    );
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(text: &str) -> (bool, Vec<String>) {
        let s = scope(text);
        (s.whole, s.roots.into_iter().collect())
    }

    #[test]
    fn the_scope_is_what_copy_add_and_bind_mounts_can_read() {
        let (whole, r) = roots(
            "FROM a AS b\nCOPY src/main.rs lib/*.rs /app/\nCOPY --from=b /x /y\n\
             ADD https://e.invalid/f /f\nADD vendor.tar /v\n\
             RUN --mount=type=bind,source=tools,target=/t --mount=type=cache,target=/c true\n\
             RUN --mount=type=bind,from=b,source=/z,target=/z true\n",
        );
        assert!(!whole);
        assert_eq!(r, ["lib", "src/main.rs", "tools", "vendor.tar"]);
        assert!(roots("FROM a\nCOPY . /src\n").0);
        assert!(roots("FROM a\nARG D\nCOPY $D /src\n").0);
        assert!(roots("FROM a\nCOPY *.go /src/\n").0);
        // A bind mount with no source mounts the context's root.
        assert!(roots("FROM a\nRUN --mount=target=/src make\n").0);
        assert!(!roots("FROM a\nCOPY <<EOF /x\nhi\nEOF\n").0);
    }
}
