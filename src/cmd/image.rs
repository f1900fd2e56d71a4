//! `hoist pull`, `hoist push`, `hoist images` and `hoist save`: images in the local store.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use hoist_registry::Reference;
use hoist_solver::Platform;

use crate::cmd::Output;
use crate::cmd::engine::{self, EngineArgs};

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// The image, such as registry:5000/team/app:1.0 or name@sha256:….
    image: String,
    /// The platform to pull, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// A name in the local store.
    name: String,
    /// Where to push it (default: the same name).
    target: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ImagesArgs {
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SaveArgs {
    /// type=oci|docker|tar,dest=FILE or DIR, or type=local,dest=DIR.
    #[arg(short = 'o', long = "output", value_name = "type=…")]
    output: String,
    /// A name in the local store.
    name: String,
    #[command(flatten)]
    engine: EngineArgs,
}

fn platform(p: Option<&str>) -> anyhow::Result<Platform> {
    p.map_or_else(
        || Ok(Platform::host()),
        |p| {
            p.parse()
                .with_context(|| format!("invalid --platform {p:?}"))
        },
    )
}

pub(crate) fn pull(args: &PullArgs) -> anyhow::Result<ExitCode> {
    let platform = platform(args.platform.as_deref())?;
    crate::cmd::runtime()?.block_on(async {
        let (state, client) = engine::open_store(&args.engine)?;
        // A prune meanwhile must not remove the blobs before the image is named.
        let state = std::sync::Arc::new(state);
        let _hold = hoist_worker::gc::BuildHold::new(&state);
        let descriptor = hoist_registry::observe(
            progress(),
            hoist_worker::image::pull(&state, &client, &args.image, &platform),
        )
        .await?;
        let name: Reference = args.image.parse()?;
        writeln!(std::io::stdout().lock(), "{name}@{}", descriptor.digest())?;
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn push(args: &PushArgs) -> anyhow::Result<ExitCode> {
    crate::cmd::runtime()?.block_on(async {
        let (state, client) = engine::open_store(&args.engine)?;
        let state = std::sync::Arc::new(state);
        let _hold = hoist_worker::gc::BuildHold::new(&state);
        let pinned = hoist_registry::observe(
            progress(),
            hoist_worker::image::push(&state, &client, &args.name, args.target.as_deref()),
        )
        .await?;
        writeln!(std::io::stdout().lock(), "{pinned}")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The registry's events as lines on stderr, as `docker pull` shows its layers, so that a pull
/// or push that waits says for which manifest or blob.
fn progress() -> hoist_registry::Observer {
    std::sync::Arc::new(|event| {
        #[allow(clippy::print_stderr)] // progress goes to stderr; stdout is for the result
        {
            eprintln!("{event}");
        }
    })
}

pub(crate) fn images(args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = hoist_cache::ImageStore::open(args.engine.root())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<60} {:<71} SIZE", "NAME", "DIGEST")?;
    for (name, descriptor) in store.list()? {
        let size = hoist_cache::Image::load(store.blobs(), &descriptor)
            .map(|image| {
                image
                    .manifest
                    .layers()
                    .iter()
                    .map(|l| l.size())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        writeln!(
            out,
            "{name:<60} {:<71} {}",
            descriptor.digest().to_string(),
            human(size)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn save(args: &SaveArgs) -> anyhow::Result<ExitCode> {
    let store = hoist_cache::ImageStore::open(args.engine.root())?;
    let name: Reference = args.name.parse()?;
    let descriptor = store.resolve(&name.to_string())?;
    let output = Output::parse(&args.output)?;
    if matches!(output, Output::Image | Output::Registry) {
        bail!("save writes files: expected -o type=oci, docker, tar or local with dest=PATH");
    }
    output.export(&store, &descriptor, &[name.to_string()])?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // a display
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else {
        format!("{:.1}kB", b / 1e3)
    }
}
