//! COPY and ADD: sources from the context, a stage or an image, their flags, and the `File`
//! op over a `Local` source that selects only the named paths.

use std::fmt::Write as _;

use hoist_parser::{CopyInstruction, Flag, Span};

use super::error::{FrontendError, FrontendErrorKind};

use crate::graph::VertexId;
use crate::op::{CopyFrom, FileAction, FileOp, Op, SourceOp};

use super::*;

impl Lowering<'_> {
    pub(super) fn copy(
        &mut self,
        state: &mut StageState,
        index: usize,
        step: &str,
        instruction: CopyLike<'_>,
        text: &str,
        span: Span,
    ) -> Result<(), FrontendError> {
        let (name, flags, paths, heredocs, is_add) = match instruction {
            CopyLike::Copy(c) => (
                "COPY",
                check_flags(
                    &c.flags,
                    "COPY",
                    &["from", "chown", "chmod", "link", "parents", "exclude"],
                    &["exclude"],
                )?,
                &c.paths,
                &c.heredocs,
                false,
            ),
            CopyLike::Add(a) => (
                "ADD",
                check_flags(&a.flags, "ADD", &ADD_FLAGS, &["exclude"])?,
                &a.paths,
                &a.heredocs,
                true,
            ),
        };
        if paths.words.len() < 2 {
            return Err(FrontendError::new(
                FrontendErrorKind::Arity {
                    instruction: name,
                    expected: "at least two arguments: one or more sources, then a destination",
                },
                span,
            ));
        }
        let scope = state.scope();
        let flag_text = |flag: Option<&Flag>| -> Result<Option<String>, FrontendError> {
            flag.map(|f| self.expand(f.value.as_deref().unwrap_or(""), &scope, f.span))
                .transpose()
        };
        let chown = flag_text(flags.get("chown"))?.filter(|s| !s.is_empty());
        let chmod_text = flag_text(flags.get("chmod"))?.filter(|s| !s.is_empty());
        let chmod = match flags.get("chmod") {
            Some(flag) => {
                let value = flag_text(Some(flag))?.unwrap_or_default();
                Some(
                    u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            flag_value(flag, value.clone(), "expected an octal mode such as 755")
                        })?,
                )
            }
            None => None,
        };
        let link = flags.contains_key("link");
        // A boolean flag, as BuildKit parses it: bare or `=true` sets it, `=false` clears it.
        let parents = match flags.get("parents") {
            Some(flag) => match flag_text(Some(flag))?.as_deref() {
                None | Some("" | "true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(flag_value(flag, other.to_owned(), "expected true or false"));
                }
            },
            None => false,
        };
        let exclude: Vec<String> = flags
            .get_all("exclude")
            .map(|f| self.expand(f.value.as_deref().unwrap_or(""), &scope, f.span))
            .collect::<Result<_, _>>()?;

        let (sources, dest_word) = paths.words.split_at(paths.words.len() - 1);
        let dest_word = &dest_word[0];
        let dest_raw = self.expand(&dest_word.value, &scope, dest_word.span)?;
        let mut dest = join_path(&state.workdir(), &dest_raw);
        if (dest_raw.ends_with('/') || dest_raw.is_empty() || dest_raw == ".")
            && !dest.ends_with('/')
        {
            dest.push('/');
        }

        // Heredoc sources become files written in place.
        let mut actions = Vec::new();
        let mut src = Vec::new();
        let mut heredoc_names = Vec::new();
        let mut remotes = Vec::new();
        for word in sources {
            if let Some(doc) = heredocs
                .iter()
                .find(|d| heredoc_word(&word.value) == Some(d.name.as_str()))
            {
                heredoc_names.push(doc.name.clone());
                let content = heredoc_content(doc, &scope, self.escape)?;
                let path = if dest.ends_with('/') {
                    format!("{dest}{}", doc.name)
                } else {
                    dest.clone()
                };
                actions.push(FileAction::Mkfile {
                    path,
                    mode: chmod.unwrap_or(0o644),
                    data: content,
                    chown: chown.clone(),
                });
                continue;
            }
            let value = self.expand(&word.value, &scope, word.span)?;
            if is_add && let Some(remote) = remote_source(&value, word.span)? {
                remotes.push((value, remote, word.span));
                continue;
            }
            if !flags.contains_key("from") {
                self.copy_ignored(name, &value, span);
            }
            src.push(value);
        }
        let checksum = flag_text(flags.get("checksum"))?;
        let from_text = flag_text(flags.get("from"))?.unwrap_or_default();
        let keep_git_dir = match flags.get("keep-git-dir") {
            None => false,
            Some(flag) => match flag_text(Some(flag))?.as_deref() {
                None | Some("" | "true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(flag_value(flag, other.to_owned(), "expected true or false"));
                }
            },
        };
        if let Some(flag) = flags.get("checksum") {
            // BuildKit takes one checksum for the one remote source it pins.
            if remotes.len() != 1 || !src.is_empty() {
                return Err(flag_value(
                    flag,
                    checksum.clone().unwrap_or_default(),
                    "--checksum needs exactly one source, a URL or a git repository",
                ));
            }
        }
        if let Some(flag) = flags.get("keep-git-dir")
            && !remotes
                .iter()
                .any(|(_, r, _)| matches!(r, Remote::Git { .. }))
        {
            return Err(flag_value(
                flag,
                flag.value.clone().unwrap_or_default(),
                "--keep-git-dir applies only to a git source",
            ));
        }
        let many = remotes.len() + src.len() > 1;
        let dir_dest = if many && !dest.ends_with('/') {
            format!("{dest}/")
        } else {
            dest.clone()
        };

        let mut inputs = vec![state.root];
        for (written, remote, word_span) in &remotes {
            let (op, src_path) = match remote {
                Remote::Http { url, filename } => {
                    let checksum = match (&checksum, flags.get("checksum")) {
                        (Some(c), Some(flag)) => Some(http_checksum(c, flag)?),
                        _ => None,
                    };
                    (
                        SourceOp::Http {
                            url: url.clone(),
                            checksum,
                            filename: filename.clone(),
                        },
                        filename.clone(),
                    )
                }
                Remote::Git {
                    remote,
                    reference,
                    subdir,
                } => {
                    let checksum = match (&checksum, flags.get("checksum")) {
                        (Some(c), Some(flag)) => Some(git_checksum(c, flag)?),
                        _ => None,
                    };
                    (
                        SourceOp::Git {
                            remote: remote.clone(),
                            reference: reference.clone(),
                            subdir: subdir.clone(),
                            keep_git_dir,
                            checksum,
                        },
                        "/".to_owned(),
                    )
                }
            };
            let vertex = self.graph.add(
                Op::Source(op),
                vec![],
                format!("{step} ADD {written}"),
                self.location(*word_span),
            );
            inputs.push(vertex);
            // A git checkout is a directory: its content goes into the destination, which
            // is a directory whatever its spelling, as BuildKit copies it.
            let dest = match remote {
                Remote::Git { .. } if !dir_dest.ends_with('/') => format!("{dir_dest}/"),
                _ => dir_dest.clone(),
            };
            actions.push(FileAction::Copy {
                src_input: inputs.len() - 1,
                src: vec![src_path],
                dest,
                chown: chown.clone(),
                chmod,
                // As in Docker: what comes from a URL is never extracted.
                unpack_archives: false,
                exclude: Vec::new(),
                link,
                parents: false,
                from: Some(CopyFrom::Remote(written.clone())),
            });
        }
        if !src.is_empty() {
            let mut copy_from = None;
            let src_vertex = match flags.get("from") {
                Some(flag) => {
                    let from = from_text.clone();
                    let platform = state.platform.clone();
                    // The files of a named local context are selected as the main
                    // context's are, by source, not copied whole into a filesystem first.
                    let local = match self.named_context(&from) {
                        Some((name, NamedContext::Local { ignore_patterns }))
                            if self.stage_ref(&from, index).is_none() =>
                        {
                            Some((name, ignore_patterns))
                        }
                        _ => None,
                    };
                    if let Some((name, mut ignore)) = local {
                        if !parents {
                            ignore.extend(exclude.iter().cloned());
                        }
                        copy_from = Some(CopyFrom::Context(name.clone()));
                        let include = if parents {
                            src.clone()
                        } else {
                            context_include(&src)
                        };
                        self.local_source(&name, include, ignore, parents)
                    } else {
                        let (vertex, named) =
                            self.vertex_of_from(&from, index, &platform, step, flag.span)?;
                        copy_from = Some(named);
                        vertex
                    }
                }
                None if parents => self.local_context_parents(&src),
                None => self.local_context(&src, &exclude),
            };
            inputs.push(src_vertex);
            actions.push(FileAction::Copy {
                src_input: inputs.len() - 1,
                src: src.clone(),
                dest: dir_dest.clone(),
                chown: chown.clone(),
                chmod,
                unpack_archives: is_add,
                exclude,
                link,
                parents,
                from: copy_from,
            });
        }
        state.root = self.graph.add(
            Op::File(FileOp {
                actions,
                epoch: self.epoch(),
            }),
            inputs,
            format!("{step} {text}"),
            self.location(span),
        );
        // As BuildKit writes it: the flags that shape the files, the sources (heredocs last),
        // the destination as written; not --from, --link or --exclude.
        let mut created_by = String::from(name);
        if parents {
            created_by.push_str(" --parents");
        }
        if let Some(c) = &chown {
            let _ = write!(created_by, " --chown={c}");
        }
        if let Some(c) = &chmod_text {
            let _ = write!(created_by, " --chmod={c}");
        }
        for (written, _, _) in &remotes {
            let _ = write!(created_by, " {written}");
        }
        for s in &src {
            let _ = write!(created_by, " {s}");
        }
        for h in &heredoc_names {
            let _ = write!(created_by, " <<{h}");
        }
        let _ = write!(created_by, " {dest_raw} # buildkit");
        state.history_layer(created_by);
        Ok(())
    }

    /// The root of what a `--from` names: an earlier stage (lowered on first use), else an
    /// image, resolved for `platform`.
    pub(super) fn vertex_of_from(
        &mut self,
        from: &str,
        index: usize,
        platform: &Platform,
        step: &str,
        span: Span,
    ) -> Result<(VertexId, CopyFrom), FrontendError> {
        if let Some(dep) = self.stage_ref(from, index) {
            return Ok((
                self.lower_stage(dep)?.root,
                CopyFrom::Stage(from.to_owned()),
            ));
        }
        if let Some((name, named)) = self.named_context(from) {
            let (root, ..) = self.named_root(&name, &named, platform, step, span)?;
            let shown = match named {
                NamedContext::Local { .. } => CopyFrom::Context(name),
                _ => CopyFrom::Image(from.to_owned()),
            };
            return Ok((root, shown));
        }
        let resolved = self.resolver.resolve(from, platform).map_err(|cause| {
            FrontendError::new(
                FrontendErrorKind::ResolveFrom {
                    name: from.to_owned(),
                    cause,
                },
                span,
            )
        })?;
        let shown = format!("{step} FROM {}", resolved.pinned);
        let vertex = self.image_vertex(&resolved.pinned, platform, shown, span);
        Ok((vertex, CopyFrom::Image(from.to_owned())))
    }

    /// A source of just the context files that a COPY names.
    pub(super) fn local_context(&mut self, src: &[String], exclude: &[String]) -> VertexId {
        let mut excluded = self.opts.ignore_patterns.clone();
        excluded.extend(exclude.iter().cloned());
        self.local_source("context", context_include(src), excluded, false)
    }

    /// A source of the context files that a `COPY --parents` names: the sources as written
    /// (their `/./` pivots decide where each file lands), less `.dockerignore`. `--exclude`
    /// is the copy's own, matched below the pivot.
    fn local_context_parents(&mut self, src: &[String]) -> VertexId {
        let ignore = self.opts.ignore_patterns.clone();
        self.local_source("context", src.to_vec(), ignore, true)
    }

    /// A source of the files `include` selects in the context `name` (`context`, or a
    /// `--build-context` name).
    pub(super) fn local_source(
        &mut self,
        name: &str,
        mut include: Vec<String>,
        exclude: Vec<String>,
        parents: bool,
    ) -> VertexId {
        include.sort();
        include.dedup();
        let shown = if name == "context" {
            "[internal] load build context".to_owned()
        } else {
            format!("[context {name}] load from client")
        };
        let id = self.graph.add(
            Op::Source(SourceOp::Local {
                name: name.to_owned(),
                include,
                exclude,
                parents,
            }),
            vec![],
            shown,
            None,
        );
        if name == "context" {
            self.context.get_or_insert(id);
        }
        id
    }
}

/// The paths a plain COPY's sources select, as the local source takes them (empty: all).
fn context_include(src: &[String]) -> Vec<String> {
    let include: Vec<String> = src
        .iter()
        .map(|s| {
            s.trim_start_matches("./")
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    if include.iter().any(|s| s.is_empty() || s == ".") {
        return Vec::new();
    }
    include
}

pub(super) enum CopyLike<'a> {
    Copy(&'a CopyInstruction),
    Add(&'a hoist_parser::AddInstruction),
}

/// A source of ADD that is fetched rather than read from the context or a stage.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Remote {
    Http {
        url: String,
        filename: String,
    },
    Git {
        remote: String,
        reference: String,
        subdir: String,
    },
}

/// Tells URLs and git repositories from paths as BuildKit does: `git@host:path`, `git://`
/// and `ssh://` are git, and so is an http(s) URL whose path ends in `.git`; any other
/// http(s) URL is a file to download.
pub(super) fn remote_source(value: &str, span: Span) -> Result<Option<Remote>, FrontendError> {
    let (base, fragment) = match value.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (value, None),
    };
    let web = value.starts_with("http://") || value.starts_with("https://");
    let git = value.starts_with("git@")
        || value.starts_with("git://")
        || value.starts_with("ssh://")
        || (web && {
            let path = base.split('?').next().unwrap_or(base);
            path.trim_end_matches('/').ends_with(".git")
        });
    if git {
        let (reference, subdir) = match fragment {
            Some(f) => f.split_once(':').unwrap_or((f, "")),
            None => ("", ""),
        };
        let subdir = subdir.trim_matches('/');
        if subdir.split('/').any(|c| c == "..") {
            return Err(FrontendError::new(
                FrontendErrorKind::FlagValue {
                    flag: "ADD source".into(),
                    value: value.to_owned(),
                    reason: "the subdirectory of a git source must stay inside the repository"
                        .into(),
                },
                span,
            ));
        }
        return Ok(Some(Remote::Git {
            remote: base.to_owned(),
            reference: reference.to_owned(),
            subdir: subdir.to_owned(),
        }));
    }
    if !web {
        return Ok(None);
    }
    Ok(Some(Remote::Http {
        url: value.to_owned(),
        filename: url_filename(value),
    }))
}

/// The last segment of a URL's path, percent-decoded, as BuildKit names a downloaded file;
/// `__unnamed__` when there is none, or when it would not be a plain file name.
pub(super) fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let decoded = percent_decode(path);
    let name = decoded
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
        "__unnamed__".to_owned()
    } else {
        name.to_owned()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            #[allow(clippy::cast_possible_truncation)] // two hex digits
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `--checksum` of a download: `sha256:` and 64 hex digits.
fn http_checksum(value: &str, flag: &Flag) -> Result<String, FrontendError> {
    let hex = value.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(format!("sha256:{}", hex.to_ascii_lowercase()));
    }
    Err(flag_value(
        flag,
        value.to_owned(),
        "expected sha256: and 64 hex digits, the digest of the downloaded file",
    ))
}

/// `--checksum` of a git source: the commit, in full or a prefix of at least 7 hex digits.
fn git_checksum(value: &str, flag: &Flag) -> Result<String, FrontendError> {
    if (7..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(value.to_ascii_lowercase());
    }
    Err(flag_value(
        flag,
        value.to_owned(),
        "expected the commit the reference must resolve to, at least 7 hex digits",
    ))
}

#[cfg(test)]
mod remote_tests {
    use super::*;

    #[test]
    fn a_url_filename_never_leaves_the_destination() {
        assert_eq!(url_filename("https://h/a/b.tar.gz?x=1#f"), "b.tar.gz");
        assert_eq!(url_filename("https://h/dir/"), "dir");
        assert_eq!(url_filename("https://h"), "__unnamed__");
        assert_eq!(url_filename("https://h/"), "__unnamed__");
        assert_eq!(url_filename("https://h/a/%2e%2e"), "__unnamed__");
        assert_eq!(url_filename("https://h/a/..%2F..%2Fetc%2Fpasswd"), "passwd");
        assert_eq!(url_filename("https://h/my%20file"), "my file");
    }

    #[test]
    fn git_sources_are_told_from_downloads_as_buildkit_does() {
        let span = Span::default();
        assert_eq!(
            remote_source("https://h/o/r.git#v1:sub/dir/", span).unwrap(),
            Some(Remote::Git {
                remote: "https://h/o/r.git".into(),
                reference: "v1".into(),
                subdir: "sub/dir".into(),
            })
        );
        assert!(matches!(
            remote_source("git@github.com:o/r", span).unwrap(),
            Some(Remote::Git { .. })
        ));
        assert!(matches!(
            remote_source("https://h/file.txt", span).unwrap(),
            Some(Remote::Http { .. })
        ));
        assert_eq!(remote_source("local/path", span).unwrap(), None);
        assert!(remote_source("git://h/r#main:../up", span).is_err());
    }
}
