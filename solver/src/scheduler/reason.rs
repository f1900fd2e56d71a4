//! Why a step ran: each step that runs records its inputs ([`StepInputs`]) under its cache key
//! and under its place in the Dockerfile ([`StepIdentity`]); a later build whose step misses
//! the cache compares its inputs with the last ones recorded for the same place, and says what
//! differs ([`explain`]).
//!
//! The record keeps what a user can act on: the instruction as written, the environment a RUN
//! sees (build-args by name, old and new values), the base image reference (with its digest),
//! a digest per file of the context a COPY reads (capped at [`MAX_FILES`] files), and the cache
//! key of each input. It is written once per step that ran and read only for a step that
//! missed: a fully cached build neither reads nor writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{BoxError, BoxFuture, BuildCtx, CacheKey, InputStep};
use crate::graph::Vertex;
use crate::op::{ExecOp, Op, SourceOp};
use crate::progress::{Event, ProgressSink, Stream, error_text};
use std::sync::Arc;

/// The most context files whose digests a record keeps; beyond it, a change among the files
/// left out is reported without names.
pub const MAX_FILES: usize = 100_000;

/// How many changed files a reason names before it says "and N more".
const NAMED_FILES: usize = 5;

/// The longest instruction text quoted in a reason, in characters.
const QUOTED_TEXT: usize = 80;

/// A step's place in a Dockerfile, which stays the same from one build to the next while the
/// instruction there changes: the Dockerfile, the stage, and the instruction's position in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepIdentity {
    /// The Dockerfile, as the build names it (see [`BuildHistory::dockerfile`]).
    pub dockerfile: String,
    /// The stage's name, or `stage-N` for an unnamed one.
    pub stage: String,
    /// 0 for the FROM, then 1, 2, … for the instructions after it.
    pub position: u32,
    /// The image that a `COPY --from` or `RUN --mount=from=` of this instruction names, rather
    /// than the instruction itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_image: bool,
}

impl StepIdentity {
    /// The identity of a vertex of a Dockerfile in `dockerfile`, read from its progress name
    /// (`[stage 2/4] RUN make`, `[stage] FROM …`); `None` for a vertex that is no instruction
    /// of the Dockerfile (internal work, ONBUILD triggers).
    #[must_use]
    pub fn of(vertex: &Vertex, dockerfile: &str) -> Option<Self> {
        vertex.location.as_ref()?;
        let (label, _) = split_name(&vertex.name)?;
        let (stage, position) = match label.rsplit_once(' ') {
            Some((stage, counter)) => {
                let (n, _total) = counter.split_once('/')?;
                (stage, n.parse().ok()?)
            }
            None => (label, 0),
        };
        Some(Self {
            dockerfile: dockerfile.to_owned(),
            stage: stage.to_owned(),
            position,
            from_image: position > 0 && matches!(vertex.op, Op::Source(_)),
        })
    }

    /// The text form under which the index keeps the identity's last record.
    #[must_use]
    pub fn to_key(&self) -> String {
        format!(
            "{}\0{}\0{}{}",
            self.dockerfile,
            self.stage,
            self.position,
            if self.from_image { "\0from" } else { "" }
        )
    }
}

/// `[label] text` split into its label and text.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix('[')?;
    let (label, text) = rest.split_once("] ")?;
    Some((label, text))
}

/// What a step that ran was made from, as recorded for the next build to compare with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInputs {
    pub identity: StepIdentity,
    pub key: CacheKey,
    /// The instruction as written (`RUN make`).
    pub instruction: String,
    pub op: OpInputs,
    pub inputs: Vec<InputInputs>,
    /// The names given as build-args to the build (`--build-arg`), so that a changed variable
    /// is called a build-arg when it was one.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub build_args: BTreeSet<String>,
}

/// What of a step's op a reason can name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpInputs {
    Scratch,
    /// A base image, pinned (`REPO@sha256:…`).
    Image {
        reference: String,
    },
    Context,
    Exec {
        /// sha256 of the command line (it may carry a script of many megabytes).
        args: String,
        env: Vec<(String, String)>,
        cwd: String,
        user: String,
        /// sha256 of the rest: network, security, mounts, epoch.
        rest: String,
    },
    /// sha256 of the file actions (COPY's sources, destination, owner, modes; WORKDIR's path).
    File {
        actions: String,
    },
    Merge,
}

impl OpInputs {
    /// The summary of an op.
    #[must_use]
    pub fn of(op: &Op) -> Self {
        match op {
            Op::Source(SourceOp::Scratch) => Self::Scratch,
            Op::Source(SourceOp::Image { reference, .. }) => Self::Image {
                reference: reference.clone(),
            },
            Op::Source(SourceOp::Local { .. }) => Self::Context,
            // A download or a checkout is named by where it comes from; what it held is its
            // content key, compared as a changed input.
            Op::Source(SourceOp::Http { url, .. }) => Self::Image {
                reference: url.clone(),
            },
            Op::Source(SourceOp::Git {
                remote, reference, ..
            }) => Self::Image {
                reference: format!("{remote}#{reference}"),
            },
            // An OCI layout is named by its manifest digest, as an image is.
            Op::Source(SourceOp::Layout { name, manifest, .. }) => Self::Image {
                reference: format!("{name}@{manifest}"),
            },
            Op::Exec(exec) => {
                let ExecOp {
                    args,
                    env,
                    cwd,
                    user,
                    network,
                    privileged,
                    mounts,
                    epoch,
                } = exec;
                Self::Exec {
                    args: digest_of(args),
                    env: env.clone(),
                    cwd: cwd.clone(),
                    user: user.clone(),
                    rest: digest_of(&(network, privileged, mounts, epoch)),
                }
            }
            Op::File(file) => Self::File {
                actions: digest_of(file),
            },
            Op::Merge(_) => Self::Merge,
        }
    }
}

fn digest_of<T: Serialize>(value: &T) -> String {
    // Plain data types serialize without fail; an empty encoding would only make two values
    // look alike in a reason, never in a key.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// An input of a step: its cache key, and for a context source the files it selected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInputs {
    pub key: CacheKey,
    /// Its progress name (`[build 3/3] RUN make`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<ContextFiles>,
}

/// The files a context source selected: path (relative to the context) → a short digest of
/// its kind, mode and content. At most [`MAX_FILES`] of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextFiles {
    pub files: BTreeMap<String, String>,
    /// More files were selected than are kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Where a solve keeps and finds the inputs of steps (the state root's cache index).
pub trait History: Send + Sync + 'static {
    /// The inputs last recorded for the step at `identity`.
    ///
    /// # Errors
    /// The store cannot be read. The step still runs; its reason says the record is unreadable.
    fn previous<'a>(
        &'a self,
        identity: &'a StepIdentity,
    ) -> BoxFuture<'a, Result<Option<StepInputs>, BoxError>>;

    /// Records the inputs of a step that ran, under its key and as the last of its identity.
    ///
    /// # Errors
    /// The store cannot be written. The build goes on; the step's log says so.
    fn record<'a>(&'a self, inputs: &'a StepInputs) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// What a [`Job`](super::Job) needs to say why its steps ran.
#[derive(Clone)]
pub struct BuildHistory {
    pub store: Arc<dyn History>,
    /// The Dockerfile, as steps of the same file are matched from build to build: its
    /// absolute path for a local build, the name the client gave for a remote one.
    pub dockerfile: String,
    /// The names given with `--build-arg`.
    pub build_args: BTreeSet<String>,
}

impl std::fmt::Debug for BuildHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildHistory")
            .field("dockerfile", &self.dockerfile)
            .field("build_args", &self.build_args)
            .finish_non_exhaustive()
    }
}

/// Why a step whose inputs are `current` missed the cache, given the inputs last recorded for
/// its place (`previous`) and which of its inputs ran in this build (`inputs_ran`, by input).
#[must_use]
pub fn explain(previous: Option<&StepInputs>, current: &StepInputs, inputs_ran: &[bool]) -> String {
    let Some(previous) = previous else {
        return "no earlier build of this step".to_owned();
    };
    if previous.key == current.key {
        return "its earlier result is no longer in the cache".to_owned();
    }
    // A FROM's text names the image pinned by digest: the op says what changed, better.
    let image = matches!(current.op, OpInputs::Image { .. });
    if previous.instruction != current.instruction && !image {
        return format!(
            "the instruction changed (was: {})",
            quoted(&previous.instruction)
        );
    }
    let mut reasons = op_reasons(previous, current);
    // The step above last: what the step itself reads comes first.
    let mut above = None;
    if previous.inputs.len() == current.inputs.len() {
        for (j, (old, new)) in previous.inputs.iter().zip(&current.inputs).enumerate() {
            if old.key == new.key {
                continue;
            }
            if let (Some(old), Some(new)) = (&old.files, &new.files) {
                reasons.push(files_changed(old, new));
                continue;
            }
            let ran = inputs_ran.get(j).copied().unwrap_or(false);
            let verb = if ran { "ran" } else { "changed" };
            if j == 0 {
                above = Some(format!("the step above it {verb}"));
            } else {
                reasons.push(format!("its input {} {verb}", new.name));
            }
        }
    } else {
        reasons.push("its inputs changed".to_owned());
    }
    reasons.extend(above);
    if reasons.is_empty() {
        // Everything recorded is alike, yet the key differs: the content behind a key that
        // is not recorded (an input's files beyond what is kept, say).
        reasons.push("its inputs changed".to_owned());
    }
    reasons.join("; ")
}

fn quoted(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > QUOTED_TEXT || line.len() < text.len() {
        let cut: String = line.chars().take(QUOTED_TEXT).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}

/// What differs in the op itself.
fn op_reasons(previous: &StepInputs, current: &StepInputs) -> Vec<String> {
    let mut reasons = Vec::new();
    match (&previous.op, &current.op) {
        (OpInputs::Image { reference: old }, OpInputs::Image { reference: new }) if old != new => {
            let (old_repo, old_digest) = old.split_once('@').unwrap_or((old, ""));
            let (new_repo, new_digest) = new.split_once('@').unwrap_or((new, ""));
            if old_repo == new_repo {
                reasons.push(format!(
                    "base image digest changed ({} → {})",
                    short_digest(old_digest),
                    short_digest(new_digest)
                ));
            } else {
                reasons.push(format!("base image changed ({old} → {new})"));
            }
        }
        (
            OpInputs::Exec {
                args: old_args,
                env: old_env,
                cwd: old_cwd,
                user: old_user,
                rest: old_rest,
            },
            OpInputs::Exec {
                args,
                env,
                cwd,
                user,
                rest,
            },
        ) => {
            let build_args: BTreeSet<&String> = previous
                .build_args
                .iter()
                .chain(&current.build_args)
                .collect();
            env_reasons(old_env, env, &build_args, &mut reasons);
            if old_args != args {
                reasons.push("the command changed (the shell it runs in)".to_owned());
            }
            if old_cwd != cwd {
                reasons.push(format!("the working directory changed ({old_cwd} → {cwd})"));
            }
            if old_user != user {
                reasons.push(format!(
                    "the user changed ({} → {})",
                    or_root(old_user),
                    or_root(user)
                ));
            }
            if old_rest != rest {
                reasons.push(
                    "its network, security, --mount or SOURCE_DATE_EPOCH settings changed"
                        .to_owned(),
                );
            }
        }
        (OpInputs::File { actions: old }, OpInputs::File { actions: new }) if old != new => {
            reasons.push(
                "what it writes changed (its destination, owner, mode or SOURCE_DATE_EPOCH)"
                    .to_owned(),
            );
        }
        (old, new) if old != new && std::mem::discriminant(old) != std::mem::discriminant(new) => {
            reasons.push("the instruction changed".to_owned());
        }
        _ => {}
    }
    reasons
}

fn or_root(user: &str) -> &str {
    if user.is_empty() { "root" } else { user }
}

fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.is_empty() {
        return "none".to_owned();
    }
    format!("sha256:{}…", &hex[..hex.len().min(12)])
}

/// Variables whose value changed, came or went, by name.
fn env_reasons(
    old: &[(String, String)],
    new: &[(String, String)],
    build_args: &BTreeSet<&String>,
    reasons: &mut Vec<String>,
) {
    // The last value of a name is the one the command sees.
    let old: BTreeMap<&String, &String> = old.iter().map(|(k, v)| (k, v)).collect();
    let new: BTreeMap<&String, &String> = new.iter().map(|(k, v)| (k, v)).collect();
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).copied().collect();
    for name in names {
        let what = if build_args.contains(name) {
            "build-arg"
        } else {
            "variable"
        };
        match (old.get(name), new.get(name)) {
            (Some(a), Some(b)) if a != b => {
                reasons.push(format!("{what} {name} changed ({a} → {b})"));
            }
            (None, Some(b)) => reasons.push(format!("{what} {name} was set ({b})")),
            (Some(a), None) => reasons.push(format!("{what} {name} was unset (was {a})")),
            _ => {}
        }
    }
}

/// `2 files changed: a, b`, naming at most [`NAMED_FILES`].
fn files_changed(old: &ContextFiles, new: &ContextFiles) -> String {
    let mut changed: Vec<String> = Vec::new();
    let mut count = 0usize;
    let mut note = |path: &str, suffix: &str| {
        count += 1;
        if changed.len() < NAMED_FILES {
            changed.push(format!("{path}{suffix}"));
        }
    };
    let paths: BTreeSet<&String> = old.files.keys().chain(new.files.keys()).collect();
    for path in paths {
        match (old.files.get(path), new.files.get(path)) {
            (Some(a), Some(b)) if a != b => note(path, ""),
            (None, Some(_)) => note(path, " (new)"),
            (Some(_), None) => note(path, " (removed)"),
            _ => {}
        }
    }
    if count == 0 {
        return if old.truncated || new.truncated {
            format!("files changed among more than {MAX_FILES} it reads (not listed)")
        } else {
            // Same paths and contents: what differs is how they are selected or linked.
            "the files it reads changed (links or selection)".to_owned()
        };
    }
    let mut text = format!(
        "{count} file{} changed: {}",
        if count == 1 { "" } else { "s" },
        changed.join(", ")
    );
    if count > changed.len() {
        let _ = write!(text, " and {} more", count - changed.len());
    }
    text
}

/// The reason a vertex about to run gives, and the inputs it records once it ran: with
/// `--no-cache` that flag, else what differs from the last build of its step (nothing for a
/// vertex that is no Dockerfile step, or without a history).
pub(super) async fn why<R: Clone + Send + Sync + 'static>(
    build: &BuildCtx<R>,
    vertex: &Vertex,
    key: CacheKey,
    inputs: &[InputStep],
) -> (Option<String>, Option<StepInputs>) {
    let record = build.history.as_ref().and_then(|history| {
        let identity = StepIdentity::of(vertex, &history.dockerfile)?;
        Some(StepInputs {
            identity,
            key,
            instruction: split_name(&vertex.name)
                .map(|(_, text)| text.to_owned())
                .unwrap_or_default(),
            op: OpInputs::of(&vertex.op),
            inputs: inputs
                .iter()
                .map(|input| InputInputs {
                    key: input.key,
                    name: input.vertex.name.clone(),
                    files: match input.vertex.op {
                        Op::Source(SourceOp::Local { .. }) => {
                            build.worker.context_files(&input.vertex)
                        }
                        _ => None,
                    },
                })
                .collect(),
            build_args: history.build_args.clone(),
        })
    });
    if build.no_cache {
        return (Some("--no-cache".to_owned()), record);
    }
    let (Some(history), Some(current)) = (&build.history, &record) else {
        return (None, record);
    };
    let ran: Vec<bool> = inputs.iter().map(|i| i.ran).collect();
    let reason = match history.store.previous(&current.identity).await {
        Ok(previous) => explain(previous.as_ref(), current, &ran),
        Err(err) => format!(
            "unknown: the record of its last build cannot be read ({})",
            error_text(err.as_ref())
        ),
    };
    (Some(reason), record)
}

/// Records the inputs of a step that ran. A record that cannot be written costs the next
/// build its reason, not this build: the step's log says so.
pub(super) async fn record(
    history: &BuildHistory,
    inputs: &StepInputs,
    sink: &Arc<dyn ProgressSink>,
    id: usize,
) {
    if let Err(err) = history.store.record(inputs).await {
        let line = format!(
            "warning: this step's inputs were not recorded, so the next build cannot say why \
             it runs it again: {}\n",
            error_text(err.as_ref())
        );
        sink.event(Event::Log {
            id,
            stream: Stream::Stderr,
            data: line.into_bytes(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::op::{ExecOp, NetworkMode};

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn identity() -> StepIdentity {
        StepIdentity {
            dockerfile: "/src/Dockerfile".into(),
            stage: "stage-0".into(),
            position: 2,
            from_image: false,
        }
    }

    fn exec(env: &[(&str, &str)]) -> OpInputs {
        OpInputs::of(&Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            privileged: false,
            mounts: vec![],
            epoch: None,
        }))
    }

    fn step(k: u8, op: OpInputs, inputs: Vec<InputInputs>) -> StepInputs {
        StepInputs {
            identity: identity(),
            key: key(k),
            instruction: "RUN make".into(),
            op,
            inputs,
            build_args: ["VERSION".to_owned()].into(),
        }
    }

    fn input(k: u8, files: Option<&[(&str, &str)]>) -> InputInputs {
        InputInputs {
            key: key(k),
            name: "[internal] load build context".into(),
            files: files.map(|f| ContextFiles {
                files: f
                    .iter()
                    .map(|(p, d)| ((*p).to_owned(), (*d).to_owned()))
                    .collect(),
                truncated: false,
            }),
        }
    }

    #[test]
    fn identities_come_from_progress_names() {
        let mut g = Graph::new();
        let location = Some(crate::graph::Location {
            line: 3,
            column: 1,
            span: hoist_parser::Span::default(),
        });
        let scratch = g.add(
            Op::Source(SourceOp::Scratch),
            vec![],
            "[build] FROM scratch",
            location.clone(),
        );
        let image = g.add(
            Op::Source(SourceOp::Image {
                reference: "r@sha256:00".into(),
                platform: "linux/amd64".into(),
            }),
            vec![],
            "[build 2/4] FROM r@sha256:00",
            location.clone(),
        );
        let internal = g.add(
            Op::Source(SourceOp::Local {
                name: "context".into(),
                include: vec![],
                exclude: vec![],
                parents: false,
            }),
            vec![],
            "[internal] load build context",
            None,
        );
        let of = |id| StepIdentity::of(g.vertex(id), "Dockerfile");
        let from = of(scratch).unwrap();
        assert_eq!((from.stage.as_str(), from.position), ("build", 0));
        assert!(!from.from_image);
        let copy_from = of(image).unwrap();
        assert_eq!((copy_from.position, copy_from.from_image), (2, true));
        assert_eq!(of(internal), None);
        assert_ne!(from.to_key(), copy_from.to_key());
    }

    #[test]
    fn each_difference_is_named() {
        let old = step(1, exec(&[("VERSION", "1.2"), ("PATH", "/bin")]), vec![]);
        let new = step(2, exec(&[("VERSION", "1.3"), ("PATH", "/bin")]), vec![]);
        assert_eq!(
            explain(Some(&old), &new, &[]),
            "build-arg VERSION changed (1.2 → 1.3)"
        );
        let env = step(2, exec(&[("VERSION", "1.2"), ("PATH", "/usr/bin")]), vec![]);
        assert_eq!(
            explain(Some(&old), &env, &[]),
            "variable PATH changed (/bin → /usr/bin)"
        );
        assert_eq!(explain(None, &new, &[]), "no earlier build of this step");
        assert_eq!(
            explain(Some(&old), &old, &[]),
            "its earlier result is no longer in the cache"
        );
        let mut text = new.clone();
        text.instruction = "RUN make all".into();
        assert_eq!(
            explain(Some(&old), &text, &[]),
            "the instruction changed (was: RUN make)"
        );

        let above = |k| step(k, exec(&[]), vec![input(k, None)]);
        assert_eq!(
            explain(Some(&above(1)), &above(2), &[true]),
            "the step above it ran"
        );
        assert_eq!(
            explain(Some(&above(1)), &above(2), &[false]),
            "the step above it changed"
        );
    }

    #[test]
    fn changed_files_are_named_up_to_a_few() {
        let files =
            |k, f: &[(&str, &str)]| step(k, exec(&[]), vec![input(0, None), input(k, Some(f))]);
        let old = files(1, &[("Cargo.lock", "a"), ("src/main.rs", "b"), ("x", "c")]);
        let new = files(2, &[("Cargo.lock", "A"), ("src/main.rs", "B"), ("x", "c")]);
        assert_eq!(
            explain(Some(&old), &new, &[false, true]),
            "2 files changed: Cargo.lock, src/main.rs"
        );
        let mut below_a_new_step = new.clone();
        below_a_new_step.inputs[0].key = key(9);
        assert_eq!(
            explain(Some(&old), &below_a_new_step, &[true, true]),
            "2 files changed: Cargo.lock, src/main.rs; the step above it ran"
        );
        let many: Vec<(String, String)> = (0..8).map(|i| (format!("f{i}"), "d".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let grown = files(3, &many);
        let text = explain(Some(&old), &grown, &[false, true]);
        assert!(
            text.starts_with("11 files changed: Cargo.lock (removed), f0 (new), f1 (new)"),
            "{text}"
        );
        assert!(text.ends_with(" and 6 more"), "{text}");
    }

    #[test]
    fn base_image_digests_are_told_apart_from_other_images() {
        let image = |k, r: &str| {
            let mut s = step(
                k,
                OpInputs::Image {
                    reference: r.into(),
                },
                vec![],
            );
            s.instruction = "FROM busybox".into();
            s
        };
        let a = image(
            1,
            &format!("docker.io/library/busybox:1@sha256:{}", "a".repeat(64)),
        );
        let b = image(
            2,
            &format!("docker.io/library/busybox:1@sha256:{}", "b".repeat(64)),
        );
        assert_eq!(
            explain(Some(&a), &b, &[]),
            "base image digest changed (sha256:aaaaaaaaaaaa… → sha256:bbbbbbbbbbbb…)"
        );
    }

    #[test]
    fn records_round_trip_as_json() {
        let s = step(1, exec(&[("A", "b")]), vec![input(2, Some(&[("a", "1")]))]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StepInputs>(&json).unwrap(), s);
    }
}
