//! A build on a server (`hoist build --remote`): the build's stream, from this side. The
//! request goes first; then the server's events feed the same progress display as a local
//! build, its asks are answered from this machine (secrets, SSH agents, registry
//! credentials), and file outputs arrive as tars that are written or unpacked here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use hoist_proto::v1 as pb;
use hoist_solver::progress::ProgressSink;
use hoist_worker::{LocalSession, Session as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Where one file output goes on this machine.
#[derive(Debug, Clone)]
pub(crate) enum OutputDest {
    /// Unpack the tar into this directory (`type=local`, or `type=oci` into a directory).
    Unpack(PathBuf),
    /// Write the tar as this file.
    File(PathBuf),
}

/// An output being received: a file written chunk by chunk, or an unpacking thread fed
/// through a channel.
enum Receiving {
    File(tokio::fs::File, PathBuf),
    Unpack(
        mpsc::Sender<Vec<u8>>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    Done,
}

/// Reads a tar from the chunks the stream delivers.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Receiving {
    async fn start(dest: &OutputDest) -> anyhow::Result<Self> {
        Ok(match dest {
            OutputDest::File(path) => Self::File(
                tokio::fs::File::create(path)
                    .await
                    .with_context(|| format!("creating the output {}", path.display()))?,
                path.clone(),
            ),
            OutputDest::Unpack(dir) => {
                let (tx, rx) = mpsc::channel(8);
                let dir = dir.clone();
                // The same extractor as a layer's: no entry lands outside `dir`, whatever
                // the tar's names and links say.
                let task = tokio::task::spawn_blocking(move || {
                    let reader = ChunkReader {
                        rx,
                        chunk: Vec::new(),
                        at: 0,
                    };
                    hoist_cache::apply_layer(
                        reader,
                        &dir,
                        &hoist_cache::ApplyOptions {
                            whiteouts: hoist_cache::WhiteoutMode::Remove,
                            expected_diff_id: None,
                            lower_dirs: Vec::new(),
                        },
                    )
                    .map(|_| ())
                    .with_context(|| format!("writing the output into {}", dir.display()))
                });
                Self::Unpack(tx, task)
            }
        })
    }

    async fn write(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Self::File(file, path) => file
                .write_all(&data)
                .await
                .with_context(|| format!("writing the output {}", path.display())),
            Self::Unpack(tx, _) => {
                // A closed channel means the extractor stopped; its error comes at `finish`.
                let _ = tx.send(data).await;
                Ok(())
            }
            Self::Done => bail!("the server sent more of an output it had ended"),
        }
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        match std::mem::replace(self, Self::Done) {
            Self::File(mut file, path) => file
                .flush()
                .await
                .with_context(|| format!("writing the output {}", path.display())),
            Self::Unpack(tx, task) => {
                drop(tx);
                task.await.context("the output's extractor panicked")?
            }
            Self::Done => Ok(()),
        }
    }
}

/// Answers the server's asks from this machine.
struct Lender {
    session: Arc<LocalSession>,
    /// This machine's docker config, read at the first ask (or why it could not be).
    docker_config: Option<Result<hoist_registry::DockerConfig, String>>,
    reply: mpsc::Sender<pb::ClientMessage>,
    /// Bytes for each forwarded agent connection, to be written to the local agent.
    conns: HashMap<u64, mpsc::UnboundedSender<Option<Vec<u8>>>>,
}

fn message(kind: pb::client_message::Kind) -> pb::ClientMessage {
    pb::ClientMessage { kind: Some(kind) }
}

impl Lender {
    async fn secret(&self, ask: pb::SecretAsk) {
        let reply = match self.session.read_secret(&ask.id) {
            Ok(Some(value)) => pb::SecretReply {
                ask: ask.ask,
                found: true,
                value,
                error: String::new(),
            },
            Ok(None) => pb::SecretReply {
                ask: ask.ask,
                ..pb::SecretReply::default()
            },
            Err(e) => pb::SecretReply {
                ask: ask.ask,
                error: e.to_string(),
                ..pb::SecretReply::default()
            },
        };
        let _ = self
            .reply
            .send(message(pb::client_message::Kind::Secret(reply)))
            .await;
    }

    /// Looks the registry up in this machine's docker config and credential helpers. The
    /// stream waits meanwhile: the server's step is waiting for the answer anyway.
    async fn credential(&mut self, ask: pb::CredentialAsk) {
        let config = self.docker_config.get_or_insert_with(|| {
            hoist_registry::DockerConfig::load_default().map_err(|e| e.to_string())
        });
        let mut out = pb::CredentialReply {
            ask: ask.ask,
            ..pb::CredentialReply::default()
        };
        let looked_up = match config {
            Ok(config) => config.credential_for(&ask.registry).await,
            Err(e) => Err(hoist_registry::CredentialError::Remote {
                server: ask.registry.clone(),
                message: e.clone(),
            }),
        };
        match looked_up {
            Ok(Some(hoist_registry::Credential::Basic { username, password })) => {
                out.found = true;
                out.username = username;
                out.password = password;
            }
            Ok(Some(hoist_registry::Credential::IdentityToken(token))) => {
                out.found = true;
                out.identity_token = token;
            }
            Ok(None) => {}
            Err(e) => out.error = e.to_string(),
        }
        let _ = self
            .reply
            .send(message(pb::client_message::Kind::Credential(out)))
            .await;
    }

    async fn ssh_open(&mut self, open: pb::SshOpen) {
        let conn = open.conn;
        let closed = || message(pb::client_message::Kind::SshClose(pb::SshClose { conn }));
        let Some(socket) = self.session.ssh_agent(&open.id) else {
            let _ = self.reply.send(closed()).await;
            return;
        };
        let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
            let _ = self.reply.send(closed()).await;
            return;
        };
        let (tx, mut from_server) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
        self.conns.insert(conn, tx);
        let reply = self.reply.clone();
        tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    n = read.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let data = pb::SshData { conn, data: buf[..n].to_vec() };
                            if reply.send(message(pb::client_message::Kind::SshData(data))).await.is_err() {
                                return;
                            }
                        }
                    },
                    data = from_server.recv() => match data {
                        Some(Some(data)) => {
                            if write.write_all(&data).await.is_err() {
                                break;
                            }
                        }
                        _ => return,
                    },
                }
            }
            let _ = reply
                .send(message(pb::client_message::Kind::SshClose(pb::SshClose {
                    conn,
                })))
                .await;
        });
    }
}

/// Runs one build on the server through `control`: sends `solve`, renders its events through
/// `progress`, answers its asks from `session`, and writes its file outputs to `outputs`
/// (in the order of `solve.outputs`).
///
/// # Errors
/// The server refused or failed the build (its message, with the Dockerfile line, is the
/// error), the stream broke, or an output could not be written here.
pub(crate) async fn run<T>(
    mut control: pb::control_client::ControlClient<T>,
    solve: pb::SolveRequest,
    session: Arc<LocalSession>,
    outputs: &[OutputDest],
    progress: Arc<dyn ProgressSink>,
    on_queued: impl Fn(u32),
) -> anyhow::Result<pb::BuildResult>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (reply, requests) = mpsc::channel(64);
    reply
        .send(message(pb::client_message::Kind::Solve(solve)))
        .await
        .context("starting the build's stream")?;
    let mut inbound = control
        .solve(ReceiverStream::new(requests))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut lender = Lender {
        session,
        docker_config: None,
        reply,
        conns: HashMap::new(),
    };
    let mut receiving: Vec<Option<Receiving>> = outputs.iter().map(|_| None).collect();
    loop {
        let next = inbound.message().await.map_err(status_error)?;
        let Some(pb::ServerMessage { kind: Some(kind) }) = next else {
            bail!("the server ended the build's stream without a result");
        };
        use pb::server_message::Kind;
        match kind {
            Kind::Event(event) => progress.event(hoist_server::convert::event_in(event)?),
            Kind::Secret(ask) => lender.secret(ask).await,
            Kind::Credential(ask) => lender.credential(ask).await,
            Kind::SshOpen(open) => lender.ssh_open(open).await,
            Kind::SshData(data) => {
                if let Some(conn) = lender.conns.get(&data.conn) {
                    let _ = conn.send(Some(data.data));
                }
            }
            Kind::SshClose(close) => {
                if let Some(conn) = lender.conns.remove(&close.conn) {
                    let _ = conn.send(None);
                }
            }
            Kind::Output(chunk) => {
                let index = chunk.index as usize;
                let (Some(slot), Some(dest)) = (receiving.get_mut(index), outputs.get(index))
                else {
                    bail!("the server sent output {index}, which was not asked for");
                };
                if slot.is_none() {
                    *slot = Some(Receiving::start(dest).await?);
                }
                if let Some(out) = slot.as_mut() {
                    if !chunk.data.is_empty() {
                        out.write(chunk.data).await?;
                    }
                    if chunk.done {
                        out.finish().await?;
                    }
                }
            }
            Kind::Result(result) => return Ok(result),
            Kind::Queued(place) => on_queued(place),
        }
    }
}

/// A server's refusal or failure as the error the user reads: its message, which names the
/// Dockerfile line or what to change.
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = status.message();
    match status.code() {
        tonic::Code::Unavailable if message.is_empty() => {
            anyhow::anyhow!("the server is unavailable")
        }
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            anyhow::anyhow!("the server refused: {message}")
        }
        _ => anyhow::anyhow!("{message}"),
    }
}
