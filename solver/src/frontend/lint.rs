//! The build checks that need the frontend's knowledge: which variables are in scope, what the
//! FROM lines expand to, the base images, `.dockerignore`. They report to the same
//! [`Linter`] as the file-level checks of [`hoist_parser::lint`], at the places where BuildKit's
//! `dockerfile2llb` fires them:
//! - every stage's FROM line, reached or not: UndefinedArgInFrom, RedundantTargetPlatform,
//!   FromPlatformFlagConstDisallowed, InvalidDefaultArgInFrom;
//! - each instruction of a lowered stage: UndefinedVar (a word read a variable that is neither
//!   set nor declared by an ARG), SecretsUsedInArgOrEnv, LegacyKeyValueFormat,
//!   JSONArgsRecommended, MultipleInstructionsDisallowed, WorkdirRelativePath,
//!   ExposeProtoCasing, ExposeInvalidFormat, CopyIgnoredFile;
//! - each resolved base image: InvalidBaseImagePlatform.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};

use hoist_parser::lint::{self, CheckConfig, Linter};
use hoist_parser::shell::{Env, Lexer};
use hoist_parser::{ArgDecl, Command, Instruction, Span};

use super::error::{FrontendError, FrontendErrorKind};
use super::*;

/// The build-arg that overrides the `check` directive, as in BuildKit.
pub(super) const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// ARGs BuildKit reads itself and never puts in a stage's environment.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// The ARGs every FROM line may use without declaring them.
const PREDEFINED_ARGS: [&str; 11] = [
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDOSVERSION",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETOSVERSION",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
];

/// The linter of a build: its options come from the `BUILDKIT_DOCKERFILE_CHECK` build-arg if
/// given, else from the `check` directive.
pub(super) fn linter<'s>(
    file: &Dockerfile,
    source: &'s str,
    opts: &BuildOptions,
) -> Result<Linter<'s>, FrontendError> {
    let (text, span) = match opts.build_args.get(CHECK_BUILD_ARG) {
        Some(v) => (v.as_str(), Span::default()),
        None => file
            .directives
            .iter()
            .find(|d| d.kind == hoist_parser::DirectiveKind::Check)
            .map_or(("", Span::default()), |d| (d.value.as_str(), d.span)),
    };
    let config = CheckConfig::parse(text)
        .map_err(|source| FrontendError::new(FrontendErrorKind::CheckOptions { source }, span))?;
    Ok(Linter::new(source, config))
}

/// What a stage knows for the checks, carried into the stages built FROM it.
#[derive(Clone, Debug, Default)]
pub(super) struct StageLint {
    /// Every ARG name declared in this stage or the stages it is built on: reading one that
    /// has no value is not an undefined variable.
    pub(super) declared: HashSet<String>,
    /// Whether a WORKDIR of this build set the working directory already.
    pub(super) workdir_set: bool,
    /// Where CMD, ENTRYPOINT and HEALTHCHECK were last given in this stage.
    pub(super) cmd: Option<Span>,
    pub(super) entrypoint: Option<Span>,
    pub(super) healthcheck: Option<Span>,
}

impl StageLint {
    /// What a stage built FROM this one starts with.
    pub(super) fn inherited(&self) -> Self {
        Self {
            declared: self.declared.clone(),
            workdir_set: self.workdir_set,
            ..Self::default()
        }
    }
}

/// Records the names a word expansion looked up and did not find, once per word, as
/// BuildKit's shell lexer reports them.
pub(super) struct Recorder<'e> {
    pub(super) inner: &'e dyn Env,
    pub(super) missed: RefCell<BTreeSet<String>>,
}

impl Env for Recorder<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let found = self.inner.get(key);
        if found.is_none() {
            self.missed.borrow_mut().insert(key.to_owned());
        }
        found
    }

    fn keys(&self) -> Vec<&str> {
        self.inner.keys()
    }
}

impl Lowering<'_> {
    pub(super) fn report(&self, rule: &'static lint::Rule, span: Span, message: String) {
        self.linter.borrow_mut().report(rule, span, message);
    }

    /// Runs `expand` on a recording view of `scope` when a stage instruction is being
    /// dispatched, keeping the names it missed for [`Self::flush_missed`].
    pub(super) fn recorded<T>(&self, scope: &dyn Env, expand: impl FnOnce(&dyn Env) -> T) -> T {
        if !self.recording.get() {
            return expand(scope);
        }
        let recorder = Recorder {
            inner: scope,
            missed: RefCell::default(),
        };
        let out = expand(&recorder);
        self.missed
            .borrow_mut()
            .extend(recorder.missed.into_inner());
        out
    }

    /// Reports the variables the instruction at `span` read without defining them.
    pub(super) fn flush_missed(&self, state: &StageState, span: Span) {
        let missed = std::mem::take(&mut *self.missed.borrow_mut());
        if missed.is_empty() || !self.linter.borrow().enabled(lint::UNDEFINED_VAR) {
            return;
        }
        let scope = state.scope();
        let keys = scope.keys();
        for name in missed {
            if state.lint.declared.contains(&name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let message = match lint::suggest(&name, keys.iter().copied()) {
                Some(close) => {
                    format!("variable '${name}' is not defined (did you mean ${close}?)")
                }
                None => format!("variable '${name}' is not defined before this use"),
            };
            self.report(lint::UNDEFINED_VAR, span, message);
        }
    }

    /// The checks of an instruction that need nothing it computes, before it applies.
    pub(super) fn lint_instruction(
        &self,
        state: &mut StageState,
        instruction: &Instruction,
        span: Span,
    ) {
        let shell_form = |command: Option<&Command>| matches!(command, Some(Command::Shell { .. }));
        match instruction {
            Instruction::Env(env) => {
                self.legacy_pairs("ENV", env.pairs.iter().map(|p| p.legacy), span);
            }
            Instruction::Label(label) => {
                self.legacy_pairs("LABEL", label.pairs.iter().map(|p| p.legacy), span);
            }
            Instruction::Cmd(c) => {
                self.used_once("CMD", &mut state.lint.cmd, span);
                if shell_form(c.command.as_ref()) && state.config.shell.is_empty() {
                    self.json_args("CMD", span);
                }
            }
            Instruction::Entrypoint(e) => {
                self.used_once("ENTRYPOINT", &mut state.lint.entrypoint, span);
                if shell_form(e.command.as_ref()) && state.config.shell.is_empty() {
                    self.json_args("ENTRYPOINT", span);
                }
            }
            Instruction::Healthcheck(_) => {
                self.used_once("HEALTHCHECK", &mut state.lint.healthcheck, span);
            }
            _ => {}
        }
    }

    fn legacy_pairs(&self, keyword: &str, legacy: impl Iterator<Item = bool>, span: Span) {
        for _ in legacy.filter(|l| *l) {
            self.report(
                lint::LEGACY_KEY_VALUE_FORMAT,
                span,
                format!(
                    "write \"{keyword} key=value\" rather than the legacy \"{keyword} key value\""
                ),
            );
        }
    }

    fn json_args(&self, keyword: &str, span: Span) {
        self.report(
            lint::JSON_ARGS_RECOMMENDED,
            span,
            format!(
                "{keyword} in shell form runs under /bin/sh, which does not pass signals on: \
                 use the JSON form, {keyword} [\"executable\", \"arg\"]"
            ),
        );
    }

    /// MultipleInstructionsDisallowed is reported at the earlier instruction, the one that
    /// has no effect.
    fn used_once(&self, keyword: &str, last: &mut Option<Span>, span: Span) {
        if let Some(earlier) = last.replace(span) {
            self.report(
                lint::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                earlier,
                format!(
                    "{keyword} is given again later in this stage, and only the last {keyword} \
                     counts"
                ),
            );
        }
    }

    /// SecretsUsedInArgOrEnv for one ARG or ENV name.
    pub(super) fn secret_name(&self, keyword: &str, name: &str, span: Span) {
        if lint::looks_secret(name) {
            self.report(
                lint::SECRETS_USED_IN_ARG_OR_ENV,
                span,
                format!(
                    "{keyword} {name:?} looks like it holds a secret, which the image keeps: \
                     use RUN --mount=type=secret instead"
                ),
            );
        }
    }

    /// WorkdirRelativePath: the first WORKDIR of a stage chain, relative to whatever the base
    /// image set.
    pub(super) fn workdir(&self, state: &mut StageState, path: &str, span: Span) {
        if !state.lint.workdir_set && !path.starts_with('/') {
            self.report(
                lint::WORKDIR_RELATIVE_PATH,
                span,
                format!(
                    "relative WORKDIR {path:?} depends on the base image's working directory: \
                     set an absolute one first"
                ),
            );
        }
        state.lint.workdir_set = true;
    }

    /// ExposeProtoCasing and ExposeInvalidFormat for one expanded EXPOSE word; returns the
    /// container port part, the only one EXPOSE uses.
    pub(super) fn expose<'w>(&self, word: &'w str, span: Span) -> &'w str {
        let parts: Vec<&str> = word.split(':').collect();
        let container = parts.last().copied().unwrap_or(word);
        let (port, proto) = container.split_once('/').unwrap_or((container, ""));
        // As in BuildKit, a word whose port or protocol is invalid gets its error, not these.
        if port.is_empty() || !matches!(proto.to_lowercase().as_str(), "" | "tcp" | "udp" | "sctp")
        {
            return container;
        }
        if proto.to_lowercase() != proto {
            self.report(
                lint::EXPOSE_PROTO_CASING,
                span,
                format!("protocol of '{word}' should be in lower case"),
            );
        }
        if parts.len() > 1 {
            self.report(
                lint::EXPOSE_INVALID_FORMAT,
                span,
                format!(
                    "'{word}' names an IP address or a host port, which EXPOSE ignores: publish \
                     ports when the container runs"
                ),
            );
        }
        container
    }

    /// CopyIgnoredFile: a COPY or ADD source from the context that `.dockerignore` excludes.
    pub(super) fn copy_ignored(&self, keyword: &str, source: &str, span: Span) {
        if self.opts.ignore_patterns.is_empty()
            || !self.linter.borrow().enabled(lint::COPY_IGNORED_FILE)
        {
            return;
        }
        let Some(matcher) = self.ignore_matcher.get_or_init(|| {
            hoist_parser::ignore::Matcher::new(self.opts.ignore_patterns.iter().map(String::as_str))
                .ok()
        }) else {
            return;
        };
        let clean = join_path("/", source);
        let relative = clean.trim_start_matches('/');
        if !relative.is_empty() && matcher.matches(relative) {
            self.report(
                lint::COPY_IGNORED_FILE,
                span,
                format!(
                    "{keyword} names {source:?}, which .dockerignore excludes from the context"
                ),
            );
        }
    }

    /// InvalidBaseImagePlatform: the image resolved for a platform other than the one asked.
    pub(super) fn base_platform(
        &self,
        image: &str,
        expected: &Platform,
        actual: Option<&Platform>,
        span: Span,
    ) {
        if let Some(actual) = actual
            && (actual.os != expected.os || actual.architecture != expected.architecture)
        {
            self.report(
                lint::INVALID_BASE_IMAGE_PLATFORM,
                span,
                format!("base image {image} is for {actual}, but the build targets {expected}"),
            );
        }
    }

    /// The checks of every stage's FROM line, reached by the build or not.
    pub(super) fn lint_froms(&self, global_args: &[&ArgDecl]) {
        let declared: BTreeSet<&str> = self
            .globals
            .keys()
            .map(String::as_str)
            .chain(PREDEFINED_ARGS)
            .collect();
        let defaults = self.default_global_scope(global_args);
        for stage in &self.stages {
            let from = stage.from;
            let Some(image) = from.args.first() else {
                continue;
            };
            let lexer = Lexer::new(self.escape);
            if let Ok(expanded) = lexer.process_word_with_matches(&image.value, &self.global_scope)
            {
                self.undefined_in_from(&expanded.unmatched, &declared, from.span);
            }
            if let Some(flag) = from.flags.iter().find(|f| f.name == "platform") {
                let raw = flag.value.as_deref().unwrap_or("");
                if let Ok(expanded) = lexer.process_word_with_matches(raw, &self.global_scope) {
                    self.undefined_in_from(&expanded.unmatched, &declared, from.span);
                    self.platform_flag(raw, &expanded, stage.name.as_deref(), from.span);
                }
            }
            if let Some(defaults) = &defaults
                && let Ok(name) = lexer.process_word(&image.value, defaults)
                && !valid_reference(&name)
            {
                self.report(
                    lint::INVALID_DEFAULT_ARG_IN_FROM,
                    from.span,
                    format!(
                        "with the ARGs' default values, FROM {} gives an empty or invalid image \
                         name {name:?}",
                        image.value
                    ),
                );
            }
        }
    }

    fn undefined_in_from(
        &self,
        unmatched: &BTreeSet<String>,
        declared: &BTreeSet<&str>,
        span: Span,
    ) {
        for name in unmatched {
            if declared.contains(name.as_str()) {
                continue;
            }
            let options = declared
                .iter()
                .copied()
                .chain(self.global_scope.keys().map(String::as_str));
            let message = match lint::suggest(name, options) {
                Some(close) => format!(
                    "FROM uses ARG '{name}', which is not declared before the first FROM (did \
                     you mean {close}?)"
                ),
                None => {
                    format!("FROM uses ARG '{name}', which is not declared before the first FROM")
                }
            };
            self.report(lint::UNDEFINED_ARG_IN_FROM, span, message);
        }
    }

    fn platform_flag(
        &self,
        raw: &str,
        expanded: &hoist_parser::shell::Expansion,
        stage: Option<&str>,
        span: Span,
    ) {
        if expanded.unmatched.is_empty()
            && expanded.matched.len() == 1
            && expanded.matched.contains("TARGETPLATFORM")
            && self.global_scope.get("TARGETPLATFORM") == Some(&expanded.value)
        {
            self.report(
                lint::REDUNDANT_TARGET_PLATFORM,
                span,
                format!(
                    "--platform={raw} is redundant: FROM builds for the target platform anyway"
                ),
            );
        }
        if expanded.matched.is_empty()
            && expanded.unmatched.is_empty()
            && let Ok(platform) = expanded.value.parse::<Platform>()
        {
            let stage = stage.unwrap_or("");
            // A stage named for its platform is meant to be for that platform only.
            if !stage.contains(&platform.os) && !stage.contains(&platform.architecture) {
                self.report(
                    lint::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                    span,
                    format!(
                        "FROM --platform={} fixes the platform: use a variable such as \
                         $BUILDPLATFORM or $TARGETPLATFORM",
                        expanded.value
                    ),
                );
            }
        }
    }

    /// The scope FROM lines would expand against with no build-arg given: the platform ARGs,
    /// then the global ARGs' defaults. `None` when a default cannot be expanded.
    fn default_global_scope(&self, global_args: &[&ArgDecl]) -> Option<HashMap<String, String>> {
        let mut scope: HashMap<String, String> = self.platform_args().into_iter().collect();
        let lexer = Lexer::new(self.escape);
        for decl in global_args {
            if let Some(default) = &decl.default {
                let value = lexer.process_word(default, &scope).ok()?;
                scope.insert(decl.name.clone(), value);
            }
        }
        Some(scope)
    }
}

/// Whether `name` reads as an image reference: `[domain/]path[:tag][@digest]`, with the
/// repository in lower case, as Docker's reference grammar has it.
pub(super) fn valid_reference(name: &str) -> bool {
    let (rest, digest) = match name.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (name, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return false;
        };
        if algorithm.is_empty() || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
    }
    // A tag follows the last ':' after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = tag.len() <= 128
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return false;
        }
    }
    if path.is_empty() {
        return false;
    }
    let mut components: Vec<&str> = path.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            let domain_ok = first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !domain_ok {
                return false;
            }
            components.remove(0);
        }
    }
    if components.len() == 1
        && components[0].len() == 64
        && components[0].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return false;
    }
    components.iter().all(|c| path_component(c))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or runs of `-`.
fn path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
