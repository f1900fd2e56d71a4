//! `hoist build`: flags as in `docker build` and `buildx build`, wiring to the engine, and
//! the result printed with the command that runs it.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use hoist_executor::spec::Limits;
use hoist_solver::Platform;
use hoist_solver::frontend::BuildOptions;
use hoist_solver::op::NetworkMode;
use hoist_solver::progress::ProgressSink;
use hoist_worker::{BuildOutcome, BuildRequest, Dockerfile, LocalContext, LocalSession};

use crate::cmd::engine::{self, EngineArgs};
use crate::cmd::remote::RemoteArgs;
use crate::cmd::{Output, OutputSpec, checks, key_value};
use crate::progress;

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The Dockerfile, relative to the working directory as in docker; `-` reads it from
    /// standard input (default: PATH/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name the image; repeatable. With --push, each name is pushed.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Set a build-time variable.
    #[arg(long = "build-arg", value_name = "K=V")]
    build_args: Vec<String>,
    /// Build this stage instead of the last one.
    #[arg(long)]
    target: Option<String>,
    /// The target platform, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Push every tag to its registry (same as -o type=registry).
    #[arg(long)]
    push: bool,
    /// Output: type=image (default), type=registry, type=oci|docker,dest=FILE or DIR,
    /// type=local,dest=DIR, type=tar,dest=FILE.
    #[arg(short = 'o', long = "output", value_name = "type=…")]
    outputs: Vec<String>,
    /// How to show progress (`quiet` is `-q`).
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::Mode,
    /// Print only the image ID (on stdout), as `docker build -q`; errors still go to stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Default network of RUN steps.
    #[arg(long, default_value = "default", value_parser = ["default", "none", "host"])]
    network: String,
    /// Add a label to the image.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Write the image ID (the config digest) to this file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Write the build's result (digests, pushed names) as JSON to this file.
    #[arg(long)]
    metadata_file: Option<PathBuf>,
    /// Grant an entitlement: security.insecure allows RUN --security=insecure, network.host
    /// allows RUN --network=host. Repeatable, or comma-separated.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// Run at most this many steps at once (default: the number of CPUs).
    #[arg(long)]
    max_parallelism: Option<usize>,
    /// After the build, remove the least recently used cache records until the state root is
    /// at most this large (default: a tenth of its filesystem, at most 20 GB).
    #[arg(long, env = "HOIST_GC_KEEP_STORAGE", value_name = "SIZE",
          value_parser = crate::cmd::disk::parse_size)]
    gc_keep_storage: Option<u64>,
    /// Memory limit of each RUN, in bytes or with a unit: 512m, 2g.
    #[arg(short = 'm', long, value_name = "BYTES")]
    memory: Option<String>,
    /// CPU time each RUN may use per --cpu-period, in microseconds.
    #[arg(long, value_name = "MICROSECONDS")]
    cpu_quota: Option<i64>,
    /// The period of --cpu-quota, in microseconds (default 100000).
    #[arg(long, value_name = "MICROSECONDS")]
    cpu_period: Option<u64>,
    /// Most processes and threads each RUN may have at once.
    #[arg(long, value_name = "N")]
    pids_limit: Option<i64>,
    /// Use Docker schema 2 media types instead of OCI.
    #[arg(long)]
    docker_mediatypes: bool,
    /// A secret for `RUN --mount=type=secret`: id=ID,src=FILE or id=ID,env=VARIABLE.
    #[arg(long, value_name = "id=ID,src=FILE")]
    secret: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh`: ID=SOCKET, ID=KEYFILE[,KEYFILE…] (loaded into
    /// an ssh-agent for the build), or ID alone for $SSH_AUTH_SOCK.
    #[arg(long, value_name = "ID[=SOCKET|KEYFILE]")]
    ssh: Vec<String>,
    /// Use a build cache that --cache-to wrote: type=registry,ref=REF (or a bare REF), or
    /// type=local,src=DIR. Repeatable; the first cache that has a step wins.
    #[arg(long = "cache-from", value_name = "type=…")]
    cache_from: Vec<String>,
    /// Write the build cache: type=registry,ref=REF or type=local,dest=DIR, with
    /// mode=min|max (the final image's steps, or every stage's), compression=gzip|zstd|
    /// uncompressed, compression-level=N, ignore-error=true. Repeatable.
    #[arg(long = "cache-to", value_name = "type=…")]
    cache_to: Vec<String>,
    /// Run the build checks only (BuildKit's Dockerfile linter rules, over every stage), print
    /// what they find and build nothing; exits 1 when a check fails.
    #[arg(long)]
    check: bool,
    /// A named context for FROM NAME, COPY --from=NAME and RUN --mount=from=NAME: a local
    /// directory, docker-image://REF or oci-layout://DIR[:TAG][@sha256:…]. Repeatable.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_context: Vec<String>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// The build context directory.
    path: PathBuf,
}

/// The cgroup limits of every RUN, from `--memory`, `--cpu-quota`, `--cpu-period` and
/// `--pids-limit`.
fn limits(args: &BuildArgs) -> anyhow::Result<Limits> {
    let memory_bytes = args
        .memory
        .as_deref()
        .map(|m| {
            parse_bytes(m).with_context(|| {
                format!("invalid --memory {m:?}: expected bytes, or a number with b, k, m or g")
            })
        })
        .transpose()?;
    if let Some(m) = memory_bytes
        && m < 6 * 1024 * 1024
    {
        bail!("--memory {m} is too small: a RUN needs at least 6m, as in Docker");
    }
    let cpu_quota = match (args.cpu_quota, args.cpu_period) {
        (None, None) => None,
        (quota, period) => {
            let period = period.unwrap_or(100_000);
            if !(1_000..=1_000_000).contains(&period) {
                bail!("--cpu-period {period} is out of range: 1000 to 1000000 microseconds");
            }
            match quota {
                Some(q) if q < 1_000 => {
                    bail!("--cpu-quota {q} is too small: at least 1000 microseconds")
                }
                Some(q) => Some((q, period)),
                // A period alone changes nothing: no quota means no limit.
                None => None,
            }
        }
    };
    if let Some(n) = args.pids_limit
        && n < 1
    {
        bail!("--pids-limit {n} must be at least 1");
    }
    Ok(Limits {
        memory_bytes,
        pids: args.pids_limit,
        cpu_quota,
    })
}

/// `512m`, `2g`, `1024k`, `100b` or plain bytes; units are powers of 1024, as in Docker.
pub(crate) fn parse_bytes(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
    let (digits, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits.parse::<i64>().ok()?.checked_mul(1i64 << shift)
}

/// The entitlements a build may be granted, as BuildKit names them.
const ENTITLEMENTS: [&str; 2] = ["network.host", "security.insecure"];

/// Whether `--allow` grants `entitlement`; an unknown entitlement is an error rather than
/// nothing granted.
fn allowed(grants: &[String], entitlement: &str) -> anyhow::Result<bool> {
    let mut found = false;
    for grant in grants.iter().flat_map(|g| g.split(',')) {
        let grant = grant.trim();
        if !ENTITLEMENTS.contains(&grant) {
            bail!(
                "--allow {grant}: unknown entitlement; expected {}",
                ENTITLEMENTS.join(" or ")
            );
        }
        found |= grant == entitlement;
    }
    Ok(found)
}

/// Whether no output reads the layers' bytes: the image is only pushed, or not written at all
/// (no file output, and no name in the local store without a push). Layers an imported cache
/// named are then not pulled here.
fn lazy_layers(push: bool, tags: &[String], outputs: &[Output]) -> bool {
    outputs
        .iter()
        .all(|o| matches!(o, Output::Image | Output::Registry))
        && (push || tags.is_empty())
}

/// What the `-o` specs say about the one image a build makes, merged with `-t`, `--push` and
/// `--docker-mediatypes`.
struct ImageSettings {
    tags: Vec<String>,
    push: bool,
    docker_mediatypes: bool,
    compression: hoist_cache::CompressionOptions,
    force_compression: bool,
    annotations: BTreeMap<String, String>,
}

fn image_settings(args: &BuildArgs, specs: &[OutputSpec]) -> anyhow::Result<ImageSettings> {
    let mut tags = args.tags.clone();
    for name in specs.iter().flat_map(|s| &s.names) {
        if !tags.contains(name) {
            tags.push(name.clone());
        }
    }
    // A build makes one image: its outputs must agree on how.
    let mut compression: Option<hoist_cache::CompressionOptions> = None;
    let mut oci: Option<bool> = args.docker_mediatypes.then_some(false);
    for spec in specs {
        if let Some(c) = &spec.compression {
            match &compression {
                Some(had) if (had.compression, had.level) != (c.compression, c.level) => bail!(
                    "the outputs ask for different compressions ({:?} and {:?}): a build makes \
                     one image; give the same compression= to each",
                    had.compression,
                    c.compression
                ),
                _ => compression = Some(*c),
            }
        }
        if let Some(o) = spec.oci_mediatypes {
            if oci.is_some_and(|had| had != o) {
                bail!(
                    "the outputs (or --docker-mediatypes) ask for both OCI and Docker media \
                     types: a build makes one image"
                );
            }
            oci = Some(o);
        }
    }
    let compression = compression.unwrap_or_default();
    let docker_mediatypes = oci == Some(false);
    if docker_mediatypes && compression.compression == hoist_cache::Compression::Zstd {
        bail!("compression=zstd needs OCI media types: Docker's have no zstd layer type");
    }
    let mut annotations = BTreeMap::new();
    for (key, value) in specs.iter().flat_map(|s| &s.annotations) {
        if let Some(had) = annotations.insert(key.clone(), value.clone())
            && had != *value
        {
            bail!(
                "the outputs give annotation {key} two values ({had:?} and {value:?}): a build \
                 makes one manifest"
            );
        }
    }
    Ok(ImageSettings {
        tags,
        push: args.push || specs.iter().any(|s| s.push),
        docker_mediatypes,
        compression,
        force_compression: specs.iter().any(|s| s.force_compression),
        annotations,
    })
}

/// The Dockerfile as docker finds it: `-f FILE` relative to the working directory, `-f -`
/// from standard input, else `Dockerfile` in the context.
fn read_dockerfile(file: Option<&Path>, context: &Path) -> anyhow::Result<Dockerfile> {
    if file == Some(Path::new("-")) {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the Dockerfile from standard input")?;
        return Ok(Dockerfile {
            text,
            name: "Dockerfile".to_owned(),
            path: None,
        });
    }
    let (path, name) = match file {
        Some(f) => (f.to_path_buf(), f.display().to_string()),
        None => (context.join("Dockerfile"), "Dockerfile".to_owned()),
    };
    let text = match fs_err::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_some() => {
            let in_context = context.join(&path);
            let hint = if path.is_relative() && in_context.is_file() {
                format!(
                    "; -f is relative to the working directory, as in docker: did you mean -f {}?",
                    in_context.display()
                )
            } else {
                String::new()
            };
            bail!(
                "cannot read the Dockerfile {}: no such file{hint}",
                path.display()
            );
        }
        Err(e) => return Err(e).context("cannot read the Dockerfile"),
    };
    // Absolute, so that its own `.dockerignore` is found beside it whatever the context.
    let path = std::path::absolute(&path).unwrap_or(path);
    Ok(Dockerfile {
        text,
        name,
        path: Some(path),
    })
}

fn key_values(items: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items.iter().map(|kv| key_value(kv, flag)).collect()
}

pub(crate) fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let cache_from = args
        .cache_from
        .iter()
        .map(|s| hoist_worker::exchange::CacheImport::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|s| hoist_worker::exchange::CacheExport::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let specs: Vec<OutputSpec> = args
        .outputs
        .iter()
        .map(|o| OutputSpec::parse(o))
        .collect::<Result<_, _>>()?;
    let image = image_settings(&args, &specs)?;
    let mut args = args;
    args.tags.clone_from(&image.tags);
    args.docker_mediatypes = image.docker_mediatypes;
    let compression = image.compression;
    let outputs: Vec<Output> = specs.into_iter().map(|s| s.output).collect();
    let push = image.push;
    if push && args.tags.is_empty() {
        bail!("--push needs at least one -t NAME (or -o name=NAME) to push to");
    }
    if let Some(list) = args.platform.as_deref().filter(|p| p.contains(',')) {
        bail!(
            "--platform {list}: building for several platforms at once is not supported yet; \
             build once per platform, each with its own --platform and tag"
        );
    }
    let target_platform = match &args.platform {
        Some(p) => p
            .parse::<Platform>()
            .with_context(|| format!("invalid --platform {p:?}"))?,
        None => Platform::host(),
    };
    if target_platform.architecture != Platform::host().architecture {
        bail!(
            "--platform {target_platform} needs emulation, which hoist does not do yet; this machine is {}",
            Platform::host()
        );
    }
    let mut build_args = key_values(&args.build_args, "--build-arg")?;
    // The reproducible-builds convention: SOURCE_DATE_EPOCH in the environment sets the image's
    // created time unless a build-arg does.
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        build_args
            .entry("SOURCE_DATE_EPOCH".to_owned())
            .or_insert(epoch);
    }
    if !args.path.is_dir() {
        bail!("build context {} is not a directory", args.path.display());
    }
    let session = LocalSession::default()
        .with_secrets(&args.secret)?
        .with_ssh(&args.ssh)?;
    let network = match args.network.as_str() {
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        _ => NetworkMode::Default,
    };
    if let Some(addr) = args.remote.addr()? {
        if args.check {
            bail!("--check with --remote is not supported yet: run the checks without --remote");
        }
        return run_remote(&args, &addr, &outputs, session, build_args, network, &image);
    }
    let contexts =
        crate::cmd::contexts::local(&args.build_context, &args.engine.root(), &target_platform)?;
    let request = BuildRequest {
        named_contexts: contexts.worker,
        session: Arc::new(session),
        dockerfile: read_dockerfile(args.file.as_deref(), &args.path)?,
        context: Arc::new(LocalContext::new(&args.path, &args.engine.root())),
        options: BuildOptions {
            build_args,
            target: args.target.clone(),
            target_platform,
            build_platform: Platform::host(),
            network,
            labels: key_values(&args.labels, "--label")?,
            ignore_patterns: Vec::new(),
            allow_insecure: allowed(&args.allow, "security.insecure")?,
            allow_network_host: allowed(&args.allow, "network.host")?,
            named_contexts: contexts.options,
        },
        tags: args.tags.clone(),
        push,
        no_cache: args.no_cache,
        media: if args.docker_mediatypes {
            hoist_cache::MediaTypes::Docker
        } else {
            hoist_cache::MediaTypes::Oci
        },
        // A local directory is written from the snapshots; the other outputs need the image.
        write_image: outputs.iter().any(|o| !matches!(o, Output::Local(_)))
            || args.metadata_file.is_some(),
        limits: limits(&args)?,
        registry: None,
        compression,
        force_compression: image.force_compression,
        annotations: image.annotations.clone(),
        cache_from,
        cache_to,
        lazy_layers: lazy_layers(push, &args.tags, &outputs),
    };

    if args.check {
        return run_check(&args, &request);
    }
    let runtime = crate::cmd::runtime()?;
    runtime.block_on(async {
        let engine = engine::open(&args.engine, args.max_parallelism)?;
        // Held through the outputs too, which read the snapshots after the build.
        let hold = hoist_worker::gc::BuildHold::new(&engine.state);
        let events = Arc::new(progress::DisplayQueue::default());
        let mode = if args.quiet {
            progress::Mode::Quiet
        } else {
            args.progress
        };
        let renderer = tokio::spawn(progress::render(mode, Arc::clone(&events)));
        let cancel = tokio_util::sync::CancellationToken::new();
        let on_interrupt = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_interrupt.cancel();
            }
        });
        let result = engine
            .build(
                &request,
                Arc::clone(&events) as Arc<dyn ProgressSink>,
                cancel,
            )
            .await;
        // The renderer draws what is left and ends.
        events.close();
        let _ = renderer.await;
        let outcome = result.map_err(anyhow::Error::from)?;
        finish(
            &engine,
            &args,
            &outputs,
            &outcome,
            &request.dockerfile,
            events.steps(),
        )?;
        drop(hold);
        crate::cmd::disk::auto_gc(&engine.state, args.gc_keep_storage);
        Ok(ExitCode::SUCCESS)
    })
}

/// `hoist build --check`: the checks' findings on stdout, nothing built.
fn run_check(args: &BuildArgs, request: &BuildRequest) -> anyhow::Result<ExitCode> {
    let runtime = crate::cmd::runtime()?;
    runtime.block_on(async {
        let engine = engine::open(&args.engine, args.max_parallelism)?;
        let events = Arc::new(progress::DisplayQueue::default());
        let mode = if args.quiet {
            progress::Mode::Quiet
        } else {
            args.progress
        };
        let renderer = tokio::spawn(progress::render(mode, Arc::clone(&events)));
        let report = engine
            .check(request, Arc::clone(&events) as Arc<dyn ProgressSink>)
            .await;
        events.close();
        let _ = renderer.await;
        let report = report.map_err(anyhow::Error::from)?;
        let dockerfile = &request.dockerfile;
        let warnings: Vec<checks::Shown> = report.warnings.iter().map(Into::into).collect();
        let mut out = std::io::stdout().lock();
        checks::write_warnings(
            &mut out,
            &warnings,
            &dockerfile.name,
            Some(&dockerfile.text),
        )?;
        if let Some(error) = &report.error {
            #[allow(clippy::print_stderr)] // the error that stopped the checks, as main shows one
            {
                eprintln!(
                    "error: {}",
                    error.render(&dockerfile.name, &dockerfile.text)
                );
            }
        }
        if warnings.is_empty() {
            writeln!(out, "check complete, no warnings found")?;
        } else {
            writeln!(out, "check complete, {}", checks::count(warnings.len()))?;
        }
        // As buildx: any warning, or an error, and the check fails.
        Ok(if warnings.is_empty() && report.error.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn finish(
    engine: &hoist_worker::Engine,
    args: &BuildArgs,
    outputs: &[Output],
    outcome: &BuildOutcome,
    dockerfile: &Dockerfile,
    steps: Vec<progress::StepReport>,
) -> anyhow::Result<()> {
    // Opened only for an output that reads the image from it (opening makes the layout).
    let store = match &outcome.manifest {
        Some(_) if outputs.iter().any(|o| !matches!(o, Output::Local(_))) => {
            Some(hoist_cache::ImageStore::open(&engine.state.root)?)
        }
        _ => None,
    };
    // An OCI layout needs a name for the image; an untagged build is "latest".
    let names = if args.tags.is_empty() {
        vec!["latest".to_owned()]
    } else {
        args.tags.clone()
    };
    for output in outputs {
        match (output, &outcome.manifest, &store) {
            (Output::Local(dest), _, _) => engine
                .state
                .export_rootfs(&outcome.chain, dest)
                .with_context(|| format!("writing the filesystem to {}", dest.display()))?,
            (_, Some(manifest), Some(store)) => output.export(store, manifest, &names)?,
            _ => {}
        }
    }
    report(
        args,
        outputs,
        &Summary {
            manifest: outcome.manifest.as_ref().map(|m| m.digest().to_string()),
            config_digest: outcome.config_digest.to_string(),
            pushed: outcome.pushed.clone(),
            ran: outcome.ran,
            cached: outcome.cached,
            unused_build_args: outcome.unused_build_args.clone(),
            warnings: outcome.warnings.iter().map(Into::into).collect(),
            steps,
        },
        dockerfile,
    )
}

/// What a build produced, local or remote, as the user is told it.
struct Summary {
    manifest: Option<String>,
    config_digest: String,
    pushed: Vec<String>,
    ran: usize,
    cached: usize,
    unused_build_args: Vec<String>,
    warnings: Vec<checks::Shown>,
    /// Every step, cached or not and why, for `--metadata-file`.
    steps: Vec<progress::StepReport>,
}

/// Writes `--iidfile` and `--metadata-file`, and prints the result and how to run it.
fn report(
    args: &BuildArgs,
    outputs: &[Output],
    outcome: &Summary,
    dockerfile: &Dockerfile,
) -> anyhow::Result<()> {
    if let Some(path) = &args.iidfile {
        fs_err::write(path, &outcome.config_digest)?;
    }
    if let Some(path) = &args.metadata_file {
        let mut metadata = serde_json::json!({
            "containerimage.digest": outcome.manifest,
            "containerimage.config.digest": outcome.config_digest,
            "image.name": args.tags.join(","),
            "pushed": outcome.pushed,
            "hoist.steps": outcome.steps.iter().map(progress::StepReport::to_json).collect::<Vec<_>>(),
        });
        if !outcome.warnings.is_empty() {
            metadata["buildx.build.warnings"] =
                checks::metadata(&outcome.warnings, &dockerfile.name);
        }
        fs_err::write(path, serde_json::to_vec_pretty(&metadata)?)?;
    }
    if args.quiet || args.progress == progress::Mode::Quiet {
        writeln!(std::io::stdout().lock(), "{}", outcome.config_digest)?;
        return Ok(());
    }
    checks::print_after_build(&outcome.warnings, &dockerfile.name, Some(&dockerfile.text))?;
    let mut err = std::io::stderr().lock();
    for name in &outcome.unused_build_args {
        writeln!(err, "warning: build-arg {name} was not consumed by any ARG")?;
    }
    match &outcome.manifest {
        Some(manifest) => writeln!(
            err,
            "built {manifest} ({} steps ran, {} cached)",
            outcome.ran, outcome.cached
        )?,
        None if outputs.is_empty() => writeln!(
            err,
            "built image {} ({} steps ran, {} cached); no output was asked for, so the result \
             is only in the build cache: name it with -t, push it with --push, or export it with -o",
            outcome.config_digest, outcome.ran, outcome.cached
        )?,
        None => writeln!(
            err,
            "built image {} ({} steps ran, {} cached)",
            outcome.config_digest, outcome.ran, outcome.cached
        )?,
    }
    for pushed in &outcome.pushed {
        writeln!(err, "pushed {pushed}")?;
    }
    if let Some(pinned) = outcome.pushed.first() {
        writeln!(
            err,
            "run it:\n  docker run --rm {pinned}\n  podman run --rm {pinned}\n  hoist run --rm {pinned}"
        )?;
    }
    // The image id on stdout, as `docker build -q` prints it, for scripts.
    writeln!(std::io::stdout().lock(), "{}", outcome.config_digest)?;
    Ok(())
}

/// Where the client keeps its stat cache of contexts it uploads: under `--root` when one is
/// given, else in the user's cache directory (a client needs no state root of its own).
fn client_cache_dir(args: &BuildArgs) -> PathBuf {
    if let Some(root) = &args.engine.root {
        return root.join("remote-stat");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
        PathBuf::from,
    );
    cache.join("hoist").join("remote-stat")
}

/// `hoist build --remote ADDR`: the same build on a server. The context goes up as a tree of
/// which only what the server lacks is sent; progress, outputs, `--iidfile` and
/// `--metadata-file` come out here as for a local build.
fn run_remote(
    args: &BuildArgs,
    addr: &hoist_server::Addr,
    outputs: &[Output],
    session: LocalSession,
    build_args: BTreeMap<String, String>,
    network: NetworkMode,
    image: &ImageSettings,
) -> anyhow::Result<ExitCode> {
    let (push, compression) = (image.push, image.compression);
    use crate::remote::build::OutputDest;
    use hoist_proto::v1 as pb;
    let build_contexts = crate::cmd::contexts::remote(&args.build_context)?;
    let dockerfile = read_dockerfile(args.file.as_deref(), &args.path)?;
    let limits = limits(args)?;
    let mut wire_outputs = Vec::new();
    let mut dests = Vec::new();
    for output in outputs {
        let (kind, dest) = match output {
            Output::Image | Output::Registry => continue,
            Output::OciDir(d) => (pb::output_request::Kind::Oci, OutputDest::Unpack(d.clone())),
            Output::OciTar(d) => (pb::output_request::Kind::Oci, OutputDest::File(d.clone())),
            Output::Docker(d) => (
                pb::output_request::Kind::Docker,
                OutputDest::File(d.clone()),
            ),
            Output::Local(d) => (
                pb::output_request::Kind::Local,
                OutputDest::Unpack(d.clone()),
            ),
        };
        wire_outputs.push(pb::OutputRequest { kind: kind.into() });
        dests.push(dest);
    }
    let stat_dir = client_cache_dir(args);
    let runtime = crate::cmd::runtime()?;
    runtime.block_on(async {
        let connection = args.remote.connect(addr).await?;
        let explain = |s: tonic::Status| crate::remote::connect::explain(connection.addr(), &s);
        let uploaded = crate::remote::upload::upload(
            connection.cas(),
            &args.path,
            &dockerfile.text,
            dockerfile.path.as_deref(),
            &stat_dir,
        )
        .await
        .map_err(|e| match e.downcast::<tonic::Status>() {
            Ok(status) => explain(status),
            Err(e) => e,
        })
        .context("uploading the build context")?;
        let solve = pb::SolveRequest {
            build_contexts,
            dockerfile: dockerfile.text.clone(),
            dockerfile_name: dockerfile.name.clone(),
            context: Some(uploaded.root),
            ignore_patterns: uploaded.ignore_patterns,
            build_args: build_args.into_iter().collect(),
            target: args.target.clone().unwrap_or_default(),
            platform: args.platform.clone().unwrap_or_default(),
            network: match network {
                NetworkMode::None => pb::NetworkMode::None,
                NetworkMode::Host => pb::NetworkMode::Host,
                _ => pb::NetworkMode::Default,
            }
            .into(),
            labels: key_values(&args.labels, "--label")?.into_iter().collect(),
            allow_insecure: allowed(&args.allow, "security.insecure")?,
            allow_network_host: allowed(&args.allow, "network.host")?,
            tags: args.tags.clone(),
            push,
            no_cache: args.no_cache,
            docker_mediatypes: args.docker_mediatypes,
            write_image: outputs.iter().any(|o| !matches!(o, Output::Local(_)))
                || args.metadata_file.is_some(),
            limits: Some(pb::Limits {
                memory_bytes: limits.memory_bytes.unwrap_or(0),
                cpu_quota_us: limits.cpu_quota.map_or(0, |(q, _)| q),
                cpu_period_us: limits.cpu_quota.map_or(0, |(_, p)| p),
                pids: limits.pids.unwrap_or(0),
            }),
            secret_ids: session.secret_ids().map(str::to_owned).collect(),
            ssh_ids: session.ssh_ids().map(str::to_owned).collect(),
            outputs: wire_outputs,
            compression: match compression.compression {
                hoist_cache::Compression::Gzip => pb::LayerCompression::Gzip,
                hoist_cache::Compression::Zstd => pb::LayerCompression::Zstd,
                hoist_cache::Compression::None => pb::LayerCompression::Uncompressed,
            }
            .into(),
            compression_level: compression.level,
            force_compression: image.force_compression,
            annotations: image
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cache_from: args.cache_from.clone(),
            cache_to: args.cache_to.clone(),
            lazy_layers: lazy_layers(push, &args.tags, outputs),
        };
        let events = Arc::new(progress::DisplayQueue::with_logs_command(format!(
            "hoist logs --remote {addr}"
        )));
        let mode = if args.quiet {
            progress::Mode::Quiet
        } else {
            args.progress
        };
        let renderer = tokio::spawn(progress::render(mode, Arc::clone(&events)));
        let quiet = mode == progress::Mode::Quiet;
        let build = crate::remote::build::run(
            connection.control(),
            solve,
            Arc::new(session),
            &dests,
            Arc::clone(&events) as Arc<dyn ProgressSink>,
            |place| {
                if !quiet {
                    #[allow(clippy::print_stderr)] // before the build's own progress
                    {
                        eprintln!("waiting for a build slot on {addr}: place {place} in the queue");
                    }
                }
            },
        );
        // Ctrl-C drops the stream, which cancels the build on the server.
        let result = tokio::select! {
            result = build => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; the build on {addr} is cancelled")),
        };
        events.close();
        let _ = renderer.await;
        let result = result?;
        report(
            args,
            outputs,
            &Summary {
                manifest: Some(result.manifest_digest).filter(|d| !d.is_empty()),
                config_digest: result.config_digest,
                pushed: result.pushed,
                ran: usize::try_from(result.ran).unwrap_or(usize::MAX),
                cached: usize::try_from(result.cached).unwrap_or(usize::MAX),
                unused_build_args: result.unused_build_args,
                warnings: result.warnings.into_iter().map(Into::into).collect(),
                steps: events.steps(),
            },
            &dockerfile,
        )?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("512MB"), Some(512 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("100b"), Some(100));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("m"), None);
        assert_eq!(parse_bytes("99999999999g"), None);
    }
}
