//! One compiled `.dockerignore` pattern and the matcher behind it.
//!
//! Go's `patternmatcher` sorts each cleaned pattern into one of four kinds and only builds a
//! regular expression for the last: a pattern with no wildcard is compared as a string, one that
//! ends in `**` as a prefix, one that starts with `**` and has no other wildcard as a suffix.
//! The kinds are not just a speed-up: `**foo` (a suffix) matches `barfoo`, while `a/**foo` (a
//! regular expression) does not match `a/barfoo`. [`Glob`] keeps the same four kinds so that
//! every such case agrees, and runs the fourth as a small NFA over the characters of the path,
//! so no pattern can make matching take more than `O(path × pattern)` steps.
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

use std::ops::RangeInclusive;

/// Why a pattern is malformed, in `filepath.Match`'s terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GlobError {
    UnclosedClass,
    EmptyClass,
    BadRange,
    ReversedRange,
    TrailingBackslash,
}

impl GlobError {
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            Self::UnclosedClass => "character class opened with [ is never closed with ]",
            Self::EmptyClass => "character class [] holds no character",
            Self::BadRange => {
                "character class has a range with a missing end, or an unescaped - or ] where a character belongs"
            }
            Self::ReversedRange => "character class range runs backwards",
            Self::TrailingBackslash => {
                "pattern ends with an escape character \\ that escapes nothing"
            }
        }
    }
}

/// A character class: `[abc]`, `[a-z]`, `[^0-9]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Class {
    negated: bool,
    ranges: Vec<RangeInclusive<char>>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|r| r.contains(&c)) != self.negated
    }
}

/// One element of a wildcard pattern, named after the regexp `patternmatcher` builds for it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
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
    pub(crate) fn compile(pattern: &str) -> Result<Self, GlobError> {
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
                '*' => {
                    tokens.push(Token::AnyRun);
                    detected = Detected::Wildcard;
                }
                '?' => {
                    tokens.push(Token::AnyChar);
                    detected = Detected::Wildcard;
                }
                '\\' => {
                    let escaped = chars.next().ok_or(GlobError::TrailingBackslash)?;
                    tokens.push(Token::Literal(escaped));
                    detected = Detected::Wildcard;
                }
                '[' => {
                    tokens.push(Token::Class(parse_class(&mut chars)?));
                    detected = Detected::Wildcard;
                }
                ']' => {
                    tokens.push(Token::Literal(']'));
                    detected = Detected::Wildcard;
                }
                '^' => tokens.push(Token::Start),
                c => tokens.push(Token::Literal(c)),
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

/// Parses a class after its `[`, with `filepath.Match`'s rules: an optional `^`, then one or
/// more characters or ranges (`\` escapes), then `]`.
fn parse_class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Class, GlobError> {
    let negated = chars.next_if_eq(&'^').is_some();
    let mut ranges = Vec::new();
    loop {
        if chars.next_if_eq(&']').is_some() {
            if ranges.is_empty() {
                return Err(GlobError::EmptyClass);
            }
            return Ok(Class { negated, ranges });
        }
        let lo = class_char(chars)?;
        let hi = if chars.next_if_eq(&'-').is_some() {
            class_char(chars)?
        } else {
            lo
        };
        // filepath.Match accepts a backwards range that matches nothing, but patternmatcher
        // hands it to Go's regexp, which rejects it when the pattern is first used.
        if hi < lo {
            return Err(GlobError::ReversedRange);
        }
        ranges.push(lo..=hi);
    }
}

/// One (possibly escaped) character of a class, which must be followed by more of the class.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, GlobError> {
    let c = match chars.next() {
        None => return Err(GlobError::UnclosedClass),
        Some('-' | ']') => return Err(GlobError::BadRange),
        Some('\\') => chars.next().ok_or(GlobError::UnclosedClass)?,
        Some(c) => c,
    };
    if chars.peek().is_none() {
        return Err(GlobError::UnclosedClass);
    }
    Ok(c)
}

/// A Thompson simulation of a wildcard pattern. State `i` means "tokens before `i` matched";
/// state `len` accepts. [`Token::AnyDirs`] needs a second flag per state: "inside the `.*/`".
struct Nfa<'t> {
    tokens: &'t [Token],
    at: Vec<bool>,
    inside: Vec<bool>,
    next_at: Vec<bool>,
    next_inside: Vec<bool>,
}

impl<'t> Nfa<'t> {
    fn new(tokens: &'t [Token]) -> Self {
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
                    Token::AnyDirs => {}
                    Token::Start => {}
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

    /// Whether the whole path, or the part before one of its slashes, matches.
    fn matches_path_or_parent(&mut self, path: &str) -> bool {
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
    fn alive_after(&mut self, prefix: &str) -> bool {
        self.start();
        for c in prefix.chars() {
            self.step(c);
        }
        let n = self.tokens.len();
        self.at[..n].iter().chain(&self.inside).any(|&s| s)
    }
}
