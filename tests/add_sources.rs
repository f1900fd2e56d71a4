//! ADD from URLs and from git, as a Docker user checks it: the files land where BuildKit puts
//! them, with its modes and mtimes, a rebuild reuses what did not change, and bad input fails
//! at its Dockerfile line with nothing kept. URLs come from an HTTP server on a loopback port
//! run by the test itself (so it can send ETag and Last-Modified and count what it served);
//! repositories from `git daemon` on a free loopback port. Needs root, busybox-static and git.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{Project, free_port};

/// One file the server serves.
#[derive(Clone)]
struct Served {
    body: Vec<u8>,
    etag: String,
    /// As sent in `Last-Modified`.
    last_modified: String,
}

#[derive(Default)]
struct Counts {
    /// Requests per path.
    requests: HashMap<String, usize>,
    /// Full bodies sent per path (200s).
    bodies: HashMap<String, usize>,
    /// 304s per path.
    not_modified: HashMap<String, usize>,
}

/// A tiny HTTP/1.1 server on a loopback port: GET of the files it was given, with ETag and
/// Last-Modified, 304 for a matching If-None-Match, 404 for anything else.
struct Server {
    port: u16,
    files: Arc<Mutex<HashMap<String, Served>>>,
    counts: Arc<Mutex<Counts>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Served>>> = Arc::default();
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let (f, c) = (Arc::clone(&files), Arc::clone(&counts));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (f, c) = (Arc::clone(&f), Arc::clone(&c));
                std::thread::spawn(move || serve(stream, &f, &c));
            }
        });
        Self {
            port,
            files,
            counts,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn put(&self, path: &str, body: &[u8], etag: &str, modified: SystemTime) {
        self.files.lock().unwrap().insert(
            path.to_owned(),
            Served {
                body: body.to_vec(),
                etag: format!("\"{etag}\""),
                last_modified: httpdate(modified),
            },
        );
    }

    fn requests(&self, path: &str) -> usize {
        *self.counts.lock().unwrap().requests.get(path).unwrap_or(&0)
    }

    fn bodies(&self, path: &str) -> usize {
        *self.counts.lock().unwrap().bodies.get(path).unwrap_or(&0)
    }

    fn not_modified(&self, path: &str) -> usize {
        *self
            .counts
            .lock()
            .unwrap()
            .not_modified
            .get(path)
            .unwrap_or(&0)
    }
}

fn serve(stream: TcpStream, files: &Mutex<HashMap<String, Served>>, counts: &Mutex<Counts>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let served = files.lock().unwrap().get(&path).cloned();
        let mut counts = counts.lock().unwrap();
        *counts.requests.entry(path.clone()).or_default() += 1;
        let reply = match served {
            None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
            Some(s) if headers.get("if-none-match") == Some(&s.etag) => {
                *counts.not_modified.entry(path).or_default() += 1;
                format!(
                    "HTTP/1.1 304 Not Modified\r\netag: {}\r\nlast-modified: {}\r\n\r\n",
                    s.etag, s.last_modified
                )
                .into_bytes()
            }
            Some(s) => {
                *counts.bodies.entry(path).or_default() += 1;
                let mut reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: {}\r\nlast-modified: {}\r\n\
                     content-type: application/octet-stream\r\n\r\n",
                    s.body.len(),
                    s.etag,
                    s.last_modified
                )
                .into_bytes();
                reply.extend_from_slice(&s.body);
                reply
            }
        };
        drop(counts);
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}

/// RFC 7231's IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn httpdate(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{secs}"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A failed build: its stderr, and whether it wrote its output.
fn build_fails(p: &Project) -> (String, bool) {
    let dest = tempfile::tempdir().unwrap();
    let out_dir = dest.path().join("out");
    let output = format!("type=local,dest={}", out_dir.display());
    let out = p.hoist(&["-o", &output]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build should fail:\n{stderr}");
    (stderr, out_dir.exists())
}

fn read(dir: &Path, rel: &str) -> String {
    fs_err::read_to_string(dir.join(rel)).unwrap()
}

fn mode(dir: &Path, rel: &str) -> u32 {
    fs_err::symlink_metadata(dir.join(rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn dockerfile(lines: &str) -> String {
    format!("FROM scratch\nADD rootfs.tar /\n{lines}")
}

#[test]
fn add_url_keeps_mode_600_and_last_modified_applies_chmod_chown_and_never_extracts() {
    let server = Server::start();
    server.put(
        "/files/hello.txt",
        b"hello over http\n",
        "v1",
        at(1_600_000_000),
    );
    // A real gzip'd tar: Docker copies archives from URLs as they are.
    let tarball = {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("inner.txt"), "inside").unwrap();
        let out = Command::new("tar")
            .args(["-czf", "-", "-C"])
            .arg(dir.path())
            .arg("inner.txt")
            .output()
            .unwrap();
        out.stdout
    };
    server.put("/pkg/app.tar.gz", &tarball, "t1", at(1_500_000_000));
    let p = Project::new(&dockerfile(&format!(
        "ADD {hello} /dl/\n\
         ADD --chmod=640 --chown=1000:2000 {hello} /dl/renamed.txt\n\
         ADD {tar} /pkg/\n",
        hello = server.url("/files/hello.txt"),
        tar = server.url("/pkg/app.tar.gz"),
    )));
    let (_, out) = p.build_to_dir(&[]);
    let dir = out.path();
    assert_eq!(read(dir, "dl/hello.txt"), "hello over http\n");
    assert_eq!(
        mode(dir, "dl/hello.txt"),
        0o600,
        "BuildKit's mode for a download"
    );
    let meta = fs_err::metadata(dir.join("dl/hello.txt")).unwrap();
    assert_eq!(meta.mtime(), 1_600_000_000, "mtime from Last-Modified");
    assert_eq!(read(dir, "dl/renamed.txt"), "hello over http\n");
    assert_eq!(mode(dir, "dl/renamed.txt"), 0o640, "--chmod applies");
    let renamed = fs_err::metadata(dir.join("dl/renamed.txt")).unwrap();
    assert_eq!(
        (renamed.uid(), renamed.gid()),
        (1000, 2000),
        "--chown applies"
    );
    assert_eq!(
        fs_err::read(dir.join("pkg/app.tar.gz")).unwrap(),
        tarball,
        "an archive from a URL is copied, not extracted"
    );
    assert!(!dir.join("pkg/inner.txt").exists());
}

#[test]
fn add_url_rebuild_asks_with_the_etag_and_downloads_only_what_changed() {
    let server = Server::start();
    server.put("/data.txt", b"first\n", "e1", at(1_600_000_000));
    let p = Project::new(&dockerfile(&format!(
        "ADD {} /data.txt\n",
        server.url("/data.txt")
    )));
    let (_, out) = p.build_to_dir(&[]);
    assert_eq!(read(out.path(), "data.txt"), "first\n");
    assert_eq!(server.bodies("/data.txt"), 1);

    // Unchanged on the server: a conditional GET answered 304, and the step is cached.
    let (stderr, out) = p.build_to_dir(&[]);
    assert_eq!(server.bodies("/data.txt"), 1, "no second download");
    assert_eq!(
        server.not_modified("/data.txt"),
        1,
        "asked with If-None-Match"
    );
    assert!(
        stderr.contains("(0 steps ran"),
        "an unchanged URL rebuilds from cache:\n{stderr}"
    );
    assert_eq!(read(out.path(), "data.txt"), "first\n");

    // Changed: downloaded again and the new content is in the image.
    server.put("/data.txt", b"second\n", "e2", at(1_700_000_000));
    let (_, out) = p.build_to_dir(&[]);
    assert_eq!(server.bodies("/data.txt"), 2);
    assert_eq!(read(out.path(), "data.txt"), "second\n");
    let meta = fs_err::metadata(out.path().join("data.txt")).unwrap();
    assert_eq!(meta.mtime(), 1_700_000_000);
}

#[test]
fn add_url_with_a_checksum_is_verified_and_a_cached_rebuild_asks_nothing() {
    let server = Server::start();
    let body = b"pinned content\n";
    server.put("/pinned.bin", body, "p1", at(1_600_000_000));
    let sum = sha256_hex(body);
    let p = Project::new(&dockerfile(&format!(
        "ADD --checksum=sha256:{sum} {} /opt/\n",
        server.url("/pinned.bin")
    )));
    let (_, out) = p.build_to_dir(&[]);
    assert_eq!(
        fs_err::read(out.path().join("opt/pinned.bin")).unwrap(),
        body
    );
    assert_eq!(server.requests("/pinned.bin"), 1);
    let (stderr, _) = p.build_to_dir(&[]);
    assert_eq!(
        server.requests("/pinned.bin"),
        1,
        "the checksum is the key: no request on a rebuild"
    );
    assert!(stderr.contains("(0 steps ran"), "{stderr}");
}

#[test]
fn add_url_with_a_wrong_checksum_fails_at_its_line_and_keeps_nothing() {
    let server = Server::start();
    let body = b"the real bytes\n";
    server.put("/f.bin", body, "x", at(1_600_000_000));
    let wrong = "0".repeat(64);
    let url = server.url("/f.bin");
    let p = Project::new(&dockerfile(&format!(
        "ADD --checksum=sha256:{wrong} {url} /f.bin\n"
    )));
    let (stderr, wrote) = build_fails(&p);
    assert!(!wrote, "no output from a failed build");
    assert!(stderr.contains("line 3"), "names the line:\n{stderr}");
    assert!(
        stderr.contains(&format!("sha256:{wrong}")) && stderr.contains(&sha256_hex(body)),
        "names both digests:\n{stderr}"
    );
    // The bad download is not kept as the checksum's content: a right checksum fetches.
    p.write(
        "Dockerfile",
        &dockerfile(&format!(
            "ADD --checksum=sha256:{} {url} /f.bin\n",
            sha256_hex(body)
        )),
    );
    let (_, out) = p.build_to_dir(&[]);
    assert_eq!(fs_err::read(out.path().join("f.bin")).unwrap(), body);
    assert_eq!(server.bodies("/f.bin"), 2);
}

#[test]
fn add_url_that_is_missing_or_unreachable_names_the_url_and_the_status() {
    let server = Server::start();
    let missing = server.url("/nothing/here.txt");
    let p = Project::new(&dockerfile(&format!("ADD {missing} /x\n")));
    let (stderr, wrote) = build_fails(&p);
    assert!(!wrote);
    assert!(
        stderr.contains(&missing) && stderr.contains("404") && stderr.contains("line 3"),
        "{stderr}"
    );

    // A port nothing listens on.
    let closed = format!("http://127.0.0.1:{}/file", free_port());
    p.write("Dockerfile", &dockerfile(&format!("ADD {closed} /x\n")));
    let (stderr, wrote) = build_fails(&p);
    assert!(!wrote);
    assert!(
        stderr.contains(&closed) && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

/// `git daemon` serving the repositories under a temporary base path.
struct GitServer {
    child: Child,
    port: u16,
    base: tempfile::TempDir,
}

impl GitServer {
    fn start() -> Self {
        let base = tempfile::tempdir().unwrap();
        let port = free_port();
        // git-daemon itself, not `git daemon`: git would run it as a child of its own, which
        // killing git leaves behind.
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        let exec_path = PathBuf::from(String::from_utf8(exec_path.stdout).unwrap().trim());
        let child = Command::new(exec_path.join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
            ])
            .arg(format!("--base-path={}", base.path().display()))
            .arg(base.path())
            .spawn()
            .expect("run git daemon (needs git)");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, base }
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository with a file, a subdirectory holding a symlink out of the checkout, a tag
/// `v1`, and a branch `main`; returns the commit.
fn make_repo(dir: &Path) -> String {
    fs_err::create_dir_all(dir.join("sub")).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    fs_err::write(dir.join("top.txt"), "top v1\n").unwrap();
    fs_err::write(dir.join("sub/inner.txt"), "inner\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname-of-the-host", dir.join("sub/escape")).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "one"]);
    git(dir, &["tag", "-a", "v1", "-m", "v1"]);
    git(dir, &["rev-parse", "HEAD"])
}

#[test]
fn add_git_checks_out_a_branch_a_tag_subdir_and_keeps_git_dir_only_when_asked() {
    let server = GitServer::start();
    let commit = make_repo(&server.repo("app.git"));
    let url = server.url("app.git");
    let p = Project::new(&dockerfile(&format!(
        "ADD {url}#main /src/\n\
         ADD {url}#v1:sub /sub\n\
         ADD --keep-git-dir=true {url} /kept/\n\
         ADD --checksum={commit} {url}#v1 /pinned/\n"
    )));
    let (_, out) = p.build_to_dir(&[]);
    let dir = out.path();
    assert_eq!(read(dir, "src/top.txt"), "top v1\n");
    assert_eq!(read(dir, "src/sub/inner.txt"), "inner\n");
    assert!(!dir.join("src/.git").exists(), ".git is dropped by default");
    assert_eq!(read(dir, "sub/inner.txt"), "inner\n");
    assert!(!dir.join("sub/top.txt").exists(), "only the subdirectory");
    let escape = fs_err::symlink_metadata(dir.join("sub/escape")).unwrap();
    assert!(
        escape.file_type().is_symlink(),
        "a symlink stays a symlink, never followed out of the checkout"
    );
    assert!(dir.join("kept/.git").is_dir(), "--keep-git-dir keeps .git");
    assert_eq!(git(&dir.join("kept"), &["rev-parse", "HEAD"]), commit);
    assert_eq!(read(dir, "pinned/top.txt"), "top v1\n");

    // Cached while the branch stays; a new commit on it is checked out on the next build.
    let (stderr, _) = p.build_to_dir(&[]);
    assert!(stderr.contains("(0 steps ran"), "{stderr}");
    let repo = server.repo("app.git");
    fs_err::write(repo.join("top.txt"), "top v2\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let (_, out) = p.build_to_dir(&[]);
    assert_eq!(read(out.path(), "src/top.txt"), "top v2\n");
    assert_eq!(
        read(out.path(), "pinned/top.txt"),
        "top v1\n",
        "the tag did not move"
    );
}

#[test]
fn add_git_with_a_missing_ref_or_a_wrong_commit_checksum_fails_at_its_line() {
    let server = GitServer::start();
    let commit = make_repo(&server.repo("app.git"));
    let url = server.url("app.git");
    let p = Project::new(&dockerfile(&format!("ADD {url}#no-such-branch /src/\n")));
    let (stderr, wrote) = build_fails(&p);
    assert!(!wrote);
    assert!(
        stderr.contains("no-such-branch") && stderr.contains(&url) && stderr.contains("line 3"),
        "{stderr}"
    );

    let wrong = "1234567".to_owned();
    p.write(
        "Dockerfile",
        &dockerfile(&format!("ADD --checksum={wrong} {url}#main /src/\n")),
    );
    let (stderr, wrote) = build_fails(&p);
    assert!(!wrote);
    assert!(
        stderr.contains(&wrong) && stderr.contains(&commit) && stderr.contains("line 3"),
        "{stderr}"
    );
}

#[test]
fn add_url_and_git_flags_are_refused_where_they_mean_nothing() {
    let p = Project::new(&dockerfile("ADD --keep-git-dir rootfs.tar /x/\n"));
    let (stderr, _) = build_fails(&p);
    assert!(
        stderr.contains("Dockerfile:3") && stderr.contains("--keep-git-dir"),
        "{stderr}"
    );
    p.write(
        "Dockerfile",
        &dockerfile("ADD --checksum=sha256:abc http://127.0.0.1:1/f /x\n"),
    );
    let (stderr, _) = build_fails(&p);
    assert!(
        stderr.contains("Dockerfile:3") && stderr.contains("64 hex digits"),
        "{stderr}"
    );
}

/// `git http-backend` behind a tiny CGI server on a loopback port that answers 401 unless
/// the request carries `Authorization: <auth>`; records every Authorization it was sent.
struct GitHttp {
    port: u16,
    base: tempfile::TempDir,
    seen: Arc<Mutex<Vec<String>>>,
}

impl GitHttp {
    fn start(auth: String) -> Self {
        let base = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (root, s) = (base.path().to_path_buf(), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (root, s, auth) = (root.clone(), Arc::clone(&s), auth.clone());
                std::thread::spawn(move || cgi(stream, &root, &auth, &s));
            }
        });
        Self { port, base, seen }
    }
}

fn cgi(stream: TcpStream, root: &Path, auth: &str, seen: &Mutex<Vec<String>>) {
    use std::io::Read as _;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("GET").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        if let Some(a) = headers.get("authorization") {
            seen.lock().unwrap().push(a.clone());
        }
        if headers.get("authorization").map(String::as_str) != Some(auth) {
            let _ = writer.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"t\"\r\n\
                  content-length: 0\r\n\r\n",
            );
            continue;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let mut child = Command::new("git")
            .arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", &method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_LENGTH", length.to_string())
            .env(
                "CONTENT_TYPE",
                headers.get("content-type").cloned().unwrap_or_default(),
            )
            .env(
                "GIT_PROTOCOL",
                headers.get("git-protocol").cloned().unwrap_or_default(),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        let out = child.wait_with_output().unwrap().stdout;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
            .unwrap();
        let head = String::from_utf8_lossy(&out[..split.0]).into_owned();
        let content = &out[split.0 + split.1..];
        let mut status = "200 OK".to_owned();
        let mut reply = String::new();
        for h in head.lines() {
            match h.split_once(':') {
                Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
                Some(_) => {
                    reply.push_str(h.trim_end());
                    reply.push_str("\r\n");
                }
                None => {}
            }
        }
        let mut response = format!(
            "HTTP/1.1 {status}\r\n{reply}content-length: {}\r\n\r\n",
            content.len()
        )
        .into_bytes();
        response.extend_from_slice(content);
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&d) else {
            continue;
        };
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            let Ok(meta) = fs_err::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && fs_err::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn add_git_over_http_sends_the_git_auth_token_secret_and_keeps_it_out_of_the_image_and_state() {
    let token = "s3cr3t-token-0123456789";
    let basic = {
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = out;
        out.stdin
            .take()
            .unwrap()
            .write_all(format!("x-access-token:{token}").as_bytes())
            .unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    };
    let server = GitHttp::start(format!("basic {basic}"));
    let repo = server.base.path().join("private.git");
    make_repo(&repo);
    let url = format!("http://127.0.0.1:{}/private.git", server.port);
    let p = Project::new(&dockerfile(&format!("ADD {url}#main /src/\n")));

    // Without the secret the server refuses, and the build says where.
    let (stderr, _) = build_fails(&p);
    assert!(
        stderr.contains(&url) && stderr.contains("line 3"),
        "{stderr}"
    );

    let secret = p.path("token.txt");
    fs_err::write(&secret, token).unwrap();
    let arg = format!("id=GIT_AUTH_TOKEN,src={}", secret.display());
    let (stderr, out) = p.build_to_dir(&["--secret", &arg]);
    assert_eq!(read(out.path(), "src/top.txt"), "top v1\n");
    assert!(
        server
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == &format!("basic {basic}")),
        "the token reached the server as basic auth"
    );
    assert!(!stderr.contains(token), "the token is in the progress");
    assert_eq!(
        files_holding(out.path(), token.as_bytes()),
        Vec::<PathBuf>::new(),
        "the token is in the image"
    );
    assert_eq!(
        files_holding(p.root.path(), token.as_bytes()),
        Vec::<PathBuf>::new(),
        "the token is in the state root (logs, cache index, snapshots)"
    );
    assert_eq!(
        files_holding(p.root.path(), basic.as_bytes()),
        Vec::<PathBuf>::new(),
        "the encoded token is in the state root"
    );
}
