//! `hoist du` and `hoist prune`: what the state root holds, and dropping what can go.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use hoist_worker::cache_mounts::CacheMounts;

use crate::cmd::engine::{EngineArgs, open_store};
use crate::cmd::image::human;
use crate::cmd::remote::RemoteArgs;
use crate::cmd::runtime;
use crate::remote::connect::explain;

#[derive(Debug, Args)]
pub(crate) struct DuArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// On a server: also remove uploaded contexts used within the last hour.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Lists the cache mounts (`RUN --mount=type=cache`) with their sizes; on a server, also the
/// uploaded contexts it keeps.
pub(crate) fn du(args: &DuArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.remote.addr()? {
        return remote_du(&args.remote, &addr);
    }
    let (state, _) = open_store(&args.engine)?;
    let mounts = CacheMounts::new(Arc::new(state)).usage()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:>9} {:>10}  IN USE",
        "CACHE MOUNT", "INSTANCES", "SIZE"
    )?;
    let mut total = 0;
    for m in &mounts {
        total += m.bytes;
        writeln!(
            out,
            "{:<40} {:>9} {:>10}  {}",
            m.id,
            m.instances,
            human(m.bytes),
            if m.in_use { "yes" } else { "no" }
        )?;
    }
    writeln!(
        out,
        "{} cache mount(s), {} in all",
        mounts.len(),
        human(total)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Removes every cache mount that no build holds now.
pub(crate) fn prune(args: &PruneArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.remote.addr()? {
        return remote_prune(&args.remote, &addr, args.all);
    }
    let (state, _) = open_store(&args.engine)?;
    let pruned = CacheMounts::new(Arc::new(state)).prune()?;
    writeln!(
        std::io::stdout().lock(),
        "removed {} cache mount instance(s), {}; cache mounts in use by a build were kept \
         (the layer cache is not pruned by this command)",
        pruned.instances,
        human(pruned.bytes)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `hoist du --remote`: the server's records.
fn remote_du(remote: &RemoteArgs, addr: &hoist_server::Addr) -> anyhow::Result<ExitCode> {
    let records = runtime()?.block_on(async {
        let connection = remote.connect(addr).await?;
        connection
            .control()
            .disk_usage(hoist_proto::v1::DiskUsageRequest {})
            .await
            .map_err(|s| explain(addr, &s))
    })?;
    let records = records.into_inner().records;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12} {:<64} {:>9} {:>10}  IN USE",
        "KIND", "RECORD", "COUNT", "SIZE"
    )?;
    let mut total = 0;
    for r in &records {
        total += r.bytes;
        writeln!(
            out,
            "{:<12} {:<64} {:>9} {:>10}  {}",
            r.kind,
            r.id,
            r.instances,
            human(r.bytes),
            if r.in_use { "yes" } else { "no" }
        )?;
    }
    writeln!(
        out,
        "{} record(s) on {addr}, {} in all",
        records.len(),
        human(total)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `hoist prune --remote`: what the server removed, as it removes it.
fn remote_prune(
    remote: &RemoteArgs,
    addr: &hoist_server::Addr,
    all: bool,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let connection = remote.connect(addr).await?;
        let mut events = connection
            .control()
            .prune(hoist_proto::v1::PruneRequest { all })
            .await
            .map_err(|s| explain(addr, &s))?
            .into_inner();
        let mut out = std::io::stdout().lock();
        while let Some(event) = events.message().await.map_err(|s| explain(addr, &s))? {
            if let Some(r) = event.removed {
                writeln!(out, "removed {} {}: {}", r.kind, r.id, human(r.bytes))?;
            }
            if event.done {
                writeln!(
                    out,
                    "removed {} record(s) from {addr}, {}; what a build holds was kept",
                    event.removed_records,
                    human(event.removed_bytes)
                )?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
