//! `hoist parse`: parse a Dockerfile and print its syntax tree.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ParseArgs {
    /// Print BuildKit's AST dump format (one line per instruction).
    #[arg(long)]
    dump: bool,
    /// The Dockerfile to parse (`-` for stdin).
    file: PathBuf,
}

pub(crate) fn run(args: &ParseArgs) -> anyhow::Result<ExitCode> {
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the Dockerfile from stdin")?;
        ("-".to_owned(), text)
    } else {
        let text = fs_err::read_to_string(&args.file)?;
        (args.file.display().to_string(), text)
    };
    let file = match hoist_parser::parse(&text) {
        Ok(file) => file,
        Err(err) => {
            let index = hoist_parser::LineIndex::new(&text);
            anyhow::bail!("{}", err.render(&name, &text, &index));
        }
    };
    let mut out = std::io::stdout().lock();
    let rendered = if args.dump {
        hoist_parser::dump::dump(&file, &text)
    } else {
        format!("{file:#?}\n")
    };
    out.write_all(rendered.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
