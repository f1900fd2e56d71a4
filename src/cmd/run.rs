//! `hoist run`: run an image in the sandbox, from the local store or a registry.

use std::process::ExitCode;

use clap::Args;
use hoist_executor::spec::NetworkMode;
use hoist_solver::Platform;
use hoist_worker::image::RunOptions;

use crate::cmd::engine::{self, EngineArgs};
use crate::cmd::key_value;

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Remove the container when it exits (always the case; accepted for docker's muscle memory).
    #[arg(long)]
    rm: bool,
    /// none (loopback only), default (a namespace of its own with a NAT uplink) or host.
    #[arg(long, default_value = "none", value_parser = ["none", "default", "host"])]
    network: String,
    /// Set an environment variable; repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Run as this user (name or uid[:gid]).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Replace the image's ENTRYPOINT.
    #[arg(long)]
    entrypoint: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// The image.
    image: String,
    /// The command (replaces the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let env = args
        .env
        .iter()
        .map(|kv| key_value(kv, "-e"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = RunOptions {
        command: args.command.clone(),
        entrypoint: args.entrypoint.clone(),
        env,
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        network: match args.network.as_str() {
            "host" => NetworkMode::Host,
            "default" => NetworkMode::Default,
            _ => NetworkMode::None,
        },
    };
    let runtime = crate::cmd::runtime()?;
    let code = runtime.block_on(async {
        let engine = engine::open(&args.engine, None)?;
        // A prune meanwhile must not take the image's snapshots from under the container.
        let _hold = hoist_worker::gc::BuildHold::new(&engine.state);
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        let code = hoist_worker::image::run(
            &engine,
            &args.image,
            &Platform::host(),
            &options,
            &mut stdout,
            &mut stderr,
        )
        .await?;
        anyhow::Ok(code)
    })?;
    // The container's exit code is ours, as with `docker run` (clamped to what a process
    // can return).
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}
