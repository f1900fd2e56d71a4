//! The options every command that builds, pulls or runs shares, and opening the engine.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use hoist_executor::{Backend, Executor, ExecutorConfig};
use hoist_registry::{Client, ClientConfig};
use hoist_worker::Engine;
use hoist_worker::State;

#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// Where hoist keeps its state (default: /var/lib/hoist for root, else
    /// $XDG_DATA_HOME/hoist).
    #[arg(long, env = "HOIST_ROOT")]
    pub(crate) root: Option<PathBuf>,
    /// A registry (host[:port]) spoken to over plain HTTP; localhost and 127.0.0.0/8 always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub(crate) insecure_registries: Vec<String>,
    /// What runs each RUN: `builtin` (hoist's own runtime) or the path of an OCI runtime
    /// such as runc.
    #[arg(
        long,
        env = "HOIST_RUNTIME",
        value_name = "builtin|PATH",
        default_value = "builtin"
    )]
    pub(crate) runtime: PathBuf,
    /// How long a registry may leave a connection attempt or a request without progress
    /// before it is tried again (and, after three such tries, given up): 90, 90s, 2m or 500ms.
    /// A transfer that keeps moving is never cut (default: 30s to connect, 60s otherwise).
    #[arg(long, env = "HOIST_REGISTRY_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    pub(crate) registry_timeout: Option<std::time::Duration>,
}

/// `90`, `90s`, `1.5s`, `500ms` or `2m`.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "s"), |at| text.split_at(at));
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .and_then(|n| std::time::Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| format!("{text:?} is not a positive duration such as 60s"))
}

impl EngineArgs {
    pub(crate) fn root(&self) -> PathBuf {
        if let Some(root) = &self.root {
            return root.clone();
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/hoist");
        }
        let data = std::env::var_os("XDG_DATA_HOME").map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share"),
            PathBuf::from,
        );
        data.join("hoist")
    }
}

/// Opens the state and the registry client: what pulls and pushes need (no sandbox, and the
/// cache index stays closed).
pub(crate) fn open_store(args: &EngineArgs) -> anyhow::Result<(State, Client)> {
    let root = args.root();
    let state = State::open(&root)
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("opening the state at {}", root.display()))?;
    if state.reclaimed.areas > 0 {
        #[allow(clippy::print_stderr)] // a note for the user, once, before any progress
        {
            eprintln!(
                "reclaimed {} that {} killed hoist process(es) left in {}",
                crate::cmd::image::human(state.reclaimed.bytes),
                state.reclaimed.areas,
                root.join("tmp").display()
            );
        }
    }
    let mut registry = ClientConfig {
        insecure_registries: args.insecure_registries.clone(),
        resume_dir: Some(root.join("uploads")),
        ..ClientConfig::default()
    };
    if let Some(timeout) = args.registry_timeout {
        registry.connect_timeout = timeout;
        registry.stall_timeout = timeout;
    }
    let client =
        Client::with_default_credentials(registry).context("setting up the registry client")?;
    Ok((state, client))
}

/// Opens the state, the sandbox and the registry client.
pub(crate) fn open(args: &EngineArgs, max_parallelism: Option<usize>) -> anyhow::Result<Engine> {
    let (state, client) = open_store(args)?;
    let mut config = ExecutorConfig::new(args.root().join("executor"));
    if args.runtime.as_os_str() != "builtin" {
        if !args.runtime.is_file() {
            anyhow::bail!(
                "--runtime {}: no such program; give `builtin` or the path of an OCI runtime such as /usr/sbin/runc",
                args.runtime.display()
            );
        }
        config.backend = Backend::External {
            program: args.runtime.clone(),
        };
    }
    let executor = Executor::new(config).context("setting up the sandbox")?;
    Ok(Engine::new(
        Arc::new(state),
        Arc::new(executor),
        Arc::new(client),
        max_parallelism.unwrap_or_else(hoist_solver::scheduler::default_parallelism),
    ))
}
