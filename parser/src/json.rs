//! The JSON (exec) form of RUN, CMD, COPY and the like.
//!
//! BuildKit hands the text to Go's `encoding/json`: a valid JSON array of strings is the exec
//! form; a valid JSON value that holds anything but strings is an error; anything that is not
//! valid JSON falls back to the shell form. This module decides which of the three a text is.
//! Nesting is walked with an explicit stack, so no input can exhaust the call stack.

use nom::Parser as _;
use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::{char as chr, one_of};
use nom::combinator::{opt, recognize};
use nom::sequence::pair;

/// Go's `encoding/json` refuses nesting deeper than this.
const MAX_DEPTH: usize = 10_000;

/// What a text after an instruction's flags is, as far as the JSON form goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JsonForm {
    /// A JSON array of strings, with each element's byte range in the text.
    Strings(Vec<(String, std::ops::Range<usize>)>),
    /// Valid JSON starting with `[`, but an element is not a string; names what was found.
    NotStrings(&'static str),
    /// Not a JSON array: the caller uses the shell form.
    NotJson,
}

/// Classifies `text` (already trimmed on the left by the caller or not; leading whitespace is
/// skipped as BuildKit does).
pub(crate) fn classify(text: &str) -> JsonForm {
    let start = text.len() - text.trim_start().len();
    if !text[start..].starts_with('[') {
        return JsonForm::NotJson;
    }
    let mut cur = Cursor { text, pos: start };
    let mut strings = Vec::new();
    let mut not_string = None;
    // The outer array: elements are read one by one so strings can be kept.
    cur.pos += 1;
    cur.skip_ws();
    if cur.eat(b']') {
        cur.skip_ws();
        return if cur.pos == text.len() {
            JsonForm::Strings(strings)
        } else {
            JsonForm::NotJson
        };
    }
    loop {
        cur.skip_ws();
        let elem_start = cur.pos;
        if cur.peek() == Some(b'"') {
            match cur.string() {
                Some(s) => strings.push((s, elem_start..cur.pos)),
                None => return JsonForm::NotJson,
            }
        } else {
            match cur.value() {
                Some(kind) => {
                    not_string.get_or_insert(kind);
                }
                None => return JsonForm::NotJson,
            }
        }
        cur.skip_ws();
        if cur.eat(b',') {
            continue;
        }
        if cur.eat(b']') {
            break;
        }
        return JsonForm::NotJson;
    }
    cur.skip_ws();
    if cur.pos != text.len() {
        return JsonForm::NotJson;
    }
    match not_string {
        Some(kind) => JsonForm::NotStrings(kind),
        None => JsonForm::Strings(strings),
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

#[derive(Clone, Copy)]
enum Frame {
    Array,
    Object,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Reads any JSON value; returns what kind it is, or `None` if it is not valid JSON.
    fn value(&mut self) -> Option<&'static str> {
        let kind = match self.peek()? {
            b'"' => "a string",
            b'[' => "an array",
            b'{' => "an object",
            b't' | b'f' => "a boolean",
            b'n' => "null",
            _ => "a number",
        };
        match self.peek()? {
            b'[' | b'{' => self.nested()?,
            _ => self.scalar()?,
        }
        Some(kind)
    }

    /// A string, number or literal.
    fn scalar(&mut self) -> Option<()> {
        if self.peek()? == b'"' {
            return self.string().map(|_| ());
        }
        let rest = self.rest();
        let literal = alt((
            tag::<_, _, nom::error::Error<&str>>("true"),
            tag("false"),
            tag("null"),
        ));
        let number = recognize((
            opt(chr('-')),
            alt((tag("0"), recognize(pair(one_of("123456789"), digits0)))),
            opt(pair(chr('.'), digits1)),
            opt((one_of("eE"), opt(one_of("+-")), digits1)),
        ));
        let (after, _) = alt((literal, number)).parse(rest).ok()?;
        self.pos += rest.len() - after.len();
        Some(())
    }

    /// An array or object, walked with an explicit stack.
    fn nested(&mut self) -> Option<()> {
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            // Expect a value here.
            self.skip_ws();
            match self.peek()? {
                b'[' => {
                    self.pos += 1;
                    stack.push(Frame::Array);
                    if stack.len() > MAX_DEPTH {
                        return None;
                    }
                    self.skip_ws();
                    if self.eat(b']') {
                        stack.pop();
                    } else {
                        continue;
                    }
                }
                b'{' => {
                    self.pos += 1;
                    stack.push(Frame::Object);
                    if stack.len() > MAX_DEPTH {
                        return None;
                    }
                    self.skip_ws();
                    if self.eat(b'}') {
                        stack.pop();
                    } else {
                        self.key()?;
                        continue;
                    }
                }
                _ => self.scalar()?,
            }
            // After a value: close frames or move to the next element.
            loop {
                let Some(frame) = stack.last().copied() else {
                    return Some(());
                };
                self.skip_ws();
                if self.eat(b',') {
                    if let Frame::Object = frame {
                        self.skip_ws();
                        self.key()?;
                    }
                    break;
                }
                let close = match frame {
                    Frame::Array => b']',
                    Frame::Object => b'}',
                };
                if self.eat(close) {
                    stack.pop();
                } else {
                    return None;
                }
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Option<()> {
        self.skip_ws();
        if self.peek()? != b'"' {
            return None;
        }
        self.string()?;
        self.skip_ws();
        self.eat(b':').then_some(())
    }

    /// A JSON string, decoded as Go does (lone surrogates become U+FFFD).
    fn string(&mut self) -> Option<String> {
        let bytes = self.text.as_bytes();
        let mut i = self.pos + 1;
        let mut out = String::new();
        let mut run_start = i;
        loop {
            let b = *bytes.get(i)?;
            match b {
                b'"' => {
                    out.push_str(self.text.get(run_start..i)?);
                    self.pos = i + 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push_str(self.text.get(run_start..i)?);
                    let esc = *bytes.get(i + 1)?;
                    i += 2;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = hex4(self.text.get(i..i + 4)?)?;
                            i += 4;
                            if (0xD800..0xDC00).contains(&hi)
                                && self.text.get(i..i + 2) == Some("\\u")
                                && let Some(lo) = self.text.get(i + 2..i + 6).and_then(hex4)
                                && (0xDC00..0xE000).contains(&lo)
                            {
                                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                                i += 6;
                                run_start = i;
                                continue;
                            }
                            out.push(char::from_u32(hi).unwrap_or('\u{FFFD}'));
                        }
                        _ => return None,
                    }
                    run_start = i;
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
    }
}

fn digits0(input: &str) -> nom::IResult<&str, &str> {
    take_while(|c: char| c.is_ascii_digit())(input)
}

fn digits1(input: &str) -> nom::IResult<&str, &str> {
    take_while1(|c: char| c.is_ascii_digit())(input)
}

fn hex4(s: &str) -> Option<u32> {
    if s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(text: &str) -> Vec<String> {
        match classify(text) {
            JsonForm::Strings(v) => v.into_iter().map(|(s, _)| s).collect(),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn string_arrays_are_exec_form() {
        assert_eq!(strings(r#"["a", "b"]"#), ["a", "b"]);
        assert_eq!(strings(" [ ] "), Vec::<String>::new());
        assert_eq!(strings(r#"["\/usr\\\"/bin"]"#), ["/usr\\\"/bin"]);
        assert_eq!(strings(r#"["\u00e9\ud83d\ude00\ud800"]"#), ["é😀\u{FFFD}"]);
    }

    #[test]
    fn other_values_are_errors() {
        assert_eq!(
            classify(r#"["a", ["b"]]"#),
            JsonForm::NotStrings("an array")
        );
        assert_eq!(classify(r#"[1.5e3]"#), JsonForm::NotStrings("a number"));
        assert_eq!(
            classify(r#"["a", {"k": [null, true]}]"#),
            JsonForm::NotStrings("an object")
        );
    }

    #[test]
    fn invalid_json_falls_back_to_shell() {
        for text in [
            "echo [a]",
            "['a']",
            r#"["a""#,
            r#"["a"] x"#,
            r#"["a",]"#,
            r#"["\x"]"#,
            "[\"a\tb\"]",
            "[01]",
            "[[[[",
        ] {
            assert_eq!(classify(text), JsonForm::NotJson, "{text:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_exhaust_the_stack() {
        let deep = format!("[{}{}]", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(classify(&deep), JsonForm::NotJson);
        let ok = format!("[{}{}]", "[".repeat(5_000), "]".repeat(5_000));
        assert_eq!(classify(&ok), JsonForm::NotStrings("an array"));
    }
}
