//! `hoist logs`: a build's complete log, read back from the state root (or a server's).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use hoist_worker::logs::LogStore;

use crate::cmd::engine::EngineArgs;
use crate::cmd::remote::RemoteArgs;
use crate::cmd::runtime;
use crate::remote::connect::explain;

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The build, by the id its progress output showed (default: the newest).
    build: Option<String>,
    /// One step, by the number its progress output showed (`#4` is 4): its output alone,
    /// byte for byte.
    step: Option<usize>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(crate) fn run(args: &LogsArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.remote.addr()? {
        return remote(args, &addr);
    }
    let mut out = std::io::stdout().lock();
    LogStore::new(&args.engine.root()).write_log(args.build.as_deref(), args.step, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// `hoist logs --remote`: a build's log as the server kept it.
fn remote(args: &LogsArgs, addr: &hoist_server::Addr) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let connection = args.remote.connect(addr).await?;
        let mut chunks = connection
            .control()
            .logs(hoist_proto::v1::LogsRequest {
                build: args.build.clone().unwrap_or_default(),
                step: args.step.map(|s| s as u64),
            })
            .await
            .map_err(|s| explain(addr, &s))?
            .into_inner();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = chunks.message().await.map_err(|s| explain(addr, &s))? {
            out.write_all(&chunk.data)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}
