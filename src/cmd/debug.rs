//! `hoist debug …`: tools for looking inside hoist.

use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Expand a word as a Dockerfile instruction would, with BuildKit's shell-lexer rules.
    ExpandWord(ExpandWordArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ExpandWordArgs {
    /// The escape character (`\` or `` ` ``).
    #[arg(long, default_value = "\\")]
    escape: char,
    /// A variable in scope, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Split into words as EXPOSE and the like do; prints one word per line.
    #[arg(long)]
    words: bool,
    /// The word to expand.
    #[arg(allow_hyphen_values = true)]
    word: String,
}

pub(crate) fn run(command: DebugCommand) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::ExpandWord(args) => expand_word(&args),
    }
}

fn expand_word(args: &ExpandWordArgs) -> anyhow::Result<ExitCode> {
    let _ = (args.escape, &args.env, args.words, &args.word);
    anyhow::bail!("word expansion is not implemented yet")
}
