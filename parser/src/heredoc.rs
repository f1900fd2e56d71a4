//! Here-documents in RUN, COPY and ADD.
//!
//! An instruction line names its heredocs with words like `<<EOF`, `<<-EOF`, `<<"EOF"` or
//! `3<<EOF`; their bodies follow on the next lines, each ended by a line holding just its
//! delimiter. Several may follow one line, in order. A quoted delimiter turns off variable
//! expansion in the body; `<<-` strips leading tabs from the body and the terminator.
//!
//! Finding the words follows BuildKit: the whole line is split with the shell lexer keeping
//! quotes and escapes as written, and each word of the form `[fd]<<[-]delimiter` whose
//! delimiter is one shell word is a heredoc.

use crate::shell::{EmptyEnv, Lexer};

/// A heredoc named on an instruction line, before its body is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The delimiter with quotes removed.
    pub name: String,
    pub fd: u32,
    pub expand: bool,
    pub chomp: bool,
}

/// The heredoc markers of an instruction line, in order.
///
/// # Errors
/// A message when a delimiter word is malformed for the shell lexer, for example an unterminated
/// quote in `<<"EOF`.
pub fn markers(line: &str) -> Result<Vec<Marker>, String> {
    let words = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true)
        .process_words(line, &EmptyEnv)
        // BuildKit ignores a line it cannot split: it then has no heredocs.
        .unwrap_or_default();
    let mut found = Vec::new();
    for word in words {
        if let Some(marker) = marker(&word)? {
            found.push(marker);
        }
    }
    Ok(found)
}

/// Reads one word as a heredoc marker: `^(\d*)<<(-?)\s*([^<]*)$`, then the delimiter must be
/// exactly one shell word.
///
/// # Errors
/// A message when the delimiter cannot be lexed.
pub fn marker(word: &str) -> Result<Option<Marker>, String> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(['\t', '\n', '\u{c}', '\r', ' ']);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    // An fd too large for a number is read as 0, as Go's ignored ParseUint error leaves it.
    let fd = word[..digits].parse().unwrap_or(0);

    let lexer = Lexer::new('\\').skip_unset_env(true);
    let words = lexer
        .process_words(rest, &EmptyEnv)
        .map_err(|e| e.to_string())?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = lexer
        .raw_quotes(true)
        .process_words(rest, &EmptyEnv)
        .map_err(|e| e.to_string())?;
    let [raw_name] = raw.as_slice() else {
        return Err(format!(
            "lexing the heredoc delimiter {rest:?} gave inconsistent results"
        ));
    };
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some(Marker {
        name: name.clone(),
        fd,
        expand: quotes(name) == quotes(raw_name),
        chomp,
    }))
}

/// Strips leading tabs from every line of a `<<-` heredoc body.
#[must_use]
pub fn chomp(content: &str) -> String {
    // Sized for the body up front: a long one is not regrown piece by piece.
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}
