//! Parse, dump and word expansion on arbitrary input.
//!
//! Beyond "never panics", it checks what the rest of hoist relies on: every span in the AST and
//! in an error slices the source on character boundaries (errors turn spans into
//! `line:column`, and the solver slices the source with them), and every word the parser hands
//! on survives BuildKit's word expansion without a panic, with both escape characters.
#![no_main]
// `fuzz_target!` expands to a `std::fs::File::create` (libfuzzer-sys writes its debug output
// with it), which the workspace clippy.toml bans for project code.
#![allow(clippy::disallowed_methods)]

use hoist_parser::shell::Lexer;
use hoist_parser::{Command, Dockerfile, Instruction, LineIndex, Span};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match hoist_parser::parse(source) {
        Ok(file) => {
            let _ = hoist_parser::dump::dump(&file, source);
            check_file(&file, source);
        }
        Err(err) => {
            check_span(err.span, source, "error");
            let _ = err.render("Dockerfile", source, &LineIndex::new(source));
        }
    }
});

/// A small environment: a value with spaces splits in word mode, an empty one and a glob.
fn env() -> Vec<(String, String)> {
    [
        ("a", "x y"),
        ("HOME", "/root"),
        ("empty", ""),
        ("glob", "*.c?"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn check_span(span: Span, source: &str, what: &str) {
    assert!(
        span.start <= span.end && source.get(span.start..span.end).is_some(),
        "{what} span {span:?} does not slice a source of {} bytes on character boundaries",
        source.len()
    );
}

fn check_file(file: &Dockerfile, source: &str) {
    for directive in &file.directives {
        check_span(directive.span, source, "directive");
    }
    for warning in &file.warnings {
        check_span(warning.span, source, "warning");
    }
    let env = env();
    let lexers = [
        Lexer::new(file.escape),
        Lexer::new(if file.escape == '\\' { '`' } else { '\\' }),
        Lexer::new(file.escape).skip_unset_env(true),
    ];
    for instruction in &file.instructions {
        let mut words = Vec::new();
        collect(instruction, source, &mut words);
        for word in &words {
            for lexer in &lexers {
                let _ = lexer.process_word(word, &env);
                let _ = lexer.process_words(word, &env);
            }
        }
    }
}

/// Checks the spans of one instruction and collects every word it carries.
fn collect<'a>(instruction: &'a Instruction, source: &str, words: &mut Vec<&'a str>) {
    check_span(instruction.span(), source, "instruction");
    check_span(instruction.keyword_span(), source, "keyword");
    for flag in instruction.flags() {
        check_span(flag.span, source, "flag");
        words.extend(flag.value.as_deref());
    }
    let spanned = |s: &'a hoist_parser::Spanned<String>, words: &mut Vec<&'a str>| {
        check_span(s.span, source, "word");
        words.push(&s.value);
    };
    let command = |c: &'a Command, words: &mut Vec<&'a str>| {
        check_span(c.span(), source, "command");
        match c {
            Command::Exec { args, .. } => words.extend(args.iter().map(String::as_str)),
            Command::Shell { text, .. } => words.push(text),
        }
    };
    let heredocs = |docs: &'a [hoist_parser::Heredoc], words: &mut Vec<&'a str>| {
        for doc in docs {
            check_span(doc.span, source, "heredoc");
            let _ = hoist_parser::heredoc::chomp(&doc.content);
            if doc.expand {
                words.push(&doc.content);
            }
        }
    };
    match instruction {
        Instruction::Add(i) => {
            i.paths.words.iter().for_each(|w| spanned(w, words));
            heredocs(&i.heredocs, words);
        }
        Instruction::Copy(i) => {
            i.paths.words.iter().for_each(|w| spanned(w, words));
            heredocs(&i.heredocs, words);
        }
        Instruction::Volume(i) => i.paths.words.iter().for_each(|w| spanned(w, words)),
        Instruction::Arg(i) => {
            for arg in &i.args {
                check_span(arg.span, source, "arg");
                words.push(&arg.name);
                words.extend(arg.default.as_deref());
            }
        }
        Instruction::Cmd(i) => i.command.iter().for_each(|c| command(c, words)),
        Instruction::Entrypoint(i) => i.command.iter().for_each(|c| command(c, words)),
        Instruction::Shell(i) => i.command.iter().for_each(|c| command(c, words)),
        Instruction::Run(i) => {
            i.command.iter().for_each(|c| command(c, words));
            heredocs(&i.heredocs, words);
        }
        Instruction::Healthcheck(i) => {
            i.kind.iter().for_each(|w| spanned(w, words));
            i.command.iter().for_each(|c| command(c, words));
        }
        Instruction::Env(i) => pairs(&i.pairs, source, words),
        Instruction::Label(i) => pairs(&i.pairs, source, words),
        Instruction::Expose(i) => i.ports.iter().for_each(|w| spanned(w, words)),
        Instruction::From(i) => {
            i.args.iter().for_each(|w| spanned(w, words));
            let _ = (i.image(), i.stage_name());
        }
        Instruction::Maintainer(i) => i.name.iter().for_each(|w| spanned(w, words)),
        Instruction::Stopsignal(i) => i.signal.iter().for_each(|w| spanned(w, words)),
        Instruction::User(i) => i.user.iter().for_each(|w| spanned(w, words)),
        Instruction::Workdir(i) => i.path.iter().for_each(|w| spanned(w, words)),
        Instruction::Onbuild(i) => collect(&i.trigger, source, words),
    }
}

fn pairs<'a>(pairs: &'a [hoist_parser::KeyValue], source: &str, words: &mut Vec<&'a str>) {
    for pair in pairs {
        check_span(pair.span, source, "key=value");
        words.push(&pair.key);
        words.push(&pair.value);
    }
}
