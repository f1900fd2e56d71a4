//! `hoist serve`: the build engine behind gRPC, for `hoist build --remote` and CI.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hoist_server::auth::{AuthConfig, TlsFiles};
use hoist_server::control::ControlConfig;
use hoist_server::serve::{ServeOptions, serve};
use hoist_server::{Addr, cas::CasLimits};

use crate::cmd::engine::{self, EngineArgs};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: unix:///path or tcp://host:port; repeatable
    /// (default: unix:///run/hoist/hoist.sock).
    #[arg(long = "addr", value_name = "ADDR")]
    addrs: Vec<String>,
    /// The server's TLS certificate (PEM), for tcp:// addresses.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA that client certificates must chain to (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Bearer tokens that clients over TCP must present, one per line.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The group (name or number) that may use the unix socket, besides root.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Serve plain TCP with neither TLS client certificates nor tokens: anyone who can reach
    /// the port may build, and run what they like in its sandbox.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`), host:port.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Builds that run at once; more wait in a queue.
    #[arg(long, default_value_t = 16)]
    max_builds: usize,
    /// Steps that run at once across all builds (default: the number of CPUs).
    #[arg(long)]
    max_parallelism: Option<usize>,
    /// Let clients ask for an entitlement with --allow: network.host or security.insecure.
    #[arg(long = "allow-insecure-entitlement", value_name = "ENTITLEMENT",
          value_parser = ["network.host", "security.insecure"])]
    entitlements: Vec<String>,
    /// After SIGTERM, how long running builds may take to finish before they are cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    grace: u64,
    /// Keep the state root under this size, removing the least recently used cache records
    /// (default: a tenth of its filesystem, at most 20 GB). Named images and what running
    /// builds hold stay.
    #[arg(long, value_name = "SIZE", value_parser = crate::cmd::disk::parse_size)]
    gc_keep_storage: Option<u64>,
    /// How often the automatic GC checks the state root's size.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, hide = true)]
    gc_interval: u64,
    #[command(flatten)]
    engine: EngineArgs,
}

pub(crate) fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let addrs: Vec<Addr> = if args.addrs.is_empty() {
        vec![Addr::Unix(PathBuf::from("/run/hoist/hoist.sock"))]
    } else {
        args.addrs
            .iter()
            .map(|a| a.parse::<Addr>())
            .collect::<Result<_, _>>()?
    };
    for addr in &addrs {
        if let Addr::Unix(path) = addr
            && let Some(dir) = path.parent()
        {
            fs_err::create_dir_all(dir)
                .with_context(|| format!("making the socket's directory for {addr}"))?;
        }
    }
    let tls = args.tls_cert.as_ref().map(|cert| TlsFiles {
        cert: cert.clone(),
        key: args.tls_key.clone().unwrap_or_default(),
        client_ca: args.tls_client_ca.clone(),
    });
    let auth = AuthConfig::load(
        args.token_file.as_deref(),
        tls,
        args.group.clone(),
        args.insecure_no_auth,
    )?;
    hoist_server::listen::check(&addrs, &auth)?;
    let options = ServeOptions {
        addrs,
        auth,
        metrics_addr: args.metrics_addr,
        control: ControlConfig {
            max_builds: args.max_builds.max(1),
            entitlements: args.entitlements.clone(),
        },
        grace: Duration::from_secs(args.grace),
        cas_limits: CasLimits::default(),
        gc_keep_storage: args
            .gc_keep_storage
            .unwrap_or_else(|| hoist_cache::gc::default_budget(&args.engine.root())),
        gc_interval: Duration::from_secs(args.gc_interval.max(1)),
    };

    let runtime = crate::cmd::runtime()?;
    runtime.block_on(async {
        let engine = Arc::new(engine::open(&args.engine, args.max_parallelism)?);
        let shutdown = tokio_util::sync::CancellationToken::new();
        {
            let shutdown = shutdown.clone();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                log_line(
                    &serde_json::json!({"msg": "draining: no new builds; running ones may finish"}),
                );
                shutdown.cancel();
            });
        }
        serve(engine, options, shutdown, Arc::new(log_line), |ready| {
            let addrs: Vec<String> = ready.addrs.iter().map(ToString::to_string).collect();
            let mut line = serde_json::json!({"msg": "serving", "addrs": addrs});
            if let Some(metrics) = ready.metrics {
                line["metrics"] = format!("http://{metrics}/metrics").into();
            }
            log_line(&line);
        })
        .await?;
        log_line(&serde_json::json!({"msg": "stopped"}));
        Ok(ExitCode::SUCCESS)
    })
}

/// The server's log: one JSON object per line on stderr, with the time.
fn log_line(value: &serde_json::Value) {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        object.insert(
            "time".to_owned(),
            ((now.as_millis() as f64) / 1000.0).into(),
        );
    }
    #[allow(clippy::print_stderr)] // the server's log is its stderr
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{value}");
    }
}
