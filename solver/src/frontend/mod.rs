//! The Dockerfile frontend: a parsed [`Dockerfile`] becomes vertices of a [`Graph`] and the
//! image config of the target stage, with BuildKit's semantics.
//!
//! - The file splits into stages at each FROM. ARGs before the first FROM are global: they are
//!   usable in FROM lines, and a bare `ARG NAME` inside a stage imports the global value.
//! - Stages are lowered on demand, starting from the target (`--target`, else the last stage):
//!   a stage nobody reaches is never lowered, so its base image is never even resolved.
//! - Word expansion happens where BuildKit expands (ADD, COPY, ENV, EXPOSE, FROM, LABEL,
//!   STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults, and flag values), never in the bodies of
//!   RUN, CMD, ENTRYPOINT or SHELL. An ENV beats an ARG of the same name.
//! - RUN becomes an `Exec` op whose environment holds the image ENV and the ARGs in scope, so a
//!   changed build-arg invalidates from its first use on. Proxy ARGs (`HTTP_PROXY` and the like)
//!   reach the process without entering the op's digest or the history.
//! - COPY and ADD become `File` ops over a `Local` source that selects only the named paths,
//!   so a change to another file of the context leaves the step cached.

mod config;
mod error;
mod gofmt;
mod scope;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::platform::Platform;
use hoist_parser::shell::{Env, Lexer};
use hoist_parser::{
    Command, CopyInstruction, Dockerfile, Flag, Heredoc, Instruction, LineIndex, Span, Spanned,
};

pub use config::{HealthConfig, HistoryEntry, ImageConfig};
pub use error::{FrontendError, FrontendErrorKind};
use scope::{EnvList, Scope, StageArgs};

use crate::graph::{Graph, Location, VertexId};
use crate::op::{CopyFrom, ExecOp, FileAction, FileOp, NetworkMode, Op, SourceOp};

/// The default shell of shell-form RUN, CMD and ENTRYPOINT on Linux.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The `comment` of every history entry a Dockerfile step writes, as BuildKit's.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// `PATH` of a Linux stage whose base sets none (BuildKit and Docker add it to the config).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The flags ADD accepts.
const ADD_FLAGS: [&str; 7] = [
    "chown",
    "chmod",
    "link",
    "exclude",
    "keep-git-dir",
    "checksum",
    "unpack",
];

/// Build-args that reach RUN without being declared, and stay out of cache keys and history.
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What the user asked for, beyond the Dockerfile.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--platform`; the host's by default.
    pub target_platform: Platform,
    /// The platform hoist runs on.
    pub build_platform: Platform,
    /// `--network` for every RUN without its own `--network`.
    pub network: NetworkMode,
    /// `--label K=V`, applied to the final image.
    pub labels: BTreeMap<String, String>,
    /// `.dockerignore` patterns of the context.
    pub ignore_patterns: Vec<String>,
    /// Whether `RUN --security=insecure` is granted (`--allow security.insecure`).
    pub allow_insecure: bool,
    /// Whether `RUN --network=host` is granted (`--allow network.host`). The build's own
    /// `--network host`, the user's explicit choice, needs no grant.
    pub allow_network_host: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
            network: NetworkMode::Default,
            labels: BTreeMap::new(),
            ignore_patterns: Vec::new(),
            allow_insecure: false,
            allow_network_host: false,
        }
    }
}

/// A base image, resolved to the manifest digest that pins it.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The normalized reference with its digest, e.g.
    /// `docker.io/library/busybox@sha256:…`. This is what the source op records.
    pub pinned: String,
    pub config: ImageConfig,
    /// The image's history, which the built image's history continues.
    pub history: Vec<HistoryEntry>,
}

/// Resolves base images while lowering (BuildKit's "metadata resolver").
pub trait ImageResolver {
    /// Resolves a reference for a platform.
    ///
    /// # Errors
    /// Why the image cannot be had, with its causes.
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, crate::scheduler::BoxError>;
}

/// The result of lowering: the graph and what the target stage produces.
#[derive(Debug)]
pub struct BuildPlan {
    pub graph: Graph,
    /// The target stage's final filesystem.
    pub root: VertexId,
    pub config: ImageConfig,
    /// MAINTAINER, which Docker records as the image's author.
    pub author: Option<String>,
    pub history: Vec<HistoryEntry>,
    /// Proxy build-args: given to every RUN, never part of a digest.
    pub proxy_env: Vec<(String, String)>,
    /// The stages that were lowered, by name or index, in the order they were reached.
    pub stages: Vec<String>,
    /// Build-args that no reached ARG declared (Docker warns about these).
    pub unused_build_args: Vec<String>,
}

/// Lowers a Dockerfile into a build plan.
///
/// # Errors
/// A [`FrontendError`] with the span of the instruction or word at fault.
pub fn lower(
    file: &Dockerfile,
    source: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildPlan, FrontendError> {
    let mut lowering = Lowering::new(file, source, opts, resolver)?;
    let target = lowering.target_index()?;
    lowering.lower_stage(target)?;
    let stage = lowering
        .lowered
        .get_mut(target)
        .and_then(Option::take)
        .ok_or_else(|| FrontendError::new(FrontendErrorKind::NoFrom, Span::default()))?;
    let mut config = stage.config;
    config
        .labels
        .extend(opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let unused_build_args = opts
        .build_args
        .keys()
        .filter(|k| {
            !lowering.used_args.contains(*k)
                && !PROXY_ARGS.contains(&k.as_str())
                // Read by the build itself (the image's created time), as in BuildKit.
                && k.as_str() != "SOURCE_DATE_EPOCH"
        })
        .cloned()
        .collect();
    Ok(BuildPlan {
        graph: lowering.graph,
        root: stage.root,
        config,
        author: stage.author,
        history: stage.history,
        proxy_env: proxy_env(opts),
        stages: lowering.order,
        unused_build_args,
    })
}

fn proxy_env(opts: &BuildOptions) -> Vec<(String, String)> {
    opts.build_args
        .iter()
        .filter(|(k, _)| PROXY_ARGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One `FROM` section of the file.
struct StageDef<'a> {
    /// The lowercased stage name, if it has one.
    name: Option<String>,
    from: &'a hoist_parser::FromInstruction,
    body: &'a [Instruction],
}

/// A stage after lowering.
#[derive(Clone)]
struct Lowered {
    root: VertexId,
    config: ImageConfig,
    author: Option<String>,
    history: Vec<HistoryEntry>,
    platform: Platform,
}

struct Lowering<'a> {
    source: &'a str,
    escape: char,
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    index: LineIndex,
    stages: Vec<StageDef<'a>>,
    /// Stage names to their indices.
    stage_names: HashMap<String, usize>,
    lowered: Vec<Option<Lowered>>,
    in_progress: Vec<bool>,
    /// Global ARGs with their values (a build-arg, else the default); the last declaration of
    /// a name counts.
    globals: HashMap<String, Option<String>>,
    /// What FROM lines and global ARG defaults expand against: the platform ARGs, then the
    /// global ARGs that have a value.
    global_scope: HashMap<String, String>,
    used_args: BTreeSet<String>,
    graph: Graph,
    order: Vec<String>,
    context: Option<VertexId>,
}

impl<'a> Lowering<'a> {
    fn new(
        file: &'a Dockerfile,
        source: &'a str,
        opts: &'a BuildOptions,
        resolver: &'a dyn ImageResolver,
    ) -> Result<Self, FrontendError> {
        let mut lowering = Self {
            source,
            escape: file.escape,
            opts,
            resolver,
            index: LineIndex::new(source),
            stages: Vec::new(),
            stage_names: HashMap::new(),
            lowered: Vec::new(),
            in_progress: Vec::new(),
            globals: HashMap::new(),
            global_scope: HashMap::new(),
            used_args: BTreeSet::new(),
            graph: Graph::new(),
            order: Vec::new(),
            context: None,
        };
        lowering.global_scope = lowering.platform_args().into_iter().collect();
        let mut rest = file.instructions.as_slice();
        // Global ARGs, before the first FROM.
        while let Some((first, tail)) = rest.split_first() {
            match first {
                Instruction::From(_) => break,
                Instruction::Arg(arg) => {
                    for decl in &arg.args {
                        let value = match opts.build_args.get(&decl.name) {
                            Some(v) => {
                                lowering.used_args.insert(decl.name.clone());
                                Some(v.clone())
                            }
                            None => match &decl.default {
                                Some(d) => {
                                    Some(lowering.expand(d, &lowering.global_scope, decl.span)?)
                                }
                                None => None,
                            },
                        };
                        if let Some(v) = &value {
                            lowering.global_scope.insert(decl.name.clone(), v.clone());
                        }
                        lowering.globals.insert(decl.name.clone(), value);
                    }
                }
                other => {
                    return Err(FrontendError::new(
                        FrontendErrorKind::BeforeFrom {
                            instruction: keyword_upper(other),
                        },
                        other.keyword_span(),
                    ));
                }
            }
            rest = tail;
        }
        // Stages.
        while let Some((Instruction::From(from), tail)) = rest.split_first() {
            let end = tail
                .iter()
                .position(|i| matches!(i, Instruction::From(_)))
                .unwrap_or(tail.len());
            let name = match from.args.len() {
                1 => None,
                3 if from.args[1].value.eq_ignore_ascii_case("as") => {
                    let name = from.args[2].value.to_ascii_lowercase();
                    if !valid_stage_name(&name) {
                        return Err(FrontendError::new(
                            FrontendErrorKind::StageName {
                                name: from.args[2].value.clone(),
                            },
                            from.args[2].span,
                        ));
                    }
                    if lowering.stage_names.contains_key(&name) {
                        return Err(FrontendError::new(
                            FrontendErrorKind::DuplicateStage { name },
                            from.args[2].span,
                        ));
                    }
                    Some(name)
                }
                n => {
                    return Err(FrontendError::new(
                        FrontendErrorKind::FromArity { found: n },
                        from.span,
                    ));
                }
            };
            if let Some(name) = &name {
                lowering
                    .stage_names
                    .insert(name.clone(), lowering.stages.len());
            }
            lowering.stages.push(StageDef {
                name,
                from,
                body: &tail[..end],
            });
            rest = &tail[end..];
        }
        if lowering.stages.is_empty() {
            return Err(FrontendError::new(
                FrontendErrorKind::NoFrom,
                Span::new(0, source.len().min(1)),
            ));
        }
        lowering.lowered = vec![None; lowering.stages.len()];
        lowering.in_progress = vec![false; lowering.stages.len()];
        Ok(lowering)
    }

    fn target_index(&self) -> Result<usize, FrontendError> {
        let Some(target) = &self.opts.target else {
            return Ok(self.stages.len() - 1);
        };
        let wanted = target.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&wanted))
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                FrontendError::new(
                    FrontendErrorKind::UnknownTarget {
                        name: target.clone(),
                        known: if known.is_empty() {
                            "unnamed".to_owned()
                        } else {
                            known.join(", ")
                        },
                    },
                    Span::default(),
                )
            })
    }

    fn platform_args(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (prefix, p) in [
            ("TARGET", &self.opts.target_platform),
            ("BUILD", &self.opts.build_platform),
        ] {
            out.push((format!("{prefix}PLATFORM"), p.to_string()));
            out.push((format!("{prefix}OS"), p.os.clone()));
            out.push((format!("{prefix}ARCH"), p.architecture.clone()));
            out.push((
                format!("{prefix}VARIANT"),
                p.variant.clone().unwrap_or_default(),
            ));
        }
        out
    }

    fn expand(&self, word: &str, scope: &dyn Env, span: Span) -> Result<String, FrontendError> {
        Lexer::new(self.escape)
            .process_word(word, scope)
            .map_err(expand_error(word, span))
    }

    /// As [`Self::expand`], but borrows a word in which nothing can expand.
    fn expand_cow<'w>(
        &self,
        word: &'w str,
        scope: &dyn Env,
        span: Span,
    ) -> Result<Cow<'w, str>, FrontendError> {
        Lexer::new(self.escape)
            .process_word_cow(word, scope)
            .map_err(expand_error(word, span))
    }

    fn expand_words(
        &self,
        word: &str,
        scope: &dyn Env,
        span: Span,
    ) -> Result<Vec<String>, FrontendError> {
        Lexer::new(self.escape)
            .process_words(word, scope)
            .map_err(expand_error(word, span))
    }

    fn location(&self, span: Span) -> Option<Location> {
        let (line, column) = self.index.line_col(self.source, span.start);
        Some(Location { line, column, span })
    }

    fn stage_label(&self, index: usize) -> String {
        self.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    /// The stage an expanded name refers to: a stage name defined before `before`, or a
    /// stage index.
    fn stage_ref(&self, name: &str, before: usize) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        if let Some(&i) = self.stage_names.get(&lower).filter(|&&i| i < before) {
            return Some(i);
        }
        name.parse::<usize>().ok().filter(|&i| i < before)
    }

    /// The stage at `index`, lowered on first use. Lowered stages are lent, not copied: only a
    /// stage built FROM another copies that one's config and history.
    fn lower_stage(&mut self, index: usize) -> Result<&Lowered, FrontendError> {
        let lowered = match self.lowered[index].take() {
            Some(done) => done,
            None => self.lower_new_stage(index)?,
        };
        Ok(self.lowered[index].insert(lowered))
    }

    fn lower_new_stage(&mut self, index: usize) -> Result<Lowered, FrontendError> {
        if self.in_progress[index] {
            return Err(FrontendError::new(
                FrontendErrorKind::Cycle {
                    name: self.stage_label(index),
                },
                self.stages[index].from.span,
            ));
        }
        self.in_progress[index] = true;
        let from = self.stages[index].from;
        let body = self.stages[index].body;
        let label = self.stage_label(index);

        // FROM: expanded with the global scope only.
        let scope = &self.global_scope;
        let flags = check_flags(&from.flags, "FROM", &["platform"], &[])?;
        let platform = match flags.get("platform") {
            Some(flag) => {
                let raw = flag.value.clone().unwrap_or_default();
                let value = self.expand(&raw, scope, flag.span)?;
                value.parse::<Platform>().map_err(|_| {
                    FrontendError::new(FrontendErrorKind::Platform { value }, flag.span)
                })?
            }
            None => self.opts.target_platform.clone(),
        };
        let image_word = &from.args[0];
        let base_name = self.expand(&image_word.value, scope, image_word.span)?;
        let mut state = if let Some(dep) = self.stage_ref(&base_name, index) {
            let base = self.lower_stage(dep)?;
            // A stage built on another keeps its platform unless FROM names one.
            let platform = if flags.contains_key("platform") {
                platform
            } else {
                base.platform.clone()
            };
            StageState::from_base(
                base.root,
                base.config.clone(),
                base.history.clone(),
                platform,
            )
        } else if base_name.eq_ignore_ascii_case("scratch") {
            let root = self.graph.add(
                Op::Source(SourceOp::Scratch),
                vec![],
                format!("[{label}] FROM scratch"),
                self.location(from.span),
            );
            // BuildKit's empty image works in `/`.
            let config = ImageConfig {
                working_dir: "/".into(),
                ..ImageConfig::default()
            };
            StageState::from_base(root, config, Vec::new(), platform)
        } else {
            let resolved = self
                .resolver
                .resolve(&base_name, &platform)
                .map_err(|cause| {
                    FrontendError::new(
                        FrontendErrorKind::Resolve {
                            reference: base_name.clone(),
                            cause,
                        },
                        image_word.span,
                    )
                })?;
            let root = self.graph.add(
                Op::Source(SourceOp::Image {
                    reference: resolved.pinned.clone(),
                    platform: platform.to_string(),
                }),
                vec![],
                format!("[{label}] FROM {}", resolved.pinned),
                self.location(from.span),
            );
            StageState::from_base(root, resolved.config, resolved.history, platform)
        };

        // Every Linux stage has a PATH, as in BuildKit: a base without one gets the default.
        if state.platform.os != "windows" && state.env.get("PATH").is_none() {
            state.env.set("PATH", DEFAULT_PATH);
        }

        // Triggers of the base run first, then are gone from the child's config.
        let triggers = std::mem::take(&mut state.config.on_build);
        for trigger in triggers {
            self.run_trigger(&mut state, index, &label, &trigger, &base_name, from.span)?;
        }
        let total = body.len();
        for (n, instruction) in body.iter().enumerate() {
            let step = format!("[{label} {}/{total}]", n + 1);
            self.dispatch(&mut state, index, &step, instruction)?;
        }

        self.in_progress[index] = false;
        self.order.push(label);
        Ok(state.finish())
    }

    fn run_trigger(
        &mut self,
        state: &mut StageState,
        index: usize,
        label: &str,
        trigger: &str,
        from: &str,
        span: Span,
    ) -> Result<(), FrontendError> {
        let trigger_error = |message: String| {
            FrontendError::new(
                FrontendErrorKind::Trigger {
                    trigger: trigger.to_owned(),
                    from: from.to_owned(),
                    message,
                },
                span,
            )
        };
        let parsed = hoist_parser::parse(trigger).map_err(|e| trigger_error(e.to_string()))?;
        for instruction in &parsed.instructions {
            if matches!(instruction, Instruction::From(_) | Instruction::Onbuild(_)) {
                return Err(trigger_error(format!(
                    "{} is not allowed as an ONBUILD trigger",
                    keyword_upper(instruction)
                )));
            }
            // Spans of a trigger point into the trigger text, not the Dockerfile: report
            // problems at the FROM line that inherited it.
            let step = format!("[{label} onbuild]");
            let raw = instruction.span().slice(trigger);
            self.dispatch_at(state, index, &step, instruction, raw, Some(span))
                .map_err(|e| trigger_error(e.kind.to_string()))?;
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        state: &mut StageState,
        index: usize,
        step: &str,
        instruction: &Instruction,
    ) -> Result<(), FrontendError> {
        let raw = instruction.span().slice(self.source);
        self.dispatch_at(state, index, step, instruction, raw, None)
    }

    /// Applies one instruction, written as `raw`. `at` overrides where vertices say they come
    /// from (for ONBUILD triggers, whose text is not part of this Dockerfile). Only the steps
    /// that make a vertex summarize `raw` into their name: an instruction may be megabytes long.
    #[allow(clippy::too_many_lines)] // one arm per instruction reads best side by side
    fn dispatch_at(
        &mut self,
        state: &mut StageState,
        index: usize,
        step: &str,
        instruction: &Instruction,
        raw: &str,
        at: Option<Span>,
    ) -> Result<(), FrontendError> {
        let span = at.unwrap_or_else(|| instruction.span());
        match instruction {
            Instruction::Arg(arg) => {
                check_flags(&arg.flags, "ARG", &[], &[])?;
                let mut commit = Vec::new();
                for decl in &arg.args {
                    let value = if let Some(v) = self.opts.build_args.get(&decl.name) {
                        Some(v.clone())
                    } else if let Some(d) = &decl.default {
                        Some(self.expand(d, &state.scope(), decl.span)?)
                    } else if let Some(v) = self.globals.get(&decl.name) {
                        v.clone()
                    } else {
                        self.platform_args()
                            .into_iter()
                            .find(|(k, _)| *k == decl.name)
                            .map(|(_, v)| v)
                    };
                    self.used_args.insert(decl.name.clone());
                    commit.push(match &value {
                        Some(v) => format!("{}={v}", decl.name),
                        None => decl.name.clone(),
                    });
                    state.args.declare(&decl.name, value);
                }
                state.history_config(format!("ARG {}", commit.join(" ")));
            }
            Instruction::Env(env) => {
                check_flags(&env.flags, "ENV", &[], &[])?;
                let scope = state.scope();
                let mut pairs = Vec::new();
                for pair in &env.pairs {
                    let key = self.expand(&pair.key, &scope, pair.span)?;
                    let value = self.expand_cow(&pair.value, &scope, pair.span)?;
                    pairs.push((key, value));
                }
                for (k, v) in &pairs {
                    state.env.set(k, v);
                }
                state.history_config(pairs_line("ENV", &pairs));
            }
            Instruction::Label(label) => {
                check_flags(&label.flags, "LABEL", &[], &[])?;
                // Borrowed field by field: the loop below writes to the config meanwhile.
                let scope = Scope {
                    env: &state.env,
                    args: &state.args,
                };
                let mut pairs = Vec::new();
                for pair in &label.pairs {
                    let key = self.expand(&pair.key, &scope, pair.span)?;
                    let value = self.expand_cow(&pair.value, &scope, pair.span)?;
                    pairs.push((key, value));
                }
                state.history_config(pairs_line("LABEL", &pairs));
                state
                    .config
                    .labels
                    .extend(pairs.into_iter().map(|(k, v)| (k, v.into_owned())));
            }
            Instruction::Maintainer(m) => {
                check_flags(&m.flags, "MAINTAINER", &[], &[])?;
                state.author = m.name.as_ref().map(|n| n.value.clone());
                state.history_config(format!(
                    "MAINTAINER {}",
                    state.author.as_deref().unwrap_or_default()
                ));
            }
            Instruction::User(user) => {
                check_flags(&user.flags, "USER", &[], &[])?;
                let value = required(user.user.as_ref(), "USER", "a user name or uid", span)?;
                state.config.user = self.expand(&value.value, &state.scope(), value.span)?;
                state.history_config(format!("USER {}", state.config.user));
            }
            Instruction::Stopsignal(s) => {
                check_flags(&s.flags, "STOPSIGNAL", &[], &[])?;
                let value = required(s.signal.as_ref(), "STOPSIGNAL", "a signal", span)?;
                state.config.stop_signal = self.expand(&value.value, &state.scope(), value.span)?;
                state.history_config(format!("STOPSIGNAL {}", state.config.stop_signal));
            }
            Instruction::Expose(e) => {
                check_flags(&e.flags, "EXPOSE", &[], &[])?;
                // Borrowed field by field: the loop below writes to the config meanwhile.
                let scope = Scope {
                    env: &state.env,
                    args: &state.args,
                };
                let mut listed = Vec::new();
                for port in &e.ports {
                    for word in self.expand_words(&port.value, &scope, port.span)? {
                        for p in expose_ports(&word).map_err(|reason| {
                            FrontendError::new(
                                FrontendErrorKind::FlagValue {
                                    flag: "port".into(),
                                    value: word.clone(),
                                    reason,
                                },
                                port.span,
                            )
                        })? {
                            state.config.exposed_ports.insert(p.clone());
                            listed.push(p);
                        }
                    }
                }
                state.history_config(format!("EXPOSE {}", gofmt::list_v(&listed)));
            }
            Instruction::Volume(v) => {
                check_flags(&v.flags, "VOLUME", &[], &[])?;
                // Borrowed field by field: the loop below writes to the config meanwhile.
                let scope = Scope {
                    env: &state.env,
                    args: &state.args,
                };
                let mut listed = Vec::new();
                for word in &v.paths.words {
                    let path = self.expand(&word.value, &scope, word.span)?;
                    if path.is_empty() {
                        return Err(FrontendError::new(
                            FrontendErrorKind::Arity {
                                instruction: "VOLUME",
                                expected: "non-empty paths",
                            },
                            word.span,
                        ));
                    }
                    state.config.volumes.insert(path.clone());
                    listed.push(path);
                }
                state.history_config(format!("VOLUME {}", gofmt::list_v(&listed)));
            }
            Instruction::Workdir(w) => {
                check_flags(&w.flags, "WORKDIR", &[], &[])?;
                let value = required(w.path.as_ref(), "WORKDIR", "a path", span)?;
                let path = self.expand(&value.value, &state.scope(), value.span)?;
                let dir = join_path(&state.workdir(), &path);
                state.config.working_dir.clone_from(&dir);
                if dir == "/" {
                    // BuildKit makes no layer for the root, which always exists.
                    state.history_config(format!("WORKDIR {dir}"));
                    return Ok(());
                }
                let chown = (!state.config.user.is_empty()).then(|| state.config.user.clone());
                let created_by = format!("WORKDIR {dir}");
                state.root = self.graph.add(
                    Op::File(FileOp {
                        actions: vec![FileAction::Mkdir {
                            path: dir,
                            mode: 0o755,
                            make_parents: true,
                            chown,
                        }],
                    }),
                    vec![state.root],
                    format!("{step} {}", instruction_text(raw)),
                    self.location(span),
                );
                state.history_layer(created_by);
            }
            Instruction::Cmd(c) => {
                check_flags(&c.flags, "CMD", &[], &[])?;
                let args = state.command_args(c.command.as_ref());
                state.history_config(format!("CMD {}", gofmt::list_q(&args)));
                state.config.cmd = Some(args);
                state.cmd_set = true;
            }
            Instruction::Entrypoint(e) => {
                check_flags(&e.flags, "ENTRYPOINT", &[], &[])?;
                let args = state.command_args(e.command.as_ref());
                state.history_config(format!("ENTRYPOINT {}", gofmt::list_q(&args)));
                state.config.entrypoint = Some(args);
                if !state.cmd_set {
                    state.config.cmd = None;
                }
            }
            Instruction::Shell(s) => {
                check_flags(&s.flags, "SHELL", &[], &[])?;
                match &s.command {
                    Some(Command::Exec { args, .. }) if !args.is_empty() => {
                        state.config.shell.clone_from(args);
                        state.history_config(format!("SHELL {}", gofmt::list_v(args)));
                    }
                    _ => {
                        return Err(FrontendError::new(
                            FrontendErrorKind::Arity {
                                instruction: "SHELL",
                                expected: "a JSON array such as [\"/bin/bash\", \"-c\"]",
                            },
                            span,
                        ));
                    }
                }
            }
            Instruction::Healthcheck(h) => {
                let config = health(h, &state.shell())?;
                state.history_config(format!("HEALTHCHECK {}", gofmt::healthcheck(&config)));
                state.config.healthcheck = Some(config);
            }
            Instruction::Onbuild(o) => {
                // Recorded in the config only: BuildKit writes no history entry for it.
                check_flags(&o.flags, "ONBUILD", &[], &[])?;
                state.config.on_build.push(o.expression.clone());
            }
            Instruction::Run(run) => self.run(state, step, run, &instruction_text(raw), span)?,
            Instruction::Copy(copy) => {
                let text = instruction_text(raw);
                self.copy(state, index, step, CopyLike::Copy(copy), &text, span)?;
            }
            Instruction::Add(add) => {
                let text = instruction_text(raw);
                self.copy(state, index, step, CopyLike::Add(add), &text, span)?;
            }
            Instruction::From(_) => {
                // Stages are split at FROM before dispatch; a FROM here is a trigger's.
                return Err(FrontendError::new(
                    FrontendErrorKind::BeforeFrom {
                        instruction: "FROM",
                    },
                    span,
                ));
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        state: &mut StageState,
        step: &str,
        run: &hoist_parser::RunInstruction,
        text: &str,
        span: Span,
    ) -> Result<(), FrontendError> {
        let flags = check_flags(
            &run.flags,
            "RUN",
            &["network", "security", "mount"],
            &["mount"],
        )?;
        if let Some(mount) = flags.get("mount") {
            return Err(FrontendError::new(
                FrontendErrorKind::NotImplemented {
                    what: "RUN --mount",
                    hint: "COPY what the step needs into the image, or build without the mount",
                },
                mount.span,
            ));
        }
        let scope = state.scope();
        let network = match flags.get("network") {
            None => self.opts.network,
            Some(flag) => {
                let value = self.expand(flag.value.as_deref().unwrap_or(""), &scope, flag.span)?;
                match value.as_str() {
                    "default" => NetworkMode::Default,
                    "none" => NetworkMode::None,
                    // As in BuildKit, a Dockerfile line alone may not put a step in the host's
                    // network namespace, where it reaches every service on the host's loopback.
                    "host" if self.opts.allow_network_host => NetworkMode::Host,
                    "host" => {
                        return Err(flag_value(
                            flag,
                            value,
                            "the network.host entitlement is not granted to this build; \
                             grant it with --allow network.host",
                        ));
                    }
                    _ => return Err(flag_value(flag, value, "expected default, none or host")),
                }
            }
        };
        let privileged = match flags.get("security") {
            None => false,
            Some(flag) => {
                let value = self.expand(flag.value.as_deref().unwrap_or(""), &scope, flag.span)?;
                match value.as_str() {
                    "sandbox" => false,
                    "insecure" if self.opts.allow_insecure => true,
                    "insecure" => {
                        return Err(flag_value(
                            flag,
                            value,
                            "the security.insecure entitlement is not granted to this build; \
                             grant it with --allow security.insecure",
                        ));
                    }
                    _ => return Err(flag_value(flag, value, "expected sandbox or insecure")),
                }
            }
        };
        let args = match &run.command {
            Some(Command::Exec { args, .. }) => args.clone(),
            Some(Command::Shell { text: cmd, .. }) => {
                let mut args = state.shell();
                args.push(run_script(cmd, &run.heredocs, &scope, self.escape)?);
                args
            }
            None => {
                return Err(FrontendError::new(
                    FrontendErrorKind::Arity {
                        instruction: "RUN",
                        expected: "a command",
                    },
                    span,
                ));
            }
        };
        // The image ENV, then the ARGs in scope that no ENV shadows.
        let mut env = state.env.pairs();
        for (k, v) in state.args.iter() {
            // Declared names are unique, so only the ENV can shadow one.
            if let Some(v) = v
                && !state.env.contains(k)
            {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
        // History lists every ARG of the stage with the value the command sees (an ENV of the
        // same name wins; an ARG without a value shows as `K=`), as BuildKit does.
        let from_args: Vec<String> = state
            .args
            .iter()
            .map(|(k, _)| format!("{k}={}", scope.get(k).unwrap_or_default()))
            .collect();
        let created_by = if from_args.is_empty() {
            format!("RUN {} # buildkit", args.join(" "))
        } else {
            format!(
                "RUN |{} {} {} # buildkit",
                from_args.len(),
                from_args.join(" "),
                args.join(" ")
            )
        };
        let cwd = state.workdir();
        state.root = self.graph.add(
            Op::Exec(ExecOp {
                args,
                env,
                cwd,
                user: state.config.user.clone(),
                network,
                privileged,
                mounts: Vec::new(),
            }),
            vec![state.root],
            format!("{step} {text}"),
            self.location(span),
        );
        state.history_layer(created_by);
        Ok(())
    }

    fn copy(
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
        if let Some(flag) = flags.get("checksum").or_else(|| flags.get("keep-git-dir")) {
            // Both only mean something for remote sources, which are not supported yet.
            return Err(FrontendError::new(
                FrontendErrorKind::Unsupported {
                    instruction: "ADD",
                    what: "remote",
                },
                flag.span,
            ));
        }
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
        // Taken into the key and the history but never acted on, it would copy without the
        // parent directories and say it had kept them.
        if let Some(flag) = flags.get("parents") {
            return Err(FrontendError::new(
                FrontendErrorKind::NotImplemented {
                    what: "COPY --parents",
                    hint: "copy each source to its full destination path instead",
                },
                flag.span,
            ));
        }
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
            if is_add
                && (value.starts_with("http://")
                    || value.starts_with("https://")
                    || value.starts_with("git@"))
            {
                return Err(FrontendError::new(
                    FrontendErrorKind::Unsupported {
                        instruction: "ADD",
                        what: "URL",
                    },
                    word.span,
                ));
            }
            src.push(value);
        }

        let mut inputs = vec![state.root];
        if !src.is_empty() {
            let mut copy_from = None;
            let src_vertex = match flags.get("from") {
                Some(flag) => {
                    let from = flag_text(Some(flag))?.unwrap_or_default();
                    if let Some(dep) = self.stage_ref(&from, index) {
                        copy_from = Some(CopyFrom::Stage(from));
                        self.lower_stage(dep)?.root
                    } else {
                        copy_from = Some(CopyFrom::Image(from.clone()));
                        let platform = state.platform.clone();
                        let resolved =
                            self.resolver.resolve(&from, &platform).map_err(|cause| {
                                FrontendError::new(
                                    FrontendErrorKind::Resolve {
                                        reference: from.clone(),
                                        cause,
                                    },
                                    flag.span,
                                )
                            })?;
                        self.graph.add(
                            Op::Source(SourceOp::Image {
                                reference: resolved.pinned.clone(),
                                platform: platform.to_string(),
                            }),
                            vec![],
                            format!("{step} FROM {}", resolved.pinned),
                            self.location(flag.span),
                        )
                    }
                }
                None => self.local_context(&src, &exclude),
            };
            inputs.push(src_vertex);
            actions.push(FileAction::Copy {
                src_input: 1,
                src: src.clone(),
                dest: if src.len() > 1 && !dest.ends_with('/') {
                    format!("{dest}/")
                } else {
                    dest.clone()
                },
                chown: chown.clone(),
                chmod,
                unpack_archives: is_add,
                exclude,
                link,
                // Refused above until it is implemented; kept in the op (and its key).
                parents: false,
                from: copy_from,
            });
        }
        state.root = self.graph.add(
            Op::File(FileOp { actions }),
            inputs,
            format!("{step} {text}"),
            self.location(span),
        );
        // As BuildKit writes it: the flags that shape the files, the sources (heredocs last),
        // the destination as written; not --from, --link or --exclude.
        let mut created_by = String::from(name);
        if let Some(c) = &chown {
            let _ = write!(created_by, " --chown={c}");
        }
        if let Some(c) = &chmod_text {
            let _ = write!(created_by, " --chmod={c}");
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

    /// A source of just the context files that a COPY names.
    fn local_context(&mut self, src: &[String], exclude: &[String]) -> VertexId {
        let mut include: Vec<String> = src
            .iter()
            .map(|s| {
                s.trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_owned()
            })
            .collect();
        if include.iter().any(|s| s.is_empty() || s == ".") {
            include.clear();
        }
        include.sort();
        include.dedup();
        let mut excluded = self.opts.ignore_patterns.clone();
        excluded.extend(exclude.iter().cloned());
        let id = self.graph.add(
            Op::Source(SourceOp::Local {
                name: "context".into(),
                include,
                exclude: excluded,
            }),
            vec![],
            "[internal] load build context",
            None,
        );
        self.context.get_or_insert(id);
        id
    }
}

/// An instruction as one line, for history and progress names: its first line, without a
/// continuation escape or heredoc bodies, with runs of blanks squeezed.
fn instruction_text(raw: &str) -> String {
    let first = raw
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches(['\\', '`', ' ', '\t']);
    let mut words = first.split_whitespace();
    let mut text = String::with_capacity(first.len());
    text.push_str(&words.next().unwrap_or("").to_ascii_uppercase());
    for word in words {
        text.push(' ');
        text.push_str(word);
    }
    text
}

/// `ENV k=v k2=v2` as history records it, sized up front: a value may be megabytes long.
fn pairs_line(keyword: &str, pairs: &[(String, Cow<'_, str>)]) -> String {
    let len = pairs
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>();
    let mut line = String::with_capacity(keyword.len() + len);
    line.push_str(keyword);
    for (k, v) in pairs {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(v);
    }
    line
}

enum CopyLike<'a> {
    Copy(&'a CopyInstruction),
    Add(&'a hoist_parser::AddInstruction),
}

/// The state of a stage while its instructions apply.
struct StageState {
    root: VertexId,
    /// The image config; its `env` stays empty while the stage lowers, in [`Self::env`].
    config: ImageConfig,
    author: Option<String>,
    history: Vec<HistoryEntry>,
    platform: Platform,
    /// The image ENV, indexed by name.
    env: EnvList,
    /// ARGs declared in this stage, with their values.
    args: StageArgs,
    /// Whether this stage set CMD (so a later ENTRYPOINT keeps it).
    cmd_set: bool,
}

impl StageState {
    fn from_base(
        root: VertexId,
        mut config: ImageConfig,
        history: Vec<HistoryEntry>,
        platform: Platform,
    ) -> Self {
        let env = EnvList::new(std::mem::take(&mut config.env));
        Self {
            root,
            config,
            author: None,
            history,
            platform,
            env,
            args: StageArgs::default(),
            cmd_set: false,
        }
    }

    fn finish(self) -> Lowered {
        let mut config = self.config;
        config.env = self.env.into_entries();
        Lowered {
            root: self.root,
            config,
            author: self.author,
            history: self.history,
            platform: self.platform,
        }
    }

    /// The variables words expand against: ENV first, then the declared ARGs.
    fn scope(&self) -> Scope<'_> {
        Scope {
            env: &self.env,
            args: &self.args,
        }
    }

    fn shell(&self) -> Vec<String> {
        if self.config.shell.is_empty() {
            DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.config.shell.clone()
        }
    }

    fn workdir(&self) -> String {
        if self.config.working_dir.is_empty() {
            "/".to_owned()
        } else {
            self.config.working_dir.clone()
        }
    }

    fn command_args(&self, command: Option<&Command>) -> Vec<String> {
        match command {
            Some(Command::Exec { args, .. }) => args.clone(),
            Some(Command::Shell { text, .. }) => {
                let mut args = self.shell();
                args.push(text.clone());
                args
            }
            None => Vec::new(),
        }
    }

    fn history_config(&mut self, text: String) {
        self.history_entry(text, true);
    }

    /// A history entry for a step that made a layer.
    fn history_layer(&mut self, created_by: String) {
        self.history_entry(created_by, false);
    }

    fn history_entry(&mut self, created_by: String, empty_layer: bool) {
        self.history.push(HistoryEntry {
            created: None,
            author: None,
            created_by,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer,
        });
    }
}

/// Flags by name, after checking them against what an instruction accepts.
struct Flags<'a>(Vec<&'a Flag>);

impl<'a> Flags<'a> {
    fn get(&self, name: &str) -> Option<&'a Flag> {
        self.0.iter().copied().find(|f| f.name == name)
    }

    fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a Flag> + 's {
        self.0.iter().copied().filter(move |f| f.name == name)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Checks flags against the names an instruction accepts; only `repeatable` ones may repeat.
fn check_flags<'a>(
    flags: &'a [Flag],
    instruction: &'static str,
    allowed: &[&str],
    repeatable: &[&str],
) -> Result<Flags<'a>, FrontendError> {
    let expected: &'static str = match instruction {
        "FROM" => "--platform",
        "RUN" => "--mount, --network, --security",
        "COPY" => "--from, --chown, --chmod, --link, --parents, --exclude",
        "ADD" => "--chown, --chmod, --link, --exclude, --keep-git-dir, --checksum, --unpack",
        "HEALTHCHECK" => "--interval, --timeout, --start-period, --start-interval, --retries",
        _ => "no flags",
    };
    for (i, flag) in flags.iter().enumerate() {
        if !allowed.contains(&flag.name.as_str()) {
            return Err(FrontendError::new(
                FrontendErrorKind::UnknownFlag {
                    flag: flag.name.clone(),
                    instruction,
                    expected,
                },
                flag.span,
            ));
        }
        if !repeatable.contains(&flag.name.as_str())
            && flags[..i].iter().any(|f| f.name == flag.name)
        {
            return Err(FrontendError::new(
                FrontendErrorKind::DuplicateFlag {
                    flag: flag.name.clone(),
                    instruction,
                },
                flag.span,
            ));
        }
    }
    Ok(Flags(flags.iter().collect()))
}

/// Maps a word-expansion error to one located at the word.
fn expand_error(
    word: &str,
    span: Span,
) -> impl FnOnce(hoist_parser::shell::ExpandError) -> FrontendError + '_ {
    move |source| {
        FrontendError::new(
            FrontendErrorKind::Expand {
                word: word.to_owned(),
                source,
            },
            span,
        )
    }
}

fn flag_value(flag: &Flag, value: String, reason: &str) -> FrontendError {
    FrontendError::new(
        FrontendErrorKind::FlagValue {
            flag: flag.name.clone(),
            value,
            reason: reason.to_owned(),
        },
        flag.span,
    )
}

fn required<'a>(
    value: Option<&'a Spanned<String>>,
    instruction: &'static str,
    expected: &'static str,
    span: Span,
) -> Result<&'a Spanned<String>, FrontendError> {
    value.ok_or_else(|| {
        FrontendError::new(
            FrontendErrorKind::Arity {
                instruction,
                expected,
            },
            span,
        )
    })
}

fn keyword_upper(instruction: &Instruction) -> &'static str {
    match instruction {
        Instruction::Add(_) => "ADD",
        Instruction::Arg(_) => "ARG",
        Instruction::Cmd(_) => "CMD",
        Instruction::Copy(_) => "COPY",
        Instruction::Entrypoint(_) => "ENTRYPOINT",
        Instruction::Env(_) => "ENV",
        Instruction::Expose(_) => "EXPOSE",
        Instruction::From(_) => "FROM",
        Instruction::Healthcheck(_) => "HEALTHCHECK",
        Instruction::Label(_) => "LABEL",
        Instruction::Maintainer(_) => "MAINTAINER",
        Instruction::Onbuild(_) => "ONBUILD",
        Instruction::Run(_) => "RUN",
        Instruction::Shell(_) => "SHELL",
        Instruction::Stopsignal(_) => "STOPSIGNAL",
        Instruction::User(_) => "USER",
        Instruction::Volume(_) => "VOLUME",
        Instruction::Workdir(_) => "WORKDIR",
    }
}

/// BuildKit's rule for stage names: a letter, then letters, digits, `-`, `_` or `.`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Joins a path onto the working directory, cleaning `.` and `..` without leaving `/`.
#[must_use]
pub fn join_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, …, one entry per port.
fn expose_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err("expected a protocol of tcp, udp or sctp".into());
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| "expected a port number from 0 to 65535".to_owned())
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err("expected a range whose end is not below its start".into());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// The script a shell-form RUN runs. A RUN that is only a heredoc runs its body; any other
/// command gets its heredoc bodies back after it, so the shell reads them as it would from a
/// script.
fn run_script(
    cmd: &str,
    heredocs: &[Heredoc],
    scope: &dyn Env,
    escape: char,
) -> Result<String, FrontendError> {
    if heredocs.is_empty() {
        return Ok(cmd.to_owned());
    }
    if let [doc] = heredocs
        && heredoc_word(cmd.trim()) == Some(doc.name.as_str())
    {
        return heredoc_content(doc, scope, escape);
    }
    let mut script = cmd.to_owned();
    for doc in heredocs {
        script.push('\n');
        script.push_str(&doc.content);
        script.push_str(&doc.name);
    }
    Ok(script)
}

/// The delimiter a word like `<<EOF`, `<<-"EOF"` or `3<<EOF` names.
fn heredoc_word(word: &str) -> Option<&str> {
    let rest = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    Some(rest.trim_matches(['"', '\'']))
}

fn heredoc_content(doc: &Heredoc, scope: &dyn Env, escape: char) -> Result<String, FrontendError> {
    // A body may be many megabytes: it is copied once, by the chomp or the expansion.
    let content = if doc.chomp {
        Cow::Owned(hoist_parser::heredoc::chomp(&doc.content))
    } else {
        Cow::Borrowed(doc.content.as_str())
    };
    if !doc.expand {
        return Ok(content.into_owned());
    }
    Lexer::new(escape)
        .skip_process_quotes(true)
        .process_word(&content, scope)
        .map_err(expand_error(&doc.name, doc.span))
}

/// HEALTHCHECK: `NONE`, or `CMD` with its options.
fn health(
    h: &hoist_parser::HealthcheckInstruction,
    shell: &[String],
) -> Result<HealthConfig, FrontendError> {
    let flags = check_flags(
        &h.flags,
        "HEALTHCHECK",
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        &[],
    )?;
    let kind = h.kind.as_ref().ok_or_else(|| {
        FrontendError::new(
            FrontendErrorKind::Arity {
                instruction: "HEALTHCHECK",
                expected: "NONE or CMD followed by a command",
            },
            h.span,
        )
    })?;
    if kind.value.eq_ignore_ascii_case("none") {
        if h.command.is_some() || !h.flags.is_empty() {
            return Err(FrontendError::new(
                FrontendErrorKind::Arity {
                    instruction: "HEALTHCHECK NONE",
                    expected: "no options and no command",
                },
                h.span,
            ));
        }
        return Ok(HealthConfig {
            test: vec!["NONE".into()],
            ..HealthConfig::default()
        });
    }
    if !kind.value.eq_ignore_ascii_case("cmd") {
        return Err(FrontendError::new(
            FrontendErrorKind::Arity {
                instruction: "HEALTHCHECK",
                expected: "NONE or CMD (found another word)",
            },
            kind.span,
        ));
    }
    let test = match &h.command {
        Some(Command::Exec { args, .. }) if !args.is_empty() => {
            let mut t = vec!["CMD".to_owned()];
            t.extend(args.iter().cloned());
            t
        }
        Some(Command::Shell { text, .. }) => {
            let _ = shell;
            vec!["CMD-SHELL".to_owned(), text.clone()]
        }
        _ => {
            return Err(FrontendError::new(
                FrontendErrorKind::Arity {
                    instruction: "HEALTHCHECK CMD",
                    expected: "a command",
                },
                h.span,
            ));
        }
    };
    let duration = |name: &str| -> Result<u64, FrontendError> {
        match flags.get(name) {
            None => Ok(0),
            Some(flag) => {
                let value = flag.value.clone().unwrap_or_default();
                parse_duration(&value).ok_or_else(|| {
                    flag_value(
                        flag,
                        value,
                        "expected a duration such as 30s, 1m30s or 500ms",
                    )
                })
            }
        }
    };
    let retries = match flags.get("retries") {
        None => 0,
        Some(flag) => {
            let value = flag.value.clone().unwrap_or_default();
            value
                .parse::<u64>()
                .map_err(|_| flag_value(flag, value, "expected a whole number"))?
        }
    };
    Ok(HealthConfig {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Go's `time.ParseDuration` for the units Dockerfiles use; nanoseconds.
fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    // Durations in a Dockerfile are far below 2^53 ns (104 days), where f64 stays exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(total.round() as u64)
}

#[cfg(test)]
mod tests;
