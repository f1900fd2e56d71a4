//! `hoist logs`: a build's complete log, read back from the state root (or a server's).

use std::process::ExitCode;

use clap::Args;
use hoist_worker::logs::LogStore;

use crate::cmd::engine::EngineArgs;

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The build, by the id its progress output showed (default: the newest).
    build: Option<String>,
    /// One step, by the number its progress output showed (`#4` is 4): its output alone,
    /// byte for byte.
    step: Option<usize>,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(crate) fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    LogStore::new(&args.engine.root()).write_log(args.build.as_deref(), args.step, &mut out)?;
    Ok(ExitCode::SUCCESS)
}
