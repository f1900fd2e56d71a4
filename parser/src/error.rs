//! Parse errors. Each carries the [`Span`] it is about; [`LineIndex`] turns spans into
//! `line:column` when an error is shown, and [`ParseError::render`] draws the source line with
//! the span underlined.

use std::fmt::Write as _;

use crate::ast::Span;

/// A Dockerfile that cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub span: Span,
}

/// What went wrong, saying what was expected and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("file with no instructions: expected at least one instruction such as FROM")]
    NoInstructions,
    #[error("unknown instruction {found:?}: expected one of {expected}{}", suggestion.map(|s| format!(" (did you mean {}?)", s.to_ascii_uppercase())).unwrap_or_default())]
    UnknownInstruction {
        found: String,
        expected: &'static str,
        suggestion: Option<&'static str>,
    },
    #[error("only one {name} parser directive can be used: found a second one")]
    DuplicateDirective { name: &'static str },
    #[error("invalid escape token {found:?}: expected ` or \\")]
    InvalidEscape { found: String },
    #[error(
        "{instruction} must have two arguments: expected a name and a value, found only {found:?}"
    )]
    MissingValue {
        instruction: &'static str,
        found: String,
    },
    #[error("syntax error - can't find = in {found:?}: expected the form name=value")]
    MissingEquals { found: String },
    #[error(
        "when using JSON array syntax, arrays must be comprised of strings only: found {found}"
    )]
    JsonNotStrings { found: &'static str },
    #[error("unterminated heredoc: expected a line {name:?} to end it, found the end of the file")]
    UnterminatedHeredoc { name: String },
    #[error("invalid heredoc delimiter: {message}")]
    HeredocDelimiter { message: String },
    #[error("{found} isn't allowed as an ONBUILD trigger: expected another instruction")]
    OnbuildTrigger { found: String },
    #[error("ONBUILD needs an instruction to run later: found nothing after it")]
    OnbuildEmpty,
}

impl ParseError {
    pub(crate) const fn new(kind: ParseErrorKind, span: Span) -> Self {
        Self { kind, span }
    }

    /// Renders the error for people: `NAME:LINE:COL: message`, then the source line with the
    /// span underlined.
    #[must_use]
    pub fn render(&self, name: &str, source: &str, index: &LineIndex) -> String {
        render_at(name, source, index, self.span, &self.kind)
    }
}

/// Renders a message about a span of a Dockerfile for people: `NAME:LINE:COL: message`, then
/// the source line with the span underlined. Later stages (the solver, a failed RUN) use this to
/// point at the instruction an error comes from.
#[must_use]
pub fn render_at(
    name: &str,
    source: &str,
    index: &LineIndex,
    span: Span,
    message: &dyn std::fmt::Display,
) -> String {
    let (line, col) = index.line_col(source, span.start);
    let mut out = format!("{name}:{line}:{col}: {message}");
    if let Some(text) = index.line_text(source, line) {
        let text = text.trim_end_matches(['\r', '\n']);
        let width = if span.end > span.start {
            let end_in_line = span.end.min(index.line_start(line) + text.len());
            source
                .get(span.start..end_in_line)
                .map_or(1, |s| s.chars().count().max(1))
        } else {
            1
        };
        let gutter = line.to_string();
        let _ = write!(
            out,
            "\n {gutter} | {text}\n {blank} | {pad}{carets}",
            blank = " ".repeat(gutter.len()),
            pad = " ".repeat(col.saturating_sub(1)),
            carets = "^".repeat(width),
        );
    }
    out
}

/// Maps byte offsets to 1-based lines and columns (columns count characters).
#[derive(Clone, Debug)]
pub struct LineIndex {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    #[must_use]
    pub fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(memchr_newlines(source));
        Self { starts }
    }

    /// The 1-based line and column of a byte offset.
    #[must_use]
    pub fn line_col(&self, source: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(source.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_start(line);
        let col = source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, col)
    }

    /// The 1-based line number of a byte offset.
    #[must_use]
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }

    fn line_start(&self, line: usize) -> usize {
        self.starts.get(line - 1).copied().unwrap_or(0)
    }

    /// The text of a 1-based line, with its line ending.
    #[must_use]
    pub fn line_text<'a>(&self, source: &'a str, line: usize) -> Option<&'a str> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        let end = self.starts.get(line).copied().unwrap_or(source.len());
        source.get(start..end)
    }
}

fn memchr_newlines(source: &str) -> impl Iterator<Item = usize> + '_ {
    source
        .bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i + 1)
}
