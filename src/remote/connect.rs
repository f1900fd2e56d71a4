//! Connecting to a `hoist serve`: `unix:///path` or `tcp://host:port`, with the client's
//! credentials for the server (a bearer token, a client certificate) on every request.
//!
//! One [`Connection`] carries every client (`Control`, `Cas`) over one HTTP/2 connection.
//! Connection failures (no socket, refused, TLS) are told apart from the server refusing the
//! credentials ([`explain`]), so the user knows whether to start a server or fix a token.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hoist_proto::v1::cas_client::CasClient;
use hoist_proto::v1::control_client::ControlClient;
use hoist_server::{Addr, error_chain};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The client's credentials for the server.
#[derive(Clone, Default)]
pub(crate) struct ClientCreds {
    token: Option<AsciiMetadataValue>,
    tls: Option<ClientTls>,
}

/// The client side of TLS: the CA that signed the server's certificate (the system's roots when
/// none is given), and the client's own certificate and key for mutual TLS.
#[derive(Clone)]
struct ClientTls {
    ca: Option<(PathBuf, Certificate)>,
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClientCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the token nor the key is shown.
        f.debug_struct("ClientCreds")
            .field("token", &self.token.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ClientCreds {
    /// Reads the credentials: `env_token` is `HOIST_TOKEN`'s value, and `--remote-token-file`
    /// wins over it when both are given. Any of the TLS files turns TLS on.
    pub(crate) fn load(
        env_token: Option<&str>,
        token_file: Option<&Path>,
        tls_cert: Option<&Path>,
        tls_key: Option<&Path>,
        tls_ca: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let token = match token_file {
            Some(path) => {
                let text = fs_err::read_to_string(path).context("reading --remote-token-file")?;
                let Some(token) = text
                    .lines()
                    .map(str::trim)
                    .find(|line| !line.is_empty() && !line.starts_with('#'))
                else {
                    bail!("the token file {} holds no token", path.display());
                };
                Some(bearer(token).with_context(|| {
                    format!("the token in {} (--remote-token-file)", path.display())
                })?)
            }
            None => match env_token.map(str::trim).filter(|t| !t.is_empty()) {
                Some(token) => Some(bearer(token).context("the token in HOIST_TOKEN")?),
                None => None,
            },
        };
        let identity = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                fs_err::read(cert).context("reading --remote-tls-cert")?,
                fs_err::read(key).context("reading --remote-tls-key")?,
            )),
            (None, None) => None,
            (Some(_), None) => bail!("--remote-tls-cert needs --remote-tls-key, its private key"),
            (None, Some(_)) => bail!("--remote-tls-key needs --remote-tls-cert, its certificate"),
        };
        let ca = match tls_ca {
            Some(path) => Some((
                path.to_owned(),
                Certificate::from_pem(fs_err::read(path).context("reading --remote-tls-ca")?),
            )),
            None => None,
        };
        let tls = (ca.is_some() || identity.is_some()).then_some(ClientTls { ca, identity });
        Ok(Self { token, tls })
    }
}

fn bearer(token: &str) -> anyhow::Result<AsciiMetadataValue> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("a token is printable ASCII without spaces");
    }
    // The value is never shown: an invalid one is reported without it.
    format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the token cannot be sent in an HTTP header"))
}

/// Adds the bearer token, if any, to every request.
#[derive(Clone)]
pub(crate) struct Credentials {
    token: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The channel with the credentials on every request: what the generated clients take.
pub(crate) type Service = InterceptedService<Channel, Credentials>;

/// A connection to a server, from which every client is made.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    addr: Addr,
    channel: Channel,
    credentials: Credentials,
}

impl Connection {
    /// The address connected to, for messages.
    pub(crate) fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The channel with the credentials added to every request.
    pub(crate) fn service(&self) -> Service {
        InterceptedService::new(self.channel.clone(), self.credentials.clone())
    }

    pub(crate) fn control(&self) -> ControlClient<Service> {
        ControlClient::new(self.service())
    }

    pub(crate) fn cas(&self) -> CasClient<Service> {
        CasClient::new(self.service())
    }
}

/// How long connecting may take before it is reported as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to the server at `addr`. The connection is made now, so an address with nothing
/// behind it, a socket the user may not open, or a failed TLS handshake is reported here, naming
/// the address.
pub(crate) async fn connect(addr: &Addr, creds: &ClientCreds) -> anyhow::Result<Connection> {
    let credentials = Credentials {
        token: creds.token.clone(),
    };
    let channel = match addr {
        Addr::Unix(path) => connect_unix(path).await?,
        Addr::Tcp(hostport) => connect_tcp(addr, hostport, creds.tls.as_ref()).await?,
    };
    let connection = Connection {
        addr: addr.clone(),
        channel,
        credentials,
    };
    if creds.tls.is_some() {
        connection.first_request().await?;
    }
    Ok(connection)
}

impl Connection {
    /// Makes the connection's first request, and reads its failure. With TLS 1.3 a server
    /// checks the client's certificate only after the client has sent its first request; a
    /// refused certificate then often reaches the client as the connection closing under that
    /// request, with the server's alert lost. Here, a close that comes at the first request is
    /// known to be that.
    async fn first_request(&self) -> anyhow::Result<()> {
        let addr = &self.addr;
        // Any answer at all, a refusal of the token included, means the TLS session stands;
        // the command's own request reports the rest.
        let Err(status) = self.control().info(hoist_proto::v1::InfoRequest {}).await else {
            return Ok(());
        };
        let chain = error_chain(&status);
        let transport = matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
        );
        if transport && (looks_like_tls(&chain) || looks_like_a_close(&chain)) {
            bail!(
                "the server at {addr} refused the TLS connection at the first request, \
                     which is how it refuses a client certificate it does not accept ({chain}); \
                     it accepts certificates signed by its --tls-client-ca: give yours with \
                     --remote-tls-cert and --remote-tls-key"
            )
        }
        Ok(())
    }
}

/// A connection that the other side closed or reset under a request.
fn looks_like_a_close(chain: &str) -> bool {
    [
        "connection closed",
        "Canceled",
        "canceled",
        "Broken pipe",
        "BrokenPipe",
        "reset",
    ]
    .iter()
    .any(|word| chain.contains(word))
}

fn endpoint(uri: String) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        // Pings find a server that is gone while a long build is quiet.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20)))
}

async fn connect_unix(path: &Path) -> anyhow::Result<Channel> {
    match fs_err::metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            bail!(
                "cannot connect to unix://{}: it is not a socket; is the address right?",
                path.display()
            )
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "cannot connect to unix://{}: no such socket; is `hoist serve` running there?",
            path.display()
        ),
        Err(err) => bail!("cannot connect to unix://{}: {err}", path.display()),
    }
    let socket = path.to_owned();
    // The URI is not used to connect: every connection goes to the socket.
    let channel = endpoint("http://localhost".into())?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket)
                    .await
                    .map_err(|err| unix_error(&socket, err))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot connect to unix://{}: {}",
                path.display(),
                error_chain(&err)
            )
        })?;
    Ok(channel)
}

/// Says what to do about a socket that would not connect.
fn unix_error(path: &Path, err: std::io::Error) -> std::io::Error {
    let hint = match err.kind() {
        std::io::ErrorKind::PermissionDenied => match fs_err::metadata(path) {
            Ok(meta) => format!(
                "the socket is mode {:o}, owner {} and group {}: ask to be added to its group (hoist serve --group)",
                meta.permissions().mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ),
            Err(_) => "ask to be added to the socket's group (hoist serve --group)".into(),
        },
        std::io::ErrorKind::ConnectionRefused => {
            "nothing listens on it (a server left it behind): is `hoist serve` running?".into()
        }
        std::io::ErrorKind::NotFound => "no such socket: is `hoist serve` running?".into(),
        _ => return err,
    };
    std::io::Error::new(err.kind(), format!("{err}; {hint}"))
}

async fn connect_tcp(
    addr: &Addr,
    hostport: &str,
    tls: Option<&ClientTls>,
) -> anyhow::Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = endpoint(format!("{scheme}://{hostport}"))
        .with_context(|| format!("{addr} is not a usable address"))?;
    if let Some(tls) = tls {
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut config = ClientTlsConfig::new()
            .domain_name(host)
            // A TLS handshake that stalls is reported rather than waited on forever.
            .timeout(CONNECT_TIMEOUT);
        config = match &tls.ca {
            Some((_, ca)) => config.ca_certificate(ca.clone()),
            None => config.with_native_roots(),
        };
        if let Some(identity) = &tls.identity {
            config = config.identity(identity.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .with_context(|| format!("setting up TLS for {addr}"))?;
    }
    endpoint.connect().await.map_err(|err| {
        let chain = error_chain(&err);
        if tls.is_some() && looks_like_tls(&chain) {
            let ca = match tls.and_then(|t| t.ca.as_ref()) {
                Some((path, _)) => format!("the CA in {} (--remote-tls-ca)", path.display()),
                None => "the system's CAs (give --remote-tls-ca for a private CA)".into(),
            };
            anyhow::anyhow!(
                "TLS with {addr} failed: {chain}; the server's certificate must be signed by {ca} and name the host"
            )
        } else if chain.contains("onnection refused") {
            anyhow::anyhow!(
                "cannot connect to {addr}: connection refused; is `hoist serve` listening there?"
            )
        } else {
            anyhow::anyhow!("cannot connect to {addr}: {chain}")
        }
    })
}

fn looks_like_tls(chain: &str) -> bool {
    [
        "certificate",
        "alert",
        "tls",
        "TLS",
        "handshake",
        "CertNotValid",
    ]
    .iter()
    .any(|word| chain.contains(word))
}

/// Explains an error status from the server at `addr`: a refused credential, or a client
/// certificate refused in the TLS handshake (which TLS 1.3 reports only at the first request),
/// is told apart from other failures.
pub(crate) fn explain(addr: &Addr, status: &tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated => anyhow::anyhow!(
            "the server at {addr} refused the credentials: {}",
            status.message()
        ),
        tonic::Code::PermissionDenied => {
            anyhow::anyhow!("the server at {addr} refused: {}", status.message())
        }
        _ => {
            let chain = error_chain(status);
            if looks_like_tls(&chain) {
                anyhow::anyhow!(
                    "the server at {addr} refused the TLS connection: {chain}; it accepts client certificates signed by its --tls-client-ca (give yours with --remote-tls-cert and --remote-tls-key)"
                )
            } else {
                anyhow::anyhow!("{addr}: {chain}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_proto::v1::cas_server::{Cas, CasServer};
    use hoist_proto::v1::{
        BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, FindMissingBlobsRequest,
        FindMissingBlobsResponse, FindMissingTreeRequest, FindMissingTreeResponse,
        QueryWriteStatusRequest, QueryWriteStatusResponse, WriteRequest, WriteResponse,
    };
    use hoist_server::auth::{AuthConfig, TlsFiles};
    use hoist_server::listen;
    use tokio_util::sync::CancellationToken;
    use tonic::{Request, Response, Status};

    const TOKEN: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

    /// Answers `FindMissingBlobs` (every blob is missing); enough to see a request get through.
    struct StubCas;

    #[tonic::async_trait]
    impl Cas for StubCas {
        async fn find_missing_blobs(
            &self,
            request: Request<FindMissingBlobsRequest>,
        ) -> Result<Response<FindMissingBlobsResponse>, Status> {
            Ok(Response::new(FindMissingBlobsResponse {
                missing_blob_digests: request.into_inner().blob_digests,
            }))
        }
        async fn batch_update_blobs(
            &self,
            _: Request<BatchUpdateBlobsRequest>,
        ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }
        async fn write(
            &self,
            _: Request<tonic::Streaming<WriteRequest>>,
        ) -> Result<Response<WriteResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }
        async fn query_write_status(
            &self,
            _: Request<QueryWriteStatusRequest>,
        ) -> Result<Response<QueryWriteStatusResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }
        async fn find_missing_tree(
            &self,
            _: Request<FindMissingTreeRequest>,
        ) -> Result<Response<FindMissingTreeResponse>, Status> {
            Err(Status::unimplemented("stub"))
        }
    }

    /// Serves the stub on `addr` until the token is dropped; returns the address bound.
    async fn serve(addr: Addr, auth: &AuthConfig) -> (Addr, tokio_util::sync::DropGuard) {
        let listeners = listen::bind(&[addr], auth).await.unwrap();
        let bound = listeners.local_addrs().remove(0);
        let shutdown = CancellationToken::new();
        let routes = tonic::service::Routes::new(CasServer::new(StubCas));
        tokio::spawn(listeners.serve(routes, shutdown.clone()));
        (bound, shutdown.drop_guard())
    }

    async fn ask(connection: &Connection) -> Result<usize, Status> {
        let request = FindMissingBlobsRequest {
            blob_digests: vec![hoist_proto::v1::Digest {
                hash: "cd".repeat(32),
                size_bytes: 1,
            }],
        };
        let response = connection.cas().find_missing_blobs(request).await?;
        Ok(response.into_inner().missing_blob_digests.len())
    }

    #[tokio::test]
    async fn unix_socket_connects_and_missing_or_dead_sockets_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hoist.sock");
        let addr = Addr::Unix(path.clone());
        let creds = ClientCreds::default();

        let err = connect(&addr, &creds).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("cannot connect to unix://{}", path.display()))
                && err.contains("no such socket"),
            "{err}"
        );

        // A socket whose server is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = format!("{:#}", connect(&addr, &creds).await.unwrap_err());
        assert!(err.contains("nothing listens on it"), "{err}");
        fs_err::remove_file(&path).unwrap();

        fs_err::write(&path, "").unwrap();
        let err = connect(&addr, &creds).await.unwrap_err().to_string();
        assert!(err.contains("it is not a socket"), "{err}");
        fs_err::remove_file(&path).unwrap();

        let auth = AuthConfig::load(None, None, None, false).unwrap();
        let (bound, _server) = serve(addr.clone(), &auth).await;
        let connection = connect(&bound, &creds).await.unwrap();
        assert_eq!(ask(&connection).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn tcp_refused_says_so() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = Addr::Tcp(format!("127.0.0.1:{port}"));
        let err = connect(&addr, &ClientCreds::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("cannot connect to tcp://127.0.0.1:{port}"))
                && err.contains("connection refused"),
            "{err}"
        );
    }

    fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(
        dir: &Path,
        ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        name: &str,
        sans: &[&str],
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        fs_err::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        fs_err::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    #[tokio::test]
    async fn tcp_with_mutual_tls_and_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ca("hoist test ca");
        let other = ca_pem_only(d);
        fs_err::write(d.join("ca.pem"), ca.pem()).unwrap();
        leaf(d, &ca, "server", &["localhost", "127.0.0.1"]);
        leaf(d, &ca, "client", &["client"]);
        fs_err::write(d.join("tokens"), format!("{TOKEN}\n")).unwrap();
        let auth = AuthConfig::load(
            Some(&d.join("tokens")),
            Some(TlsFiles {
                cert: d.join("server.pem"),
                key: d.join("server.key"),
                client_ca: Some(d.join("ca.pem")),
            }),
            None,
            false,
        )
        .unwrap();
        let (bound, _server) = serve(Addr::Tcp("127.0.0.1:0".into()), &auth).await;
        let Addr::Tcp(hostport) = &bound else {
            panic!("{bound}")
        };
        // By name, as the certificate says, so the domain comes from the host.
        let addr = Addr::Tcp(hostport.replace("127.0.0.1", "localhost"));

        let creds = |token: Option<&str>, ca: &Path| {
            ClientCreds::load(
                token,
                None,
                Some(&d.join("client.pem")),
                Some(&d.join("client.key")),
                Some(ca),
            )
            .unwrap()
        };

        let connection = connect(&addr, &creds(Some(TOKEN), &d.join("ca.pem")))
            .await
            .unwrap();
        assert_eq!(ask(&connection).await.unwrap(), 1);

        // Connected, but no token: the server refuses the credentials, and says what is missing.
        let connection = connect(&addr, &creds(None, &d.join("ca.pem")))
            .await
            .unwrap();
        let status = ask(&connection).await.unwrap_err();
        let err = explain(connection.addr(), &status).to_string();
        assert!(
            err.contains(&format!("the server at {addr} refused the credentials"))
                && err.contains("missing credentials"),
            "{err}"
        );

        // A client that does not trust the server's CA fails at TLS, naming the CA it used.
        let err = connect(&addr, &creds(Some(TOKEN), &other))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("TLS with {addr} failed"))
                && err.contains("other-ca.pem (--remote-tls-ca)"),
            "{err}"
        );
    }

    fn ca_pem_only(dir: &Path) -> PathBuf {
        let path = dir.join("other-ca.pem");
        fs_err::write(&path, ca("some other ca").pem()).unwrap();
        path
    }

    #[test]
    fn token_file_wins_over_the_environment_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        fs_err::write(&file, "# mine\n\n  from-the-file-0123456789  \n").unwrap();
        let creds = ClientCreds::load(Some("from-env"), Some(&file), None, None, None).unwrap();
        assert_eq!(
            creds.token.as_ref().unwrap().to_str().unwrap(),
            "Bearer from-the-file-0123456789"
        );
        assert!(!format!("{creds:?}").contains("from-the-file"));
        let creds = ClientCreds::load(Some("from-env"), None, None, None, None).unwrap();
        assert_eq!(
            creds.token.as_ref().unwrap().to_str().unwrap(),
            "Bearer from-env"
        );
        let err = ClientCreds::load(Some("has space"), None, None, None, None).unwrap_err();
        assert!(!format!("{err:#}").contains("has space"), "{err:#}");
        let err = ClientCreds::load(None, None, Some(&file), None, None).unwrap_err();
        assert!(err.to_string().contains("--remote-tls-key"), "{err}");
    }
}
