//! Glob patterns of `${a#p}`, `${a%p}` and `${a/p/r}`, matched the way BuildKit matches them.
//!
//! BuildKit turns the pattern into a Go regular expression (`*` becomes `.*` or `.*?`, `?`
//! becomes `.`) and takes the leftmost-first match, as a backtracking engine would. Two
//! consequences that a plain glob matcher would get wrong follow from that, and are kept here:
//! `*` and `?` never match a newline (Go's `.` does not), and the chosen match is the first one
//! in backtracking order, not the longest or the shortest overall. The suffix forms run the
//! prefix matcher on the reversed pattern and value, as BuildKit does.
//!
//! Matching is a dynamic program over (pattern token, value position) that computes, for every
//! start position, the end that backtracking would pick: O(tokens × chars) time, two rows of
//! memory, no recursion, so no input can blow the stack or take exponential time.

use thiserror::Error;

use super::unicode;

/// Why a pattern does not compile.
#[derive(Error, Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// A `\` that is not followed by `*`, `?`, `\`, `}` or `/`.
    #[error("expected '*', '?' or '\\' after '\\' at character {index} of the pattern, found {}", describe(*.found))]
    BadEscape {
        /// Index (in characters) of the backslash in the pattern as matched.
        index: usize,
        /// The character after the backslash, or `None` at the end of the pattern.
        found: Option<char>,
    },
}

fn describe(found: Option<char>) -> String {
    match found {
        Some(c) => format!("'{c}'"),
        None => "the end of the pattern".to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than a newline.
    Any,
    /// `*`: any run of characters other than newlines.
    Star,
}

/// A compiled glob pattern.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
    /// Whether `*` prefers the longest run (`##`, `%%`, `/`) or the shortest (`#`, `%`).
    greedy: bool,
}

impl Pattern {
    /// Compiles a pattern. The escape character is always `\` here, whatever the Dockerfile's
    /// escape character is: BuildKit hard-codes it in its pattern conversion.
    pub(crate) fn compile(pattern: &str, greedy: bool) -> Result<Self, PatternError> {
        // Go's text/scanner drops a byte order mark at the start of what it scans.
        let pattern = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().enumerate().peekable();
        while let Some((index, c)) = chars.next() {
            let token = match c {
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => {
                    // `\}` and `\/` only keep the delimiters of `${…}` out of the way; the
                    // backslash is not part of the pattern.
                    if matches!(chars.peek(), Some((_, '}' | '/'))) {
                        continue;
                    }
                    match chars.next() {
                        Some((_, e @ ('*' | '?' | '\\'))) => Token::Literal(e),
                        other => {
                            return Err(PatternError::BadEscape {
                                index,
                                found: other.map(|(_, c)| c),
                            });
                        }
                    }
                }
                c => Token::Literal(c),
            };
            tokens.push(token);
        }
        Ok(Self { tokens, greedy })
    }

    /// For every start position `j` in `0..=text.len()`, the end of the match that starts at
    /// `j`, if one does.
    fn match_ends(&self, text: &[char]) -> Vec<Option<usize>> {
        let n = text.len();
        // The row for the empty rest of the pattern: it matches everywhere, ending at once.
        let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
        let mut row: Vec<Option<usize>> = vec![None; n + 1];
        for token in self.tokens.iter().rev() {
            match *token {
                Token::Literal(c) => {
                    for j in 0..=n {
                        row[j] = if text.get(j) == Some(&c) {
                            next[j + 1]
                        } else {
                            None
                        };
                    }
                }
                Token::Any => {
                    for j in 0..=n {
                        row[j] = match text.get(j) {
                            Some(&c) if c != '\n' => next[j + 1],
                            _ => None,
                        };
                    }
                }
                Token::Star => {
                    // A star at `j` may stop anywhere in `j..=lim(j)`, where `lim(j)` is the
                    // next newline (or the end). Backtracking tries the stops longest-first
                    // when greedy and shortest-first otherwise; the first stop after which the
                    // rest matches wins. Sweeping `j` downwards keeps that winner in `best`.
                    let mut best = None;
                    for j in (0..=n).rev() {
                        let at_boundary = j == n || text[j] == '\n';
                        let take = if self.greedy {
                            best.is_none()
                        } else {
                            next[j].is_some()
                        };
                        if at_boundary || take {
                            best = next[j];
                        }
                        row[j] = best;
                    }
                }
            }
            std::mem::swap(&mut row, &mut next);
        }
        next
    }

    /// The end of the match anchored at the start of `text`.
    pub(crate) fn match_prefix(&self, text: &[char]) -> Option<usize> {
        self.match_ends(text).first().copied().flatten()
    }
}

/// Reverses a pattern for suffix matching, keeping each `\x` pair in order.
pub(crate) fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut pairs: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        pairs.push(&chars[i..i + len]);
        i += len;
    }
    pairs.iter().rev().flat_map(|p| p.iter()).collect()
}

/// `${a#p}` and `${a##p}`: removes the matching prefix.
pub(crate) fn trim_prefix(
    pattern: &str,
    value: &str,
    greedy: bool,
) -> Result<String, PatternError> {
    let compiled = Pattern::compile(pattern, greedy)?;
    let text: Vec<char> = value.chars().collect();
    Ok(match compiled.match_prefix(&text) {
        Some(end) => text[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// `${a%p}` and `${a%%p}`: removes the matching suffix.
pub(crate) fn trim_suffix(
    pattern: &str,
    value: &str,
    greedy: bool,
) -> Result<String, PatternError> {
    let compiled = Pattern::compile(&reverse_pattern(pattern), greedy)?;
    let text: Vec<char> = value.chars().rev().collect();
    Ok(match compiled.match_prefix(&text) {
        Some(end) => text[end..].iter().rev().collect(),
        None => value.to_owned(),
    })
}

/// `${a/p/r}` and `${a//p/r}`. The replacement of the first match is literal; with `all`, the
/// replacement is a Go `regexp` template (`$0` and `${0}` stand for the match, `$$` for `$`),
/// because BuildKit calls `ReplaceAllString` there.
pub(crate) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
) -> Result<String, PatternError> {
    let compiled = Pattern::compile(pattern, true)?;
    let text: Vec<char> = value.chars().collect();
    let ends = compiled.match_ends(&text);
    let find_from =
        |from: usize| (from..ends.len()).find_map(|start| ends[start].map(|end| (start, end)));
    let mut out = String::with_capacity(value.len());
    if !all {
        return Ok(match find_from(0) {
            Some((start, end)) => {
                out.extend(&text[..start]);
                out.push_str(replacement);
                out.extend(&text[end..]);
                out
            }
            None => value.to_owned(),
        });
    }
    // The loop of Go's `Regexp.replaceAll`, in characters instead of bytes: an empty match
    // right after another match is not replaced, and the search always moves on.
    let n = text.len();
    let mut last_end = 0;
    let mut search = 0;
    while search <= n {
        let Some((start, end)) = find_from(search) else {
            break;
        };
        out.extend(&text[last_end..start]);
        if end > last_end || start == 0 {
            let matched: String = text[start..end].iter().collect();
            expand_template(replacement, &matched, &mut out);
        }
        last_end = end;
        let width = usize::from(search < n);
        if search + width > end {
            search += width;
        } else if search + 1 > end {
            search += 1;
        } else {
            search = end;
        }
    }
    out.extend(&text[last_end..]);
    Ok(out)
}

/// Go's `Regexp.Expand` for a regexp without capture groups: `$$` is `$`, `$0` and `${0}` are the
/// whole match, any other well-formed `$name` or `${name}` is empty, and a malformed one is
/// literal text.
fn expand_template(template: &str, matched: &str, out: &mut String) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_name(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// The name after a `$` in a template and the text after it.
fn template_name(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let end = body
        .char_indices()
        .find(|&(_, c)| !(unicode::is_letter(c) || unicode::is_digit(c) || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let (name, after) = body.split_at(end);
    if braced {
        after.strip_prefix('}').map(|after| (name, after))
    } else {
        Some((name, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_end(pattern: &str, greedy: bool, text: &str) -> Option<usize> {
        let chars: Vec<char> = text.chars().collect();
        Pattern::compile(pattern, greedy)
            .unwrap()
            .match_prefix(&chars)
    }

    #[test]
    fn lazy_star_takes_the_first_stop_after_which_the_rest_matches() {
        assert_eq!(prefix_end("*x*y", false, "xxyy"), Some(3));
        assert_eq!(prefix_end("*", false, "abc"), Some(0));
        assert_eq!(prefix_end("a*", false, "abc"), Some(1));
    }

    #[test]
    fn greedy_star_takes_the_last_stop_after_which_the_rest_matches() {
        assert_eq!(prefix_end("*x", true, "xxyy"), Some(2));
        assert_eq!(prefix_end("*", true, "abc"), Some(3));
        assert_eq!(prefix_end("*y*", true, "ayby"), Some(4));
    }

    #[test]
    fn wildcards_never_match_a_newline() {
        assert_eq!(prefix_end("*", true, "ab\ncd"), Some(2));
        assert_eq!(prefix_end("?", true, "\n"), None);
        assert_eq!(prefix_end("*\n*", true, "ab\ncd\nef"), Some(5));
        assert_eq!(prefix_end("\n", true, "\n"), Some(1));
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert_eq!(prefix_end("\\*", true, "*a"), Some(1));
        assert_eq!(prefix_end("\\*", true, "a"), None);
        assert_eq!(prefix_end("\\?\\\\", true, "?\\x"), Some(2));
        assert_eq!(prefix_end("a\\}\\/", true, "a}/"), Some(3));
    }

    #[test]
    fn bad_escapes_are_errors() {
        for bad in ["\\", "\\x", "\\\\\\", "a\\b"] {
            assert!(Pattern::compile(bad, true).is_err(), "{bad:?}");
        }
        assert_eq!(
            Pattern::compile("ab\\", true).unwrap_err(),
            PatternError::BadEscape {
                index: 2,
                found: None
            }
        );
    }

    #[test]
    fn reversing_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("é\\ü☃"), "☃\\üé");
    }

    #[test]
    fn suffix_removal_reverses_pattern_and_value() {
        assert_eq!(trim_suffix("*.tar.gz", "a.b.tar.gz", false).unwrap(), "a.b");
        assert_eq!(trim_suffix(".*", "a.b.c", false).unwrap(), "a.b");
        assert_eq!(trim_suffix(".*", "a.b.c", true).unwrap(), "a");
        assert_eq!(trim_suffix("\\**\\*", "a***yy*", true).unwrap(), "a");
    }

    #[test]
    fn replace_all_follows_go_for_empty_matches() {
        assert_eq!(replace("", "ab", "-", true).unwrap(), "-a-b-");
        assert_eq!(replace("*", "ab", "-", true).unwrap(), "-");
        assert_eq!(replace("*", "a\nb", "-", true).unwrap(), "-\n-");
        assert_eq!(replace("x*", "abxxc", "-", true).unwrap(), "ab-");
        assert_eq!(replace("", "", "-", true).unwrap(), "-");
        assert_eq!(replace("", "ab", "-", false).unwrap(), "-ab");
    }

    #[test]
    fn replace_all_expands_go_templates() {
        assert_eq!(replace("b", "abc", "[$0]", true).unwrap(), "a[b]c");
        assert_eq!(replace("b", "abc", "[${0}]", true).unwrap(), "a[b]c");
        assert_eq!(replace("b", "abc", "$$", true).unwrap(), "a$c");
        assert_eq!(replace("b", "abc", "$1x", true).unwrap(), "ac");
        assert_eq!(replace("b", "abc", "${1}x", true).unwrap(), "axc");
        assert_eq!(replace("b", "abc", "$", true).unwrap(), "a$c");
        assert_eq!(replace("b", "abc", "${0", true).unwrap(), "a${0c");
        assert_eq!(replace("b", "abc", "$.", true).unwrap(), "a$.c");
        // The first-match form is literal.
        assert_eq!(replace("b", "abc", "[$0]", false).unwrap(), "a[$0]c");
    }

    #[test]
    fn long_inputs_stay_fast() {
        let pattern = "*a".repeat(200) + "b";
        let value = "a".repeat(5000);
        assert_eq!(trim_prefix(&pattern, &value, true).unwrap(), value);
        assert_eq!(replace(&pattern, &value, "", true).unwrap(), value);
    }
}
