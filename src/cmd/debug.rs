//! `hoist debug …`: tools for looking inside hoist.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hoist_parser::shell::Lexer;

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Expand a word as a Dockerfile instruction would, with BuildKit's shell-lexer rules.
    ExpandWord(ExpandWordArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ExpandWordArgs {
    /// The escape character (`\` or `` ` ``).
    #[arg(long, default_value = "\\", value_parser = parse_escape)]
    escape: char,
    /// A variable in scope, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Split into words as EXPOSE and the like do; prints one word per line.
    #[arg(long)]
    words: bool,
    /// The word to expand.
    #[arg(allow_hyphen_values = true)]
    word: String,
}

/// A Dockerfile's `# escape=` directive allows only these two.
fn parse_escape(s: &str) -> Result<char, String> {
    match s {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        _ => Err(format!("expected '\\' or '`', found {s:?}")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, found {s:?}")),
    }
}

pub(crate) fn run(command: DebugCommand) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::ExpandWord(args) => expand_word(&args),
    }
}

fn expand_word(args: &ExpandWordArgs) -> anyhow::Result<ExitCode> {
    let lexer = Lexer::new(args.escape);
    let mut text = String::new();
    if args.words {
        let words = lexer
            .process_words(&args.word, &args.env)
            .with_context(|| format!("cannot expand {:?}", args.word))?;
        for word in words {
            text.push_str(&word);
            text.push('\n');
        }
    } else {
        text = lexer
            .process_word(&args.word, &args.env)
            .with_context(|| format!("cannot expand {:?}", args.word))?;
        text.push('\n');
    }
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(err).context("writing the expansion to stdout"),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
