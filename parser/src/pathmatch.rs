//! Go's `filepath.Match`: the one implementation of it in hoist. COPY and ADD match each
//! component of a wildcard source with a [`PathPattern`], as BuildKit does, and the
//! `.dockerignore` patterns of [`crate::ignore`] are made of the same elements, compiled by
//! [`element`] and run by the same [`Nfa`], with `**` and the `^` anchor of Go's
//! `patternmatcher` on top.
//!
//! The syntax, as Go documents it:
//! - `*` matches any run of characters but `/`, and `?` any one character but `/`;
//! - `[…]` matches one character of a class of characters and ranges (`[a-z0-9_]`), or of
//!   its complement with a leading `^` (`[^.]`); a class may match `/`;
//! - `\` makes the next character literal, inside a class too;
//! - every other character matches itself (`]` and `^` included).
//!
//! A pattern is compiled before it is matched, so a malformed one is an error whatever it is
//! matched against: Go's `Match` reports it as soon as matching reaches it, and its `Glob`
//! before reading any directory. One case differs from Go on purpose: a backwards range such
//! as `[z-a]`, which `filepath.Match` accepts and which then matches nothing, is an error here,
//! as it is for a `.dockerignore` (where Go's regexp rejects it) and was for COPY sources in
//! hoist before: a pattern that can match nothing is a mistake to report.
//!
//! Matching simulates the pattern as an NFA over the characters of the name: `O(name ×
//! pattern)` steps for every input, never the exponential backtracking that `a*a*a*…b` can
//! cost a naive matcher.

use std::iter::Peekable;
use std::ops::RangeInclusive;
use std::str::Chars;

/// Why a pattern is malformed, in `filepath.Match`'s terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("character class opened with [ is never closed with ]")]
    UnclosedClass,
    #[error("character class [] holds no character")]
    EmptyClass,
    #[error(
        "character class has a range with a missing end, or an unescaped - or ] where a character belongs"
    )]
    BadRange,
    #[error("character class range runs backwards")]
    ReversedRange,
    #[error("pattern ends with an escape character \\ that escapes nothing")]
    TrailingBackslash,
}

/// A character class: `[abc]`, `[a-z]`, `[^0-9]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Class {
    negated: bool,
    ranges: Vec<RangeInclusive<char>>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|r| r.contains(&c)) != self.negated
    }
}

/// One element of a compiled pattern. The first four are `filepath.Match`'s; the others occur
/// only in `.dockerignore` patterns, named after the regexp that `patternmatcher` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Literal(char),
    Class(Class),
    /// `?`: `[^/]`
    AnyChar,
    /// `*`: `[^/]*`
    AnyRun,
    /// `**` (or `**/`) before more pattern: `(.*/)?`, any number of whole leading components.
    AnyDirs,
    /// `**` at the end: `.*`.
    AnyTail,
    /// An unescaped `^`, which reaches the regexp as the start-of-text anchor.
    Start,
}

impl Token {
    /// Whether the token can match the empty string (at a position other than the start).
    const fn skippable(&self, at_start: bool) -> bool {
        match self {
            Self::AnyRun | Self::AnyDirs | Self::AnyTail => true,
            Self::Start => at_start,
            Self::Literal(_) | Self::Class(_) | Self::AnyChar => false,
        }
    }
}

/// The `filepath.Match` element that starts with `c`, the rest of it taken from `chars`: `*`,
/// `?`, a `[…]` class, a `\` escape, or a literal character.
pub(crate) fn element(c: char, chars: &mut Peekable<Chars<'_>>) -> Result<Token, PatternError> {
    Ok(match c {
        '*' => Token::AnyRun,
        '?' => Token::AnyChar,
        '[' => Token::Class(parse_class(chars)?),
        '\\' => Token::Literal(chars.next().ok_or(PatternError::TrailingBackslash)?),
        c => Token::Literal(c),
    })
}

/// Parses a class after its `[`, with `filepath.Match`'s rules: an optional `^`, then one or
/// more characters or ranges (`\` escapes), then `]`.
fn parse_class(chars: &mut Peekable<Chars<'_>>) -> Result<Class, PatternError> {
    let negated = chars.next_if_eq(&'^').is_some();
    let mut ranges = Vec::new();
    loop {
        if chars.next_if_eq(&']').is_some() {
            if ranges.is_empty() {
                return Err(PatternError::EmptyClass);
            }
            return Ok(Class { negated, ranges });
        }
        let lo = class_char(chars)?;
        let hi = if chars.next_if_eq(&'-').is_some() {
            class_char(chars)?
        } else {
            lo
        };
        // See the module's documentation: Go's filepath.Match would accept this range and
        // match nothing with it.
        if hi < lo {
            return Err(PatternError::ReversedRange);
        }
        ranges.push(lo..=hi);
    }
}

/// One (possibly escaped) character of a class, which must be followed by more of the class.
fn class_char(chars: &mut Peekable<Chars<'_>>) -> Result<char, PatternError> {
    let c = match chars.next() {
        None => return Err(PatternError::UnclosedClass),
        Some('-' | ']') => return Err(PatternError::BadRange),
        Some('\\') => chars.next().ok_or(PatternError::UnclosedClass)?,
        Some(c) => c,
    };
    if chars.peek().is_none() {
        return Err(PatternError::UnclosedClass);
    }
    Ok(c)
}

/// A compiled `filepath.Match` pattern: what a wildcard component of a COPY or ADD source
/// matches in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    tokens: Vec<Token>,
}

impl PathPattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// A malformed pattern: an unclosed, empty or backwards `[…]` class, a range with a
    /// missing end, or a trailing `\`.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(element(c, &mut chars)?);
        }
        Ok(Self { tokens })
    }

    /// Whether the whole of `name` matches, as `filepath.Match(pattern, name)`.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        Nfa::new(&self.tokens).matches(name)
    }
}

/// A Thompson simulation of a pattern. State `i` means "tokens before `i` matched"; state
/// `len` accepts. [`Token::AnyDirs`] needs a second flag per state: "inside the `.*/`".
pub(crate) struct Nfa<'t> {
    tokens: &'t [Token],
    at: Vec<bool>,
    inside: Vec<bool>,
    next_at: Vec<bool>,
    next_inside: Vec<bool>,
}

impl<'t> Nfa<'t> {
    pub(crate) fn new(tokens: &'t [Token]) -> Self {
        let n = tokens.len() + 1;
        Self {
            tokens,
            at: vec![false; n],
            inside: vec![false; n],
            next_at: vec![false; n],
            next_inside: vec![false; n],
        }
    }

    fn start(&mut self) {
        self.at.fill(false);
        self.inside.fill(false);
        self.at[0] = true;
        self.close(true);
    }

    /// Follows the empty transitions, which only ever lead forward.
    fn close(&mut self, at_start: bool) {
        for (i, token) in self.tokens.iter().enumerate() {
            if self.at[i] && token.skippable(at_start) {
                self.at[i + 1] = true;
            }
        }
    }

    fn accepting(&self) -> bool {
        self.at[self.tokens.len()]
    }

    fn alive(&self) -> bool {
        self.at.iter().chain(&self.inside).any(|&s| s)
    }

    fn step(&mut self, c: char) {
        self.next_at.fill(false);
        self.next_inside.fill(false);
        for (i, token) in self.tokens.iter().enumerate() {
            if self.at[i] {
                match token {
                    Token::Literal(l) => self.next_at[i + 1] |= *l == c,
                    Token::Class(class) => self.next_at[i + 1] |= class.contains(c),
                    Token::AnyChar => self.next_at[i + 1] |= c != '/',
                    Token::AnyRun => self.next_at[i] |= c != '/',
                    // Go's `.` does not match a newline.
                    Token::AnyTail => self.next_at[i] |= c != '\n',
                    Token::AnyDirs | Token::Start => {}
                }
            }
            if (self.at[i] && matches!(token, Token::AnyDirs)) || self.inside[i] {
                self.next_inside[i] |= c != '\n';
                self.next_at[i + 1] |= c == '/';
            }
        }
        std::mem::swap(&mut self.at, &mut self.next_at);
        std::mem::swap(&mut self.inside, &mut self.next_inside);
        self.close(false);
    }

    /// Whether the whole of `text` matches.
    pub(crate) fn matches(&mut self, text: &str) -> bool {
        self.start();
        for c in text.chars() {
            self.step(c);
            if !self.alive() {
                return false;
            }
        }
        self.accepting()
    }

    /// Whether the whole path, or the part before one of its slashes, matches.
    pub(crate) fn matches_path_or_parent(&mut self, path: &str) -> bool {
        self.start();
        for (i, c) in path.char_indices() {
            if c == '/' && i > 0 && self.accepting() {
                return true;
            }
            self.step(c);
            if !self.alive() {
                return false;
            }
        }
        self.accepting()
    }

    /// Whether some non-empty continuation of `prefix` could still be accepted.
    pub(crate) fn alive_after(&mut self, prefix: &str) -> bool {
        self.start();
        for c in prefix.chars() {
            self.step(c);
        }
        let n = self.tokens.len();
        self.at[..n].iter().chain(&self.inside).any(|&s| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts, for each `(pattern, name, matches)` row, what `filepath.Match` answers.
    #[track_caller]
    fn check(rows: &[(&str, &str, bool)]) {
        let failures: Vec<String> = rows
            .iter()
            .filter_map(|&(pattern, name, expected)| {
                let compiled = PathPattern::new(pattern)
                    .unwrap_or_else(|e| panic!("pattern {pattern:?} does not compile: {e}"));
                (compiled.matches(name) != expected)
                    .then(|| format!("{pattern:?} against {name:?}: expected {expected}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn star_and_question_mark_stop_at_a_slash() {
        check(&[
            ("*", "", true),
            ("*", "any.thing", true),
            ("*", "a/b", false),
            ("*.go", "main.go", true),
            ("*.go", "main.rs", false),
            ("*.go", ".go", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c", "a/b/c", false),
            ("a*b*c", "axxbyyc", true),
            ("?", "", false),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("a?c", "a☺c", true), // one character, not one byte
            ("a??c", "a☺c", false),
            // Unlike the `**` of a .dockerignore, these match a newline.
            ("a*c", "a\nc", true),
            ("a?c", "a\nc", true),
        ]);
    }

    #[test]
    fn classes_ranges_and_negation() {
        check(&[
            ("[abc]", "b", true),
            ("[abc]", "d", false),
            ("[abc]", "", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[^a-c]x", "dx", true),
            ("[^a-c]x", "bx", false),
            ("[a-cx-z]", "y", true),
            ("[a-cx-z]", "m", false),
            ("[α-ω]", "λ", true), // ranges of characters, not bytes
            ("[^.]*", ".hidden", false),
            ("[^.]*", "shown", true),
            // A class, unlike `*` and `?`, may match a slash.
            ("a[/]b", "a/b", true),
            ("a[^x]b", "a/b", true),
            // `^` first negates; elsewhere it is a member.
            ("[a^]", "^", true),
            ("[\\^a]", "^", true),
            ("[\\^a]", "b", false),
        ]);
    }

    #[test]
    fn escapes_and_other_characters_are_literal() {
        check(&[
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("\\?", "?", true),
            ("\\[a]", "[a]", true),
            ("\\\\", "\\", true),
            ("\\a", "a", true),
            ("[\\]]", "]", true),
            ("[\\-]", "-", true),
            ("[a\\-z]", "b", false),
            ("[a\\-z]", "-", true),
            // Outside a class, `]` and `^` are plain characters (a .dockerignore's `^` is not).
            ("a]", "a]", true),
            ("^a", "^a", true),
            ("^a", "a", false),
            ("a.b", "a.b", true),
            ("a.b", "axb", false),
            ("(a|b)+", "(a|b)+", true),
            ("(a|b)+", "a", false),
        ]);
    }

    #[test]
    fn a_malformed_pattern_is_an_error_whatever_it_is_matched_against() {
        for (pattern, error) in [
            ("[", PatternError::UnclosedClass),
            ("a[", PatternError::UnclosedClass),
            ("[a", PatternError::UnclosedClass),
            ("[a-", PatternError::UnclosedClass),
            ("[\\", PatternError::UnclosedClass),
            ("*[a", PatternError::UnclosedClass),
            ("x[a", PatternError::UnclosedClass),
            ("[]", PatternError::EmptyClass),
            ("[^]", PatternError::EmptyClass),
            ("[]a]", PatternError::EmptyClass),
            ("[a-]", PatternError::BadRange),
            ("[-a]", PatternError::BadRange),
            ("[a-b-c]", PatternError::BadRange),
            ("[z-a]", PatternError::ReversedRange),
            ("\\", PatternError::TrailingBackslash),
            ("a*\\", PatternError::TrailingBackslash),
        ] {
            assert_eq!(
                PathPattern::new(pattern),
                Err(error),
                "pattern {pattern:?} (which no name could reach the bad part of)"
            );
        }
    }

    #[test]
    fn many_stars_match_in_linear_time() {
        // A backtracking matcher takes exponential time on this; the NFA a few thousand steps.
        let pattern = PathPattern::new(&format!("{}c", "a*".repeat(30))).unwrap();
        assert!(!pattern.matches(&format!("{}b", "a".repeat(60))));
        assert!(pattern.matches(&format!("{}c", "a".repeat(60))));
    }
}
