//! One compiled `.dockerignore` pattern and the matcher behind it.
//!
//! Go's `patternmatcher` sorts each cleaned pattern into one of four kinds and only builds a
//! regular expression for the last: a pattern with no wildcard is compared as a string, one that
//! ends in `**` as a prefix, one that starts with `**` and has no other wildcard as a suffix.
//! The kinds are not just a speed-up: `**foo` (a suffix) matches `barfoo`, while `a/**foo` (a
//! regular expression) does not match `a/barfoo`. [`Glob`] keeps the same four kinds so that
//! every such case agrees, and runs the fourth as a small NFA over the characters of the path,
//! so no pattern can make matching take more than `O(path × pattern)` steps. The elements that
//! `filepath.Match` defines (`*`, `?`, classes, escapes) and the NFA are those of
//! [`crate::pathmatch`], which COPY sources match with too.
//!
//! Where the Go code hands text straight to its regexp engine, the result can depend on regexp
//! syntax that `filepath.Match` never meant (`\d` as a digit class, `[a*]` becoming a nested
//! class). This module follows `filepath.Match` for classes and escapes, which is what the
//! Docker documentation promises, and keeps the one regexp quirk that users can hit by accident
//! without writing a class: an unescaped `^` in a wildcard pattern is an anchor that only
//! matches at the start of the path (so `*^x` matches `x` but not `a^x`). The regexp's `.`
//! does not match a newline either, so neither does the `**` that becomes `.*`.
//!
//! A backwards range such as `[z-a]` is an error here when the pattern is compiled. Go's
//! `filepath.Match` accepts it, so `patternmatcher.New` does too, but its regexp then fails
//! on every match (moby/patternmatcher's regression test for moby/moby#52203): either way the
//! build cannot use the file.

use crate::pathmatch::{Nfa, PatternError, Token, element};

/// How a cleaned pattern is matched, as `patternmatcher` decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    /// No wildcard: the path must equal the pattern.
    Exact(String),
    /// Literal text then `**`: the path must start with the text.
    Prefix(String),
    /// `**` then literal text: the path must end with the text (or, when the text starts with
    /// `/`, equal the rest of it: `**/foo` matches `foo`).
    Suffix(String),
    /// Everything else.
    Wildcard(Vec<Token>),
}

/// A compiled pattern, without its `!`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Glob {
    kind: Kind,
}

impl Glob {
    /// Compiles a cleaned pattern (the `!` already removed).
    pub(crate) fn compile(pattern: &str) -> Result<Self, PatternError> {
        #[derive(PartialEq)]
        enum Detected {
            Exact,
            Prefix,
            Suffix,
            Wildcard,
        }
        let mut detected = Detected::Exact;
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        let mut first = true;
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        if detected == Detected::Exact {
                            detected = Detected::Prefix;
                        } else {
                            tokens.push(Token::AnyTail);
                            detected = Detected::Wildcard;
                        }
                    } else {
                        tokens.push(Token::AnyDirs);
                        detected = Detected::Wildcard;
                    }
                    if first {
                        detected = Detected::Suffix;
                    }
                }
                '^' => tokens.push(Token::Start),
                c => {
                    // patternmatcher sorts a pattern with any of these as a wildcard one, even
                    // with just a `]`, which matches itself.
                    if matches!(c, '*' | '?' | '[' | '\\' | ']') {
                        detected = Detected::Wildcard;
                    }
                    tokens.push(element(c, &mut chars)?);
                }
            }
            first = false;
        }
        let kind = match detected {
            Detected::Exact => Kind::Exact(pattern.to_owned()),
            // The pattern ends in `**`: strip it.
            Detected::Prefix => Kind::Prefix(
                pattern
                    .get(..pattern.len().saturating_sub(2))
                    .unwrap_or_default()
                    .to_owned(),
            ),
            // The pattern starts with `**`: strip it.
            Detected::Suffix => Kind::Suffix(pattern.get(2..).unwrap_or_default().to_owned()),
            Detected::Wildcard => Kind::Wildcard(tokens),
        };
        Ok(Self { kind })
    }

    /// Whether `path`, or one of its parent directories, matches.
    pub(crate) fn matches_path_or_parent(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact(s) => path
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            // A parent that starts with the text makes the path start with it too.
            Kind::Prefix(s) => path.starts_with(s.as_str()),
            Kind::Suffix(s) => prefixes(path).any(|p| suffix_matches(s, p)),
            Kind::Wildcard(tokens) => Nfa::new(tokens).matches_path_or_parent(path),
        }
    }

    /// Whether the pattern could match some path strictly inside the directory `dir`. It may
    /// answer `true` when no such path exists; it never answers `false` when one does.
    pub(crate) fn may_match_inside(&self, dir: &str) -> bool {
        let inside = format!("{dir}/");
        match &self.kind {
            Kind::Exact(s) => s.len() > inside.len() && s.starts_with(&inside),
            Kind::Prefix(s) => inside.starts_with(s.as_str()) || s.starts_with(&inside),
            // `…/<suffix>` fits under any directory; the rare suffix that cannot is not worth
            // the code.
            Kind::Suffix(_) => true,
            Kind::Wildcard(tokens) => Nfa::new(tokens).alive_after(&inside),
        }
    }
}

/// The path itself and each of its parent directories.
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(|(i, _)| &path[..i])
        .filter(|p| !p.is_empty())
        .chain(std::iter::once(path))
}

fn suffix_matches(suffix: &str, path: &str) -> bool {
    path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
}
