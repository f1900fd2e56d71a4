//! `hoist logs`: a build's complete log, read back from the state root.

use std::io::{Read as _, Write as _};
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
    let logs = LogStore::new(&args.engine.root());
    let build = match args.build.as_deref() {
        None | Some("last") => logs.last()?,
        Some(id) => id.to_owned(),
    };
    let mut out = std::io::stdout().lock();
    if let Some(step) = args.step {
        std::io::copy(&mut logs.open_step(&build, step)?, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "#0 build {build}")?;
    for step in logs.steps(&build)? {
        writeln!(out, "#{} {} ({})", step.number, step.name, step.status)?;
        let mut output = logs.open_step(&build, step.number)?;
        let mut ends_in_newline = true;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = output.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            ends_in_newline = buf[n - 1] == b'\n';
        }
        if !ends_in_newline {
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
