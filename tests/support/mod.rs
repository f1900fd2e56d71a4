//! Shared by the end-to-end tests: a real CNCF distribution registry on a free loopback port,
//! stopped when dropped, and a build context with a busybox rootfs and a private state root.
// Test support: a panic here is a test failure. Not every test binary uses every helper.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with("")
    }
}

impl Registry {
    /// Where the registry keeps what was pushed to it.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A build context plus a private state root, and the hoist command to use them.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub root: tempfile::TempDir,
}

impl Project {
    pub fn new(dockerfile: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh"))
                .arg(dir.path().join("rootfs.tar"))
                .status()
                .expect("run scripts/busybox-rootfs.sh (needs busybox-static)");
        assert!(status.success(), "making the busybox rootfs failed");
        fs_err::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        Self {
            dir,
            root: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        fs_err::write(self.path(rel), content).unwrap();
    }

    pub fn hoist(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hoist"))
            .arg("build")
            .arg("--root")
            .arg(self.root.path())
            .arg("--progress=plain")
            .args(args)
            .arg(self.dir.path())
            .output()
            .unwrap()
    }

    /// Starts `hoist build` with its progress on a pipe and waits until a step has printed `marker`.
    pub fn start_until(
        &self,
        marker: &str,
        args: &[&str],
    ) -> (Running, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .args(["build", "--progress=plain", "--root"])
            .arg(self.root.path())
            .args(args)
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.ends_with(marker) => return (Running(child), rx),
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the build never printed {marker:?}");
                }
            }
        }
    }

    /// Builds and exports the root filesystem; returns (stderr, rootfs dir).
    pub fn build_to_dir(&self, args: &[&str]) -> (String, tempfile::TempDir) {
        let dest = tempfile::tempdir().unwrap();
        let output = format!("type=local,dest={}", dest.path().display());
        let mut all = vec!["-o", output.as_str()];
        all.extend_from_slice(args);
        let out = self.hoist(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "hoist build failed:\n{stderr}");
        (stderr, dest)
    }
}

/// A loop device attached to a small file that stands in for one of the host's disks, so
/// that a test can check whether a sandbox reads or writes "the disk". Detached when dropped.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    pub minor: u32,
    /// The file behind it.
    pub backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    /// What the "disk" starts with.
    pub const MARKER: &'static [u8] = b"HOST-DISK-SECRET-0123456789abcdef";

    pub fn attach() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("disk.img");
        let mut content = Self::MARKER.to_vec();
        content.resize(1 << 20, 0);
        fs_err::write(&backing, content).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let minor = path
            .to_string_lossy()
            .trim_start_matches("/dev/loop")
            .parse()
            .unwrap();
        Self {
            path,
            minor,
            backing,
            _dir: dir,
        }
    }

    /// Whether the backing file still holds exactly what it started with.
    pub fn untouched(&self) -> bool {
        let data = fs_err::read(&self.backing).unwrap();
        data.starts_with(Self::MARKER) && data[Self::MARKER.len()..].iter().all(|b| *b == 0)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A running build, killed (and reaped) if a test fails before it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes whose command line is exactly `args` (sandboxed processes are visible from here).
pub fn processes_running(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    fs_err::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs_err::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

pub fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    fs_err::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_owned)
        .collect()
}

/// The names of the steps that ran (not CACHED) in a plain progress log.
pub fn steps_that_ran(stderr: &str) -> Vec<String> {
    let mut names = std::collections::BTreeMap::new();
    let mut ran = Vec::new();
    for line in stderr.lines() {
        let Some((n, text)) = line.strip_prefix('#').and_then(|r| r.split_once(' ')) else {
            continue;
        };
        if text.starts_with('[') {
            names.insert(n.to_owned(), text.to_owned());
        } else if text.starts_with("DONE") {
            ran.extend(names.get(n).cloned());
        }
    }
    ran
}

/// The Debian mirror that apt on this machine uses (`/etc/apt/sources.list*`), the only one
/// the tests may download from.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// A tarball of a minimal Debian bookworm root filesystem (`debootstrap --variant=minbase`),
/// made once per target dir (or at `$HOIST_TEST_DEBIAN_ROOTFS`) and shared by the tests
/// under a file lock.
pub fn debian_rootfs_tar() -> PathBuf {
    let tar = std::env::var_os("HOIST_TEST_DEBIAN_ROOTFS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-bookworm-minbase.tar"),
        PathBuf::from,
    );
    let lock_path = tar.with_extension("lock");
    if let Some(parent) = tar.parent() {
        fs_err::create_dir_all(parent).unwrap();
    }
    let lock = fs_err::File::create(&lock_path).unwrap();
    // Another test (or test binary) may be making it: wait for it, then use its tarball.
    lock.file().lock().unwrap();
    if tar.exists() {
        return tar;
    }
    assert!(
        Path::new("/usr/sbin/debootstrap").exists(),
        "debootstrap is missing: apt-get install debootstrap"
    );
    let work = tempfile::tempdir_in(tar.parent().unwrap()).unwrap();
    let root = work.path().join("root");
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&root)
        .arg(DEBIAN_MIRROR)
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap of bookworm from {DEBIAN_MIRROR} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Its apt lists and downloaded debs are no part of an image.
    let _ = fs_err::remove_dir_all(root.join("var/cache/apt/archives"));
    let partial = work.path().join("rootfs.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(&partial)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the debian rootfs failed");
    fs_err::rename(&partial, &tar).unwrap();
    tar
}

/// A real `hoist serve` process on a state root, with its log (stderr, one JSON object a line)
/// collected as it comes. Killed (its own PID only) and reaped when dropped.
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    /// The addresses it listens on, as its "serving" line gave them (`unix:///…`, `tcp://…`).
    pub addrs: Vec<String>,
    /// `http://HOST:PORT/metrics`, when started with `--metrics-addr`.
    pub metrics: Option<String>,
    pub root: PathBuf,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _root: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `hoist serve ARGS` on a fresh state root.
    pub fn start(args: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(root.path(), args, &[]);
        server._root = Some(root);
        server
    }

    /// Starts `hoist serve --root ROOT ARGS` with `env` added to its environment, and waits
    /// for its "serving" line.
    pub fn start_in(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .arg("serve")
            .arg("--root")
            .arg(root)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut server = Self {
            child: Some(child),
            pid,
            addrs: Vec::new(),
            metrics: None,
            root: root.to_path_buf(),
            lines,
            _root: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "hoist serve {args:?} never said it was serving; its log:\n{}",
                        server.log()
                    )
                });
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if value["msg"] == "serving" {
                server.addrs = value["addrs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect();
                server.metrics = value["metrics"].as_str().map(str::to_owned);
                return server;
            }
        }
    }

    /// The first address of the given scheme (`unix` or `tcp`).
    pub fn addr(&self, scheme: &str) -> String {
        self.addrs
            .iter()
            .find(|a| a.starts_with(&format!("{scheme}://")))
            .unwrap_or_else(|| {
                panic!(
                    "the server listens on no {scheme} address: {:?}",
                    self.addrs
                )
            })
            .clone()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Its log lines that parse as JSON and have `"msg": msg`.
    pub fn logged(&self, msg: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == msg)
            .collect()
    }

    /// Waits (up to `timeout`) until it has logged `count` lines with `"msg": msg`.
    pub fn wait_logged(
        &self,
        msg: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.logged(msg);
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the server logged {} {msg:?} line(s) within {timeout:?}, not {count}; its log:\n{}",
                found.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` to the server's own PID.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid).unwrap()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits (up to `timeout`) for the server to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("the server was already reaped");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server still ran {timeout:?} after it was told to stop; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of the server (no cleanup of its own), reaped.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// `GET` of its `/metrics` page (needs `--metrics-addr`).
    pub fn metrics_text(&self) -> String {
        let url = self
            .metrics
            .as_deref()
            .expect("started without --metrics-addr");
        let hostport = url
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        let mut conn = std::net::TcpStream::connect(hostport).unwrap();
        use std::io::{Read as _, Write as _};
        write!(
            conn,
            "GET /metrics HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    /// The value of the metric line that starts with `name` (with its labels, if any).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Registry {
    /// A registry whose extra configuration (YAML at the top level, e.g. an `auth:` section)
    /// is `extra`.
    pub fn start_with(extra: &str) -> Self {
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        fs_err::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// The cgroups that the hoist process `pid` made (the executor names them
/// `<pid>-<start>-<n>`), in every hierarchy.
pub fn cgroups_of_process(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{pid}-");
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(e.path());
            } else if depth < 5 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// Every regular file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => found.push(e.path()),
                _ => {}
            }
        }
    }
    found
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files under `dir` that hold `needle`, as is or gzip-compressed (a layer blob).
pub fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            let Ok(bytes) = fs_err::read(f) else {
                return false;
            };
            if contains(&bytes, needle) {
                return true;
            }
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let out = Command::new("gzip").args(["-dc"]).arg(f).output().unwrap();
                return contains(&out.stdout, needle);
            }
            false
        })
        .collect()
}

/// A registry that takes only `user` with `password` (htpasswd), with the directory that holds
/// its password file (keep it while the registry runs).
pub fn htpasswd_registry(user: &str, password: &str) -> (Registry, tempfile::TempDir) {
    let out = Command::new("htpasswd")
        .args(["-nbB", user, password])
        .output()
        .expect("run htpasswd (apache2-utils)");
    assert!(out.status.success());
    let auth = tempfile::tempdir().unwrap();
    fs_err::write(auth.path().join("htpasswd"), out.stdout).unwrap();
    let registry = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: hoist-test\n    path: {}\n",
        auth.path().join("htpasswd").display()
    ));
    (registry, auth)
}

/// A docker config directory (for `DOCKER_CONFIG`) with `user`'s credentials for `registry`.
pub fn docker_config(registry: &Registry, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"username": "{user}", "password": "{password}"}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    dir
}

/// BuildKit's parser conformance folder (`../shared/conformance/buildkit-parser`, or
/// `$HOIST_CONFORMANCE_DIR`), read in place: its files are never copied into the project.
pub fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("HOIST_CONFORMANCE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/buildkit-parser"),
        PathBuf::from,
    );
    assert!(
        dir.join("testfiles").is_dir(),
        "the BuildKit conformance folder is missing: {} (set HOIST_CONFORMANCE_DIR to its path)",
        dir.display()
    );
    dir
}
