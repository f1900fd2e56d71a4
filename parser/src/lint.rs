//! Build checks: the rules of BuildKit's Dockerfile linter, under the same names, and its
//! `# check=` directive.
//!
//! A [`Linter`] collects [`Warning`]s for the rules the directive leaves enabled. The rules that
//! need only the file are here ([`check_file`]): stage names, keyword casing, empty
//! continuation lines, MAINTAINER, definition comments. The rules that need to know what the
//! build does with the file (variables in scope, base images, `.dockerignore`) live in the
//! solver's frontend and report to the same [`Linter`]. [`RULES`] lists all of them.
//!
//! As in BuildKit: `skip=` names rules to turn off (unknown names are ignored) or `all`;
//! experimental rules are off unless `experimental=` names them (or says `all`), and `skip=`
//! does not reach them; `error=true` makes a build with any warning fail.

use std::collections::BTreeSet;

use crate::ast::{Dockerfile, Instruction, Span};
use crate::error::LineIndex;

/// One rule of the linter.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    /// BuildKit's name for it, which `# check=skip=` takes.
    pub name: &'static str,
    /// What the rule asks for, in one sentence.
    pub description: &'static str,
    /// Its documentation page.
    pub url: &'static str,
    /// Off unless the `check` directive turns it on with `experimental=`.
    pub experimental: bool,
}

macro_rules! rules {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $slug:literal, $experimental:literal, $description:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $id: &Rule = &Rule {
                name: $name,
                description: $description,
                url: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
                experimental: $experimental,
            };
        )*
        /// Every rule, in BuildKit's order.
        pub const RULES: &[&Rule] = &[$($id),*];
    };
}

rules! {
    STAGE_NAME_CASING = "StageNameCasing", "stage-name-casing", false,
        "stage names are written in lower case";
    FROM_AS_CASING = "FromAsCasing", "from-as-casing", false,
        "the AS keyword is cased like the FROM keyword";
    NO_EMPTY_CONTINUATION = "NoEmptyContinuation", "no-empty-continuation", false,
        "an instruction continued over several lines has no empty line in between (a future release makes it an error)";
    CONSISTENT_INSTRUCTION_CASING = "ConsistentInstructionCasing", "consistent-instruction-casing", false,
        "every instruction keyword is cased the same way, all upper or all lower case";
    DUPLICATE_STAGE_NAME = "DuplicateStageName", "duplicate-stage-name", false,
        "each stage has a name of its own";
    RESERVED_STAGE_NAME = "ReservedStageName", "reserved-stage-name", false,
        "a stage is not named after a reserved word (scratch, context)";
    JSON_ARGS_RECOMMENDED = "JSONArgsRecommended", "json-args-recommended", false,
        "CMD and ENTRYPOINT use the JSON form, so that the process gets the container's signals";
    MAINTAINER_DEPRECATED = "MaintainerDeprecated", "maintainer-deprecated", false,
        "the author is named with a label, not the deprecated MAINTAINER instruction";
    UNDEFINED_ARG_IN_FROM = "UndefinedArgInFrom", "undefined-arg-in-from", false,
        "a FROM line uses only ARGs declared before the first FROM";
    WORKDIR_RELATIVE_PATH = "WorkdirRelativePath", "workdir-relative-path", false,
        "the first WORKDIR of a build is absolute, not relative to whatever the base image sets";
    UNDEFINED_VAR = "UndefinedVar", "undefined-var", false,
        "a variable is defined before it is used";
    MULTIPLE_INSTRUCTIONS_DISALLOWED = "MultipleInstructionsDisallowed", "multiple-instructions-disallowed", false,
        "CMD, ENTRYPOINT and HEALTHCHECK appear at most once per stage, since only the last counts";
    LEGACY_KEY_VALUE_FORMAT = "LegacyKeyValueFormat", "legacy-key-value-format", false,
        "ENV and LABEL use key=value, not the legacy whitespace-separated form";
    /// BuildKit gives this rule no link; it gets one of the same form as the others.
    INVALID_BASE_IMAGE_PLATFORM = "InvalidBaseImagePlatform", "invalid-base-image-platform", false,
        "a base image is for the platform the build targets";
    REDUNDANT_TARGET_PLATFORM = "RedundantTargetPlatform", "redundant-target-platform", false,
        "FROM --platform=$TARGETPLATFORM says what FROM does anyway";
    SECRETS_USED_IN_ARG_OR_ENV = "SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env", false,
        "secrets are not passed through ARG or ENV, which the image and its history keep";
    INVALID_DEFAULT_ARG_IN_FROM = "InvalidDefaultArgInFrom", "invalid-default-arg-in-from", false,
        "the defaults of the ARGs a FROM line uses give a valid image name";
    FROM_PLATFORM_FLAG_CONST_DISALLOWED = "FromPlatformFlagConstDisallowed", "from-platform-flag-const-disallowed", false,
        "FROM --platform takes a variable, not a fixed platform";
    COPY_IGNORED_FILE = "CopyIgnoredFile", "copy-ignored-file", true,
        "COPY and ADD do not name files that .dockerignore leaves out of the context";
    INVALID_DEFINITION_DESCRIPTION = "InvalidDefinitionDescription", "invalid-definition-description", true,
        "a comment right above FROM or ARG starts with the stage or argument name it describes; separate other comments with an empty comment line";
    EXPOSE_PROTO_CASING = "ExposeProtoCasing", "expose-proto-casing", false,
        "EXPOSE writes protocols in lower case";
    EXPOSE_INVALID_FORMAT = "ExposeInvalidFormat", "expose-invalid-format", false,
        "EXPOSE names container ports only, without an IP address or a host port (a future release makes it an error)";
}

/// A rule by its name, as `# check=skip=` writes it.
#[must_use]
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.name == name)
}

/// A rule broken at a line of the Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static str,
    /// The 1-based line of the instruction at fault.
    pub line: usize,
    pub message: String,
    pub url: &'static str,
    /// The instruction at fault, for rendering.
    pub span: Span,
}

/// What the `check` directive (or the `BUILDKIT_DOCKERFILE_CHECK` build-arg) asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: BTreeSet<String>,
    pub experimental_all: bool,
    pub experimental: BTreeSet<String>,
    /// `error=true`: a build with any warning fails.
    pub error: bool,
}

/// A `check` directive that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckConfigError {
    #[error("invalid check option {option:?}: expected skip=, experimental= or error=")]
    Option { option: String },
    #[error("invalid value {value:?} for check option error: expected true or false")]
    Bool { value: String },
}

impl CheckConfig {
    /// Reads `skip=A,B;experimental=C;error=true`, as BuildKit reads it: options are
    /// separated by `;` (the third takes the rest of the text), names by `,`, blanks around
    /// each are ignored.
    ///
    /// # Errors
    /// An option without `=`, an unknown option, or an `error=` value that is not a boolean.
    pub fn parse(text: &str) -> Result<Self, CheckConfigError> {
        let mut config = Self::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(CheckConfigError::Option {
                    option: part.to_owned(),
                });
            };
            let value = value.trim();
            let names = || value.split(',').map(|n| n.trim().to_owned()).collect();
            match key.trim() {
                "skip" if value == "all" => config.skip_all = true,
                "skip" => config.skip = names(),
                "experimental" if value == "all" => config.experimental_all = true,
                "experimental" => config.experimental = names(),
                "error" => {
                    config.error = parse_go_bool(value).ok_or_else(|| CheckConfigError::Bool {
                        value: value.to_owned(),
                    })?;
                }
                other => {
                    return Err(CheckConfigError::Option {
                        option: other.to_owned(),
                    });
                }
            }
        }
        Ok(config)
    }

    /// Whether warnings of `rule` are reported.
    #[must_use]
    pub fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !(self.skip_all || self.skip.contains(rule.name))
        }
    }
}

/// Booleans as Go's `strconv.ParseBool` reads them.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Collects the warnings of one Dockerfile.
#[derive(Debug)]
pub struct Linter<'s> {
    source: &'s str,
    index: LineIndex,
    config: CheckConfig,
    warnings: Vec<Warning>,
}

impl<'s> Linter<'s> {
    #[must_use]
    pub fn new(source: &'s str, config: CheckConfig) -> Self {
        Self {
            source,
            index: LineIndex::new(source),
            config,
            warnings: Vec::new(),
        }
    }

    #[must_use]
    pub const fn config(&self) -> &CheckConfig {
        &self.config
    }

    /// Whether `rule` would be reported; lets a costly check be skipped when it is off.
    #[must_use]
    pub fn enabled(&self, rule: &Rule) -> bool {
        self.config.enabled(rule)
    }

    /// Records that `rule` is broken by the instruction at `span`, unless the rule is off.
    pub fn report(&mut self, rule: &'static Rule, span: Span, message: String) {
        if !self.config.enabled(rule) {
            return;
        }
        let line = self.index.line(span.start.min(self.source.len()));
        self.report_at_line(rule, line, span, message);
    }

    fn report_at_line(&mut self, rule: &'static Rule, line: usize, span: Span, message: String) {
        self.warnings.push(Warning {
            rule: rule.name,
            line,
            message,
            url: rule.url,
            span,
        });
    }

    #[must_use]
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Takes the warnings so far, ordered by line as BuildKit prints them.
    pub fn take_warnings(&mut self) -> Vec<Warning> {
        let mut warnings = std::mem::take(&mut self.warnings);
        warnings.sort_by_key(|w| w.line);
        warnings
    }
}

/// Checks the rules that need only the file: NoEmptyContinuation, MaintainerDeprecated,
/// StageNameCasing, FromAsCasing, InvalidDefinitionDescription, DuplicateStageName,
/// ReservedStageName and ConsistentInstructionCasing.
pub fn check_file(file: &Dockerfile, linter: &mut Linter<'_>) {
    empty_continuations(file, linter);
    let source = linter.source;
    let mut previous_end = 0;
    for instruction in &file.instructions {
        let span = instruction.span();
        let comment = last_comment(file, source, previous_end, span.start);
        previous_end = span.end;
        match instruction {
            Instruction::Maintainer(_) => linter.report(
                MAINTAINER_DEPRECATED,
                span,
                "MAINTAINER is deprecated: name the author with LABEL \
                 org.opencontainers.image.authors=… instead"
                    .to_owned(),
            ),
            Instruction::From(from) => {
                let keyword = instruction.keyword_span().slice(source);
                if let [_, as_word, name] = from.args.as_slice() {
                    if name.value.to_lowercase() != name.value {
                        linter.report(
                            STAGE_NAME_CASING,
                            span,
                            format!("stage name '{}' should be in lower case", name.value),
                        );
                    }
                    if !as_cased_like(keyword, &as_word.value) {
                        linter.report(
                            FROM_AS_CASING,
                            span,
                            format!(
                                "'{}' is not cased like '{keyword}': write both in upper or both \
                                 in lower case",
                                as_word.value
                            ),
                        );
                    }
                }
                if let Some(name) = from.stage_name() {
                    definition_description(
                        linter,
                        "FROM",
                        &[name.value.to_lowercase()],
                        comment,
                        span,
                    );
                }
            }
            Instruction::Arg(arg) => {
                let names: Vec<String> = arg.args.iter().map(|d| d.name.clone()).collect();
                definition_description(linter, "ARG", &names, comment, span);
            }
            _ => {}
        }
    }
    stage_names(file, linter);
    instruction_casing(file, linter);
}

/// BuildKit reports an empty continuation line at the last line of the instruction it is in,
/// before any heredoc body.
fn empty_continuations(file: &Dockerfile, linter: &mut Linter<'_>) {
    for warning in &file.warnings {
        let Some(instruction) = file
            .instructions
            .iter()
            .find(|i| i.span().start <= warning.span.start && warning.span.start < i.span().end)
        else {
            continue;
        };
        let span = instruction.span();
        let end = first_heredoc_start(instruction).map_or(span.end, |body| body.saturating_sub(1));
        let line = linter.index.line(end.min(linter.source.len()));
        if linter.enabled(NO_EMPTY_CONTINUATION) {
            linter.report_at_line(
                NO_EMPTY_CONTINUATION,
                line,
                span,
                "empty continuation line: remove it, or end the instruction before it".to_owned(),
            );
        }
    }
}

fn first_heredoc_start(instruction: &Instruction) -> Option<usize> {
    let docs = match instruction {
        Instruction::Run(i) => &i.heredocs,
        Instruction::Copy(i) => &i.heredocs,
        Instruction::Add(i) => &i.heredocs,
        Instruction::Onbuild(i) => return first_heredoc_start(&i.trigger),
        _ => return None,
    };
    docs.first().map(|d| d.span.start)
}

/// Whether `AS` is cased like the FROM keyword. A FROM keyword of mixed case is
/// ConsistentInstructionCasing's business, so it matches anything here.
fn as_cased_like(keyword: &str, as_word: &str) -> bool {
    if keyword == keyword.to_lowercase() {
        as_word == as_word.to_lowercase()
    } else if keyword == keyword.to_uppercase() {
        as_word == as_word.to_uppercase()
    } else {
        true
    }
}

/// The last comment line between `from` and `to` that describes what follows, as BuildKit
/// collects them: comment lines only (a blank line does not end a description), an empty `#`
/// line resets, parser directives do not count.
fn last_comment<'a>(file: &Dockerfile, source: &'a str, from: usize, to: usize) -> Option<&'a str> {
    let gap = source.get(from..to)?;
    let mut last = None;
    let mut at = from;
    for line in gap.split_inclusive('\n') {
        let start = at;
        at += line.len();
        if !line.trim_start().starts_with('#') {
            continue;
        }
        if file
            .directives
            .iter()
            .any(|d| (start..at).contains(&d.span.start))
        {
            continue;
        }
        // BuildKit drops the first byte of the raw line, not of the trimmed one.
        let text = line.get(1..).unwrap_or("").trim();
        last = (!text.is_empty()).then_some(text);
    }
    last
}

fn definition_description(
    linter: &mut Linter<'_>,
    instruction: &str,
    names: &[String],
    comment: Option<&str>,
    span: Span,
) {
    let (Some(comment), Some(first)) = (comment, names.first()) else {
        return;
    };
    let word = comment.split(' ').next().unwrap_or("");
    if names.iter().any(|n| n == word) {
        return;
    }
    let example = if names.len() > 1 { "<arg_key>" } else { first };
    linter.report(
        INVALID_DEFINITION_DESCRIPTION,
        span,
        format!(
            "the comment above {instruction} should read `# {example} <description>`, or be \
             separated from it by an empty `#` line"
        ),
    );
}

fn stage_names(file: &Dockerfile, linter: &mut Linter<'_>) {
    let mut seen = BTreeSet::new();
    for instruction in &file.instructions {
        let Instruction::From(from) = instruction else {
            continue;
        };
        let Some(name) = from.stage_name() else {
            continue;
        };
        let name = name.value.to_lowercase();
        if matches!(name.as_str(), "context" | "scratch") {
            linter.report(
                RESERVED_STAGE_NAME,
                from.span,
                format!("'{name}' is a reserved name and should not name a stage"),
            );
        }
        if !seen.insert(name.clone()) {
            linter.report(
                DUPLICATE_STAGE_NAME,
                from.span,
                format!("a stage named '{name}' comes earlier: stage names should be unique"),
            );
        }
    }
}

/// Counts the keywords of all-upper and all-lower case from the first FROM on (BuildKit does
/// not count the ARGs before it), then reports every keyword cased unlike the majority.
fn instruction_casing(file: &Dockerfile, linter: &mut Linter<'_>) {
    let source = linter.source;
    let Some(first_from) = file
        .instructions
        .iter()
        .position(|i| matches!(i, Instruction::From(_)))
    else {
        return;
    };
    let staged = &file.instructions[first_from..];
    let (mut lower, mut upper) = (0usize, 0usize);
    for instruction in staged {
        let keyword = instruction.keyword_span().slice(source);
        if keyword == keyword.to_lowercase() {
            lower += 1;
        } else if keyword == keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for instruction in staged {
        let keyword = instruction.keyword_span().slice(source);
        let wrong = if majority_lower {
            (keyword != keyword.to_lowercase()).then_some("lower")
        } else {
            (keyword != keyword.to_uppercase()).then_some("upper")
        };
        if let Some(case) = wrong {
            linter.report(
                CONSISTENT_INSTRUCTION_CASING,
                instruction.span(),
                format!("'{keyword}' should be in {case} case, as most instructions are"),
            );
        }
    }
}

/// The closest of `options` to `name` within an edit distance of 2, as BuildKit suggests
/// names; `None` when one is exactly `name` or none is close.
#[must_use]
pub fn suggest<'o>(name: &str, options: impl IntoIterator<Item = &'o str>) -> Option<&'o str> {
    let mut best: Option<(usize, &str)> = None;
    for option in options {
        if option == name {
            return None;
        }
        let distance = edit_distance(name, option);
        if distance < best.map_or(3, |(d, _)| d) {
            best = Some((distance, option));
        }
    }
    best.map(|(_, o)| o)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// Whether an ARG or ENV name looks like it holds a secret, with BuildKit's word list: one of
/// the words as the whole name or as its first or last `_`-separated part, in any case, unless
/// the name says `public` the same way.
#[must_use]
pub fn looks_secret(name: &str) -> bool {
    const SECRET: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    let lower = name.to_lowercase();
    let has = |word: &str| {
        lower.match_indices(word).any(|(at, _)| {
            let end = at + word.len();
            (at == 0 || lower.as_bytes()[at - 1] == b'_')
                && (end == lower.len() || lower.as_bytes()[end] == b'_')
        })
    };
    SECRET.iter().any(|w| has(w)) && !has("public")
}

#[cfg(test)]
mod tests;
