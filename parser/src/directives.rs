//! Parser directives: `# syntax=…`, `# escape=…` and `# check=…`.
//!
//! Directives are comment lines of the form `# name=value` at the very top of the file. The
//! first line that is not one (an instruction, a blank line, any other comment, or a comment
//! naming an unknown directive) ends them, and later lines that look like directives are plain
//! comments. Each directive may appear once. `escape` takes `\` or `` ` `` and changes the escape
//! character for the rest of the file.

use crate::ast::{Directive, DirectiveKind, Span};
use crate::error::{ParseError, ParseErrorKind};

/// The escape character when no directive sets one.
pub const DEFAULT_ESCAPE: char = '\\';

/// Reads directives line by line while the file opens with them.
#[derive(Debug)]
pub(crate) struct DirectiveParser {
    done: bool,
    escape: char,
    found: Vec<Directive>,
}

impl DirectiveParser {
    pub(crate) const fn new() -> Self {
        Self {
            done: false,
            escape: DEFAULT_ESCAPE,
            found: Vec::new(),
        }
    }

    /// The escape character in force.
    pub(crate) const fn escape(&self) -> char {
        self.escape
    }

    pub(crate) fn into_directives(self) -> Vec<Directive> {
        self.found
    }

    /// Looks at the next line of the file (without its line ending). Records it if it is a
    /// directive; otherwise ends the directive section.
    pub(crate) fn line(&mut self, text: &str, span: Span) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = split_directive(text) else {
            self.done = true;
            return Ok(());
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "syntax" => DirectiveKind::Syntax,
            "escape" => DirectiveKind::Escape,
            "check" => DirectiveKind::Check,
            _ => {
                self.done = true;
                return Ok(());
            }
        };
        if self.found.iter().any(|d| d.kind == kind) {
            return Err(ParseError::new(
                ParseErrorKind::DuplicateDirective {
                    name: kind.as_str(),
                },
                span,
            ));
        }
        if kind == DirectiveKind::Escape {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(ParseError::new(
                        ParseErrorKind::InvalidEscape {
                            found: value.to_owned(),
                        },
                        span,
                    ));
                }
            };
        }
        self.found.push(Directive {
            kind,
            value: value.to_owned(),
            span,
        });
        Ok(())
    }
}

/// Whitespace as the directive pattern of BuildKit (`\s` of Go's RE2) knows it.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// Splits `# name = value` into its name and value, with the same reading as BuildKit's
/// pattern `^#` then `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` on the rest with leading
/// whitespace removed.
fn split_directive(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, after) = rest.split_at(name_len);
    let after = after.trim_start_matches(is_re_space).strip_prefix('=')?;
    if after.is_empty() {
        return None;
    }
    let value = after
        .trim_start_matches(is_re_space)
        .trim_end_matches(is_re_space);
    if !value.is_empty() {
        return Some((name, value));
    }
    // Only whitespace after `=`: the lazy value group still takes one character, the last.
    let last = after.char_indices().last().map_or(0, |(i, _)| i);
    Some((name, &after[last..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser_after(lines: &[&str]) -> Result<DirectiveParser, ParseError> {
        let mut p = DirectiveParser::new();
        for line in lines {
            p.line(line, Span::default())?;
        }
        Ok(p)
    }

    #[test]
    fn splits_name_and_value() {
        assert_eq!(split_directive("# escape=`"), Some(("escape", "`")));
        assert_eq!(
            split_directive("#syntax = a/b:1  "),
            Some(("syntax", "a/b:1"))
        );
        assert_eq!(
            split_directive("#  check = skip=all;error=true"),
            Some(("check", "skip=all;error=true"))
        );
        assert_eq!(split_directive("# escape = \t"), Some(("escape", "\t")));
        assert_eq!(split_directive("# escape ="), None);
        assert_eq!(split_directive("# 1escape=x"), None);
        assert_eq!(split_directive("# Comment here."), None);
        assert_eq!(split_directive("FROM x"), None);
    }

    #[test]
    fn escape_directive_sets_the_escape_character() {
        let p = parser_after(&["# escape=`"]).unwrap();
        assert_eq!(p.escape(), '`');
        let p = parser_after(&["# ESCAPE=\\"]).unwrap();
        assert_eq!(p.escape(), '\\');
    }

    #[test]
    fn each_directive_at_most_once() {
        let err = parser_after(&["# syntax=a", "# syntax=b"]).unwrap_err();
        assert_eq!(
            err.kind,
            ParseErrorKind::DuplicateDirective { name: "syntax" }
        );
        let err = parser_after(&["# check=skip=all", "# CHECK=error=true"]).unwrap_err();
        assert_eq!(
            err.kind,
            ParseErrorKind::DuplicateDirective { name: "check" }
        );
    }

    #[test]
    fn invalid_escape_is_an_error() {
        let err = parser_after(&["# escape=x"]).unwrap_err();
        assert_eq!(
            err.kind,
            ParseErrorKind::InvalidEscape { found: "x".into() }
        );
    }

    #[test]
    fn directives_only_at_the_top() {
        // A blank line, another comment or an unknown directive ends the section.
        for first in ["", "# just a comment", "# unknown=1", "FROM scratch"] {
            let p = parser_after(&[first, "# escape=`"]).unwrap();
            assert_eq!(p.escape(), '\\', "after {first:?}");
            assert!(p.into_directives().is_empty());
        }
        let p = parser_after(&["# syntax=x", "# escape=`", "# check=skip=all"]).unwrap();
        assert_eq!(p.into_directives().len(), 3);
    }
}
