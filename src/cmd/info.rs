//! `hoist info`: what builds here, or on a server (`--remote`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;

use crate::cmd::engine::EngineArgs;
use crate::cmd::remote::RemoteArgs;
use crate::cmd::runtime;
use crate::remote::connect::explain;

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(crate) fn run(args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let Some(addr) = args.remote.addr()? else {
        writeln!(out, "version:         {}", env!("CARGO_PKG_VERSION"))?;
        writeln!(out, "builds:          in this process (no --remote)")?;
        writeln!(out, "platform:        {}", hoist_solver::Platform::host())?;
        writeln!(out, "state root:      {}", args.engine.root().display())?;
        writeln!(
            out,
            "max parallelism: {}",
            hoist_solver::scheduler::default_parallelism()
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let info = runtime()?.block_on(async {
        let connection = args.remote.connect(&addr).await?;
        connection
            .control()
            .info(hoist_proto::v1::InfoRequest {})
            .await
            .map_err(|s| explain(&addr, &s))
    })?;
    let info = info.into_inner();
    writeln!(out, "server:          {addr}")?;
    writeln!(out, "version:         {}", info.version)?;
    writeln!(out, "platform:        {}", info.platform)?;
    writeln!(
        out,
        "builds:          {} running, {} queued, at most {} at once",
        info.running_builds, info.queued_builds, info.max_builds
    )?;
    writeln!(out, "max parallelism: {}", info.max_parallelism)?;
    writeln!(
        out,
        "limits:          blobs up to {}, directory messages up to {}",
        crate::cmd::image::human(u64::try_from(info.max_blob_bytes).unwrap_or(0)),
        crate::cmd::image::human(u64::try_from(info.max_directory_bytes).unwrap_or(0))
    )?;
    Ok(ExitCode::SUCCESS)
}
