//! BuildKit's AST dump format, which its parser tests (and our conformance suite) compare byte
//! for byte.
//!
//! One line per instruction: `(keyword ["--flag" …] "arg" …)`. Strings are quoted as Go's
//! `strconv.Quote` does. Shell form is one argument; JSON form one per element; ENV and LABEL
//! give `"key" "value" "="` triples (`""` instead of `"="` for the legacy `ENV key value`);
//! ONBUILD nests its trigger. Heredoc bodies are not shown.

use std::fmt::Write as _;

use crate::ast::{Command, Dockerfile, Flag, Instruction, KeyValue, Spanned};

/// Prints the AST as BuildKit's parser tests do, one line per instruction.
#[must_use]
pub fn dump(file: &Dockerfile, _source: &str) -> String {
    let mut out = String::new();
    for instruction in &file.instructions {
        out.push('(');
        out.push_str(&node(instruction));
        out.push_str(")\n");
    }
    out
}

fn node(instruction: &Instruction) -> String {
    let mut out = instruction.name().to_owned();
    flags(&mut out, instruction.flags());
    let mut args: Vec<String> = Vec::new();
    let mut push_words = |words: &[Spanned<String>]| {
        args.extend(words.iter().map(|w| w.value.clone()));
    };
    match instruction {
        Instruction::Add(i) => push_words(&i.paths.words),
        Instruction::Copy(i) => push_words(&i.paths.words),
        Instruction::Volume(i) => push_words(&i.paths.words),
        Instruction::Expose(i) => push_words(&i.ports),
        Instruction::From(i) => push_words(&i.args),
        Instruction::Arg(i) => {
            for decl in &i.args {
                args.push(match &decl.default {
                    Some(default) => format!("{}={default}", decl.name),
                    None => decl.name.clone(),
                });
            }
        }
        Instruction::Cmd(i) => command(&mut args, i.command.as_ref()),
        Instruction::Entrypoint(i) => command(&mut args, i.command.as_ref()),
        Instruction::Run(i) => command(&mut args, i.command.as_ref()),
        Instruction::Shell(i) => command(&mut args, i.command.as_ref()),
        Instruction::Env(i) => pairs(&mut args, &i.pairs),
        Instruction::Label(i) => pairs(&mut args, &i.pairs),
        Instruction::Maintainer(i) => args.extend(i.name.iter().map(|s| s.value.clone())),
        Instruction::Stopsignal(i) => args.extend(i.signal.iter().map(|s| s.value.clone())),
        Instruction::User(i) => args.extend(i.user.iter().map(|s| s.value.clone())),
        Instruction::Workdir(i) => args.extend(i.path.iter().map(|s| s.value.clone())),
        Instruction::Healthcheck(i) => {
            args.extend(i.kind.iter().map(|s| s.value.clone()));
            command(&mut args, i.command.as_ref());
        }
        Instruction::Onbuild(i) => {
            let _ = write!(out, " ({})", node(&i.trigger));
        }
    }
    for arg in &args {
        out.push(' ');
        out.push_str(&go_quote(arg));
    }
    out
}

fn flags(out: &mut String, flags: &[Flag]) {
    if flags.is_empty() {
        return;
    }
    out.push_str(" [");
    for (i, flag) in flags.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&go_quote(&flag.to_arg()));
    }
    out.push(']');
}

fn command(args: &mut Vec<String>, command: Option<&Command>) {
    match command {
        Some(Command::Exec { args: words, .. }) => args.extend(words.iter().cloned()),
        Some(Command::Shell { text, .. }) => args.push(text.clone()),
        None => {}
    }
}

fn pairs(args: &mut Vec<String>, pairs: &[KeyValue]) {
    for pair in pairs {
        args.push(pair.key.clone());
        args.push(pair.value.clone());
        args.push(if pair.legacy { "" } else { "=" }.to_owned());
    }
}

/// Quotes a string as Go's `strconv.Quote` does: `\"`, `\\`, the C escapes, `\x` for other
/// ASCII controls, `\u`/`\U` for characters Go does not consider printable.
#[must_use]
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` for the characters that matter in Dockerfiles: ASCII graphic and
/// space, and every other character except controls, format characters, separators other
/// than U+0020, private-use characters and noncharacters. Unassigned code points are treated
/// as printable, which is where this differs from Go's tables.
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(
            u,
            0xAD | 0x600..=0x605
                | 0x61C
                | 0x6DD
                | 0x70F
                | 0x180E
                | 0x200B..=0x200F
                | 0x202A..=0x202E
                | 0x2060..=0x206F
                | 0xD800..=0xF8FF
                | 0xFDD0..=0xFDEF
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0xFFFE..=0xFFFF
                | 0x110BD
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0001..=0xE007F
                | 0xF0000..
        )
        || (u & 0xFFFE) == 0xFFFE)
}
