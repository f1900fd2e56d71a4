//! `hoist serve` end to end, as an operator and its users run it: a real server process on a
//! unix socket and on TCP with TLS and a token, `hoist build --remote` against it with the main
//! job's images, secrets, cache mounts, client-only registry credentials and streamed outputs;
//! and the faults: clients and the server killed mid-work, SIGTERM's drain, the build queue,
//! and RUN steps that try to reach the API. Needs root (namespaces, overlay, cgroups).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{
    Project, Registry, Running, Server, files_under, holding, mounts_under, processes_running,
};

/// `hoist build --remote ADDR --progress=plain ARGS CONTEXT` from `p`, with `env` added.
fn remote_env(p: &Project, addr: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(p.root.path())
        .args(["--progress=plain", "--remote", addr])
        .args(args)
        .arg(p.dir.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn remote(p: &Project, addr: &str, args: &[&str]) -> Output {
    remote_env(p, addr, args, &[])
}

/// The build's stderr, after checking that it succeeded.
fn ok(out: &Output, server: &Server) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the remote build failed ({:?}):\n{stderr}\nthe server's log:\n{}",
        out.status.code(),
        server.log()
    );
    stderr
}

/// The build's stderr, after checking that it failed.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build succeeded:\n{stderr}");
    stderr
}

/// A socket path under a fresh directory (kept short: sun_path holds 108 bytes).
fn socket() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("hoist-serve-")
        .tempdir_in("/tmp")
        .unwrap();
    let addr = format!("unix://{}", dir.path().join("hoist.sock").display());
    (dir, addr)
}

fn unix_server(args: &[&str]) -> (tempfile::TempDir, Server) {
    let (dir, addr) = socket();
    let mut all = vec!["--addr", addr.as_str()];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    (dir, server)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Builds the main job's base image (FROM scratch + ADD rootfs.tar, examples/busybox) through
/// the server at `addr` and pushes it as `REGISTRY/hoist/busybox:1`.
fn push_busybox_base(registry: &Registry, server: &Server, addr: &str) -> String {
    let base = format!("{}/hoist/busybox:1", registry.addr);
    let dockerfile = fs_err::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/busybox/Dockerfile"),
    )
    .unwrap();
    let p = Project::new(&dockerfile);
    ok(&remote(&p, addr, &["-t", &base, "--push"]), server);
    base
}

/// A context with examples/hello's files.
fn hello_project() -> Project {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let p = Project::new(&fs_err::read_to_string(example.join("Dockerfile")).unwrap());
    for file in ["greeting.txt", "hello.sh", "motd.sh"] {
        fs_err::copy(example.join(file), p.path(file)).unwrap();
    }
    p
}

/// `hoist run --rm IMAGE` in a fresh state root: what it printed.
fn hoist_run(image: &str) -> String {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .env("HOIST_ROOT", root.path())
        .args(["run", "--rm", image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hoist run {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `containerimage.digest` of a `--metadata-file`.
fn metadata(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs_err::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn the_main_job_builds_through_a_unix_socket_and_the_pushed_app_runs() {
    let registry = Registry::start();
    let (_dir, server) = unix_server(&["--insecure-no-auth"]);
    let addr = server.addr("unix");
    let base = push_busybox_base(&registry, &server, &addr);

    let app = format!("{}/hoist/hello:1", registry.addr);
    let p = hello_project();
    let meta = p.root.path().join("metadata.json");
    let stderr = ok(
        &remote(
            &p,
            &addr,
            &[
                "-t",
                &app,
                "--push",
                "--build-arg",
                &format!("BASE={base}"),
                "--metadata-file",
                meta.to_str().unwrap(),
            ],
        ),
        &server,
    );
    // The same plain progress as a local build, from the server's events.
    assert!(
        stderr.contains("RUN sh motd.sh > motd") && stderr.contains("DONE"),
        "{stderr}"
    );
    let digest = metadata(&meta)["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let pinned = format!("{}/hoist/hello@{digest}", registry.addr);
    assert_eq!(
        hoist_run(&pinned),
        "hello from an image that hoist built\n\
         built by hoist on x86_64 as root\n\
         running as nobody in /srv\n"
    );
    // One log line per build, both successes.
    let builds = server.wait_logged("build", 2, Duration::from_secs(10));
    assert!(
        builds.iter().all(|b| b["result"] == "success"),
        "{builds:?}"
    );
}

/// A private CA and certificates signed by it, made with the `openssl` CLI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA: NAME.crt and NAME.key.
    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=hoist test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    /// NAME.crt and NAME.key signed by the CA `ca`, for `usage` (serverAuth or clientAuth).
    fn leaf(&self, name: &str, ca: &str, usage: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN=hoist test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        fs_err::write(
            self.path(&format!("{name}.ext")),
            format!(
                "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

const TOKEN: &str = "5d1c0b6a9e8f7d6c5b4a39281706f5e4d3c2b1a0";

/// A server on a free TCP port with mutual TLS and a token (and a unix socket too): the
/// server's PKI and token file, and the client flags that go with them.
struct TlsServer {
    pki: Pki,
    server: Server,
    _socket: tempfile::TempDir,
}

impl TlsServer {
    fn start(extra: &[&str]) -> Self {
        let pki = Pki::new();
        pki.leaf("server", "ca", "serverAuth");
        pki.leaf("client", "ca", "clientAuth");
        fs_err::write(pki.path("tokens"), format!("# the CI's token\n{TOKEN}\n")).unwrap();
        let (socket, unix) = socket();
        let (cert, key, ca, tokens) = (
            pki.arg("server.crt"),
            pki.arg("server.key"),
            pki.arg("ca.crt"),
            pki.arg("tokens"),
        );
        let mut args = vec![
            "--addr",
            "tcp://127.0.0.1:0",
            "--addr",
            &unix,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--token-file",
            &tokens,
        ];
        args.extend_from_slice(extra);
        let server = Server::start(&args);
        Self {
            pki,
            server,
            _socket: socket,
        }
    }

    /// The client's flags for TCP with the client certificate `client` (its .crt and .key).
    fn client_flags(&self, client: &str) -> Vec<String> {
        vec![
            "--remote-tls-ca".into(),
            self.pki.arg("ca.crt"),
            "--remote-tls-cert".into(),
            self.pki.arg(&format!("{client}.crt")),
            "--remote-tls-key".into(),
            self.pki.arg(&format!("{client}.key")),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn tcp_with_tls_and_a_token_builds_and_refuses_missing_wrong_and_foreign_credentials() {
    let tls = TlsServer::start(&[]);
    let addr = tls.server.addr("tcp");
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo built-over-tls > /proof\n");
    let flags = tls.client_flags("client");
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let mut args = strs(&flags);
    args.extend(["-o", &output]);
    let token_file = tls.pki.path("client-token");
    fs_err::write(&token_file, format!("{TOKEN}\n")).unwrap();

    // The right certificate and token, from HOIST_TOKEN and from --remote-token-file.
    ok(
        &remote_env(&p, &addr, &args, &[("HOIST_TOKEN", TOKEN)]),
        &tls.server,
    );
    assert_eq!(
        fs_err::read_to_string(dest.path().join("proof")).unwrap(),
        "built-over-tls\n"
    );
    let mut with_file = args.clone();
    with_file.extend(["--remote-token-file", token_file.to_str().unwrap()]);
    ok(&remote(&p, &addr, &with_file), &tls.server);
    tls.server.wait_logged("build", 2, Duration::from_secs(10));

    // No token: refused, and it says what is missing.
    let stderr = failed(&remote(&p, &addr, &args));
    assert!(
        stderr.contains(&addr) && stderr.contains("refused") && stderr.contains("token"),
        "no token:\n{stderr}"
    );
    // A wrong token.
    let stderr = failed(&remote_env(
        &p,
        &addr,
        &args,
        &[("HOIST_TOKEN", "0000000000000000000000000000000000000000")],
    ));
    assert!(
        stderr.contains(&addr) && stderr.contains("refused") && stderr.contains("token"),
        "wrong token:\n{stderr}"
    );
    // The right token, but a client certificate from another CA, or none: refused.
    tls.pki.ca("rogue-ca");
    tls.pki.leaf("rogue", "rogue-ca", "clientAuth");
    for flags in [
        tls.client_flags("rogue"),
        vec!["--remote-tls-ca".to_owned(), tls.pki.arg("ca.crt")],
    ] {
        let stderr = failed(&remote_env(
            &p,
            &addr,
            &strs(&flags),
            &[("HOIST_TOKEN", TOKEN)],
        ));
        assert!(stderr.contains(&addr), "{flags:?}:\n{stderr}");
    }
    // None of the refused clients got a build: the server logged the two good ones only.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tls.server.logged("build").len(), 2, "{}", tls.server.log());
}

/// A client whose certificate the server refuses is told so, whichever way the closed
/// connection reaches it (the TLS alert, a broken pipe, or a cancelled request): tried a few
/// times, since which one it gets is a race.
#[test]
fn a_refused_client_certificate_is_reported_as_such() {
    let tls = TlsServer::start(&[]);
    let addr = tls.server.addr("tcp");
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    tls.pki.ca("rogue-ca");
    tls.pki.leaf("rogue", "rogue-ca", "clientAuth");
    for (what, flags) in [
        ("a certificate from another CA", tls.client_flags("rogue")),
        (
            "no certificate",
            vec!["--remote-tls-ca".to_owned(), tls.pki.arg("ca.crt")],
        ),
    ] {
        for _ in 0..3 {
            let stderr = failed(&remote_env(
                &p,
                &addr,
                &strs(&flags),
                &[("HOIST_TOKEN", TOKEN)],
            ));
            assert!(
                stderr.contains(&addr) && stderr.contains("--remote-tls-cert"),
                "a client with {what} is not told that its certificate was refused:\n{stderr}"
            );
        }
    }
    assert!(
        tls.server.logged("build").is_empty(),
        "{}",
        tls.server.log()
    );
}

#[test]
fn a_secret_reaches_the_run_but_not_the_server_and_a_cache_mount_persists_across_builds() {
    let (_dir, server) = unix_server(&["--insecure-no-auth"]);
    let addr = server.addr("unix");
    let secret = format!("remote-s3cret-{}-{:?}", std::process::id(), Instant::now());
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("tok");
    fs_err::write(&secret_file, &secret).unwrap();
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /secret-hash\n\
         ARG N\n\
         RUN --mount=type=cache,target=/c,id=runs echo \"build $N\" >> /c/log && cp /c/log /seen\n",
    );
    let secret_flag = format!("id=tok,src={}", secret_file.display());
    let build = |n: &str| {
        let dest = tempfile::tempdir().unwrap();
        let output = format!("type=local,dest={}", dest.path().display());
        ok(
            &remote(
                &p,
                &addr,
                &[
                    "--secret",
                    &secret_flag,
                    "--build-arg",
                    &format!("N={n}"),
                    "-o",
                    &output,
                ],
            ),
            &server,
        );
        dest
    };
    let first = build("1");
    assert_eq!(
        fs_err::read_to_string(first.path().join("secret-hash"))
            .unwrap()
            .trim(),
        sha256_hex(secret.as_bytes()),
        "the RUN did not see the client's secret"
    );
    assert_eq!(
        fs_err::read_to_string(first.path().join("seen")).unwrap(),
        "build 1\n"
    );
    // The second build's RUN finds what the first left in the cache mount.
    let second = build("2");
    assert_eq!(
        fs_err::read_to_string(second.path().join("seen")).unwrap(),
        "build 1\nbuild 2\n"
    );
    // The secret was asked for over the build's stream and kept nowhere on the server.
    let leaks = holding(&server.root, secret.as_bytes());
    assert!(leaks.is_empty(), "the secret is in {leaks:?}");
}

#[test]
fn a_push_uses_registry_credentials_that_only_the_client_has() {
    let (registry, _auth) = support::htpasswd_registry("ci", "pa55word");
    // The server has no credentials at all; the client has the registry's in its config.
    let empty = tempfile::tempdir().unwrap();
    let client_config = support::docker_config(&registry, "ci", "pa55word");
    let empty_env = [("DOCKER_CONFIG", empty.path().to_str().unwrap())];
    let (_socket, unix) = socket();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        root.path(),
        &["--addr", &unix, "--insecure-no-auth"],
        &empty_env,
    );
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo pushed > /proof\n");
    let image = format!("{}/private/app:1", registry.addr);

    ok(
        &remote_env(
            &p,
            &unix,
            &["-t", &image, "--push"],
            &[("DOCKER_CONFIG", client_config.path().to_str().unwrap())],
        ),
        &server,
    );
    assert!(
        registry
            .data_dir()
            .join("docker/registry/v2/repositories/private/app/_manifests/tags/1")
            .exists(),
        "the registry has no tag private/app:1"
    );

    // A client without the credentials cannot push the same, and is told which registry.
    let other = format!("{}/private/app:2", registry.addr);
    let stderr = failed(&remote_env(
        &p,
        &unix,
        &["-t", &other, "--push"],
        &empty_env,
    ));
    assert!(
        stderr.contains(&registry.addr),
        "the failed push does not name the registry:\n{stderr}"
    );
    assert!(
        !registry
            .data_dir()
            .join("docker/registry/v2/repositories/private/app/_manifests/tags/2")
            .exists(),
        "a client without credentials pushed"
    );
}

#[test]
fn local_and_oci_outputs_and_the_id_files_come_back_to_the_client() {
    let registry = Registry::start();
    let (_dir, server) = unix_server(&["--insecure-no-auth"]);
    let addr = server.addr("unix");
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN mkdir -p /out/sub && echo streamed > /out/sub/file\n",
    );
    let dest = tempfile::tempdir().unwrap();
    let local = dest.path().join("rootfs");
    let oci = dest.path().join("image.tar");
    let iid = dest.path().join("iid");
    let meta = dest.path().join("metadata.json");
    let image = format!("{}/out/app:1", registry.addr);
    ok(
        &remote(
            &p,
            &addr,
            &[
                "-o",
                &format!("type=local,dest={}", local.display()),
                "-o",
                &format!("type=oci,dest={}", oci.display()),
                "-t",
                &image,
                "--push",
                "--iidfile",
                iid.to_str().unwrap(),
                "--metadata-file",
                meta.to_str().unwrap(),
            ],
        ),
        &server,
    );
    assert_eq!(
        fs_err::read_to_string(local.join("out/sub/file")).unwrap(),
        "streamed\n"
    );
    assert!(local.join("bin/busybox").is_file());

    // skopeo reads the streamed OCI archive; its config is the one --iidfile names.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--config"])
        .arg(format!("oci-archive:{}", oci.display()))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo cannot read {}: {}",
        oci.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let config_digest = format!("sha256:{}", sha256_hex(&out.stdout));
    let iid = fs_err::read_to_string(&iid).unwrap();
    assert_eq!(iid.trim(), config_digest, "--iidfile");
    // The metadata file names what was pushed: the registry serves that manifest digest.
    let meta = metadata(&meta);
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        meta["containerimage.digest"].as_str(),
        Some(String::from_utf8_lossy(&out.stdout).trim()),
        "--metadata-file: {meta}"
    );
    assert_eq!(
        meta["containerimage.config.digest"].as_str(),
        Some(config_digest.as_str()),
        "--metadata-file: {meta}"
    );
}

/// Waits (up to `timeout`) until `done` holds; panics with `what` otherwise.
fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {timeout:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A metric once it stopped moving (the server adds upload bytes to it every second).
fn settled_metric(server: &Server, name: &str) -> f64 {
    let mut last = server.metric(name);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = server.metric(name);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Bytes of the files under `dir`, and how many there are.
fn usage(dir: &Path) -> (u64, usize) {
    let files = files_under(dir);
    let bytes = files
        .iter()
        .filter_map(|f| fs_err::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    (bytes, files.len())
}

const MIB: u64 = 1 << 20;

#[test]
fn a_client_killed_mid_upload_the_next_upload_sends_only_what_the_server_lacks() {
    let (_dir, server) = unix_server(&["--insecure-no-auth", "--metrics-addr", "127.0.0.1:0"]);
    let addr = server.addr("unix");
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN --mount=type=bind,source=big,target=/big ls /big | wc -l > /count\n",
    );
    // 200 MiB of random bytes in 50 files.
    fs_err::create_dir(p.path("big")).unwrap();
    let mut random = fs_err::File::open("/dev/urandom").unwrap();
    for i in 0..50 {
        let mut file = fs_err::File::create(p.path(&format!("big/{i:02}.bin"))).unwrap();
        std::io::copy(&mut std::io::Read::take(&mut random, 4 * MIB), &mut file).unwrap();
    }
    let (context_bytes, _) = usage(p.dir.path());

    let blobs = server.root.join("serve/cas/blobs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["build", "--progress=plain", "--remote", &addr, "--root"])
        .arg(p.root.path())
        .arg(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while usage(&blobs).0 < 40 * MIB {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the client ended ({status}) before it had uploaded 40 MiB");
        }
        assert!(Instant::now() < deadline, "the upload never reached 40 MiB");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let sent_before = settled_metric(&server, "hoist_bytes_uploaded_total");
    let (kept, _) = usage(&blobs);
    assert!(
        kept < context_bytes - 40 * MIB,
        "the upload was nearly done ({kept} of {context_bytes} bytes) when the client was killed"
    );

    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    ok(&remote(&p, &addr, &["-o", &output]), &server);
    assert_eq!(
        fs_err::read_to_string(dest.path().join("count")).unwrap(),
        "50\n"
    );
    let sent_after = settled_metric(&server, "hoist_bytes_uploaded_total");
    // The next upload sent the rest (plus the tree's messages), not the whole context again.
    let resent = sent_after - sent_before;
    assert!(
        resent <= (context_bytes - kept + MIB) as f64,
        "the second upload sent {resent} bytes; the server already had {kept} of the context's {context_bytes}"
    );
    assert!(
        sent_after <= (context_bytes + MIB) as f64,
        "{sent_after} bytes were uploaded in all for a context of {context_bytes}"
    );
}

#[test]
fn a_client_killed_mid_build_cancels_it_and_leaves_no_sandbox_or_mount() {
    let (_dir, server) = unix_server(&["--insecure-no-auth"]);
    let addr = server.addr("unix");
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo started && sleep 3597\n");
    let (mut running, _lines) = p.start_until("started", &["--remote", &addr]);
    eventually(
        "the RUN's process is not visible from here",
        Duration::from_secs(10),
        || !processes_running(&["sleep", "3597"]).is_empty(),
    );
    running.0.kill().unwrap();
    running.0.wait().unwrap();

    let builds = server.wait_logged("build", 1, Duration::from_secs(30));
    assert_eq!(builds[0]["result"], "canceled", "{}", server.log());
    eventually(
        "the RUN of a build whose client was killed still runs",
        Duration::from_secs(30),
        || processes_running(&["sleep", "3597"]).is_empty(),
    );
    eventually(
        "mounts are left under the server's root",
        Duration::from_secs(30),
        || mounts_under(&server.root).is_empty(),
    );
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nRUN echo next\n",
    );
    ok(&remote(&p, &addr, &[]), &server);
}

#[test]
fn a_server_killed_mid_build_restarts_on_its_root_and_leaves_no_mount_or_cgroup() {
    let root = tempfile::tempdir().unwrap();
    let (_socket, unix) = socket();
    let mut server = Server::start_in(root.path(), &["--addr", &unix, "--insecure-no-auth"], &[]);
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo started && sleep 3596\n");
    let (mut client, _lines) = p.start_until("started", &["--remote", &unix]);
    let killed = server.pid;
    assert!(
        !support::cgroups_of_process(killed).is_empty(),
        "the RUN's cgroup is not where the test looks"
    );
    server.kill_9();

    // The client is told the server went away, rather than waiting forever.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = client.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the client still waits for a dead server"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    eventually(
        "the RUN outlived its killed server",
        Duration::from_secs(10),
        || processes_running(&["sleep", "3596"]).is_empty(),
    );

    let server = Server::start_in(root.path(), &["--addr", &unix, "--insecure-no-auth"], &[]);
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nRUN echo after-restart > /proof\n",
    );
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    ok(&remote(&p, &unix, &["-o", &output]), &server);
    assert_eq!(
        fs_err::read_to_string(dest.path().join("proof")).unwrap(),
        "after-restart\n"
    );
    assert!(
        support::cgroups_of_process(killed).is_empty(),
        "cgroups of the killed server: {:?}",
        support::cgroups_of_process(killed)
    );
    assert!(
        mounts_under(root.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(root.path())
    );
}

/// An HTTP/2 frame.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK string, short and without Huffman coding.
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes of a gRPC call `Control/Solve` with an empty SolveRequest and no credentials, as
/// a program in a RUN step could send them with `nc`: a server that let it through starts a
/// build (which fails for want of a context, and is logged).
fn raw_solve_request(authority: &str) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
    // :method POST and :scheme http from the static table; the rest as literals.
    let mut headers = vec![0x83, 0x86];
    headers.push(0x04); // :path
    hpack_str(&mut headers, "/hoist.v1.Control/Solve");
    headers.push(0x01); // :authority
    hpack_str(&mut headers, authority);
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        headers.push(0x00);
        hpack_str(&mut headers, name);
        hpack_str(&mut headers, value);
    }
    frame(&mut out, 0x1, 0x4, 1, &headers); // HEADERS, END_HEADERS
    // One message, uncompressed: ClientMessage { solve: SolveRequest {} }.
    frame(&mut out, 0x0, 0x1, 1, &[0, 0, 0, 0, 2, 0x0a, 0x00]); // DATA, END_STREAM
    out
}

#[test]
fn a_run_step_cannot_reach_the_api_over_the_network_or_the_socket() {
    let (socket_dir, unix) = socket();
    let tokens = socket_dir.path().join("tokens");
    fs_err::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let server = Server::start(&[
        "--addr",
        "tcp://127.0.0.1:0",
        "--addr",
        &unix,
        "--token-file",
        tokens.to_str().unwrap(),
        "--allow-insecure-entitlement",
        "network.host",
    ]);
    let port = server.addr("tcp").rsplit(':').next().unwrap().to_owned();
    // The same request sent to a server without auth starts a build: the request is real.
    let open = Server::start(&["--addr", "tcp://127.0.0.1:0", "--insecure-no-auth"]);
    let open_port = open.addr("tcp").rsplit(':').next().unwrap().to_owned();
    let sock = unix.trim_start_matches("unix://");

    let p = Project::new(&format!(
        "FROM scratch\nADD rootfs.tar /\nCOPY req /req\n\
         RUN --network=host (cat /req; sleep 2) | timeout 10 nc 127.0.0.1 {port} > /answer; \
             (cat /req; sleep 2) | timeout 10 nc 127.0.0.1 {open_port} > /open-answer; \
             test -s /answer && test -s /open-answer\n\
         RUN test ! -e {sock} && test ! -e {dir} && echo no-socket > /socket-check\n",
        dir = socket_dir.path().display()
    ));
    fs_err::write(p.path("req"), raw_solve_request("127.0.0.1")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    ok(
        &remote_env(
            &p,
            &server.addr("tcp"),
            &["--allow", "network.host", "-o", &output],
            &[("HOIST_TOKEN", TOKEN)],
        ),
        &server,
    );
    assert_eq!(
        fs_err::read_to_string(dest.path().join("socket-check")).unwrap(),
        "no-socket\n"
    );
    // The open server took the RUN's request as a build; the guarded one did not.
    let taken = open.wait_logged("build", 1, Duration::from_secs(10));
    assert_eq!(taken.len(), 1, "{}", open.log());
    let builds = server.wait_logged("build", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let builds_now = server.logged("build");
    assert_eq!(
        builds_now.len(),
        1,
        "a RUN step started a build on the server that runs it:\n{}",
        server.log()
    );
    assert_eq!(builds[0]["result"], "success");
}

/// Waits (up to two minutes) for a client started with `start_until` to end; its status and
/// the rest of its progress.
fn finish(
    mut client: Running,
    lines: &std::sync::mpsc::Receiver<String>,
) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = client.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the client never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = lines.try_iter().collect();
    (status, rest.join("\n"))
}

#[test]
fn sigterm_lets_the_running_build_finish_refuses_new_ones_and_then_exits() {
    let (_dir, mut server) = unix_server(&["--insecure-no-auth", "--grace", "120"]);
    let addr = server.addr("unix");
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN echo started && sleep 5 && echo finished > /done\n",
    );
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let (running, lines) = p.start_until("started", &["--remote", &addr, "-o", &output]);
    server.signal(rustix::process::Signal::TERM);
    server.wait_logged(
        "draining: no new builds; running ones may finish",
        1,
        Duration::from_secs(10),
    );

    let late = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo late\n");
    let stderr = failed(&remote(&late, &addr, &[]));
    assert!(
        stderr.contains("shutting down"),
        "a build refused during the drain does not say why:\n{stderr}"
    );

    let (status, rest) = finish(running, &lines);
    assert!(
        status.success(),
        "the running build failed in the drain:\n{rest}"
    );
    assert_eq!(
        fs_err::read_to_string(dest.path().join("done")).unwrap(),
        "finished\n"
    );
    let exit = server.wait_exit(Duration::from_secs(60));
    assert!(
        exit.success(),
        "the server exited with {exit}:\n{}",
        server.log()
    );
    let builds = server.logged("build");
    assert_eq!(builds.len(), 1, "{}", server.log());
    assert_eq!(builds[0]["result"], "success");
}

#[test]
fn builds_past_max_builds_wait_in_the_queue_and_all_succeed() {
    let (_dir, server) = unix_server(&["--insecure-no-auth", "--max-builds", "1"]);
    let addr = server.addr("unix");
    let first = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo started && sleep 6\n");
    let (running, lines) = first.start_until("started", &["--remote", &addr]);
    let second = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo second > /second\n");
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let stderr = ok(&remote(&second, &addr, &["-o", &output]), &server);
    assert!(
        stderr.contains("waiting for a build slot") && stderr.contains("place 1 in the queue"),
        "the queued build did not say it waited:\n{stderr}"
    );
    assert_eq!(
        fs_err::read_to_string(dest.path().join("second")).unwrap(),
        "second\n"
    );
    let (status, rest) = finish(running, &lines);
    assert!(status.success(), "the first build failed:\n{rest}");
    let builds = server.wait_logged("build", 2, Duration::from_secs(10));
    assert!(
        builds.iter().all(|b| b["result"] == "success"),
        "{builds:?}"
    );
}

/// `hoist CMD --remote ADDR ARGS` (not a build), with its output.
fn remote_cmd(cmd: &str, addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg(cmd)
        .args(["--remote", addr])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn info_logs_du_prune_builds_attach_and_cancel_work_against_the_server() {
    let (_dir, server) = unix_server(&["--insecure-no-auth", "--max-builds", "3"]);
    let addr = server.addr("unix");
    let info = stdout_of(&remote_cmd("info", &addr, &[]));
    assert!(
        info.contains(&format!("server:          {addr}")) && info.contains("at most 3 at once"),
        "{info}"
    );

    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo logged-on-the-server\n");
    ok(&remote(&p, &addr, &[]), &server);
    let build = server.logged("build")[0]["build"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = stdout_of(&remote_cmd("logs", &addr, &[&build]));
    assert!(
        log.starts_with(&format!("#0 build {build}\n")) && log.contains("logged-on-the-server\n"),
        "{log}"
    );
    let step = stdout_of(&remote_cmd("logs", &addr, &[&build, "4"]));
    assert_eq!(step, "logged-on-the-server\n");
    let missing = remote_cmd("logs", &addr, &["000000000000"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no build 000000000000"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let du = stdout_of(&remote_cmd("du", &addr, &[]));
    assert!(du.contains("context") && du.contains("tree "), "{du}");
    let pruned = stdout_of(&remote_cmd("prune", &addr, &["--all"]));
    assert!(pruned.contains("removed context"), "{pruned}");
    let du = stdout_of(&remote_cmd("du", &addr, &[]));
    assert!(!du.contains("tree "), "a pruned tree is still there:\n{du}");

    // A running build is listed, can be followed from its start, and cancelled.
    let slow = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN echo started && sleep 60 && echo never\n",
    );
    let mut client = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(slow.root.path())
        .args(["--progress=plain", "--remote", &addr])
        .arg(slow.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let list = stdout_of(&remote_cmd("builds", &addr, &[]));
        if let Some(id) = list
            .lines()
            .find(|l| l.contains(" running "))
            .and_then(|l| l.split_whitespace().next())
            .filter(|id| *id != "-")
        {
            break id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no running build listed:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut attached = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["attach", "--progress", "plain", "--remote", &addr, &running])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The attached view replays the build from its start.
    let mut seen = String::new();
    let mut reader = std::io::BufReader::new(attached.stderr.take().unwrap());
    while !seen.contains("started") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        assert!(
            n > 0,
            "the attached view ended before the RUN's output:\n{seen}"
        );
        seen.push_str(&line);
    }
    let cancelled = remote_cmd("cancel", &addr, &[&running]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let status = client.wait().unwrap();
    assert!(!status.success(), "a cancelled build succeeded");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(attached.wait().unwrap().success());
    assert!(rest.contains("CANCELED"), "{seen}{rest}");
    let lines = server.wait_logged("build", 2, Duration::from_secs(30));
    assert_eq!(lines[1]["result"], "canceled", "{lines:?}");
    let again = remote_cmd("cancel", &addr, &[&running]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no running build"),
        "{again:?}"
    );
}

#[test]
fn a_step_two_clients_need_at_once_runs_once_for_both() {
    let (_dir, server) = unix_server(&["--insecure-no-auth"]);
    let addr = server.addr("unix");
    // The step's output differs on every run: two results that are equal come from one run.
    let dockerfile = "FROM scratch\nADD rootfs.tar /\n\
                      RUN sleep 3 && cat /proc/sys/kernel/random/uuid > /ran\n";
    let a = Project::new(dockerfile);
    let b = Project::new(dockerfile);
    let outs: Vec<_> = [&a, &b]
        .into_iter()
        .map(|p| {
            let dest = tempfile::tempdir().unwrap();
            let output = format!("type=local,dest={}", dest.path().display());
            let client = Command::new(env!("CARGO_BIN_EXE_hoist"))
                .arg("build")
                .arg("--root")
                .arg(p.root.path())
                .args(["--progress=plain", "--remote", &addr, "-o", &output])
                .arg(p.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (client, dest)
        })
        .collect();
    let mut ran = Vec::new();
    for (client, dest) in outs {
        let out = client.wait_with_output().unwrap();
        ok(&out, &server);
        ran.push(fs_err::read_to_string(dest.path().join("ran")).unwrap());
    }
    assert_eq!(ran[0], ran[1], "the shared step ran once per client");
    assert_eq!(server.logged("build").len(), 2);
}
