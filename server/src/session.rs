//! A remote build's secrets, SSH agents and registry credentials: the server asks the build's
//! client for each over the build's own stream when a step needs it (see `control.proto`), and
//! keeps nothing of it after the step. No gRPC runs inside gRPC: an SSH agent connection is a
//! sequence of data messages on the same stream.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoist_proto::v1 as pb;
use hoist_registry::{Credential, CredentialError, CredentialFuture, CredentialSource};
use hoist_worker::session::{MAX_SECRET_BYTES, SecretFuture, SessionError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::locked;

/// What the server sends down a build's stream.
pub type Outbound = mpsc::Sender<Result<pb::ServerMessage, tonic::Status>>;

/// How long a client may take to answer an ask before the step that needs it fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The asks of one build that wait for their answers, and its forwarded agent connections.
#[derive(Debug)]
pub struct Callbacks {
    out: Outbound,
    next: AtomicU64,
    secret_ids: BTreeSet<String>,
    ssh_ids: BTreeSet<String>,
    secrets: Mutex<HashMap<u64, oneshot::Sender<pb::SecretReply>>>,
    credentials: Mutex<HashMap<u64, oneshot::Sender<pb::CredentialReply>>>,
    /// Bytes from the client for each agent connection; `None` closes it.
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Option<Vec<u8>>>>>,
    /// Each forwarded agent's socket, made the first time a step asks for it.
    agents: Mutex<HashMap<String, PathBuf>>,
    agent_dir: Mutex<Option<tempfile::TempDir>>,
    /// Cancelled when the client's stream ends: nothing asked after that is answered.
    gone: CancellationToken,
}

impl Callbacks {
    /// The callbacks of a build whose client lends `secret_ids` and `ssh_ids`, asked through
    /// `out`.
    #[must_use]
    pub fn new(out: Outbound, secret_ids: Vec<String>, ssh_ids: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            out,
            next: AtomicU64::new(1),
            secret_ids: secret_ids.into_iter().collect(),
            ssh_ids: ssh_ids.into_iter().collect(),
            secrets: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            agent_dir: Mutex::new(None),
            gone: CancellationToken::new(),
        })
    }

    /// The client's stream ended: every ask still waiting fails, and agent connections close.
    pub fn client_gone(&self) {
        self.gone.cancel();
        locked(&self.secrets).clear();
        locked(&self.credentials).clear();
        for (_, conn) in locked(&self.conns).drain() {
            let _ = conn.send(None);
        }
    }

    /// Hands a message from the client to what waits for it. A reply nobody asked for is
    /// dropped.
    pub fn deliver(&self, message: pb::client_message::Kind) {
        use pb::client_message::Kind;
        match message {
            Kind::Secret(reply) => {
                if let Some(waiter) = locked(&self.secrets).remove(&reply.ask) {
                    let _ = waiter.send(reply);
                }
            }
            Kind::Credential(reply) => {
                if let Some(waiter) = locked(&self.credentials).remove(&reply.ask) {
                    let _ = waiter.send(reply);
                }
            }
            Kind::SshData(data) => {
                if let Some(conn) = locked(&self.conns).get(&data.conn) {
                    let _ = conn.send(Some(data.data));
                }
            }
            Kind::SshClose(close) => {
                if let Some(conn) = locked(&self.conns).remove(&close.conn) {
                    let _ = conn.send(None);
                }
            }
            // The request comes once, first; the control service never passes it here.
            Kind::Solve(_) => {}
        }
    }

    async fn ask<R>(
        &self,
        waiters: &Mutex<HashMap<u64, oneshot::Sender<R>>>,
        message: impl FnOnce(u64) -> pb::server_message::Kind,
    ) -> Result<R, &'static str> {
        if self.gone.is_cancelled() {
            return Err("has gone away");
        }
        let ask = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        locked(waiters).insert(ask, tx);
        let sent = self
            .out
            .send(Ok(pb::ServerMessage {
                kind: Some(message(ask)),
            }))
            .await;
        if sent.is_err() {
            locked(waiters).remove(&ask);
            return Err("has gone away");
        }
        let answer = tokio::select! {
            answer = rx => answer.map_err(|_| "has gone away"),
            () = self.gone.cancelled() => Err("has gone away"),
            () = tokio::time::sleep(ANSWER_TIMEOUT) => Err("did not answer within 60 s"),
        };
        locked(waiters).remove(&ask);
        answer
    }

    async fn secret_value(&self, id: &str) -> Result<Option<Vec<u8>>, SessionError> {
        if !self.secret_ids.contains(id) {
            return Ok(None);
        }
        let client = |reason: String| SessionError::Client {
            id: id.to_owned(),
            reason,
        };
        let reply = self
            .ask(&self.secrets, |ask| {
                pb::server_message::Kind::Secret(pb::SecretAsk {
                    ask,
                    id: id.to_owned(),
                })
            })
            .await
            .map_err(|reason| client(reason.to_owned()))?;
        if !reply.error.is_empty() {
            return Err(client(format!("could not read it: {}", reply.error)));
        }
        if !reply.found {
            return Ok(None);
        }
        if reply.value.len() > MAX_SECRET_BYTES {
            return Err(SessionError::TooLarge {
                id: id.to_owned(),
                bytes: reply.value.len(),
            });
        }
        Ok(Some(reply.value))
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        let failed = |message: String| CredentialError::Remote {
            server: registry.to_owned(),
            message,
        };
        let reply = self
            .ask(&self.credentials, |ask| {
                pb::server_message::Kind::Credential(pb::CredentialAsk {
                    ask,
                    registry: registry.to_owned(),
                })
            })
            .await
            .map_err(|reason| failed(format!("the build's client {reason}")))?;
        if !reply.error.is_empty() {
            return Err(failed(reply.error));
        }
        if !reply.found {
            return Ok(None);
        }
        Ok(Some(if reply.identity_token.is_empty() {
            Credential::Basic {
                username: reply.username,
                password: reply.password,
            }
        } else {
            Credential::IdentityToken(reply.identity_token)
        }))
    }

    /// The socket of the forwarded agent `id`, made on first use: each connection a step
    /// makes to it becomes a connection the client makes to its own agent.
    fn agent_socket(self: &Arc<Self>, id: &str) -> Option<PathBuf> {
        if !self.ssh_ids.contains(id) {
            return None;
        }
        if let Some(path) = locked(&self.agents).get(id) {
            return Some(path.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let mut dir = locked(&self.agent_dir);
        if dir.is_none() {
            *dir = tempfile::Builder::new()
                .prefix("hoist-serve-ssh-")
                .tempdir()
                .ok();
        }
        let n = locked(&self.agents).len();
        let path = dir.as_ref()?.path().join(format!("agent-{n}.sock"));
        let listener = std::os::unix::net::UnixListener::bind(&path).ok()?;
        listener.set_nonblocking(true).ok()?;
        let listener = {
            let _entered = handle.enter();
            tokio::net::UnixListener::from_std(listener).ok()?
        };
        let this = Arc::clone(self);
        let agent = id.to_owned();
        handle.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = this.gone.cancelled() => return,
                };
                let Ok((stream, _)) = accepted else { return };
                tokio::spawn(Arc::clone(&this).forward(stream, agent.clone()));
            }
        });
        locked(&self.agents).insert(id.to_owned(), path.clone());
        Some(path)
    }

    /// Carries one agent connection over the stream until either side closes it.
    async fn forward(self: Arc<Self>, stream: tokio::net::UnixStream, id: String) {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut from_client) = mpsc::unbounded_channel();
        locked(&self.conns).insert(conn, tx);
        let send = |kind| self.out.send(Ok(pb::ServerMessage { kind: Some(kind) }));
        if send(pb::server_message::Kind::SshOpen(pb::SshOpen { conn, id }))
            .await
            .is_err()
        {
            return;
        }
        let (mut read, mut write) = stream.into_split();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                n = read.read(&mut buf) => {
                    let data = match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf[..n].to_vec(),
                    };
                    let message = pb::server_message::Kind::SshData(pb::SshData { conn, data });
                    if send(message).await.is_err() {
                        break;
                    }
                }
                data = from_client.recv() => match data {
                    Some(Some(data)) => {
                        if write.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    // The client closed its side, or went away.
                    _ => {
                        locked(&self.conns).remove(&conn);
                        return;
                    }
                },
            }
        }
        locked(&self.conns).remove(&conn);
        let _ = send(pb::server_message::Kind::SshClose(pb::SshClose { conn })).await;
    }
}

/// The [`hoist_worker::Session`] of a remote build.
#[derive(Debug, Clone)]
pub struct RemoteSession(pub Arc<Callbacks>);

impl hoist_worker::Session for RemoteSession {
    fn secret<'a>(&'a self, id: &'a str) -> SecretFuture<'a> {
        Box::pin(self.0.secret_value(id))
    }

    fn ssh_agent(&self, id: &str) -> Option<PathBuf> {
        self.0.agent_socket(id)
    }
}

/// The registry credentials of a remote build: its client's.
#[derive(Debug, Clone)]
pub struct RemoteCredentials(pub Arc<Callbacks>);

impl CredentialSource for RemoteCredentials {
    fn credential_for<'a>(&'a self, registry: &'a str) -> CredentialFuture<'a> {
        Box::pin(self.0.credential(registry))
    }
}
