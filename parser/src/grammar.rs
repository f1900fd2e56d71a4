//! The Dockerfile grammar.
//!
//! The text is read line by line, as BuildKit's parser does:
//! 1. Parser directives are read while the file opens with them ([`crate::directives`]).
//! 2. Comment and blank lines between instructions are skipped.
//! 3. A line ending in the escape character continues on the next line. Comment lines inside a
//!    continuation are dropped and empty ones are skipped with a warning. The pieces form one
//!    *logical line*, which remembers where each of its bytes came from, so that every word of
//!    it gets a span in the source.
//! 4. The logical line splits into a keyword, builder flags and arguments; the keyword decides
//!    how the arguments are read (JSON or shell form, whitespace-separated words, `key=value`
//!    pairs, a sub-instruction for ONBUILD).
//! 5. RUN, COPY and ADD in shell form take here-documents from the lines that follow.

use std::ops::Range;

use crate::ast::{
    AddInstruction, ArgDecl, ArgInstruction, CmdInstruction, Command, CopyInstruction, Dockerfile,
    EntrypointInstruction, EnvInstruction, ExposeInstruction, Flag, FromInstruction,
    HealthcheckInstruction, Heredoc, Instruction, KEYWORDS, KeyValue, LabelInstruction,
    MaintainerInstruction, OnbuildInstruction, RunInstruction, ShellInstruction, Span, Spanned,
    StopsignalInstruction, UserInstruction, VolumeInstruction, Warning, WordList,
    WorkdirInstruction,
};
use crate::directives::DirectiveParser;
use crate::error::{ParseError, ParseErrorKind};
use crate::heredoc;
use crate::json::{self, JsonForm};

const BOM: &str = "\u{FEFF}";

/// Parses a Dockerfile.
///
/// # Errors
/// A [`ParseError`] with the span of the offending text: a malformed directive, an unknown
/// instruction, a malformed ENV or LABEL, a JSON array of non-strings, an unterminated heredoc,
/// or a file without instructions.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    let mut lines = Lines::new(source);
    let mut directives = DirectiveParser::new();
    // Dockerfiles average well over 32 bytes an instruction: reserving up front spares
    // regrowing (and copying) a large list; the unused rest is given back at the end.
    let mut instructions = Vec::with_capacity(source.len() / 32 + 1);
    let mut warnings = Vec::new();
    // Reused for every instruction, so that reading a line allocates nothing of its own.
    let mut logical = Logical::default();

    while let Some(line) = lines.next() {
        // The first line of an instruction is read with its leading whitespace removed.
        let text = trim_newline(line.text);
        let lead = text.len() - text.trim_start().len();
        let text = &text[lead..];
        let text_start = line.start + lead;
        directives.line(text, Span::new(text_start, text_start + text.len()))?;
        if is_comment(text) {
            continue;
        }
        let (piece, mut continues) = trim_continuation(text, directives.escape());
        if !continues && piece.is_empty() {
            continue;
        }
        logical.clear();
        logical.push(piece, text_start);
        let mut end = text_start + text.len();
        let mut empty_continuation = None;
        while continues {
            let Some(next) = lines.next() else { break };
            let text = trim_newline(next.text);
            directives.line(text, Span::new(next.start, next.start + text.len()))?;
            end = next.start + text.len();
            if is_comment(text.trim_start()) {
                continue;
            }
            if text.trim_start().is_empty() {
                empty_continuation.get_or_insert(Span::new(next.start, end));
                continue;
            }
            let (piece, more) = trim_continuation(text, directives.escape());
            logical.push(piece, next.start);
            continues = more;
        }
        if let Some(span) = empty_continuation {
            warnings.push(Warning {
                message: format!(
                    "empty continuation line found in: {}; empty continuation lines will become \
                     errors in a future release",
                    logical.text()
                ),
                span,
            });
        }

        let reader = Reader {
            line: &logical,
            escape: directives.escape(),
        };
        let whole = 0..logical.text().len();
        let mut instruction = reader.instruction(whole, false)?;
        let mut span = Span::new(text_start, end);
        if let Some(docs) = heredocs_of(&mut instruction).filter(|_| logical.text().contains("<<"))
        {
            let markers = heredoc::markers(logical.text()).map_err(|message| {
                ParseError::new(ParseErrorKind::HeredocDelimiter { message }, span)
            })?;
            for marker in markers {
                let body_start = lines.offset();
                // The body is every line before the terminator, whole: one slice of the source,
                // copied once at its final size.
                let mut body_end = None;
                for body_line in lines.by_ref() {
                    let mut candidate = trim_newline(body_line.text);
                    if marker.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == marker.name {
                        body_end = Some(body_line.start);
                        span.end = body_line.start + trim_newline(body_line.text).len();
                        break;
                    }
                }
                let Some(body_end) = body_end else {
                    return Err(ParseError::new(
                        ParseErrorKind::UnterminatedHeredoc { name: marker.name },
                        Span::new(span.start, source.len()),
                    ));
                };
                let content = source[body_start..body_end].to_owned();
                docs.push(Heredoc {
                    name: marker.name,
                    fd: marker.fd,
                    expand: marker.expand,
                    chomp: marker.chomp,
                    content,
                    span: Span::new(body_start, span.end),
                });
            }
        }
        set_span(&mut instruction, span);
        instructions.push(instruction);
    }

    if instructions.is_empty() {
        return Err(ParseError::new(
            ParseErrorKind::NoInstructions,
            Span::new(source.len(), source.len()),
        ));
    }
    instructions.shrink_to_fit();
    Ok(Dockerfile {
        escape: directives.escape(),
        directives: directives.into_directives(),
        instructions,
        warnings,
    })
}

/// The heredoc list of an instruction that can take heredocs: RUN, COPY or ADD that is not in
/// JSON form, also as an ONBUILD trigger.
fn heredocs_of(instruction: &mut Instruction) -> Option<&mut Vec<Heredoc>> {
    match instruction {
        Instruction::Run(RunInstruction {
            command, heredocs, ..
        }) if !command.as_ref().is_some_and(Command::is_exec) => Some(heredocs),
        Instruction::Copy(CopyInstruction {
            paths, heredocs, ..
        })
        | Instruction::Add(AddInstruction {
            paths, heredocs, ..
        }) if !paths.json => Some(heredocs),
        Instruction::Onbuild(OnbuildInstruction { trigger, .. }) => heredocs_of(trigger),
        _ => None,
    }
}

fn set_span(instruction: &mut Instruction, span: Span) {
    macro_rules! set {
        ($($variant:ident),*) => {
            match instruction {
                $(Instruction::$variant(i) => i.span = span,)*
            }
        };
    }
    set!(
        Add,
        Arg,
        Cmd,
        Copy,
        Entrypoint,
        Env,
        Expose,
        From,
        Healthcheck,
        Label,
        Maintainer,
        Onbuild,
        Run,
        Shell,
        Stopsignal,
        User,
        Volume,
        Workdir
    );
}

/// One physical line: its text (with the line ending) and where it starts.
struct Line<'a> {
    text: &'a str,
    start: usize,
}

/// Splits the source into lines as Go's scanner with BuildKit's split function does: at `\n`,
/// keeping it; a byte-order mark at the very start is dropped.
struct Lines<'a> {
    source: &'a str,
    pos: usize,
}

impl<'a> Lines<'a> {
    fn new(source: &'a str) -> Self {
        let pos = if source.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        Self { source, pos }
    }

    fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let rest = self.source.get(self.pos..).filter(|r| !r.is_empty())?;
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let line = Line {
            text: &rest[..len],
            start: self.pos,
        };
        self.pos += len;
        Some(line)
    }
}

fn trim_newline(text: &str) -> &str {
    text.trim_end_matches(['\r', '\n'])
}

fn is_comment(text: &str) -> bool {
    text.starts_with('#')
}

/// Removes a line-continuation escape (and the blanks after it) from the end of a line.
///
/// As in BuildKit, the escape continues the line only if it stands alone on the line or the
/// character before it is not the escape character itself, so `\\` at the end is literal.
fn trim_continuation(text: &str, escape: char) -> (&str, bool) {
    let body = text.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (text, false);
    };
    if before.is_empty() || !before.ends_with(escape) {
        (before, true)
    } else {
        (text, false)
    }
}

/// A logical line: the pieces of one or more physical lines, joined, with a map back to the
/// source.
#[derive(Default)]
struct Logical<'s> {
    /// The text while it is one piece: a slice of the source, not a copy (most instructions
    /// are one line, and a line may be many megabytes long).
    single: &'s str,
    /// The text of two or more pieces, joined.
    joined: String,
    /// `(offset in text, offset in source)` where each piece starts.
    pieces: Vec<(usize, usize)>,
}

impl<'s> Logical<'s> {
    fn clear(&mut self) {
        self.single = "";
        self.joined.clear();
        self.pieces.clear();
    }

    fn text(&self) -> &str {
        if self.pieces.len() > 1 {
            &self.joined
        } else {
            self.single
        }
    }

    fn push(&mut self, piece: &'s str, source_start: usize) {
        if piece.is_empty() {
            return;
        }
        self.pieces.push((self.text().len(), source_start));
        match self.pieces.len() {
            1 => self.single = piece,
            2 => {
                self.joined.push_str(self.single);
                self.joined.push_str(piece);
            }
            _ => self.joined.push_str(piece),
        }
    }

    /// The source offset of a byte of the logical text.
    fn source_offset(&self, pos: usize) -> usize {
        let i = self.pieces.partition_point(|&(at, _)| at <= pos).max(1) - 1;
        self.pieces
            .get(i)
            .map_or(pos, |&(at, src)| src + (pos - at))
    }

    /// The source span of a range of the logical text.
    fn span(&self, range: Range<usize>) -> Span {
        if range.is_empty() {
            let at = if range.start >= self.text().len() && range.start > 0 {
                self.source_offset(range.start - 1) + 1
            } else {
                self.source_offset(range.start)
            };
            return Span::new(at, at);
        }
        Span::new(
            self.source_offset(range.start),
            self.source_offset(range.end - 1) + 1,
        )
    }
}

/// BuildKit splits words at runs of these (its `reWhitespace`).
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Reads instructions out of a logical line.
struct Reader<'a> {
    line: &'a Logical<'a>,
    escape: char,
}

impl Reader<'_> {
    fn text(&self, range: Range<usize>) -> &str {
        self.line.text().get(range).unwrap_or("")
    }

    fn spanned(&self, value: String, range: Range<usize>) -> Spanned<String> {
        Spanned {
            value,
            span: self.line.span(range),
        }
    }

    /// Trims unicode whitespace from both ends of a range.
    fn trim(&self, range: Range<usize>) -> Range<usize> {
        let text = self.text(range.clone());
        let start = range.start + (text.len() - text.trim_start().len());
        let end = range.start + text.trim_end().len();
        start..end.max(start)
    }

    /// Parses one instruction from `range` of the logical line. `in_onbuild` is set for the
    /// trigger of an ONBUILD.
    fn instruction(
        &self,
        range: Range<usize>,
        in_onbuild: bool,
    ) -> Result<Instruction, ParseError> {
        let range = self.trim(range);
        let text = self.text(range.clone());
        let kw_len = text.find(is_split_space).unwrap_or(text.len());
        let keyword = range.start..range.start + kw_len;
        let after = self.text(keyword.end..range.end);
        let args_start =
            keyword.end + (after.len() - after.trim_start_matches(is_split_space).len());
        let (flags, rest_start) = self.flags(args_start..range.end);
        let args = self.trim(rest_start..range.end);
        let keyword_text = self.text(keyword.clone());
        let name = KEYWORDS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(keyword_text))
            .copied()
            .unwrap_or("");
        let kw_span = self.line.span(keyword.clone());
        let span = self.line.span(range);

        macro_rules! make {
            ($variant:ident, $ty:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {
                Instruction::$variant($ty { span, keyword: kw_span, flags, $($field $(: $value)?),* })
            };
        }

        if in_onbuild && matches!(name, "onbuild" | "from" | "maintainer") {
            return Err(ParseError::new(
                ParseErrorKind::OnbuildTrigger {
                    found: keyword_text.to_ascii_uppercase(),
                },
                kw_span,
            ));
        }

        Ok(match name {
            "add" => make!(
                Add,
                AddInstruction {
                    paths: self.word_list(args)?,
                    heredocs: Vec::new()
                }
            ),
            "copy" => make!(
                Copy,
                CopyInstruction {
                    paths: self.word_list(args)?,
                    heredocs: Vec::new()
                }
            ),
            "volume" => make!(
                Volume,
                VolumeInstruction {
                    paths: self.word_list(args)?
                }
            ),
            "arg" => make!(
                Arg,
                ArgInstruction {
                    args: self.arg_decls(args)
                }
            ),
            "cmd" => make!(
                Cmd,
                CmdInstruction {
                    command: self.command(args)?
                }
            ),
            "entrypoint" => make!(
                Entrypoint,
                EntrypointInstruction {
                    command: self.command(args)?
                }
            ),
            "run" => make!(
                Run,
                RunInstruction {
                    command: self.command(args)?,
                    heredocs: Vec::new()
                }
            ),
            "shell" => make!(
                Shell,
                ShellInstruction {
                    command: self.command(args)?
                }
            ),
            "env" => make!(
                Env,
                EnvInstruction {
                    pairs: self.name_values(args, "ENV")?
                }
            ),
            "label" => make!(
                Label,
                LabelInstruction {
                    pairs: self.name_values(args, "LABEL")?
                }
            ),
            "expose" => make!(
                Expose,
                ExposeInstruction {
                    ports: self.split_words(args)
                }
            ),
            "from" => make!(
                From,
                FromInstruction {
                    args: self.split_words(args)
                }
            ),
            "maintainer" => make!(
                Maintainer,
                MaintainerInstruction {
                    name: self.string(args)
                }
            ),
            "stopsignal" => make!(
                Stopsignal,
                StopsignalInstruction {
                    signal: self.string(args)
                }
            ),
            "user" => make!(
                User,
                UserInstruction {
                    user: self.string(args)
                }
            ),
            "workdir" => make!(
                Workdir,
                WorkdirInstruction {
                    path: self.string(args)
                }
            ),
            "healthcheck" => {
                let (kind, command) = self.health(args)?;
                make!(Healthcheck, HealthcheckInstruction { kind, command })
            }
            "onbuild" => {
                if args.is_empty() {
                    return Err(ParseError::new(ParseErrorKind::OnbuildEmpty, kw_span));
                }
                let expression = self.text(args.clone()).to_owned();
                let trigger = Box::new(self.instruction(args, true)?);
                make!(
                    Onbuild,
                    OnbuildInstruction {
                        trigger,
                        expression
                    }
                )
            }
            _ => {
                return Err(ParseError::new(
                    ParseErrorKind::UnknownInstruction {
                        found: keyword_text.to_owned(),
                        expected: "ADD, ARG, CMD, COPY, ENTRYPOINT, ENV, EXPOSE, FROM, \
                                   HEALTHCHECK, LABEL, MAINTAINER, ONBUILD, RUN, SHELL, \
                                   STOPSIGNAL, USER, VOLUME or WORKDIR",
                        suggestion: suggest(&keyword_text.to_ascii_lowercase()),
                    },
                    kw_span,
                ));
            }
        })
    }

    /// Reads builder flags (`--name[=value]`) at the start of `range`. Returns them and where
    /// the arguments start.
    ///
    /// As BuildKit does: only words starting with `--` are flags; quotes inside a flag word are
    /// removed and the escape character makes the next character literal; a bare `--` ends
    /// the flags.
    fn flags(&self, range: Range<usize>) -> (Vec<Flag>, usize) {
        let text = self.text(range.clone());
        let mut flags = Vec::new();
        let mut chars = text.char_indices().peekable();
        loop {
            while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
            let Some(&(word_start, _)) = chars.peek() else {
                return (flags, range.end);
            };
            if !text[word_start..].starts_with("--") {
                return (flags, range.start + word_start);
            }
            let mut word = String::new();
            let mut quote = None;
            let mut quoted = false;
            let mut word_end = text.len();
            while let Some((i, c)) = chars.next() {
                match quote {
                    None if c.is_whitespace() => {
                        word_end = i;
                        break;
                    }
                    None if c == '\'' || c == '"' => {
                        quote = Some(c);
                        quoted = true;
                    }
                    Some(q) if c == q => quote = None,
                    _ if c == self.escape => {
                        if let Some((_, next)) = chars.next() {
                            word.push(next);
                        } else {
                            quote = None;
                        }
                    }
                    _ => word.push(c),
                }
            }
            if word == "--" {
                return (flags, range.start + word_end);
            }
            if word.is_empty() && !quoted {
                continue;
            }
            let body = word.strip_prefix("--").unwrap_or(&word);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (body.to_owned(), None),
            };
            flags.push(Flag {
                name,
                value,
                span: self
                    .line
                    .span(range.start + word_start..range.start + word_end),
            });
        }
    }

    /// JSON form, or shell form when the text is not a JSON array (RUN, CMD, ENTRYPOINT, SHELL).
    fn command(&self, range: Range<usize>) -> Result<Option<Command>, ParseError> {
        if range.is_empty() {
            return Ok(None);
        }
        let span = self.line.span(range.clone());
        match json::classify(self.text(range.clone())) {
            JsonForm::Strings(items) => Ok(Some(Command::Exec {
                args: items.into_iter().map(|(s, _)| s).collect(),
                span,
            })),
            JsonForm::NotStrings(found) => Err(not_strings(found, span)),
            JsonForm::NotJson => Ok(Some(Command::Shell {
                text: self.text(range).to_owned(),
                span,
            })),
        }
    }

    /// JSON form, or whitespace-separated words (ADD, COPY, VOLUME).
    fn word_list(&self, range: Range<usize>) -> Result<WordList, ParseError> {
        match json::classify(self.text(range.clone())) {
            JsonForm::Strings(items) => Ok(WordList {
                words: items
                    .into_iter()
                    .map(|(s, r)| self.spanned(s, range.start + r.start..range.start + r.end))
                    .collect(),
                json: true,
            }),
            JsonForm::NotStrings(found) => Err(not_strings(found, self.line.span(range))),
            JsonForm::NotJson => Ok(WordList {
                words: self.split_words(range),
                json: false,
            }),
        }
    }

    /// Words separated by runs of blanks, kept as written (FROM, EXPOSE, and the shell form of
    /// ADD, COPY and VOLUME).
    fn split_words(&self, range: Range<usize>) -> Vec<Spanned<String>> {
        let text = self.text(range.clone());
        let mut words = Vec::new();
        let mut start = None;
        for (i, c) in text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')))
        {
            match (start, is_split_space(c)) {
                (None, false) => start = Some(i),
                (Some(s), true) => {
                    words.push(
                        self.spanned(text[s..i].to_owned(), range.start + s..range.start + i),
                    );
                    start = None;
                }
                _ => {}
            }
        }
        words
    }

    /// The whole argument text as one value (MAINTAINER, STOPSIGNAL, USER, WORKDIR).
    fn string(&self, range: Range<usize>) -> Option<Spanned<String>> {
        (!range.is_empty()).then(|| self.spanned(self.text(range.clone()).to_owned(), range))
    }

    /// Words as BuildKit's `parseWords` reads them for ARG, ENV and LABEL: split at unquoted
    /// whitespace, with quotes and escapes kept in the words. Returns each word's range.
    ///
    /// A word is its text as written, less an escape character at the very end (which escapes
    /// nothing and is dropped), so it is returned as a slice of the line: a value of many
    /// megabytes is copied once, into the AST, at its size.
    fn quoted_words(&self, range: Range<usize>) -> Vec<(&str, Range<usize>)> {
        let text = self.text(range.clone());
        let mut words = Vec::new();
        let mut word_start = None;
        // Where the text of the word in progress ends so far.
        let mut word_end = 0;
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut chars = text.char_indices().peekable();
        let word = |start: usize, end: usize| text.get(start..end.max(start)).unwrap_or("");
        while let Some((i, c)) = chars.next() {
            let start = *word_start.get_or_insert(i);
            match quote {
                None if c.is_whitespace() => {
                    if blank_ok || word_end > start {
                        words.push((word(start, word_end), range.start + start..range.start + i));
                    }
                    word_start = None;
                    blank_ok = false;
                    // Skip the rest of the blank run.
                    while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
                }
                None => {
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                        blank_ok = true;
                    }
                    if c == self.escape {
                        let Some((j, next)) = chars.next() else {
                            continue;
                        };
                        word_end = j + next.len_utf8();
                    } else {
                        word_end = i + c.len_utf8();
                    }
                }
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                    if c == self.escape && q != '\'' {
                        let Some((j, next)) = chars.next() else {
                            quote = None;
                            continue;
                        };
                        word_end = j + next.len_utf8();
                    } else {
                        word_end = i + c.len_utf8();
                    }
                }
            }
        }
        if let Some(start) = word_start
            && (blank_ok || word_end > start)
        {
            words.push((word(start, word_end), range.start + start..range.end));
        }
        words
    }

    fn arg_decls(&self, range: Range<usize>) -> Vec<ArgDecl> {
        self.quoted_words(range)
            .into_iter()
            .map(|(word, r)| {
                let (name, default) = split_at_equals(word);
                ArgDecl {
                    name,
                    default,
                    span: self.line.span(r),
                }
            })
            .collect()
    }

    /// `key=value ...`, or the legacy `key value` (ENV, LABEL).
    fn name_values(
        &self,
        range: Range<usize>,
        instruction: &'static str,
    ) -> Result<Vec<KeyValue>, ParseError> {
        let words = self.quoted_words(range.clone());
        let Some((first, _)) = words.first() else {
            return Ok(Vec::new());
        };
        if !first.contains('=') {
            let text = self.text(range.clone());
            let Some(key_len) = text.find(is_split_space) else {
                return Err(ParseError::new(
                    ParseErrorKind::MissingValue {
                        instruction,
                        found: text.to_owned(),
                    },
                    self.line.span(range),
                ));
            };
            let value_start = key_len
                + (text.len() - key_len - text[key_len..].trim_start_matches(is_split_space).len());
            return Ok(vec![KeyValue {
                key: text[..key_len].to_owned(),
                value: text[value_start..].to_owned(),
                legacy: true,
                span: self.line.span(range),
            }]);
        }
        words
            .into_iter()
            .map(|(word, r)| match word.split_once('=') {
                Some((key, value)) => Ok(KeyValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    legacy: false,
                    span: self.line.span(r),
                }),
                None => Err(ParseError::new(
                    ParseErrorKind::MissingEquals {
                        found: word.to_owned(),
                    },
                    self.line.span(r),
                )),
            })
            .collect()
    }

    /// `HEALTHCHECK [kind [command]]`: the first word, then JSON or shell form.
    fn health(
        &self,
        range: Range<usize>,
    ) -> Result<(Option<Spanned<String>>, Option<crate::ast::Command>), ParseError> {
        let text = self.text(range.clone());
        let sep = text.find(char::is_whitespace).unwrap_or(text.len());
        if sep == 0 {
            return Ok((None, None));
        }
        let kind = self.spanned(text[..sep].to_owned(), range.start..range.start + sep);
        let rest = text[sep..].trim_start();
        let command = self.command(range.end - rest.len()..range.end)?;
        Ok((Some(kind), command))
    }
}

/// Splits `name=value` at the first `=`.
fn split_at_equals(word: &str) -> (String, Option<String>) {
    match word.split_once('=') {
        Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
        None => (word.to_owned(), None),
    }
}

fn not_strings(found: &'static str, span: Span) -> ParseError {
    ParseError::new(ParseErrorKind::JsonNotStrings { found }, span)
}

/// The closest instruction keyword to a misspelt one, if any is close.
fn suggest(found: &str) -> Option<&'static str> {
    KEYWORDS
        .iter()
        .map(|k| (edit_distance(found, k), *k))
        .filter(|&(d, k)| d <= 2.min(k.len() / 2))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}
