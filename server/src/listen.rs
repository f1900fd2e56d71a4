//! Listening: the unix socket and TCP listeners that serve the gRPC routes, each with the
//! authentication [`crate::auth`] gives its kind.
//!
//! [`check`] refuses, before anything listens, a TCP address that nothing guards. [`bind`] opens
//! every address (so a caller can learn the ports it got, e.g. for `tcp://127.0.0.1:0`), and
//! [`Listeners::serve`] serves until its token is cancelled. [`serve`] does both.
//!
//! The gRPC health service is not registered here: [`health`] makes it, and the caller adds it
//! to its routes and keeps the reporter, to say `NOT_SERVING` while it drains.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::Addr;
use crate::auth::AuthConfig;
use crate::error_chain;

/// The socket's mode: its owner and group may connect, nobody else.
const SOCKET_MODE: u32 = 0o660;

/// Listening failed; each names the address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("no address to listen on: give --addr unix:///path or --addr tcp://host:port")]
    NoAddress,
    #[error(
        "refusing to listen on {addr} without authentication: give --tls-cert, --tls-key and --tls-client-ca (mutual TLS), or --token-file (bearer tokens), or both; or --insecure-no-auth to let anyone who can reach the port build"
    )]
    NoAuth { addr: Addr },
    #[error(
        "refusing to listen on {addr} with TLS but no way to tell who may build: add --tls-client-ca (client certificates) or --token-file (bearer tokens)"
    )]
    TlsWithoutClientAuth { addr: Addr },
    #[error("cannot create the directory of the socket {path}: {source}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} exists and is not a socket; refusing to replace it: remove it or choose another --addr"
    )]
    NotASocket { path: PathBuf },
    #[error(
        "another server is listening on unix://{path}: stop it first, or choose another --addr"
    )]
    AlreadyServing { path: PathBuf },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on unix://{path}: {source}")]
    BindUnix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give the socket {path} its owner, group or mode: {source}")]
    SocketPermissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    BindTcp { addr: Addr, source: std::io::Error },
    #[error("cannot serve TLS on {addr}: {reason}")]
    Tls { addr: Addr, reason: String },
    #[error("serving {addr} failed: {reason}")]
    Serve { addr: Addr, reason: String },
}

/// Refuses, before anything listens, a TCP address that no credential guards.
pub fn check(addrs: &[Addr], auth: &AuthConfig) -> Result<(), ListenError> {
    if addrs.is_empty() {
        return Err(ListenError::NoAddress);
    }
    if auth.insecure_no_auth() || auth.requires_token() || auth.requires_client_certificate() {
        return Ok(());
    }
    let Some(addr) = addrs.iter().find(|a| matches!(a, Addr::Tcp(_))) else {
        return Ok(());
    };
    let addr = addr.clone();
    Err(if auth.tls_files().is_some() {
        ListenError::TlsWithoutClientAuth { addr }
    } else {
        ListenError::NoAuth { addr }
    })
}

/// The gRPC health service and its reporter. Add the service to the routes given to [`serve`];
/// set each service's status through the reporter (`NOT_SERVING` while draining).
pub fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Serves `routes` on every address until `shutdown` is cancelled; then stops accepting, and
/// returns once in-flight requests end (the caller drains builds first and cancels `shutdown`
/// after). The unix sockets are removed on return.
pub async fn serve(
    routes: tonic::service::Routes,
    addrs: &[Addr],
    auth: &AuthConfig,
    shutdown: CancellationToken,
) -> Result<(), ListenError> {
    bind(addrs, auth).await?.serve(routes, shutdown).await
}

/// Checks and opens every address.
pub async fn bind(addrs: &[Addr], auth: &AuthConfig) -> Result<Listeners, ListenError> {
    check(addrs, auth)?;
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = match addr {
            Addr::Unix(path) => bind_unix(path, auth).await?,
            Addr::Tcp(hostport) => {
                let listener = TcpListener::bind(hostport.as_str())
                    .await
                    .map_err(|source| ListenError::BindTcp {
                        addr: addr.clone(),
                        source,
                    })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| ListenError::BindTcp {
                        addr: addr.clone(),
                        source,
                    })?;
                Listener::Tcp {
                    // Keepalives find clients that vanished without closing (a cable pulled, a
                    // VM paused), so that their builds are cancelled.
                    incoming: TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(Duration::from_secs(60))),
                    local: Addr::Tcp(local.to_string()),
                }
            }
        };
        listeners.push(listener);
    }
    Ok(Listeners {
        listeners,
        auth: auth.clone(),
    })
}

/// Open listeners, not yet serving.
#[derive(Debug)]
pub struct Listeners {
    listeners: Vec<Listener>,
    auth: AuthConfig,
}

#[derive(Debug)]
enum Listener {
    Unix {
        listener: UnixListener,
        socket: SocketFile,
    },
    Tcp {
        incoming: TcpIncoming,
        local: Addr,
    },
}

impl Listeners {
    /// The addresses listened on, with the ports the system chose for port 0.
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|listener| match listener {
                Listener::Unix { socket, .. } => Addr::Unix(socket.path.clone()),
                Listener::Tcp { local, .. } => local.clone(),
            })
            .collect()
    }

    /// Serves `routes` until `shutdown` is cancelled, or until one listener fails, which stops
    /// the others too.
    pub async fn serve(
        self,
        routes: tonic::service::Routes,
        shutdown: CancellationToken,
    ) -> Result<(), ListenError> {
        let stop = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        let mut addrs = std::collections::HashMap::new();
        for listener in self.listeners {
            let addr = match &listener {
                Listener::Unix { socket, .. } => Addr::Unix(socket.path.clone()),
                Listener::Tcp { local, .. } => local.clone(),
            };
            let routes = routes.clone();
            let auth = self.auth.clone();
            let stop = stop.clone();
            let task = tasks.spawn(async move {
                let result = serve_one(listener, routes, &auth, stop.clone()).await;
                if result.is_err() {
                    stop.cancel();
                }
                result
            });
            addrs.insert(task.id(), addr);
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next_with_id().await {
            let result = match joined {
                Ok((_, result)) => result,
                // A listener's task panicked inside tonic or hyper: stop the rest and say so.
                Err(err) => Err(ListenError::Serve {
                    addr: addrs
                        .remove(&err.id())
                        .unwrap_or_else(|| Addr::Tcp("?".into())),
                    reason: err.to_string(),
                }),
            };
            if let Err(err) = result {
                stop.cancel();
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn serve_one(
    listener: Listener,
    routes: tonic::service::Routes,
    auth: &AuthConfig,
    stop: CancellationToken,
) -> Result<(), ListenError> {
    let mut server = Server::builder()
        // Pings find a client that is gone while a long Solve stream is quiet, so its build is
        // cancelled rather than left running for nobody.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    match listener {
        Listener::Unix { listener, socket } => {
            // The socket's mode and group decide who connects; no token is asked.
            let result = server
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    UnixListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .map_err(|err| ListenError::Serve {
                    addr: Addr::Unix(socket.path.clone()),
                    reason: error_chain(&err),
                });
            drop(socket);
            result
        }
        Listener::Tcp { incoming, local } => {
            let mut server = server.layer(auth.token_layer());
            if let Some(tls) = auth.server_tls() {
                server = server.tls_config(tls).map_err(|err| ListenError::Tls {
                    addr: local.clone(),
                    reason: error_chain(&err),
                })?;
            }
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .map_err(|err| ListenError::Serve {
                    addr: local,
                    reason: error_chain(&err),
                })
        }
    }
}

/// The socket file this server made; dropping it removes the file, if it is still the same one
/// (a second server started on the same path afterwards keeps its own).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs_err::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            // Nothing can be done about a failure here; the next start removes it as stale.
            let _ = fs_err::remove_file(&self.path);
        }
    }
}

async fn bind_unix(path: &Path, auth: &AuthConfig) -> Result<Listener, ListenError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs_err::create_dir_all(dir).map_err(|source| ListenError::SocketDir {
        path: path.to_owned(),
        source,
    })?;
    remove_stale(path).await?;

    // The socket is made in a private directory, given its mode and group there, and only then
    // renamed into place, so nobody can connect in the moment before its mode is set.
    let private = tempfile::Builder::new()
        .prefix(".hoist-socket-")
        .tempdir_in(dir)
        .map_err(|source| ListenError::BindUnix {
            path: path.to_owned(),
            source,
        })?;
    let staged = private.path().join("socket");
    let listener = UnixListener::bind(&staged).map_err(|source| ListenError::BindUnix {
        path: path.to_owned(),
        source,
    })?;
    let permissions = |source| ListenError::SocketPermissions {
        path: path.to_owned(),
        source,
    };
    if let Some(group) = auth.group() {
        rustix::fs::chown(&staged, None, Some(rustix::fs::Gid::from_raw(group.gid)))
            .map_err(|errno| permissions(errno.into()))?;
    }
    fs_err::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(permissions)?;
    fs_err::rename(&staged, path).map_err(|source| ListenError::BindUnix {
        path: path.to_owned(),
        source,
    })?;
    let meta = fs_err::symlink_metadata(path).map_err(|source| ListenError::BindUnix {
        path: path.to_owned(),
        source,
    })?;
    Ok(Listener::Unix {
        listener,
        socket: SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
}

/// Removes a socket a previous server left behind. Anything else at the path is refused, and so
/// is a socket a live server still answers on.
async fn remove_stale(path: &Path) -> Result<(), ListenError> {
    let meta = match fs_err::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::RemoveStale {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_owned(),
        });
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(ListenError::AlreadyServing {
            path: path.to_owned(),
        });
    }
    match fs_err::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ListenError::RemoveStale {
            path: path.to_owned(),
            source,
        }),
    }
}
