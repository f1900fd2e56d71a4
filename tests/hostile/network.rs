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
