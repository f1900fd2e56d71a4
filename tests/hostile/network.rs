//! What a Dockerfile alone may not do: RUN --network=host and RUN --security=insecure need the
//! user's entitlement (`--allow`), as in BuildKit. The build's own `--network host` is the
//! user's explicit choice and needs none. Network cases run under the built-in runtime and
//! under runc.

use std::io::Write as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::runtimes;
use crate::support::Project;

/// A service on the host's loopback that greets whoever connects, and counts them.
struct HostService {
    port: u16,
    connections: Arc<AtomicUsize>,
}

const GREETING: &str = "hello-from-the-host";

impl HostService {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut stream = stream;
                let _ = stream.write_all(GREETING.as_bytes());
            }
        });
        Self { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A RUN (with `flags`) that connects to the host service and keeps what it heard in /got.
fn dockerfile(flags: &str, port: u16) -> String {
    format!(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN {flags} (timeout 5 nc 127.0.0.1 {port} > /got 2>&1 || true)\n"
    )
}

#[test]
fn run_network_host_is_refused_at_its_line_without_allow_network_host() {
    let service = HostService::start();
    let p = Project::new(&dockerfile("--network=host", service.port));
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build succeeded:\n{stderr}");
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.contains("--allow network.host"), "{stderr}");
    assert_eq!(service.connections(), 0, "the RUN reached the host");
}

#[test]
fn run_network_host_with_allow_network_host_reaches_the_hosts_loopback() {
    let service = HostService::start();
    for runtime in runtimes() {
        let p = Project::new(&dockerfile("--network=host", service.port));
        let (_, rootfs) = p.build_to_dir(&["--allow", "network.host", "--runtime", runtime]);
        let got = fs_err::read_to_string(rootfs.path().join("got")).unwrap();
        assert_eq!(got, GREETING, "{runtime}");
    }
}

#[test]
fn a_run_without_host_network_cannot_reach_the_hosts_loopback() {
    let service = HostService::start();
    for runtime in runtimes() {
        for flags in ["", "--network=none", "--network=default"] {
            let p = Project::new(&dockerfile(flags, service.port));
            let (_, rootfs) = p.build_to_dir(&["--runtime", runtime]);
            let got = fs_err::read_to_string(rootfs.path().join("got")).unwrap();
            assert!(!got.contains(GREETING), "{runtime} {flags:?}: {got}");
        }
    }
    assert_eq!(service.connections(), 0);
}

#[test]
fn the_builds_own_network_host_needs_no_grant() {
    let service = HostService::start();
    let p = Project::new(&dockerfile("", service.port));
    let (_, rootfs) = p.build_to_dir(&["--network", "host"]);
    let got = fs_err::read_to_string(rootfs.path().join("got")).unwrap();
    assert_eq!(got, GREETING);
}

#[test]
fn run_security_insecure_needs_allow_security_insecure() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN --security=insecure mkdir /m && mount -t tmpfs none /m && echo mounted > /probe\n",
    );
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.contains("--allow security.insecure"), "{stderr}");
    // Granting network.host does not grant security.insecure.
    let out = p.hoist(&["--allow", "network.host"]);
    assert!(!out.status.success());
    for runtime in runtimes() {
        let (_, rootfs) = p.build_to_dir(&["--allow", "security.insecure", "--runtime", runtime]);
        let probe = fs_err::read_to_string(rootfs.path().join("probe")).unwrap();
        assert_eq!(probe, "mounted\n", "{runtime}");
    }
}

#[test]
fn an_unknown_entitlement_is_refused() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let out = p.hoist(&["--allow", "network.hots"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--allow network.hots: unknown entitlement"),
        "{stderr}"
    );
}

/// A network namespace made by the test, joined to the host by a veth pair (addresses from
/// 198.18.0.0/15, the benchmarking range), with busybox httpd serving `file` on port 8080.
/// Removed when dropped.
struct ServerNetns {
    name: String,
    veth: String,
    /// The server's address.
    addr: String,
    httpd: std::process::Child,
    _www: tempfile::TempDir,
}

impl ServerNetns {
    fn start(file: &str) -> Self {
        use std::process::Command;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id() as usize * 7 + n) % 250 + 1;
        let name = format!("hoist-test-{}-{n}", std::process::id());
        let veth = format!("hvt{}x{n}", std::process::id() % 100_000);
        let peer = format!("{veth}p");
        let addr = format!("198.18.{id}.2");
        let www = tempfile::tempdir().unwrap();
        fs_err::write(www.path().join("file"), file).unwrap();
        let sh = |script: &str| {
            let out = Command::new("sh").args(["-ec", script]).output().unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(&format!(
            "ip netns add {name}
             ip link add {veth} type veth peer name {peer}
             ip link set {peer} netns {name}
             ip addr add 198.18.{id}.1/30 dev {veth}
             ip link set {veth} up
             ip -n {name} addr add {addr}/30 dev {peer}
             ip -n {name} link set {peer} up
             ip -n {name} link set lo up"
        ));
        let httpd = Command::new("ip")
            .args(["netns", "exec", &name, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{addr}:8080"))
            .arg("-h")
            .arg(www.path())
            .spawn()
            .unwrap();
        let server = Self {
            name,
            veth,
            addr,
            httpd,
            _www: www,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(format!("{}:8080", server.addr)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "httpd in {} did not start",
                server.name
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

impl Drop for ServerNetns {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The host's own global IPv4 addresses (where a NAT's connections to "the host" land).
fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            Some(words.next()?.split('/').next()?.to_owned())
        })
        .collect()
}

fn nameservers(resolv: &str) -> Vec<String> {
    resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|a| a.trim().to_owned())
        .collect()
}

#[test]
fn the_default_network_reaches_the_outside_but_not_the_hosts_loopback() {
    let service = HostService::start();
    let server = ServerNetns::start("served-from-a-namespace\n");
    // 10.0.2.2 is the NAT's gateway, which slirp4netns would map to the host's loopback.
    let mut targets = vec!["127.0.0.1".to_owned(), "10.0.2.2".to_owned()];
    targets.extend(host_addresses());
    let targets = targets.join(" ");
    let port = service.port;
    // The listener's stdin stays open (busybox nc in listen mode may close the connection as
    // soon as its stdin ends, before the client's line arrives; a background job's stdin is
    // /dev/null), and it is stopped once the line has arrived or 5 s have passed.
    let script = format!(
        "wget -q -O /fetched http://{addr}:8080/file; \
         for a in {targets}; do \
           timeout 5 nc $a {port} </dev/null > /probe 2>&1 || true; \
           if grep -q {GREETING} /probe; then echo $a >> /reached; fi; \
         done; rm -f /probe; \
         sleep 30 2>/dev/null | nc -l -p 9999 > /loopback & l=$!; \
         i=0; until echo inside | nc 127.0.0.1 9999; do \
           i=$((i+1)); [ $i -lt 100 ] || break; sleep 0.05; done; \
         i=0; until grep -q inside /loopback; do \
           i=$((i+1)); [ $i -lt 100 ] || break; sleep 0.05; done; \
         kill $l; \
         cat /etc/resolv.conf > /resolv; cat /etc/hosts > /hosts",
        addr = server.addr
    );
    let host_resolv = fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut expected: Vec<String> = nameservers(&host_resolv)
        .into_iter()
        .filter(|a| !a.starts_with("127.") && a != "::1")
        .collect();
    if expected.is_empty() && !std::path::Path::new("/run/systemd/resolve/resolv.conf").exists() {
        expected = [
            "8.8.8.8",
            "8.8.4.4",
            "2001:4860:4860::8888",
            "2001:4860:4860::8844",
        ]
        .map(str::to_owned)
        .to_vec();
    }
    for runtime in runtimes() {
        for flags in ["", "--network=default"] {
            let p = Project::new(&format!(
                "FROM scratch\nADD rootfs.tar /\nRUN {flags} {script}\n"
            ));
            let (_, rootfs) = p.build_to_dir(&["--runtime", runtime]);
            let read = |f: &str| fs_err::read_to_string(rootfs.path().join(f)).unwrap_or_default();
            let what = format!("{runtime} RUN {flags}");
            assert_eq!(read("fetched"), "served-from-a-namespace\n", "{what}");
            assert_eq!(read("reached"), "", "{what} reached the host's loopback");
            assert_eq!(
                read("loopback"),
                "inside\n",
                "{what}: loopback inside the RUN"
            );
            let resolv = read("resolv");
            let servers = nameservers(&resolv);
            assert!(
                servers.iter().all(|a| !a.starts_with("127.") && a != "::1"),
                "{what}: a loopback resolver in\n{resolv}"
            );
            if !expected.is_empty() {
                assert_eq!(servers, expected, "{what}: {resolv}");
            }
            assert_eq!(
                read("hosts"),
                "127.0.0.1\tlocalhost hoist\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                "{what}"
            );
        }
    }
    assert_eq!(
        service.connections(),
        0,
        "a RUN reached the host's loopback"
    );
}

#[test]
fn the_nat_of_a_run_dies_with_a_hoist_killed_by_sigkill() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo started-the-run && sleep 600\n");
    let (mut running, _lines) = p.start_until("started-the-run", &[]);
    let hoist = running.0.id();
    // The NAT is a child of hoist, in the host's pid namespace.
    let nats: Vec<u32> = fs_err::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                return false;
            };
            stat.contains("(slirp4netns)")
                && rest.split(' ').nth(1) == Some(hoist.to_string().as_str())
        })
        .collect();
    assert_eq!(
        nats.len(),
        1,
        "hoist {hoist} should have one slirp4netns child"
    );
    running.0.kill().unwrap();
    running.0.wait().unwrap();
    let gone = |pid: u32| {
        fs_err::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rfind(')').is_some_and(|i| s[i + 2..].starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !gone(nats[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "slirp4netns {} outlived the hoist that was killed",
            nats[0]
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A hard resource limit of this process as `ulimit` reports it (podman may not raise past it).
fn rlimit_hard(flag: &str) -> u64 {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("ulimit {flag}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(1024)
}

#[test]
fn apt_get_installs_a_package_on_the_default_network_and_the_image_runs_it() {
    let registry = crate::support::Registry::start();
    let debian = crate::support::debian_rootfs_tar();
    for runtime in runtimes() {
        let p = Project::new(
            "FROM scratch\nADD debian.tar /\n\
             RUN apt-get update && apt-get install -y --no-install-recommends hello\n\
             CMD [\"hello\"]\n",
        );
        if fs_err::hard_link(&debian, p.path("debian.tar")).is_err() {
            fs_err::copy(&debian, p.path("debian.tar")).unwrap();
        }
        let name = if runtime == "builtin" {
            "builtin"
        } else {
            "runc"
        };
        let tag = format!("{}/hoist/apt-{name}:latest", registry.addr);
        let out = p.hoist(&["--runtime", runtime, "-t", &tag, "--push"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{runtime}: the apt build failed:\n{stderr}"
        );
        let nofile = rlimit_hard("-Hn");
        let nproc = rlimit_hard("-Hu").min(32768);
        let run = std::process::Command::new("podman")
            .args(["--runtime", "runc", "run", "--rm", "--tls-verify=false"])
            .args(["--network", "none"])
            .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
            .arg(format!("--ulimit=nproc={nproc}:{nproc}"))
            .arg(&tag)
            .output()
            .expect("run podman (apt-get install podman)");
        assert!(
            run.status.success(),
            "{runtime}: podman run {tag} failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            "Hello, world!\n",
            "{runtime}"
        );
        let _ = std::process::Command::new("podman")
            .args(["rmi", "--force", &tag])
            .output();
    }
}

#[test]
fn a_missing_nat_is_named_with_how_to_install_it() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo online\n");
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoist"))
        .env("PATH", empty.path())
        .args(["build", "--progress=plain", "--root"])
        .arg(p.root.path())
        .arg(p.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build succeeded:\n{stderr}");
    for needle in [
        "slirp4netns",
        "apt-get install slirp4netns",
        "--network none",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    // RUN --network=none needs no NAT.
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nRUN --network=none echo offline\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoist"))
        .env("PATH", empty.path())
        .args(["build", "--progress=plain", "--root"])
        .arg(p.root.path())
        .arg(p.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
