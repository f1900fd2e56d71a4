//! `hoist debug …`: tools for looking inside hoist.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use hoist_parser::shell::Lexer;

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
    /// Expand a word as a Dockerfile instruction would, with BuildKit's shell-lexer rules.
    ExpandWord(ExpandWordArgs),
    /// Upload a build context to a Cas server, as `hoist build --remote` does, and print what
    /// was sent as one JSON line.
    #[command(hide = true)]
    Upload(UploadArgs),
    /// Serve only the Cas service of `hoist serve` on a unix socket (for the upload bench).
    #[command(hide = true)]
    ServeCas(ServeCasArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UploadArgs {
    /// The server: unix:///path/to/socket.
    #[arg(long)]
    remote: String,
    /// Where the client keeps its stat cache (`<DIR>/context-stat`).
    #[arg(long, env = "HOIST_ROOT", default_value = "/var/lib/hoist")]
    state: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The build context.
    context: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ServeCasArgs {
    /// The store's directory.
    #[arg(long)]
    root: PathBuf,
    /// Where to listen: unix:///path/to/socket.
    #[arg(long)]
    addr: String,
}

#[derive(Debug, Args)]
pub(crate) struct ExpandWordArgs {
    /// The escape character (`\` or `` ` ``).
    #[arg(long, default_value = "\\", value_parser = parse_escape)]
    escape: char,
    /// A variable in scope, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Split into words as EXPOSE and the like do; prints one word per line.
    #[arg(long)]
    words: bool,
    /// The word to expand.
    #[arg(allow_hyphen_values = true)]
    word: String,
}

/// A Dockerfile's `# escape=` directive allows only these two.
fn parse_escape(s: &str) -> Result<char, String> {
    match s {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        _ => Err(format!("expected '\\' or '`', found {s:?}")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, found {s:?}")),
    }
}

pub(crate) fn run(command: DebugCommand) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::ExpandWord(args) => expand_word(&args),
        DebugCommand::Upload(args) => upload(&args),
        DebugCommand::ServeCas(args) => serve_cas(&args),
    }
}

fn expand_word(args: &ExpandWordArgs) -> anyhow::Result<ExitCode> {
    let lexer = Lexer::new(args.escape);
    let mut text = String::new();
    if args.words {
        let words = lexer
            .process_words(&args.word, &args.env)
            .with_context(|| format!("cannot expand {:?}", args.word))?;
        for word in words {
            text.push_str(&word);
            text.push('\n');
        }
    } else {
        text = lexer
            .process_word(&args.word, &args.env)
            .with_context(|| format!("cannot expand {:?}", args.word))?;
        text.push('\n');
    }
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(err).context("writing the expansion to stdout"),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// The socket path of a `unix:///path` address.
fn unix_path(addr: &str) -> anyhow::Result<PathBuf> {
    match addr.parse::<hoist_server::Addr>()? {
        hoist_server::Addr::Unix(path) => Ok(path),
        hoist_server::Addr::Tcp(_) => {
            anyhow::bail!("{addr}: only unix:///path addresses are supported here")
        }
    }
}

/// A plain channel to a unix socket (no TLS, no token: a debugging tool).
pub(crate) async fn unix_channel(path: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by the API and unused: the connector dials the socket.
    tonic::transport::Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to {shown}"))
}

fn upload(args: &UploadArgs) -> anyhow::Result<ExitCode> {
    let socket = unix_path(&args.remote)?;
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let text = fs_err::read_to_string(&dockerfile)?;
    let started = std::time::Instant::now();
    let uploaded = crate::cmd::runtime()?.block_on(async {
        let channel = unix_channel(&socket).await?;
        let cas = hoist_proto::v1::cas_client::CasClient::new(channel);
        crate::remote::upload::upload(
            cas,
            &args.context,
            &text,
            Some(&dockerfile),
            &args.state.join("context-stat"),
        )
        .await
    })?;
    let line = serde_json::json!({
        "files": uploaded.files,
        "bytes_sent": uploaded.bytes_sent,
        "blobs_sent": uploaded.blobs_sent,
        "dirs_sent": uploaded.dirs_sent,
        "ignore_patterns": uploaded.ignore_patterns,
        "seconds": started.elapsed().as_secs_f64(),
        "root": format!("sha256:{}/{}", uploaded.root.hash, uploaded.root.size_bytes),
    });
    writeln!(std::io::stdout().lock(), "{line}").context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn serve_cas(args: &ServeCasArgs) -> anyhow::Result<ExitCode> {
    let socket = unix_path(&args.addr)?;
    let store = Arc::new(hoist_server::cas::CasStore::open(
        &args.root,
        hoist_server::cas::CasLimits::default(),
    )?);
    crate::cmd::runtime()?.block_on(async {
        let _ = fs_err::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
        tonic::transport::Server::builder()
            .add_service(store.service())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .context("serving the Cas service")
    })?;
    Ok(ExitCode::SUCCESS)
}
