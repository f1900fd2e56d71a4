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
    /// List every record: its kind, id, what it is, its exclusive and shared bytes, and when
    /// a build last used it.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Without flags, removes the build cache as `docker builder prune -a` does: every cache
/// record, cache mount instance and unreferenced snapshot or blob that no running build holds,
/// and the debris of interrupted writes. Named images and build logs stay.
#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Also remove named images (`hoist images`) and build logs; on a server, also uploaded
    /// contexts used within the last hour.
    #[arg(long)]
    all: bool,
    /// Remove least recently used records only until the state root is at most this large
    /// (bytes, or with a unit: 512m, 2g).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    keep_storage: Option<u64>,
    /// Remove only what was last used longer ago than this: `until=24h` (Go durations: h, m,
    /// s, ms, combined as 1h30m).
    #[arg(long, value_name = "until=DURATION", value_parser = parse_filter)]
    filter: Vec<std::time::Duration>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `--keep-storage` and `--gc-keep-storage`: bytes, or with a unit (k, m, g, t).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    crate::cmd::build::parse_bytes(text)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("{text:?} is not a size: give bytes, or a number with k, m, g or t"))
}

/// `--filter until=DURATION`, the only filter.
fn parse_filter(text: &str) -> Result<std::time::Duration, String> {
    let Some(duration) = text.strip_prefix("until=") else {
        return Err(format!(
            "{text:?}: the only filter is until=DURATION, as in until=24h"
        ));
    };
    parse_duration(duration).ok_or_else(|| {
        format!("{duration:?} is not a duration: give a number with h, m, s or ms, as 24h or 1h30m")
    })
}

/// A Go duration (`24h`, `1h30m`, `1.5h`, `90s`, `500ms`).
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = [("ms", 0.001), ("h", 3600.0), ("m", 60.0), ("s", 1.0)]
            .into_iter()
            .find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// What the state root holds: totals by kind (and each record with `--verbose`), the cache
/// mounts, and every byte under the root; on a server, the server's records.
pub(crate) fn du(args: &DuArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.remote.addr()? {
        return remote_du(&args.remote, &addr);
    }
    let (state, _) = open_store(&args.engine)?;
    let state = Arc::new(state);
    let usage = hoist_worker::gc::usage(&state)?;
    let mounts = CacheMounts::new(Arc::clone(&state)).usage()?;
    let mut out = std::io::stdout().lock();
    if !mounts.is_empty() {
        writeln!(
            out,
            "{:<40} {:>9} {:>10}  IN USE",
            "CACHE MOUNT", "INSTANCES", "SIZE"
        )?;
        for m in &mounts {
            writeln!(
                out,
                "{:<40} {:>9} {:>10}  {}",
                m.id,
                m.instances,
                human(m.bytes),
                if m.in_use { "yes" } else { "no" }
            )?;
        }
        writeln!(out)?;
    }
    if args.verbose {
        let now = hoist_cache::gc::now();
        let width = usage
            .records
            .iter()
            .map(|r| r.record.id.len())
            .max()
            .unwrap_or(0)
            .max(2);
        writeln!(
            out,
            "{:<12} {:<width$} {:>10} {:>10}  {:<12} DESCRIPTION",
            "KIND", "ID", "EXCLUSIVE", "SHARED", "LAST USED"
        )?;
        for r in &usage.records {
            let used = if r.record.held {
                "in use".to_owned()
            } else {
                r.record
                    .last_used
                    .map_or_else(|| "-".to_owned(), |at| ago(now.saturating_sub(at)))
            };
            writeln!(
                out,
                "{:<12} {:<width$} {:>10} {:>10}  {:<12} {}",
                r.record.kind.name(),
                r.record.id,
                human(r.exclusive),
                human(r.shared),
                used,
                r.record.description
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{:<14} {:>8} {:>10} {:>10}",
        "KIND", "RECORDS", "SIZE", "EXCLUSIVE"
    )?;
    for (kind, k) in &usage.kinds {
        writeln!(
            out,
            "{:<14} {:>8} {:>10} {:>10}",
            kind.name(),
            k.records,
            human(k.bytes),
            human(k.exclusive)
        )?;
    }
    writeln!(
        out,
        "total: {} ({} bytes) under {}",
        human(usage.total),
        usage.total,
        state.root.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The automatic collection after a local build: only when the root may be over `budget`
/// (default: [`hoist_cache::gc::default_budget`]); what it removed, or why it failed, is a
/// note on stderr, never the build's failure.
pub(crate) fn auto_gc(state: &Arc<hoist_worker::State>, budget: Option<u64>) {
    let budget = budget.unwrap_or_else(|| hoist_cache::gc::default_budget(&state.root));
    #[allow(clippy::print_stderr)] // a note for the user after the build's output
    match hoist_worker::gc::auto(state, budget) {
        Ok(Some(collected)) if collected.bytes > 0 => eprintln!(
            "gc: removed {} record(s), {}, to keep {} under {} (--gc-keep-storage)",
            collected.removed.len(),
            human(collected.bytes),
            state.root.display(),
            human(budget)
        ),
        Ok(_) => {}
        Err(e) => eprintln!(
            "gc: could not collect {}: {}",
            state.root.display(),
            hoist_server::error_chain(&e)
        ),
    }
}

/// `secs` as "5m ago".
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Removes what the flags let go (see [`PruneArgs`]), least recently used first; never what
/// a running build holds, in this process or another.
pub(crate) fn prune(args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let until = args.filter.iter().max().copied();
    if let Some(addr) = args.remote.addr()? {
        if args.keep_storage.is_some() || until.is_some() {
            anyhow::bail!(
                "--keep-storage and --filter are not supported with --remote yet: the server \
                 applies its own --gc-keep-storage; use --all or no flag"
            );
        }
        return remote_prune(&args.remote, &addr, args.all);
    }
    let (state, _) = open_store(&args.engine)?;
    let state = Arc::new(state);
    let policy = hoist_cache::gc::Policy {
        all: args.all,
        keep_storage: args.keep_storage,
        until,
        now: hoist_cache::gc::now(),
    };
    let collected = hoist_worker::gc::prune(&state, &policy)?;
    let mut out = std::io::stdout().lock();
    let mut by_kind: std::collections::BTreeMap<hoist_cache::gc::Kind, (usize, u64)> =
        std::collections::BTreeMap::new();
    for (record, bytes) in &collected.removed {
        let e = by_kind.entry(record.kind).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    for (kind, (count, bytes)) in by_kind {
        let noun = match kind {
            hoist_cache::gc::Kind::CacheMount => "cache mount instance(s)",
            hoist_cache::gc::Kind::Cache => "cache record(s)",
            hoist_cache::gc::Kind::Image => "named image(s)",
            hoist_cache::gc::Kind::Log => "build log(s)",
            hoist_cache::gc::Kind::Unreferenced => "unreferenced snapshot(s) and blob(s)",
            hoist_cache::gc::Kind::Debris => "piece(s) of debris",
            _ => "record(s)",
        };
        writeln!(out, "removed {count} {noun}, {}", human(bytes))?;
    }
    writeln!(
        out,
        "freed {} ({} bytes); the state root holds {} ({} bytes); what running builds hold was kept",
        human(collected.bytes),
        collected.bytes,
        human(collected.after),
        collected.after
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
