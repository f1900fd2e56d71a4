//! `hoist builds`, `hoist attach` and `hoist cancel`: the builds running on a server.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use hoist_solver::progress::ProgressSink;

use crate::cmd::remote::RemoteArgs;
use crate::cmd::runtime;
use crate::progress;
use crate::remote::connect::explain;

#[derive(Debug, Args)]
pub(crate) struct BuildsArgs {
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BuildIdArgs {
    /// The build, by the id its progress showed (`#0 build ID`) or `hoist builds` lists.
    build: String,
    /// How to show the attached build's progress.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::Mode,
    #[command(flatten)]
    remote: RemoteArgs,
}

fn server(remote: &RemoteArgs, command: &str) -> anyhow::Result<hoist_server::Addr> {
    match remote.addr()? {
        Some(addr) => Ok(addr),
        None => bail!(
            "hoist {command} needs --remote ADDR (or HOIST_REMOTE): builds in this process are \
             not visible to other processes"
        ),
    }
}

/// Lists the builds a server runs or queues.
pub(crate) fn list(args: &BuildsArgs) -> anyhow::Result<ExitCode> {
    let addr = server(&args.remote, "builds")?;
    let builds = runtime()?.block_on(async {
        let connection = args.remote.connect(&addr).await?;
        connection
            .control()
            .list_builds(hoist_proto::v1::ListBuildsRequest {})
            .await
            .map_err(|s| explain(&addr, &s))
    })?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<14} {:<8} {:>8}  DOCKERFILE / TAGS",
        "BUILD", "STATE", "FOR"
    )?;
    for b in builds.into_inner().builds {
        let seconds = (now_ms - b.started_unix_ms).max(0) / 1000;
        writeln!(
            out,
            "{:<14} {:<8} {:>7}s  {} {}",
            if b.build.is_empty() { "-" } else { &b.build },
            b.state,
            seconds,
            b.dockerfile_name,
            b.tags.join(",")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels a build on a server.
pub(crate) fn cancel(args: &BuildIdArgs) -> anyhow::Result<ExitCode> {
    let addr = server(&args.remote, "cancel")?;
    let found = runtime()?.block_on(async {
        let connection = args.remote.connect(&addr).await?;
        connection
            .control()
            .cancel(hoist_proto::v1::CancelRequest {
                build: args.build.clone(),
            })
            .await
            .map_err(|s| explain(&addr, &s))
    })?;
    if !found.into_inner().found {
        bail!(
            "no running build {} on {addr}: `hoist builds --remote {addr}` lists them",
            args.build
        );
    }
    writeln!(std::io::stderr().lock(), "cancelled build {}", args.build)?;
    Ok(ExitCode::SUCCESS)
}

/// Follows a running build's progress, from its start, until it ends.
pub(crate) fn attach(args: &BuildIdArgs) -> anyhow::Result<ExitCode> {
    let addr = server(&args.remote, "attach")?;
    runtime()?.block_on(async {
        let connection = args.remote.connect(&addr).await?;
        let mut events = connection
            .control()
            .attach(hoist_proto::v1::AttachRequest {
                build: args.build.clone(),
            })
            .await
            .map_err(|s| explain(&addr, &s))?
            .into_inner();
        let queue = Arc::new(progress::DisplayQueue::default());
        let renderer = tokio::spawn(progress::render(args.progress, Arc::clone(&queue)));
        let result = async {
            while let Some(event) = events.message().await.map_err(|s| explain(&addr, &s))? {
                queue.event(hoist_server::convert::event_in(event)?);
            }
            anyhow::Ok(())
        }
        .await;
        queue.close();
        let _ = renderer.await;
        result?;
        Ok(ExitCode::SUCCESS)
    })
}
