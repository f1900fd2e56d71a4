//! Test support: a real CNCF distribution registry on a loopback port, a small token issuer for
//! the registry's token auth, a fault-injecting TCP proxy, and images built in the content store (`hoist_cache::BlobStore`).
// Test support, not library code: a panic here is a test failure. Not every test binary uses
// every helper.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hoist_cache::content::{BlobStore, DOCKER_MANIFEST, sha256_of};
use hoist_registry::oci_spec::image::{
    Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageManifestBuilder,
    MediaType, RootFsBuilder,
};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Finds a tool; a missing one fails the test (a skipped test must never count as passed).
/// `scripts/test.sh` installs them all.
pub fn require_tool(path: &str, package: &str) -> bool {
    assert!(
        Path::new(path).exists() || which(path),
        "{path} is missing: apt-get install {package} (scripts/test.sh installs it)"
    );
    true
}

fn which(name: &str) -> bool {
    !name.contains('/')
        && std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Extra registry configuration.
#[derive(Clone, Debug, Default)]
pub enum RegistryAuth {
    #[default]
    None,
    Htpasswd(PathBuf),
    Token {
        realm: String,
        cert: PathBuf,
    },
}

/// A running `docker-registry serve` on 127.0.0.1, killed (by PID) when dropped.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    auth: RegistryAuth,
    name: String,
}

impl Registry {
    pub fn start() -> Option<Self> {
        Self::start_with(RegistryAuth::None)
    }

    pub fn start_with(auth: RegistryAuth) -> Option<Self> {
        if !require_tool(REGISTRY_BIN, "docker-registry") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut r = Self {
            port,
            dir,
            child: None,
            auth,
            name: format!("127.0.0.1:{port}"),
        };
        r.spawn();
        Some(r)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn spawn(&mut self) {
        let auth = match &self.auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd(path) => format!(
                "auth:\n  htpasswd:\n    realm: hoist-test\n    path: {}\n",
                path.display()
            ),
            RegistryAuth::Token { realm, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        // A fixed http.secret keeps upload-session URLs valid across a restart.
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: hoist-test-secret\n{auth}",
            self.storage().display(),
            self.port
        );
        let config_path = self.dir.path().join("config.yml");
        fs_err::write(&config_path, config).unwrap();
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap().into_file())
            .stderr(log.into_file())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let log = self.log_path();
        wait_for_port(self.port, self.child.as_mut().unwrap(), &log);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Kills the registry abruptly, as a crash or a pulled plug would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The registry as named in references.
    pub fn registry_name(&self) -> &str {
        self.name.as_str()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "registry exited with {status}: {}",
                fs_err::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("registry did not listen on port {port} within 20s");
}

/// Deterministic incompressible bytes (xorshift), so tests need no RNG crate.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes bytes into a store and returns their descriptor.
pub fn put_blob(store: &BlobStore, media_type: MediaType, bytes: &[u8]) -> Descriptor {
    let digest = sha256_of(bytes);
    let mut w = store.writer(&digest, Some(bytes.len() as u64)).unwrap();
    w.write_all(bytes).unwrap();
    w.commit().unwrap();
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(bytes.len() as u64)
        .build()
        .unwrap()
}

/// An image in a store: its manifest descriptor and its blobs (config first).
pub struct TestImage {
    pub manifest: Descriptor,
    pub blobs: Vec<Descriptor>,
}

/// Builds an OCI image (or a Docker schema 2 one) with layers of the given sizes. Layer bytes
/// are random, which the registry does not mind; the config names matching diff IDs.
pub fn make_image(
    store: &BlobStore,
    seed: u64,
    layer_sizes: &[usize],
    arch: &str,
    docker: bool,
) -> TestImage {
    let (layer_type, config_type, manifest_type) = if docker {
        (
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into()),
            MediaType::Other("application/vnd.docker.container.image.v1+json".into()),
            MediaType::Other(DOCKER_MANIFEST.into()),
        )
    } else {
        (
            MediaType::ImageLayerGzip,
            MediaType::ImageConfig,
            MediaType::ImageManifest,
        )
    };
    let layers: Vec<Descriptor> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            put_blob(
                store,
                layer_type.clone(),
                &pseudo_random(seed * 1000 + i as u64, *n),
            )
        })
        .collect();
    let config = ImageConfigurationBuilder::default()
        .architecture(arch)
        .os("linux")
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(
                    layers
                        .iter()
                        .map(|l| l.digest().to_string())
                        .collect::<Vec<_>>(),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let config = put_blob(
        store,
        config_type,
        serde_json::to_string(&config).unwrap().as_bytes(),
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(manifest_type.clone())
        .config(config.clone())
        .layers(layers.clone())
        .build()
        .unwrap();
    let manifest = put_blob(
        store,
        manifest_type,
        serde_json::to_string(&manifest).unwrap().as_bytes(),
    );
    let mut blobs = vec![config];
    blobs.extend(layers);
    TestImage { manifest, blobs }
}

pub fn read_blob(store: &BlobStore, digest: &Digest) -> Vec<u8> {
    store.read(digest).unwrap()
}

/// Collects the events a client reports.
#[derive(Clone, Default)]
pub struct Events(pub Arc<std::sync::Mutex<Vec<hoist_registry::Event>>>);

impl Events {
    pub fn observer(&self) -> hoist_registry::Observer {
        let inner = self.0.clone();
        Arc::new(move |e| inner.lock().unwrap().push(e.clone()))
    }

    pub fn take(&self) -> Vec<hoist_registry::Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

pub const SERVICE: &str = "hoist-test-registry";
pub const ISSUER: &str = "hoist-test-issuer";

/// A token issuer for the registry's token auth: checks basic credentials, then signs an RS256
/// JWT with `openssl` for whatever scopes were asked. The registry trusts its certificate.
pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    pub issued: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    pub async fn start(user: &'static str, password: &'static str) -> Option<Self> {
        if !require_tool("/usr/bin/openssl", "openssl") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=hoist-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let key = key.clone();
                let x5c = x5c.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve_token(sock, &key, &x5c, user, password, &counter).await;
                });
            }
        });
        Some(Self {
            port,
            cert,
            issued,
            _dir: dir,
            task,
        })
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_token(
    sock: tokio::net::TcpStream,
    key: &Path,
    x5c: &str,
    user: &str,
    password: &str,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut reader = BufReader::new(sock);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut authorization = None;
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    authorization = Some(v.trim().to_owned());
                } else if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        tokio::io::AsyncReadExt::read_exact(&mut reader, &mut body).await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        let target = request_line.split_whitespace().nth(1).unwrap_or("/");
        // GET carries the request in the query with basic credentials; the OAuth2 refresh-token
        // grant POSTs it as a form.
        let is_post = request_line.starts_with("POST");
        let query = if is_post {
            body.as_str()
        } else {
            target.split_once('?').map_or("", |(_, q)| q)
        };
        let mut scopes = Vec::new();
        let mut service = String::new();
        let mut refresh_token = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "scope" => scopes.extend(v.split(' ').map(str::to_owned)),
                "service" => service = v,
                "refresh_token" => refresh_token = v,
                _ => {}
            }
        }
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let granted = if is_post {
            refresh_token == format!("refresh-{password}")
        } else {
            authorization.as_deref() == Some(expected.as_str())
        };
        let (status, body) = if granted {
            counter.fetch_add(1, Ordering::SeqCst);
            let jwt = sign_jwt(key, x5c, user, &service, &scopes);
            ("200 OK", format!(r#"{{"token":"{jwt}","expires_in":300}}"#))
        } else {
            (
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_owned(),
            )
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(reply.as_bytes()).await?;
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn sign_jwt(key: &Path, x5c: &str, user: &str, service: &str, scopes: &[String]) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let typ = parts.next()?;
            let name = parts.next()?;
            let actions: Vec<&str> = parts.next()?.split(',').collect();
            Some(serde_json::json!({"type": typ, "name": name, "actions": actions}))
        })
        .collect();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": user, "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    format!("{signing_input}.{}", b64(&out.stdout))
}

/// A TCP proxy in front of a registry that misbehaves for the first `faults` connections:
/// it drops them at once, answers 503, or cuts them after some bytes of replies; then it
/// forwards faithfully. It counts the reply bytes it forwards.
pub struct FaultyProxy {
    pub port: u16,
    pub faulted: Arc<AtomicUsize>,
    pub downstream: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    Drop,
    Unavailable,
    CutAfter(usize),
}

impl FaultyProxy {
    pub async fn start(upstream: u16, fault: Fault, faults: usize) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faulted = Arc::new(AtomicUsize::new(0));
        let downstream = Arc::new(AtomicUsize::new(0));
        let counter = faulted.clone();
        let down = downstream.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut limit = None;
                if counter.load(Ordering::SeqCst) < faults {
                    counter.fetch_add(1, Ordering::SeqCst);
                    match fault {
                        Fault::Drop => {
                            drop(sock);
                            continue;
                        }
                        Fault::Unavailable => {
                            tokio::spawn(async move {
                                let mut buf = [0u8; 4096];
                                let _ = sock.read(&mut buf).await;
                                let _ = sock
                                    .write_all(
                                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                                    )
                                    .await;
                            });
                            continue;
                        }
                        Fault::CutAfter(n) => limit = Some(n),
                    }
                }
                tokio::spawn(forward(sock, upstream, limit, down.clone()));
            }
        });
        Self {
            port,
            faulted,
            downstream,
            task,
        }
    }
}

async fn forward(
    client: tokio::net::TcpStream,
    upstream: u16,
    limit: Option<usize>,
    down: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
        let _ = up_write.shutdown().await;
    });
    let mut buf = vec![0u8; 16 << 10];
    let mut sent = 0usize;
    loop {
        let n = match up_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => limit.map_or(n, |l| n.min(l - sent)),
        };
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
        down.fetch_add(n, Ordering::SeqCst);
        if limit.is_some_and(|l| sent >= l) {
            break;
        }
    }
    // End the response with a FIN and wait for the client to close its side: dropping a
    // socket whose peer still sends resets it, and a reset can throw away what the client had
    // received but not read yet (on a loaded machine, the whole cut-short body).
    let _ = client_write.shutdown().await;
    let mut requests = requests;
    if tokio::time::timeout(std::time::Duration::from_secs(10), &mut requests)
        .await
        .is_err()
    {
        requests.abort();
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A "registry" that accepts connections and never answers, holding each one open; it counts
/// the connections. Stopped when dropped.
pub struct SilentRegistry {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentRegistry {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(sock);
            }
        });
        Self {
            port,
            connections,
            task,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the scripted registry serves a blob, or takes an upload.
#[derive(Clone, Copy, Debug)]
pub enum Serve {
    /// Whole and at once.
    Whole,
    /// The headers and the first `n` bytes of the body, then nothing, the connection held open.
    StallAfter(usize),
    /// `piece` bytes every `every`, to the end.
    Dribble { piece: usize, every: Duration },
}

/// A minimal registry on a loopback port for the paths that a real one cannot be made to take:
/// it serves one image from a store (manifest by any tag, blobs by digest) and takes monolithic
/// uploads, each blob served or read as its [`Serve`] says (whole unless named). It records
/// every request line. Stopped when dropped.
pub struct ScriptedRegistry {
    pub port: u16,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Script {
    store: Arc<BlobStore>,
    manifest: Descriptor,
    serve: Vec<(Digest, Serve)>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ScriptedRegistry {
    pub async fn start(
        store: Arc<BlobStore>,
        manifest: Descriptor,
        serve: Vec<(Digest, Serve)>,
    ) -> Self {
        // A small receive buffer, so that an upload read slowly is seen as slow by the sender
        // instead of vanishing into the kernel's buffers.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 << 10).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(Script {
            store,
            manifest,
            serve,
            requests: requests.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_scripted(sock, script.clone()));
            }
        });
        Self {
            port,
            requests,
            task,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many requests had this method and a path containing `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(part))
            .count()
    }
}

impl Drop for ScriptedRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_scripted(sock: tokio::net::TcpStream, script: Arc<Script>) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut reader = BufReader::new(sock);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let request_line = request_line.trim_end().to_owned();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        script.requests.lock().unwrap().push(request_line.clone());
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("/").to_owned();
        let serve_of = |digest: &str| {
            script
                .serve
                .iter()
                .find(|(d, _)| d.as_ref() == digest)
                .map_or(Serve::Whole, |(_, s)| *s)
        };
        let query_digest = path
            .split_once("digest=")
            .map(|(_, d)| d.split('&').next().unwrap_or("").replace("%3A", ":"));

        // An upload's body, read as its blob's Serve says; then 201.
        if method == "PUT" && path.contains("/blobs/uploads/") {
            let digest = query_digest.unwrap_or_default();
            let mut body = vec![0u8; content_length];
            match serve_of(&digest) {
                Serve::Whole => reader.read_exact(&mut body).await.map(drop)?,
                Serve::StallAfter(n) => {
                    reader
                        .read_exact(&mut body[..n.min(content_length)])
                        .await?;
                    std::future::pending::<()>().await;
                }
                Serve::Dribble { piece, every } => {
                    let mut at = 0;
                    while at < content_length {
                        let end = (at + piece).min(content_length);
                        reader.read_exact(&mut body[at..end]).await?;
                        at = end;
                        tokio::time::sleep(every).await;
                    }
                }
            }
            let status = if sha256_of(&body).as_ref() == digest {
                "201 Created"
            } else {
                "400 Bad Request"
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nlocation: /v2/hoist/blobs/{digest}\r\ndocker-content-digest: {digest}\r\ncontent-length: 0\r\n\r\n"
            );
            reader.get_mut().write_all(reply.as_bytes()).await?;
            continue;
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body).await?;
        let (head, bytes, serve) = if path == "/v2/" {
            ("200 OK", Vec::new(), Serve::Whole)
        } else if method == "POST" && path.contains("/blobs/uploads/") {
            let reply = "HTTP/1.1 202 Accepted\r\nlocation: /v2/hoist/blobs/uploads/session\r\ncontent-length: 0\r\n\r\n";
            reader.get_mut().write_all(reply.as_bytes()).await?;
            continue;
        } else if method == "PUT" && path.contains("/manifests/") {
            let digest = sha256_of(&body);
            let reply = format!(
                "HTTP/1.1 201 Created\r\ndocker-content-digest: {digest}\r\ncontent-length: 0\r\n\r\n"
            );
            reader.get_mut().write_all(reply.as_bytes()).await?;
            continue;
        } else if path.contains("/manifests/") {
            let bytes = read_blob(&script.store, script.manifest.digest());
            ("200 OK", bytes, serve_of(script.manifest.digest().as_ref()))
        } else if let Some((_, digest)) = path.split_once("/blobs/") {
            match digest.parse::<Digest>() {
                Ok(d) if script.store.has(&d) => {
                    if method == "HEAD" {
                        ("404 Not Found", Vec::new(), Serve::Whole)
                    } else {
                        ("200 OK", read_blob(&script.store, &d), serve_of(digest))
                    }
                }
                _ => ("404 Not Found", Vec::new(), Serve::Whole),
            }
        } else {
            ("404 Not Found", Vec::new(), Serve::Whole)
        };
        let content_type = if path.contains("/manifests/") {
            format!(
                "content-type: {}\r\ndocker-content-digest: {}\r\n",
                script.manifest.media_type(),
                script.manifest.digest()
            )
        } else {
            String::new()
        };
        let header = format!(
            "HTTP/1.1 {head}\r\n{content_type}content-length: {}\r\n\r\n",
            bytes.len()
        );
        let sock = reader.get_mut();
        sock.write_all(header.as_bytes()).await?;
        if method == "HEAD" {
            continue;
        }
        match serve {
            Serve::Whole => sock.write_all(&bytes).await?,
            Serve::StallAfter(n) => {
                sock.write_all(&bytes[..n.min(bytes.len())]).await?;
                sock.flush().await?;
                std::future::pending::<()>().await;
            }
            Serve::Dribble { piece, every } => {
                for chunk in bytes.chunks(piece.max(1)) {
                    sock.write_all(chunk).await?;
                    sock.flush().await?;
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
}
