//! The Dockerfile frontend: a parsed [`Dockerfile`] becomes vertices of a [`Graph`] and the
//! image config of the target stage, with BuildKit's semantics.
//!
//! - The file splits into stages at each FROM. ARGs before the first FROM are global: they are
//!   usable in FROM lines, and a bare `ARG NAME` inside a stage imports the global value.
//! - Stages are lowered on demand, starting from the target (`--target`, else the last stage):
//!   a stage nobody reaches is never lowered, so its base image is never even resolved.
//! - Word expansion happens where BuildKit expands (ADD, COPY, ENV, EXPOSE, FROM, LABEL,
//!   STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults, and flag values), never in the bodies of
//!   RUN, CMD, ENTRYPOINT or SHELL. Of an ENV and a valued ARG of the same name, the later one
//!   wins for the steps after it, as in BuildKit; the image config keeps the ENV's value.
//! - RUN becomes an `Exec` op whose environment holds the image ENV and the ARGs in scope, so a
//!   changed build-arg invalidates from its first use on. Proxy ARGs (`HTTP_PROXY` and the like)
//!   reach the process without entering the op's digest or the history.
//! - COPY and ADD become `File` ops over a `Local` source that selects only the named paths,
//!   so a change to another file of the context leaves the step cached.

mod config;
mod copy;
mod error;
mod flags;
mod gofmt;
mod lint;
mod mounts;
mod run;
mod scope;
mod stage;
mod values;

use std::borrow::Cow;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use crate::platform::Platform;
use hoist_parser::lint::{Linter, Warning};
use hoist_parser::shell::{Env, Lexer};
use hoist_parser::{Command, Dockerfile, Instruction, LineIndex, Span};

pub use config::{HealthConfig, HistoryEntry, ImageConfig};
use copy::CopyLike;
pub use error::{FrontendError, FrontendErrorKind};
use flags::{check_flags, expand_error, flag_value, required};
use run::{heredoc_content, heredoc_word};
use scope::Scope;
use stage::StageState;
use values::{expose_ports, health};

use crate::graph::{Graph, Location, VertexId};
use crate::op::{FileAction, FileOp, NetworkMode, Op, SourceOp};

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
    /// `--build-context NAME=…`, by name as given: what `FROM NAME`, `COPY --from=NAME` and
    /// `RUN --mount=from=NAME` take instead of an image of that name.
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// A `--build-context`, as the frontend sees it.
#[derive(Clone, Debug)]
pub enum NamedContext {
    /// A local directory, with the patterns of its own `.dockerignore` (the main context's
    /// do not apply to it, as in BuildKit). `FROM NAME` takes its files as the whole root
    /// filesystem of an empty image.
    Local { ignore_patterns: Vec<String> },
    /// `docker-image://REF`: the image REF stands for the name.
    Image(String),
    /// `oci-layout://…`: an image of a local OCI layout, resolved by the caller.
    Layout {
        /// `sha256:…` of the image manifest.
        manifest: String,
        config: Box<ImageConfig>,
        history: Vec<HistoryEntry>,
    },
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
            named_contexts: BTreeMap::new(),
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
    /// The platform its config names, if it names one.
    pub platform: Option<Platform>,
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
    /// What the build checks found, by line; the `check` directive chose the rules.
    pub warnings: Vec<Warning>,
}

/// What [`check`] found: the warnings, and the error that stopped the checks, if any.
#[derive(Debug)]
pub struct CheckReport {
    pub warnings: Vec<Warning>,
    pub error: Option<FrontendError>,
    /// `error=true` in the `check` directive: warnings fail a build.
    pub error_on_warnings: bool,
}

/// Runs the build checks over every stage, reached by the target or not, as a build would
/// lower them (base images are resolved), without building anything: `hoist build --check`.
pub fn check(
    file: &Dockerfile,
    source: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> CheckReport {
    let linter = match lint::linter(file, source, opts) {
        Ok(linter) => Rc::new(RefCell::new(linter)),
        Err(error) => {
            return CheckReport {
                warnings: Vec::new(),
                error: Some(error),
                error_on_warnings: false,
            };
        }
    };
    hoist_parser::lint::check_file(file, &mut linter.borrow_mut());
    let lowered =
        Lowering::new(file, source, opts, resolver, Rc::clone(&linter)).and_then(|mut lowering| {
            for index in 0..lowering.stages.len() {
                lowering.lower_stage(index)?;
            }
            Ok(())
        });
    let mut linter = linter.borrow_mut();
    CheckReport {
        warnings: linter.take_warnings(),
        error: lowered.err(),
        error_on_warnings: linter.config().error,
    }
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
    let linter = Rc::new(RefCell::new(lint::linter(file, source, opts)?));
    hoist_parser::lint::check_file(file, &mut linter.borrow_mut());
    let mut lowering = Lowering::new(file, source, opts, resolver, Rc::clone(&linter))?;
    let target = lowering.target_index()?;
    lowering.lower_stage(target)?;
    let warnings = linter.borrow_mut().take_warnings();
    if linter.borrow().config().error
        && let Some(first) = warnings.first()
    {
        return Err(lint_violation(&warnings, first.span));
    }
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
                // Read by the build itself (the image's created time, the checks), as in
                // BuildKit.
                && k.as_str() != "SOURCE_DATE_EPOCH"
                && k.as_str() != lint::CHECK_BUILD_ARG
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
        warnings,
    })
}

/// `error=true` and warnings: the build fails, naming each rule and where it was broken.
fn lint_violation(warnings: &[Warning], span: Span) -> FrontendError {
    let mut rules: Vec<&str> = Vec::new();
    for w in warnings {
        if !rules.contains(&w.rule) {
            rules.push(w.rule);
        }
    }
    let found = warnings
        .iter()
        .map(|w| format!("line {} {}: {}", w.line, w.rule, w.message))
        .collect::<Vec<_>>()
        .join("; ");
    FrontendError::new(
        FrontendErrorKind::LintViolation {
            rules: rules.join(", "),
            found,
        },
        span,
    )
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
    lint: lint::StageLint,
    /// The ARGs the stage declared, with their values: a stage built FROM it inherits them,
    /// as in BuildKit (moby/buildkit#5048).
    args: scope::StageArgs,
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
    /// Shared with the caller, which takes the warnings even when lowering fails.
    linter: Rc<RefCell<Linter<'a>>>,
    /// Whether word expansions record the variables they miss (while a stage instruction is
    /// dispatched), and those missed so far by the current instruction.
    recording: Cell<bool>,
    missed: RefCell<Vec<String>>,
    /// `.dockerignore` as a matcher, for CopyIgnoredFile; made on first use.
    ignore_matcher: OnceCell<Option<hoist_parser::ignore::Matcher>>,
}

impl<'a> Lowering<'a> {
    fn new(
        file: &'a Dockerfile,
        source: &'a str,
        opts: &'a BuildOptions,
        resolver: &'a dyn ImageResolver,
        linter: Rc<RefCell<Linter<'a>>>,
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
            linter,
            recording: Cell::new(false),
            missed: RefCell::default(),
            ignore_matcher: OnceCell::new(),
        };
        lowering.global_scope = lowering.platform_args().into_iter().collect();
        let mut rest = file.instructions.as_slice();
        let mut global_args = Vec::new();
        // Global ARGs, before the first FROM.
        while let Some((first, tail)) = rest.split_first() {
            match first {
                Instruction::From(_) => break,
                Instruction::Arg(arg) => {
                    for decl in &arg.args {
                        global_args.push(decl);
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
        lowering.lint_froms(&global_args);
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
        self.recorded(scope, |scope| {
            Lexer::new(self.escape).process_word(word, scope)
        })
        .map_err(expand_error(word, span))
    }

    /// As [`Self::expand`], but borrows a word in which nothing can expand.
    fn expand_cow<'w>(
        &self,
        word: &'w str,
        scope: &dyn Env,
        span: Span,
    ) -> Result<Cow<'w, str>, FrontendError> {
        self.recorded(scope, |scope| {
            Lexer::new(self.escape).process_word_cow(word, scope)
        })
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

    /// `SOURCE_DATE_EPOCH` from the build-args, when it is a valid time: layers are made
    /// reproducible with it (the engine refuses an invalid one).
    fn epoch(&self) -> Option<i64> {
        self.opts
            .build_args
            .get("SOURCE_DATE_EPOCH")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
    }

    fn location(&self, span: Span) -> Option<Location> {
        let (line, column) = self.index.line_col(self.source, span.start);
        Some(Location { line, column, span })
    }

    /// The source vertex of an image resolved to `pinned` (`REPO@sha256:…`), shown as `name`.
    pub(super) fn image_vertex(
        &mut self,
        pinned: &str,
        platform: &Platform,
        name: String,
        span: Span,
    ) -> VertexId {
        let location = self.location(span);
        self.graph.add(
            Op::Source(SourceOp::Image {
                reference: pinned.to_owned(),
                platform: platform.to_string(),
            }),
            vec![],
            name,
            location,
        )
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

    /// The `--build-context` that `name` (a FROM or `--from` word, after expansion) names: by
    /// the name as given, else as an image name is written in short (`docker.io/library/x:latest`
    /// is `x`), as BuildKit looks it up.
    fn named_context(&self, name: &str) -> Option<(String, NamedContext)> {
        let contexts = &self.opts.named_contexts;
        if let Some(found) = contexts.get(name) {
            return Some((name.to_owned(), found.clone()));
        }
        let mut short = name;
        for prefix in [
            "docker.io/library/",
            "index.docker.io/library/",
            "docker.io/",
            "index.docker.io/",
        ] {
            if let Some(rest) = short.strip_prefix(prefix) {
                short = rest;
                break;
            }
        }
        let short = short.strip_suffix(":latest").unwrap_or(short);
        contexts
            .get(short)
            .map(|found| (short.to_owned(), found.clone()))
    }

    /// The root filesystem, config and history of a named context as a base.
    fn named_root(
        &mut self,
        name: &str,
        named: &NamedContext,
        platform: &Platform,
        prefix: &str,
        span: Span,
    ) -> Result<(VertexId, ImageConfig, Vec<HistoryEntry>), FrontendError> {
        match named {
            NamedContext::Local { ignore_patterns } => {
                let scratch = self.graph.add(
                    Op::Source(SourceOp::Scratch),
                    vec![],
                    format!("{prefix} FROM scratch"),
                    None,
                );
                let files = self.local_source(name, Vec::new(), ignore_patterns.clone(), false);
                let root = self.graph.add(
                    Op::File(FileOp {
                        actions: vec![FileAction::Copy {
                            src_input: 1,
                            src: vec![".".into()],
                            dest: "/".into(),
                            chown: None,
                            chmod: None,
                            unpack_archives: false,
                            exclude: Vec::new(),
                            link: false,
                            parents: false,
                            from: None,
                        }],
                        epoch: self.epoch(),
                    }),
                    vec![scratch, files],
                    format!("{prefix} FROM {name} (build context)"),
                    self.location(span),
                );
                let config = ImageConfig {
                    working_dir: "/".into(),
                    ..ImageConfig::default()
                };
                Ok((root, config, Vec::new()))
            }
            NamedContext::Image(reference) => {
                let resolved = self
                    .resolver
                    .resolve(reference, platform)
                    .map_err(|cause| {
                        FrontendError::new(
                            FrontendErrorKind::Resolve {
                                reference: reference.clone(),
                                cause,
                            },
                            span,
                        )
                    })?;
                let shown = format!("{prefix} FROM {} ({name})", resolved.pinned);
                let root = self.image_vertex(&resolved.pinned, platform, shown, span);
                Ok((root, resolved.config, resolved.history))
            }
            NamedContext::Layout {
                manifest,
                config,
                history,
            } => {
                let root = self.graph.add(
                    Op::Source(SourceOp::Layout {
                        name: name.to_owned(),
                        manifest: manifest.clone(),
                        platform: platform.to_string(),
                    }),
                    vec![],
                    format!("{prefix} FROM {name}@{manifest} (OCI layout)"),
                    self.location(span),
                );
                Ok((root, (**config).clone(), history.clone()))
            }
        }
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

    /// Lowers a stage; another stage's instruction may be what reached it (COPY --from), so
    /// the words of this one are kept apart from that instruction's for UndefinedVar.
    fn lower_new_stage(&mut self, index: usize) -> Result<Lowered, FrontendError> {
        let recording = self.recording.replace(false);
        let missed = std::mem::take(&mut *self.missed.borrow_mut());
        let lowered = self.lower_stage_instructions(index);
        self.recording.set(recording);
        *self.missed.borrow_mut() = missed;
        lowered
    }

    fn lower_stage_instructions(&mut self, index: usize) -> Result<Lowered, FrontendError> {
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

        // A --build-context of a stage's name replaces the whole stage, as in BuildKit.
        if let Some((name, named)) = self.stages[index]
            .name
            .clone()
            .and_then(|n| self.named_context(&n))
        {
            let platform = self.opts.target_platform.clone();
            let (root, config, history) =
                self.named_root(&name, &named, &platform, &format!("[{label}]"), from.span)?;
            self.in_progress[index] = false;
            self.order.push(label);
            return Ok(Lowered {
                root,
                config,
                author: None,
                history,
                platform,
                lint: lint::StageLint::default(),
                args: scope::StageArgs::default(),
            });
        }

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
            let lint = base.lint.inherited();
            let mut state = StageState::from_base(
                base.root,
                base.config.clone(),
                base.history.clone(),
                platform,
            );
            state.lint = lint;
            state.args = base.args.clone();
            state
        } else if let Some((name, named)) = self.named_context(&base_name) {
            let (root, config, history) =
                self.named_root(&name, &named, &platform, &format!("[{label}]"), from.span)?;
            StageState::from_base(root, config, history, platform)
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
            let shown = format!("[{label}] FROM {}", resolved.pinned);
            let root = self.image_vertex(&resolved.pinned, &platform, shown, from.span);
            self.base_platform(&base_name, &platform, resolved.platform.as_ref(), from.span);
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

    /// Applies one instruction, written as `raw`, and runs the checks on it. `at` overrides
    /// where vertices say they come from (for ONBUILD triggers, whose text is not part of this
    /// Dockerfile).
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
        self.lint_instruction(state, instruction, span);
        let recording = self.recording.replace(true);
        let applied = self.apply(state, index, step, instruction, raw, at);
        self.recording.set(recording);
        self.flush_missed(state, span);
        applied
    }

    /// Applies one instruction. Only the steps that make a vertex summarize `raw` into their
    /// name: an instruction may be megabytes long.
    #[allow(clippy::too_many_lines)] // one arm per instruction reads best side by side
    fn apply(
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
                    self.secret_name("ARG", &decl.name, span);
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
                    // Only the ARGs before this one count as declared for its default.
                    self.flush_missed(state, span);
                    state.lint.declared.insert(decl.name.clone());
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
                    self.secret_name("ENV", &key, span);
                    pairs.push((key, value));
                }
                for (k, v) in &pairs {
                    state.env.set(k, v);
                    state.args.env_set(k);
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
                        for p in expose_ports(self.expose(&word, span)).map_err(|reason| {
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
                self.workdir(state, &path, span);
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
                        epoch: self.epoch(),
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
            Instruction::Run(run) => {
                self.run(state, index, step, run, &instruction_text(raw), span)?;
            }
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

#[cfg(test)]
mod tests;
