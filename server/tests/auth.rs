//! Who may build, end to end: a real tonic server started through `listen::bind` and
//! `Listeners::serve` (what `listen::serve` does) with a stub
//! `Cas` service (and the health service), and real clients over TCP, TLS and a unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hoist_proto::v1::cas_client::CasClient;
use hoist_proto::v1::cas_server::{Cas, CasServer};
use hoist_proto::v1::{
    BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, Digest, FindMissingBlobsRequest,
    FindMissingBlobsResponse, FindMissingTreeRequest, FindMissingTreeResponse,
    QueryWriteStatusRequest, QueryWriteStatusResponse, WriteRequest, WriteResponse,
};
use hoist_server::auth::{AuthConfig, TlsFiles};
use hoist_server::listen::{self, ListenError};
use hoist_server::{Addr, error_chain};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "4f1c9e0d2b7a68355d0c1e9f7a2b3c4d";
const WRONG_TOKEN: &str = "ffffffffffffffffwrongwrongwrong0";

/// A `Cas` whose `FindMissingBlobs` answers that every blob asked about is missing; the rest is
/// unimplemented. Enough to tell a request that reached the service from one refused before it.
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

/// A server on `addrs`, stopped (and waited for) on drop.
struct Server {
    addrs: Vec<Addr>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), ListenError>>>,
}

impl Server {
    async fn start(addrs: &[Addr], auth: &AuthConfig) -> Self {
        let listeners = listen::bind(addrs, auth).await.unwrap();
        let addrs = listeners.local_addrs();
        let (reporter, health) = listen::health();
        reporter.set_serving::<CasServer<StubCas>>().await;
        let routes = tonic::service::Routes::new(health).add_service(CasServer::new(StubCas));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(listeners.serve(routes, shutdown.clone()));
        Self {
            addrs,
            shutdown,
            task: Some(task),
        }
    }

    fn tcp(&self) -> String {
        let Addr::Tcp(hostport) = &self.addrs[0] else {
            panic!("not tcp: {:?}", self.addrs)
        };
        hostport.clone()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the server did not stop within 60 s of its shutdown")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn tcp_loopback() -> Vec<Addr> {
    vec![Addr::Tcp("127.0.0.1:0".into())]
}

/// A CA, a server certificate for localhost and 127.0.0.1, and client certificates, as PEM
/// files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("hoist test ca");
        let other_ca = make_ca("some other ca");
        let pki = Self { dir };
        pki.write("ca.pem", &ca.pem());
        pki.write("other-ca.pem", &other_ca.pem());
        pki.leaf(&ca, "server", &["localhost", "127.0.0.1"]);
        pki.leaf(&ca, "client", &["client.example"]);
        pki.leaf(&other_ca, "stranger", &["client.example"]);
        pki
    }

    fn write(&self, name: &str, text: &str) {
        fs_err::write(self.dir.path().join(name), text).unwrap();
    }

    fn leaf(
        &self,
        ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        name: &str,
        sans: &[&str],
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_files(&self, client_ca: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }

    /// A client that trusts the test CA and shows `identity`'s certificate, if any.
    fn client_tls(&self, identity: Option<&str>) -> ClientTlsConfig {
        let ca = fs_err::read(self.path("ca.pem")).unwrap();
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(name) = identity {
            let cert = fs_err::read(self.path(&format!("{name}.pem"))).unwrap();
            let key = fs_err::read(self.path(&format!("{name}.key"))).unwrap();
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

fn make_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens");
    fs_err::write(&path, format!("# ci runners\n\n{TOKEN}\n")).unwrap();
    path
}

async fn channel(hostport: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{hostport}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.map_err(|e| error_chain(&e))
}

/// Asks the stub `Cas` about one blob, with `token` as a bearer token if given.
async fn find_missing(channel: Channel, token: Option<&str>) -> Result<usize, Status> {
    let token = token.map(|t| format!("Bearer {t}").parse::<tonic::metadata::AsciiMetadataValue>());
    let token = token.transpose().unwrap();
    let mut client = CasClient::with_interceptor(channel, move |mut request: Request<()>| {
        if let Some(token) = &token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    });
    let digest = Digest {
        hash: "ab".repeat(32),
        size_bytes: 3,
    };
    let response = client
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![digest],
        })
        .await?;
    Ok(response.into_inner().missing_blob_digests.len())
}

async fn health(channel: Channel) -> Result<ServingStatus, Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn plain_tcp_without_credentials_is_refused_at_start_up() {
    let auth = AuthConfig::load(None, None, None, false).unwrap();
    let err = listen::check(&tcp_loopback(), &auth)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to listen on tcp://127.0.0.1:0 without authentication")
            && err.contains("--token-file")
            && err.contains("--tls-client-ca")
            && err.contains("--insecure-no-auth"),
        "{err}"
    );
    // serve refuses too, before anything listens.
    let err = listen::serve(
        tonic::service::Routes::default(),
        &tcp_loopback(),
        &auth,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ListenError::NoAuth { .. }), "{err}");

    // A unix socket needs no credential: its mode says who may connect.
    let dir = tempfile::tempdir().unwrap();
    let unix = vec![Addr::Unix(dir.path().join("hoist.sock"))];
    listen::check(&unix, &auth).unwrap();

    // --insecure-no-auth says so in so many words, and then anyone may build.
    let insecure = AuthConfig::load(None, None, None, true).unwrap();
    let server = Server::start(&tcp_loopback(), &insecure).await;
    let channel = channel(&server.tcp(), None).await.unwrap();
    assert_eq!(find_missing(channel, None).await.unwrap(), 1);
    server.stop().await;
}

#[tokio::test]
async fn tls_without_client_ca_needs_tokens() {
    let pki = Pki::new();
    let auth = AuthConfig::load(None, Some(pki.server_files(false)), None, false).unwrap();
    let err = listen::check(&tcp_loopback(), &auth)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("with TLS but no way to tell who may build") && err.contains("--token-file"),
        "{err}"
    );

    // With tokens, TLS without a client CA serves, and the token is required.
    let tokens = tempfile::tempdir().unwrap();
    let auth = AuthConfig::load(
        Some(&token_file(tokens.path())),
        Some(pki.server_files(false)),
        None,
        false,
    )
    .unwrap();
    let server = Server::start(&tcp_loopback(), &auth).await;
    let tls = channel(&server.tcp(), Some(pki.client_tls(None)))
        .await
        .unwrap();
    let status = find_missing(tls.clone(), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(find_missing(tls, Some(TOKEN)).await.unwrap(), 1);
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_required_on_tcp_and_wrong_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let auth = AuthConfig::load(Some(&token_file(dir.path())), None, None, false).unwrap();
    let server = Server::start(&tcp_loopback(), &auth).await;
    let channel = channel(&server.tcp(), None).await.unwrap();

    let missing = find_missing(channel.clone(), None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(
        missing.message().contains("missing credentials") && missing.message().contains("Bearer"),
        "{missing:?}"
    );

    let wrong = find_missing(channel.clone(), Some(WRONG_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(
        wrong.message().contains("not one this server accepts"),
        "{wrong:?}"
    );
    assert!(!wrong.message().contains(WRONG_TOKEN), "{wrong:?}");

    // A prefix of the right token is wrong too.
    let prefix = find_missing(channel.clone(), Some(&TOKEN[..20]))
        .await
        .unwrap_err();
    assert_eq!(prefix.code(), Code::Unauthenticated, "{prefix:?}");

    assert_eq!(find_missing(channel.clone(), Some(TOKEN)).await.unwrap(), 1);

    // Health checks answer without a token, for load balancers and orchestrators.
    assert_eq!(health(channel).await.unwrap(), ServingStatus::Serving);
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let auth = AuthConfig::load(None, Some(pki.server_files(true)), None, false).unwrap();
    let server = Server::start(&tcp_loopback(), &auth).await;

    let trusted = channel(&server.tcp(), Some(pki.client_tls(Some("client"))))
        .await
        .unwrap();
    assert_eq!(find_missing(trusted, None).await.unwrap(), 1);

    for (who, identity, alert) in [
        ("no client certificate", None, "CertificateRequired"),
        (
            "a certificate from another CA",
            Some("stranger"),
            "UnknownCA",
        ),
    ] {
        // Depending on the TLS version the refusal shows at connect or at the first request.
        let refused = match channel(&server.tcp(), Some(pki.client_tls(identity))).await {
            Err(err) => err,
            Ok(channel) => match find_missing(channel.clone(), None).await {
                Err(status) => format!("{status:?}"),
                Ok(n) => panic!("a client with {who} was served ({n} missing)"),
            },
        };
        // The server's TLS alert says why.
        assert!(refused.contains(alert), "{who}: {refused}");
        // Health checks need the certificate too: the handshake comes before any request.
        if let Ok(channel) = channel(&server.tcp(), Some(pki.client_tls(identity))).await {
            health(channel)
                .await
                .expect_err("a health check without a trusted certificate was answered");
        }
    }

    // Plain TCP to a TLS port gets nothing either.
    if let Ok(plain) = channel(&server.tcp(), None).await {
        find_missing(plain, None)
            .await
            .expect_err("plain TCP to the TLS port was served");
    }
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_and_tokens_together_require_both() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let auth = AuthConfig::load(
        Some(&token_file(dir.path())),
        Some(pki.server_files(true)),
        None,
        false,
    )
    .unwrap();
    let server = Server::start(&tcp_loopback(), &auth).await;
    let trusted = channel(&server.tcp(), Some(pki.client_tls(Some("client"))))
        .await
        .unwrap();
    let status = find_missing(trusted.clone(), None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = find_missing(trusted.clone(), Some(WRONG_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(find_missing(trusted, Some(TOKEN)).await.unwrap(), 1);

    // The right token without a trusted certificate is still refused.
    let refused = match channel(&server.tcp(), Some(pki.client_tls(Some("stranger")))).await {
        Err(_) => true,
        Ok(channel) => find_missing(channel, Some(TOKEN)).await.is_err(),
    };
    assert!(
        refused,
        "a certificate from another CA was served with the right token"
    );
    server.stop().await;
}

async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

#[tokio::test]
async fn unix_socket_is_0660_with_its_group_and_is_removed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/hoist.sock");
    // Tokens guard TCP only: the socket's mode is its auth, so no token is asked over it.
    let auth = AuthConfig::load(
        Some(&token_file(dir.path())),
        None,
        Some("4242".into()),
        false,
    )
    .unwrap();
    let server = Server::start(&[Addr::Unix(path.clone())], &auth).await;

    let meta = fs_err::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    assert_eq!(meta.gid(), 4242);
    // Nothing else was left next to it (the socket is staged in a private directory).
    let entries: Vec<_> = fs_err::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("hoist.sock")]);

    let channel = unix_channel(&path).await.unwrap();
    assert_eq!(find_missing(channel.clone(), None).await.unwrap(), 1);
    assert_eq!(health(channel).await.unwrap(), ServingStatus::Serving);

    // A second server on the same path is refused while the first answers.
    let err = listen::bind(&[Addr::Unix(path.clone())], &auth)
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::AlreadyServing { .. }), "{err}");
    assert!(fs_err::symlink_metadata(&path).is_ok());

    server.stop().await;
    assert!(
        fs_err::symlink_metadata(&path).is_err(),
        "the socket {} is still there after shutdown",
        path.display()
    );
}

#[tokio::test]
async fn stale_socket_is_replaced_but_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hoist.sock");
    let auth = AuthConfig::load(None, None, None, false).unwrap();

    // A socket nobody answers on, as a killed server leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        fs_err::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let server = Server::start(&[Addr::Unix(path.clone())], &auth).await;
    let channel = unix_channel(&path).await.unwrap();
    assert_eq!(find_missing(channel, None).await.unwrap(), 1);
    server.stop().await;

    // A regular file is somebody's data: refused, and left alone.
    fs_err::write(&path, "not a socket").unwrap();
    let err = listen::bind(&[Addr::Unix(path.clone())], &auth)
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(fs_err::read_to_string(&path).unwrap(), "not a socket");
}

#[tokio::test]
async fn unix_socket_admits_its_group_and_refuses_other_users() {
    let dir = tempfile::tempdir().unwrap();
    // The directory must be reachable for the unprivileged user; the socket's mode decides.
    fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("hoist.sock");
    let auth = AuthConfig::load(None, None, Some("4242".into()), false).unwrap();
    let server = Server::start(&[Addr::Unix(path.clone())], &auth).await;

    // A child running as an unprivileged user, in the socket's group or not, tries to connect.
    let try_as = |uid: u32, gid: u32| {
        let path = path.clone();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt as _;
            std::process::Command::new("/usr/bin/python3")
                .arg("-c")
                .arg("import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])")
                .arg(&path)
                .uid(uid)
                .gid(gid)
                .output()
                .unwrap()
        })
        .join()
        .unwrap()
    };
    let member = try_as(65534, 4242);
    assert!(
        member.status.success(),
        "a member of the socket's group could not connect: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = try_as(65534, 65534);
    assert!(
        !outsider.status.success(),
        "a user outside the socket's group connected"
    );
    assert!(
        String::from_utf8_lossy(&outsider.stderr).contains("ermission denied"),
        "{}",
        String::from_utf8_lossy(&outsider.stderr)
    );
    server.stop().await;
}

#[test]
fn unknown_group_and_bad_tls_files_are_start_up_errors() {
    let err = AuthConfig::load(None, None, Some("no-such-group-hoist".into()), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no group named \"no-such-group-hoist\""),
        "{err}"
    );

    let pki = Pki::new();
    let mut files = pki.server_files(true);
    files.key = pki.path("client.key");
    let err = AuthConfig::load(None, Some(files), None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("do not make a usable server configuration"),
        "{err}"
    );

    let mut files = pki.server_files(true);
    files.client_ca = Some(pki.path("server.key"));
    let err = AuthConfig::load(None, Some(files), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("client CA (--tls-client-ca)"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("tokens");
    fs_err::write(&empty, "\n# nothing\n").unwrap();
    let err = AuthConfig::load(Some(&empty), None, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no token"), "{err}");
}
