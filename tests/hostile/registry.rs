//! Registries that accept connections and never answer, or answer too slowly.
//!
//! Each command runs under a watchdog: it must end with an error that names the registry and
//! what it waited for, within two minutes, or the test kills it (by PID) and fails. The stall
//! timeout is set to one second through `HOIST_REGISTRY_TIMEOUT`, which hoist versions without
//! one ignore, so there the commands hang as users saw them hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Project, Registry};

const WATCHDOG: Duration = Duration::from_secs(120);

/// Runs `hoist ARGS` with a one-second registry timeout; kills it and fails the test if it
/// has not ended within the watchdog.
fn hoist_within_watchdog(what: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .env("HOIST_REGISTRY_TIMEOUT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // Child::kill signals this child's own PID.
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!(
                "{what} still ran after {}s against a registry that does not answer; killed it. stderr:\n{stderr}",
                WATCHDOG.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A "registry" that accepts connections and never writes a byte; stopped when dropped.
struct Silent {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    held.push(conn);
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A proxy in front of a real registry that forwards every reply whole, except a body longer
/// than `limit`: of that it forwards the headers and `limit` bytes, then holds the connection
/// open and silent. One request per connection (it asks both sides to close).
struct StallingProxy {
    addr: String,
    stalled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StallingProxy {
    fn start(upstream: &str, limit: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped, upstream) =
            (Arc::clone(&stalled), Arc::clone(&stop), upstream.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (count, stopped, upstream) =
                    (Arc::clone(&count), Arc::clone(&stopped), upstream.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, &upstream, limit, &count, &stopped);
                });
            }
        });
        Self {
            addr,
            stalled,
            stop,
        }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Reads an HTTP head (request or status line plus headers), without the blank line.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn with_close(head: &[String]) -> String {
    let mut text = String::new();
    for line in head {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            text.push_str(line);
            text.push_str("\r\n");
        }
    }
    text.push_str("connection: close\r\n\r\n");
    text
}

fn proxy_one(
    client: TcpStream,
    upstream: &str,
    limit: usize,
    stalled: &AtomicUsize,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let request = read_head(&mut from_client)?;
    // Pulls send no request bodies; nothing more to forward.
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(with_close(&request).as_bytes())?;
    let mut from_up = BufReader::new(up);
    let reply = read_head(&mut from_up)?;
    let length: usize = reply
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    to_client.write_all(with_close(&reply).as_bytes())?;
    if length <= limit || request[0].starts_with("HEAD ") {
        std::io::copy(&mut from_up, &mut to_client)?;
        return Ok(());
    }
    let mut body = vec![0u8; limit];
    from_up.read_exact(&mut body)?;
    to_client.write_all(&body)?;
    to_client.flush()?;
    stalled.fetch_add(1, Ordering::SeqCst);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn root_arg(root: &Path) -> String {
    root.display().to_string()
}

#[test]
fn hoist_pull_from_a_registry_that_never_answers_no_longer_hangs() {
    let silent = Silent::start();
    let root = tempfile::tempdir().unwrap();
    let image = format!("{}/hoist/silent:v1", silent.addr);
    let out = hoist_within_watchdog(
        "hoist pull",
        &["pull", "--root", &root_arg(root.path()), &image],
    );
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("waiting for the manifest of {image}")),
        "the progress does not say what is pending:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "registry {} did not answer within 1s while waiting for the manifest of {image} (3 attempts); check that the registry is up, or raise --registry-timeout",
            silent.addr
        )),
        "{stderr}"
    );
}

#[test]
fn hoist_push_to_a_registry_that_never_answers_no_longer_hangs() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let built = p.hoist(&["-t", "hoist-test/base:v1"]);
    assert!(built.status.success(), "{}", stderr_of(&built));
    let silent = Silent::start();
    let target = format!("{}/hoist/silent:v1", silent.addr);
    let out = hoist_within_watchdog(
        "hoist push",
        &[
            "push",
            "--root",
            &root_arg(p.root.path()),
            "hoist-test/base:v1",
            &target,
        ],
    );
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "registry {} did not answer within 1s while waiting for the push of blob sha256:",
            silent.addr
        )) && stderr.contains(&format!(
            " to {target} (3 attempts); check that the registry is up, or raise --registry-timeout"
        )),
        "{stderr}"
    );
}

#[test]
fn a_build_from_a_registry_that_never_answers_no_longer_hangs() {
    let silent = Silent::start();
    let base = format!("{}/hoist/base:v1", silent.addr);
    let p = Project::new(&format!("FROM {base}\nCOPY Dockerfile /\n"));
    let out = hoist_within_watchdog(
        "hoist build",
        &[
            "build",
            "--root",
            &root_arg(p.root.path()),
            "--progress=plain",
            &p.dir.path().display().to_string(),
        ],
    );
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The step that waits says so while it waits, as BuildKit names it.
    assert!(
        stderr.contains(&format!("[internal] load metadata for {base}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("waiting for the manifest of {base}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "registry {} did not answer within 1s while waiting for the manifest of {base} (3 attempts)",
            silent.addr
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("Dockerfile:1"),
        "the error does not point at the FROM line:\n{stderr}"
    );
}

#[test]
fn a_build_whose_base_layer_stops_midway_no_longer_hangs() {
    let registry = Registry::start();
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let pushed = format!("{}/hoist/base:v1", registry.addr);
    let built = p.hoist(&["-t", &pushed, "--push"]);
    assert!(built.status.success(), "{}", stderr_of(&built));
    // Manifests and the config pass; the layer (over 100 kB) stops after 64 KiB.
    let proxy = StallingProxy::start(&registry.addr, 64 << 10);
    let base = format!("{}/hoist/base:v1", proxy.addr);
    p.write("Dockerfile", &format!("FROM {base}\nCOPY Dockerfile /\n"));
    let fresh_root = tempfile::tempdir().unwrap();
    let out = hoist_within_watchdog(
        "hoist build",
        &[
            "build",
            "--root",
            &root_arg(fresh_root.path()),
            "--progress=plain",
            &p.dir.path().display().to_string(),
        ],
    );
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(proxy.stalled.load(Ordering::SeqCst), 3, "{stderr}");
    // The progress shows which blob is pending: the one pulled but never done.
    let short = |line: &str, word: &str| {
        line.split_once(&format!(" {word} sha256:"))
            .map(|(_, rest)| rest.chars().take(12).collect::<String>())
    };
    let done: Vec<String> = stderr.lines().filter_map(|l| short(l, "pulled")).collect();
    let pending: Vec<String> = stderr
        .lines()
        .filter_map(|l| short(l, "pulling"))
        .filter(|d| !done.contains(d))
        .collect();
    assert_eq!(pending.len(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "registry {} sent nothing for 1s after",
            proxy.addr
        )) && stderr.contains(&format!("while waiting for blob sha256:{}", pending[0]))
            && stderr.contains(
                "(3 attempts); check that the registry is up, or raise --registry-timeout"
            ),
        "the error does not name the pending blob {}:\n{stderr}",
        pending[0]
    );
}
