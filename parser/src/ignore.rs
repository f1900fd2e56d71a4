//! `.dockerignore` patterns with the semantics of Go's `patternmatcher`, which BuildKit uses.
//!
//! Data flow: the file's text → [`parse_ignore_file`] → [`Pattern`]s (comments dropped, lines
//! trimmed and cleaned, a leading `/` removed) → [`Matcher::new`] (each pattern compiled; a
//! malformed one is an [`IgnoreError`] naming it and its line) → [`Matcher::matches`] for a file
//! and [`Matcher::dir_decision`] for a directory, so that a context walker can skip a whole
//! excluded subtree without listing it. [`read_dockerignore`] picks the file to read:
//! `<Dockerfile>.dockerignore` next to the Dockerfile wins over `.dockerignore` in the context.
//!
//! The rules, as in <https://docs.docker.com/build/concepts/context/#dockerignore-files>:
//! - `*` matches any run of characters but `/`, `?` one such character, `[…]` a class as in Go's
//!   `filepath.Match` (`[^…]` negates), and `\` escapes the next character;
//! - `**` matches any number of directories, including none;
//! - a pattern that matches a directory matches everything inside it;
//! - `!` turns a pattern into an exception that re-includes what it matches;
//! - the last pattern that matches a path decides.
//!
//! Paths are relative to the context root and separated by `/`; the root itself is never
//! excluded.

mod glob;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::pathmatch::PatternError;
use glob::Glob;

/// One line of an ignore file that holds a pattern, after the file-level clean-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern, with a leading `!` for an exception.
    pub text: String,
    /// The 1-based line it came from, when it came from a file.
    pub line: Option<usize>,
}

impl From<&str> for Pattern {
    fn from(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            line: None,
        }
    }
}

impl From<String> for Pattern {
    fn from(text: String) -> Self {
        Self { text, line: None }
    }
}

/// An ignore file that cannot be read or holds a malformed pattern.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("invalid ignore pattern {pattern:?}{}: {reason}", OnLine(*.line))]
    InvalidPattern {
        pattern: String,
        line: Option<usize>,
        reason: PatternError,
    },
    #[error("invalid ignore pattern \"!\"{}: an exception needs a pattern after the !", OnLine(*.line))]
    EmptyException { line: Option<usize> },
    #[error("failed to read ignore file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ignore file {} is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
}

/// Renders " on line N" when the line is known.
struct OnLine(Option<usize>);

impl fmt::Display for OnLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, " on line {line}"),
            None => Ok(()),
        }
    }
}

/// What a context walker should do with a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirDecision {
    /// The directory is not excluded: send it and look at each entry inside.
    Included,
    /// The directory and everything inside it are excluded: do not even list it.
    Excluded,
    /// The directory is excluded, but a later `!` exception may re-include something inside
    /// it: list it, look at each entry, and send the directory only if something inside is sent.
    MustDescend,
}

/// One compiled pattern.
#[derive(Clone, Debug)]
struct Rule {
    /// Whether this is a `!` exception.
    exception: bool,
    glob: Glob,
}

/// A compiled list of ignore patterns.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    rules: Vec<Rule>,
}

impl Matcher {
    /// Compiles patterns as Go's `patternmatcher.New` does: each is trimmed and cleaned (an empty
    /// one is skipped), a leading `!` makes it an exception, and a malformed one is an error.
    ///
    /// # Errors
    ///
    /// [`IgnoreError::InvalidPattern`] for a malformed pattern (an unclosed or empty `[…]`, a
    /// bad range, a trailing `\`), [`IgnoreError::EmptyException`] for a lone `!`.
    pub fn new<I>(patterns: I) -> Result<Self, IgnoreError>
    where
        I: IntoIterator,
        I::Item: Into<Pattern>,
    {
        let mut rules = Vec::new();
        for pattern in patterns {
            let Pattern { text, line } = pattern.into();
            let trimmed = text.trim();
            if trimmed.is_empty() {
                continue;
            }
            // As in Go, the `!` is cleaned along with the rest, then split off.
            let cleaned = clean(trimmed);
            let (exception, body) = match cleaned.strip_prefix('!') {
                Some("") => return Err(IgnoreError::EmptyException { line }),
                Some(body) => (true, body),
                None => (false, cleaned.as_str()),
            };
            let glob = Glob::compile(body).map_err(|e| IgnoreError::InvalidPattern {
                pattern: text.clone(),
                line,
                reason: e,
            })?;
            rules.push(Rule { exception, glob });
        }
        Ok(Self { rules })
    }

    /// Whether there are no patterns, so nothing is excluded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any pattern is a `!` exception.
    #[must_use]
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether the path is excluded from the context: the last pattern that matches it or one of
    /// its parent directories is not an exception. `path` is relative to the context root,
    /// separated by `/` and clean (no `.`, `..` or empty components); the root (`""` or `.`) is
    /// never excluded.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        self.last_match(path)
            .is_some_and(|i| self.rules.get(i).is_some_and(|r| !r.exception))
    }

    /// What a walker should do with the directory `dir` (a path as for [`Matcher::matches`]).
    ///
    /// An excluded directory can still hold re-included paths: with `docs` then
    /// `!docs/README.md`, the walker must enter `docs` to send `docs/README.md`. A path inside
    /// `dir` is matched by every pattern that matches `dir`, so only an exception that comes
    /// after the last pattern matching `dir` can re-include something inside it; when no such
    /// exception can match any path under `dir`, the whole subtree is [`DirDecision::Excluded`].
    /// This is never wrong in the unsafe direction: a `MustDescend` may turn out to re-include
    /// nothing, an `Excluded` never hides a re-included path.
    #[must_use]
    pub fn dir_decision(&self, dir: &str) -> DirDecision {
        let Some(last) = self.last_match(dir) else {
            return DirDecision::Included;
        };
        let Some((matched, later)) = self.rules.get(last..).and_then(|r| r.split_first()) else {
            return DirDecision::Included;
        };
        if matched.exception {
            DirDecision::Included
        } else if later
            .iter()
            .any(|r| r.exception && r.glob.may_match_inside(dir))
        {
            DirDecision::MustDescend
        } else {
            DirDecision::Excluded
        }
    }

    /// The index of the last pattern that matches `path` or one of its parents.
    fn last_match(&self, path: &str) -> Option<usize> {
        if path.is_empty() || path == "." {
            return None;
        }
        self.rules
            .iter()
            .rposition(|r| r.glob.matches_path_or_parent(path))
    }
}

/// Reads the patterns of an ignore file as Go's `ignorefile.ReadAll` does: a UTF-8 BOM is
/// dropped, a line that starts with `#` is a comment, every other line is trimmed, cleaned
/// (`filepath.Clean`: `//`, `.` and `..` resolved), loses a leading `/`, and keeps its `!`.
/// Blank lines are skipped. A lone `!` is kept, so that [`Matcher::new`] reports it with its line.
#[must_use]
pub fn parse_ignore_file(text: &str) -> Vec<Pattern> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for (index, line) in text.lines().enumerate() {
        // Only a `#` in the first column starts a comment: " # x" is a pattern.
        if line.starts_with('#') {
            continue;
        }
        let line_text = line.trim();
        if line_text.is_empty() {
            continue;
        }
        let (exception, body) = match line_text.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line_text),
        };
        let mut cleaned = if body.is_empty() {
            String::new()
        } else {
            clean(body)
        };
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        if exception {
            cleaned.insert(0, '!');
        }
        patterns.push(Pattern {
            text: cleaned,
            line: Some(index + 1),
        });
    }
    patterns
}

/// Reads the ignore file for a build and compiles it, or returns `None` when there is none.
///
/// `<Dockerfile>.dockerignore` next to the Dockerfile takes precedence over `.dockerignore` at
/// the root of the context, as in BuildKit and `docker build`. `dockerfile` is the path of the
/// Dockerfile; a relative one is taken relative to `context_dir`. A Dockerfile with no path
/// (read from standard input) has only the context's `.dockerignore`.
///
/// # Errors
///
/// [`IgnoreError::Read`] when a file exists but cannot be read, [`IgnoreError::NotUtf8`], and
/// the errors of [`Matcher::new`].
pub fn read_dockerignore(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> Result<Option<Matcher>, IgnoreError> {
    read_dockerignore_patterns(context_dir, dockerfile)?
        .map(Matcher::new)
        .transpose()
}

/// The patterns of the ignore file for a build (found as [`read_dockerignore`] finds it), for
/// callers that record them rather than match with them; `None` when there is no file.
///
/// # Errors
///
/// [`IgnoreError::Read`] when a file exists but cannot be read, [`IgnoreError::NotUtf8`].
pub fn read_dockerignore_patterns(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> Result<Option<Vec<Pattern>>, IgnoreError> {
    let specific = dockerfile.map(|d| {
        let mut specific = context_dir.join(d).into_os_string();
        specific.push(".dockerignore");
        PathBuf::from(specific)
    });
    for path in specific
        .into_iter()
        .chain([context_dir.join(".dockerignore")])
    {
        let bytes = match fs_err::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IgnoreError::Read { path, source: e }),
        };
        let text = String::from_utf8(bytes).map_err(|_| IgnoreError::NotUtf8 { path })?;
        return Ok(Some(parse_ignore_file(&text)));
    }
    Ok(None)
}

/// Go's `filepath.Clean` on a `/`-separated path: repeated slashes collapse, `.` components
/// go, `..` removes the component before it (or, at the root, itself), and a trailing slash
/// goes. The empty path becomes `.`.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}
