//! `hoist du` and `hoist prune`: what the state root holds, and dropping what can go.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use hoist_worker::cache_mounts::CacheMounts;

use crate::cmd::engine::{EngineArgs, open_store};
use crate::cmd::image::human;

#[derive(Debug, Args)]
pub(crate) struct DuArgs {
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    engine: EngineArgs,
}

/// Lists the cache mounts (`RUN --mount=type=cache`) with their sizes.
pub(crate) fn du(args: &DuArgs) -> anyhow::Result<ExitCode> {
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
