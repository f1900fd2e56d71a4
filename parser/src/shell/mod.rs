//! Word expansion with the semantics of BuildKit's shell lexer.
//!
//! A [`Lexer`] takes one word of a Dockerfile instruction (the argument of `WORKDIR`, one
//! `ENV` value, the text of a `COPY` source) and an [`Env`] of the variables in scope, and
//! returns the word with its quotes removed and its variables expanded:
//!
//! - [`Lexer::process_word`] gives one string, as `WORKDIR` or `ENV` use it;
//! - [`Lexer::process_words`] splits the expansion into words on unquoted white space, as
//!   `EXPOSE` and the like do;
//! - [`Lexer::process_word_with_matches`] also tells which variables the word read and which of
//!   those were set ([`Expansion::matched`], [`Expansion::unmatched`]), for unused-`ARG` checks.
//!
//! The rules are BuildKit's (`frontend/dockerfile/shell/lex.go`), not a POSIX shell's: no
//! command substitution, no arithmetic, `${a:=w}` is an error, and special parameters (`$1`,
//! `$@`, `$?`) are ordinary names that no Dockerfile sets. BuildKit's quirks are kept on purpose,
//! because a Dockerfile must mean the same under hoist as under `docker build`; each one is
//! marked where it is implemented. The options [`Lexer::raw_quotes`],
//! [`Lexer::raw_escapes`] and [`Lexer::skip_unset_env`] are the ones BuildKit's parser uses to
//! find heredoc markers and to pre-expand words without losing what it cannot expand yet.
//!
//! Errors are [`ExpandError`]s with the byte offset of the problem in the word.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use thiserror::Error;

mod pattern;
#[cfg(test)]
mod tests;
mod unicode;

pub use pattern::PatternError;

/// The variables in scope for an expansion.
pub trait Env {
    /// The value of `key`, or `None` when it is unset. An empty value is set.
    fn get(&self, key: &str) -> Option<&str>;
    /// The names of the variables that are set.
    fn keys(&self) -> Vec<&str>;
}

/// A list of `(name, value)` pairs; when a name repeats, the last pair wins, as in an
/// environment built from `ENV` instructions one after another.
impl Env for [(String, String)] {
    fn get(&self, key: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::with_capacity(self.len());
        for (k, _) in self {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        keys
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<&str> {
        Env::get(self.as_slice(), key)
    }

    fn keys(&self) -> Vec<&str> {
        Env::keys(self.as_slice())
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        BTreeMap::keys(self).map(String::as_str).collect()
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = HashMap::keys(self).map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, key: &str) -> Option<&str> {
        (**self).get(key)
    }

    fn keys(&self) -> Vec<&str> {
        (**self).keys()
    }
}

/// An environment with no variables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmptyEnv;

impl Env for EmptyEnv {
    fn get(&self, _key: &str) -> Option<&str> {
        None
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// How deeply `${…}` expressions may nest inside one another. BuildKit has no limit (Go stacks
/// grow); this one keeps a hostile word from overflowing the stack, and no real Dockerfile comes
/// near it.
pub const MAX_NESTING: usize = 64;

/// Why a word could not be expanded. Offsets are in bytes from the start of the word.
#[derive(Error, Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// A single or double quote with no closing quote.
    #[error("unterminated {} quote at byte {offset}: expected a closing {quote} before the end of the word", quote_name(*.quote))]
    UnterminatedQuote {
        /// The quote character, `'` or `"`.
        quote: char,
        /// Where the opening quote is.
        offset: usize,
    },
    /// `${` with no matching `}`.
    #[error("unterminated expansion at byte {offset}: expected '}}' before the end of the word")]
    MissingBrace {
        /// Where the `${` is.
        offset: usize,
    },
    /// `${a/p` or `${a//p` with no `/` after the pattern.
    #[error(
        "unterminated substitution at byte {offset}: expected '/' after the pattern, found the end of the word"
    )]
    MissingSlash {
        /// Where the `${` is.
        offset: usize,
    },
    /// `${}`, `${{…`, `${:…`: no variable name after `${`.
    #[error(
        "bad substitution at byte {offset}: expected a variable name after '${{', found '{found}'"
    )]
    BadSubstitution {
        /// Where the `${` is.
        offset: usize,
        /// The character found instead of a name.
        found: char,
    },
    /// An operator after the name that BuildKit does not support, such as `${a:=w}`, `${a:#p}`
    /// or `${a.b}`.
    #[error(
        "unsupported modifier '{modifier}' at byte {offset}: expected '}}', one of '-', '+', '?', ':-', ':+', ':?', '#', '##', '%', '%%', '/' or '//'"
    )]
    UnsupportedModifier {
        /// The modifier as written (`:=`, `.`).
        modifier: String,
        /// Where the modifier starts.
        offset: usize,
    },
    /// `${a?msg}` with `a` unset, or `${a:?msg}` with `a` unset or empty.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The word after `?`, or a default saying what was wrong.
        message: String,
        /// Where the `${` is.
        offset: usize,
    },
    /// A pattern of `#`, `%` or `/` that does not compile.
    #[error("invalid pattern '{pattern}' in the expansion at byte {offset}")]
    InvalidPattern {
        /// The pattern, after expansion.
        pattern: String,
        /// Where the `${` is.
        offset: usize,
        /// What is wrong with it.
        #[source]
        source: PatternError,
    },
    /// More than [`MAX_NESTING`] expressions inside one another.
    #[error("expansion at byte {offset} is nested more than {limit} levels deep")]
    TooDeep {
        /// Where the expression that went too deep starts.
        offset: usize,
        /// The limit, [`MAX_NESTING`].
        limit: usize,
    },
}

fn quote_name(quote: char) -> &'static str {
    if quote == '\'' { "single" } else { "double" }
}

impl ExpandError {
    /// The byte offset in the word where the problem is.
    pub fn offset(&self) -> usize {
        match self {
            Self::UnterminatedQuote { offset, .. }
            | Self::MissingBrace { offset }
            | Self::MissingSlash { offset }
            | Self::BadSubstitution { offset, .. }
            | Self::UnsupportedModifier { offset, .. }
            | Self::Required { offset, .. }
            | Self::InvalidPattern { offset, .. }
            | Self::TooDeep { offset, .. } => *offset,
        }
    }
}

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word.
    pub value: String,
    /// The expansion split into words, as [`Lexer::process_words`] would split it.
    pub words: Vec<String>,
    /// Variables the word read that were set.
    pub matched: BTreeSet<String>,
    /// Variables the word read that were unset.
    pub unmatched: BTreeSet<String>,
}

/// Expands words with BuildKit's shell-lexer rules. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape character (`\`, or `` ` `` after `# escape=``).
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (their contents are still treated as quoted).
    #[must_use]
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (what they escape is still escaped).
    #[must_use]
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written (`$a`, `${a}`, `${a:-w}`) instead of
    /// expanding them, so that a later pass with more variables can expand them.
    #[must_use]
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quote characters as ordinary characters.
    #[must_use]
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Expands `word` into one string.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        // Without the words: splitting a heredoc of many megabytes into words nobody reads would
        // cost more memory than the text itself.
        let mut expander = Expander::new(self, env, word);
        expander.split = false;
        expander.run().map(|(value, _)| value)
    }

    /// Expands `word` into one string, as [`Self::process_word`] does, but borrows it when
    /// nothing in it can change: no `$`, quote, escape character or leading byte order mark.
    /// A long literal value is then not copied.
    pub fn process_word_cow<'w>(
        &self,
        word: &'w str,
        env: &dyn Env,
    ) -> Result<Cow<'w, str>, ExpandError> {
        let special = |c: char| matches!(c, '$' | '\'' | '"' | '\u{feff}') || c == self.escape;
        if word.contains(special) {
            self.process_word(word, env).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(word))
        }
    }

    /// Expands `word` into one string and reports the variables it read.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ExpandError> {
        let mut expander = Expander::new(self, env, word);
        let (value, words) = expander.run()?;
        Ok(Expansion {
            value,
            words,
            matched: expander.matched,
            unmatched: expander.unmatched,
        })
    }

    /// Expands `word` and splits the result into words on unquoted white space. Quoted and
    /// escaped white space stays inside its word; white space that comes from a variable's
    /// value splits.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        Expander::new(self, env, word).run().map(|(_, words)| words)
    }
}

/// The words being collected by one (possibly nested) scan.
///
/// BuildKit keeps the text of the word in progress in one buffer shared by the top-level scan
/// and the nested scans of `${a:-w}`, `${a#p}` and `${a/p/r}`, and each nested scan clears it.
/// So in word-splitting mode a word loses what came before such an expression: `ab${x:-y}`
/// splits into `y`, not `aby`. That is a BuildKit bug, but it is what `EXPOSE` and friends do
/// under `docker build`, so the shared buffer is kept (it lives in [`Expander::word_buf`]).
#[derive(Debug)]
struct Words {
    words: Vec<String>,
    in_word: bool,
    /// Whether words are collected at all; when not, only the expanded string is wanted.
    split: bool,
}

impl Words {
    const fn new(split: bool) -> Self {
        Self {
            words: Vec::new(),
            in_word: false,
            split,
        }
    }

    fn add_char(&mut self, buf: &mut String, c: char) {
        if !self.split {
            return;
        }
        if c.is_whitespace() {
            if self.in_word && !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(buf, c);
        }
    }

    fn add_raw_char(&mut self, buf: &mut String, c: char) {
        if self.split {
            buf.push(c);
            self.in_word = true;
        }
    }

    fn add_str(&mut self, buf: &mut String, s: &str) {
        if self.split {
            for c in s.chars() {
                self.add_char(buf, c);
            }
        }
    }

    fn add_raw_str(&mut self, buf: &mut String, s: &str) {
        if self.split {
            buf.push_str(s);
            self.in_word = true;
        }
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
        }
        self.words
    }
}

/// The state of one expansion.
struct Expander<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Whether escape characters are kept; nested scans change it for their extent.
    raw_escapes: bool,
    /// The word in progress, shared by all scans (see [`Words`]).
    word_buf: String,
    /// Whether to split into words as well as expand.
    split: bool,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

/// The result of a scan up to a stop character: `None` when the word ended first.
type Scanned = Option<(String, Vec<String>)>;

impl<'a> Expander<'a> {
    fn new(lexer: &'a Lexer, env: &'a dyn Env, src: &'a str) -> Self {
        Self {
            lexer,
            env,
            src,
            // Go's text/scanner, which BuildKit reads the word with, skips a leading byte order
            // mark.
            pos: if src.starts_with('\u{feff}') {
                '\u{feff}'.len_utf8()
            } else {
                0
            },
            raw_escapes: lexer.raw_escapes,
            word_buf: String::new(),
            split: true,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn run(&mut self) -> Result<(String, Vec<String>), ExpandError> {
        let raw = self.raw_escapes;
        // Without a stop character, the scan always ends with a result.
        Ok(self.scan(None, raw)?.unwrap_or_default())
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(value) => {
                self.matched.insert(name.to_owned());
                Some(value.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    /// Scans up to `stop` (consumed) or the end of the word, with escape characters kept or
    /// not as `raw_escapes` says.
    fn scan(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<Scanned, ExpandError> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let scanned = self.scan_inner(stop);
        self.raw_escapes = saved;
        scanned
    }

    fn scan_inner(&mut self, stop: Option<char>) -> Result<Scanned, ExpandError> {
        // The whole word is usually about as long expanded as written: sized for it, a long
        // one is not regrown (and copied) many times over.
        let mut result = if stop.is_none() {
            String::with_capacity(self.src.len() - self.pos)
        } else {
            String::new()
        };
        self.word_buf.clear();
        let mut words = Words::new(self.split);
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(c) = self.peek() {
            let at = self.pos;
            self.pos += c.len_utf8();
            if Some(c) == stop {
                return Ok(Some((result, words.finish(&mut self.word_buf))));
            }
            match c {
                '$' => {
                    let value = self.dollar(at)?;
                    result.push_str(&value);
                    words.add_str(&mut self.word_buf, &value);
                }
                '<' => {
                    let text = self.possible_heredoc();
                    result.push_str(&text);
                    words.add_raw_str(&mut self.word_buf, &text);
                }
                '\'' if quotes => {
                    let text = self.single_quoted(at)?;
                    result.push_str(&text);
                    words.add_raw_str(&mut self.word_buf, &text);
                }
                '"' if quotes => {
                    let text = self.double_quoted(at)?;
                    result.push_str(&text);
                    words.add_raw_str(&mut self.word_buf, &text);
                }
                c if c == self.lexer.escape => {
                    if self.raw_escapes {
                        words.add_raw_char(&mut self.word_buf, c);
                        result.push(c);
                    }
                    // An escape character at the very end escapes nothing and goes away.
                    let Some(escaped) = self.bump() else { break };
                    words.add_raw_char(&mut self.word_buf, escaped);
                    result.push(escaped);
                }
                c => {
                    words.add_char(&mut self.word_buf, c);
                    result.push(c);
                }
            }
        }
        if stop.is_some() {
            return Ok(None);
        }
        Ok(Some((result, words.finish(&mut self.word_buf))))
    }

    /// After `'`: everything up to the next `'` is literal; nothing escapes inside.
    fn single_quoted(&mut self, at: usize) -> Result<String, ExpandError> {
        let mut out = String::new();
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.bump() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: '\'',
                        offset: at,
                    });
                }
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// After `"`: `$` expands, and the escape character escapes only `"`, `$` and itself;
    /// before anything else it is literal.
    fn double_quoted(&mut self, at: usize) -> Result<String, ExpandError> {
        let mut out = String::new();
        if self.lexer.raw_quotes {
            out.push('"');
        }
        loop {
            let dollar_at = self.pos;
            match self.bump() {
                None => {
                    return Err(ExpandError::UnterminatedQuote {
                        quote: '"',
                        offset: at,
                    });
                }
                Some('"') => {
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar(dollar_at)?),
                Some(c) if c == self.lexer.escape => {
                    if self.raw_escapes {
                        out.push(c);
                    }
                    match self.peek() {
                        // The quote is unterminated; the next turn reports it.
                        None => {}
                        Some(n) if n == '"' || n == '$' || n == self.lexer.escape => {
                            self.pos += n.len_utf8();
                            out.push(n);
                        }
                        // BuildKit quirk: with raw escapes, a literal escape character before
                        // an ordinary one comes out twice (`"\t"` gives `\\t`).
                        Some(_) => out.push(c),
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// After `<`: passes `<<` and the blanks after it through whole, so that word splitting
    /// keeps a heredoc marker such as `<< EOF` in one word.
    fn possible_heredoc(&mut self) -> String {
        let mut out = String::from("<");
        if self.peek() != Some('<') {
            return out;
        }
        self.pos += 1;
        out.push('<');
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            self.pos += 1;
            out.push(c);
        }
        out
    }

    /// A variable name: a run of digits, one special parameter (`@*#?-$!0`), or a letter or
    /// `_` followed by letters, digits and `_` (Unicode letters and digits, as Go defines them).
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && unicode::is_digit(c) {
                while let Some(d) = self.peek().filter(|&d| unicode::is_digit(d)) {
                    self.pos += d.len_utf8();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += c.len_utf8();
                name.push(c);
                return name;
            }
            if !(unicode::is_letter(c) || unicode::is_digit(c) || c == '_') {
                break;
            }
            self.pos += c.len_utf8();
            name.push(c);
        }
        name
    }

    /// A nested scan of an operand of `${…}`, with the nesting limit applied.
    fn operand(
        &mut self,
        stop: char,
        raw_escapes: bool,
        at: usize,
    ) -> Result<Scanned, ExpandError> {
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep {
                offset: at,
                limit: MAX_NESTING,
            });
        }
        self.depth += 1;
        let scanned = self.scan(Some(stop), raw_escapes);
        self.depth -= 1;
        scanned
    }

    /// After `$` (at byte `at`): `$name`, `${name}` or `${name<op>word}`.
    fn dollar(&mut self, at: usize) -> Result<String, ExpandError> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(ExpandError::MissingBrace { offset: at }),
            Some(found @ ('{' | '}' | ':')) => {
                return Err(ExpandError::BadSubstitution { offset: at, found });
            }
            Some(_) => {}
        }
        let name = self.name();
        let op_at = self.pos;
        match self.bump() {
            // BuildKit calls this an unsupported modifier; the brace is what is missing.
            None => Err(ExpandError::MissingBrace { offset: at }),
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => {
                // BuildKit takes whatever follows the colon as the operator and scans the word
                // before it checks the operator, so `${a:=w}` still reads `w`.
                let op = self.bump();
                let mut modifier = String::from(':');
                modifier.extend(op);
                self.modifier(at, op_at, &name, op, modifier, true)
            }
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => {
                self.modifier(at, op_at, &name, Some(op), op.to_string(), false)
            }
            Some('/') => self.substitution(at, &name),
            Some(other) => Err(ExpandError::UnsupportedModifier {
                modifier: other.to_string(),
                offset: op_at,
            }),
        }
    }

    /// `${name<op>word}` for the operators `-`, `+`, `?`, `#`, `##`, `%`, `%%`, with a colon
    /// before the first three when `colon` is set.
    fn modifier(
        &mut self,
        at: usize,
        op_at: usize,
        name: &str,
        op: Option<char>,
        modifier: String,
        colon: bool,
    ) -> Result<String, ExpandError> {
        let pattern_op = matches!(op, Some('#' | '%'));
        if colon && pattern_op {
            return Err(ExpandError::UnsupportedModifier {
                modifier,
                offset: op_at,
            });
        }
        // Patterns keep their escapes, so that `\*` still reads as a literal star.
        let Some((word, _)) = self.operand('}', pattern_op, at)? else {
            return Err(ExpandError::MissingBrace { offset: at });
        };
        let value = self.lookup(name);
        if self.lexer.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let unset_or_null = match &value {
            None => true,
            Some(v) => colon && v.is_empty(),
        };
        match op {
            Some('-') => Ok(if unset_or_null {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if unset_or_null { String::new() } else { word }),
            Some('?') => match value {
                Some(v) if !unset_or_null => Ok(v),
                value => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        "is not allowed to be empty".to_owned()
                    };
                    Err(ExpandError::Required {
                        name: name.to_owned(),
                        message,
                        offset: at,
                    })
                }
            },
            Some(op @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                // `##` and `%%` are seen after expansion: a word that expands to `#x` makes
                // `${a#$w}` greedy, as in BuildKit.
                let (pattern, greedy) = match word.strip_prefix(op) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let trimmed = if op == '#' {
                    pattern::trim_prefix(pattern, &value, greedy)
                } else {
                    pattern::trim_suffix(pattern, &value, greedy)
                };
                trimmed.map_err(|source| ExpandError::InvalidPattern {
                    pattern: pattern.to_owned(),
                    offset: at,
                    source,
                })
            }
            _ => Err(ExpandError::UnsupportedModifier {
                modifier,
                offset: op_at,
            }),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`, after the first `/`.
    fn substitution(&mut self, at: usize, name: &str) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let Some((pattern, _)) = self.operand('/', true, at)? else {
            return Err(ExpandError::MissingSlash { offset: at });
        };
        let Some((replacement, _)) = self.operand('}', true, at)? else {
            return Err(ExpandError::MissingBrace { offset: at });
        };
        let Some(value) = self.lookup(name) else {
            if self.lexer.skip_unset_env {
                // BuildKit writes `${a//p/r}` back with one slash.
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return replace_or_error(&pattern, "", &replacement, all, at);
        };
        replace_or_error(&pattern, &value, &replacement, all, at)
    }
}

fn replace_or_error(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
    at: usize,
) -> Result<String, ExpandError> {
    pattern::replace(pattern, value, replacement, all).map_err(|source| {
        ExpandError::InvalidPattern {
            pattern: pattern.to_owned(),
            offset: at,
            source,
        }
    })
}
