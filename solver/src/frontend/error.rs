//! Errors of the frontend: each names what was wrong and carries the span of the Dockerfile text
//! it comes from, so that it is shown as `Dockerfile:LINE:COL`.

use hoist_parser::error::render_at;
use hoist_parser::{LineIndex, ParseError, Span};

/// A Dockerfile that parses but cannot be built as written.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct FrontendError {
    pub kind: FrontendErrorKind,
    pub span: Span,
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendErrorKind {
    #[error(transparent)]
    Parse(ParseError),
    #[error("no FROM instruction: the first instruction other than ARG must be FROM")]
    NoFrom,
    #[error("{instruction} before the first FROM: only ARG may come before FROM")]
    BeforeFrom { instruction: &'static str },
    #[error("FROM requires either one or three arguments (image [AS name]), found {found}")]
    FromArity { found: usize },
    #[error(
        "invalid stage name {name:?}: expected letters, digits, '-', '_' or '.', starting with a letter"
    )]
    StageName { name: String },
    #[error("duplicate stage name {name:?}")]
    DuplicateStage { name: String },
    #[error("target stage {name:?} could not be found: the stages are {known}")]
    UnknownTarget { name: String, known: String },
    #[error("unknown flag --{flag} for {instruction}: expected one of {expected}")]
    UnknownFlag {
        flag: String,
        instruction: &'static str,
        expected: &'static str,
    },
    #[error("flag --{flag} given twice for {instruction}")]
    DuplicateFlag {
        flag: String,
        instruction: &'static str,
    },
    #[error("invalid value {value:?} for --{flag}: {reason}")]
    FlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("{instruction} requires {expected}")]
    Arity {
        instruction: &'static str,
        expected: &'static str,
    },
    #[error("cannot expand {word:?}: {source}")]
    Expand {
        word: String,
        source: hoist_parser::shell::ExpandError,
    },
    #[error(
        "{instruction} with a {what} source is not supported yet: use a local file from the build context"
    )]
    Unsupported {
        instruction: &'static str,
        what: &'static str,
    },
    /// A flag hoist does not implement yet: refused at its line rather than ignored.
    #[error("{what} is not supported yet: {hint}")]
    NotImplemented {
        what: &'static str,
        hint: &'static str,
    },
    #[error("circular dependency between stages through {name:?}")]
    Cycle { name: String },
    #[error(
        "cannot resolve base image {reference:?}: {}",
        crate::progress::error_text(cause.as_ref())
    )]
    Resolve {
        reference: String,
        /// Why, with its causes (not a `source`: this error is shown as one located message).
        cause: crate::scheduler::BoxError,
    },
    #[error(
        "--from={name}: no stage of that name comes before this line, and as an image it cannot \
         be resolved: {}",
        crate::progress::error_text(cause.as_ref())
    )]
    ResolveFrom {
        name: String,
        cause: crate::scheduler::BoxError,
    },
    #[error("invalid ONBUILD trigger {trigger:?} inherited from {from}: {message}")]
    Trigger {
        trigger: String,
        from: String,
        message: String,
    },
    #[error("invalid platform {value:?}: expected os/arch[/variant]")]
    Platform { value: String },
    #[error("invalid check options: {source}")]
    CheckOptions {
        source: hoist_parser::lint::CheckConfigError,
    },
    /// `error=true` in the `check` directive, and the checks found something.
    #[error(
        "lint violation found for rules: {rules} ({found}); fix them, or skip a rule with          `# check=skip=RULE`"
    )]
    LintViolation { rules: String, found: String },
}

impl FrontendError {
    pub(crate) const fn new(kind: FrontendErrorKind, span: Span) -> Self {
        Self { kind, span }
    }

    /// Renders the error for people: `NAME:LINE:COL: message`, then the source line with the
    /// span underlined.
    #[must_use]
    pub fn render(&self, name: &str, source: &str) -> String {
        match &self.kind {
            FrontendErrorKind::Parse(err) => err.render(name, source, &LineIndex::new(source)),
            kind => render_at(name, source, &LineIndex::new(source), self.span, kind),
        }
    }
}

impl From<ParseError> for FrontendError {
    fn from(err: ParseError) -> Self {
        let span = err.span;
        Self::new(FrontendErrorKind::Parse(err), span)
    }
}
