//! The uplink of a RUN on the default network: a network namespace of its own whose traffic
//! leaves through `slirp4netns`, a user-space NAT running in the host's namespace, as
//! `docker build` gives a RUN a bridge network. Also what goes in `/etc/resolv.conf` and
//! `/etc/hosts`.
//!
//! Why slirp4netns and not pasta (both installed here, measured on this 2-core VM, median of 7):
//! - start-up until the namespace is configured: slirp4netns 2.2 ms (it says so on its
//!   `--ready-fd`); pasta (passt 2023-03-09) has no readiness signal in the foreground, and
//!   polling for its route took 8.8 ms;
//! - 50 MB over a veth from a namespace of our own: host 0.02 s, pasta 0.045 s, slirp4netns
//!   0.09 s. pasta is twice as fast here, but
//! - slirp4netns keeps its gateway (10.0.2.2) and its DNS forwarder inside the NAT, and
//!   `--disable-host-loopback` stops the one path to the host's loopback; this pasta copies the
//!   host's address and gateway into the namespace, and without its gateway mapping, traffic to
//!   the gateway address goes to the real gateway; and
//! - slirp4netns ends when its `--exit-fd` closes, so that a hoist killed by SIGKILL leaves no
//!   NAT process behind; pasta only daemonizes, which loses the link to its parent.
//!
//! Not `--enable-sandbox`: slirp4netns 1.2.0 as root then unmounted the host's
//! `/run/netns/*` bind mounts (seen here), which would break whatever else uses them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The NAT program, looked up in `PATH`.
pub const NAT_PROGRAM: &str = "slirp4netns";

/// MTU of the sandbox's interface: slirp4netns's largest, which is what makes it fast enough
/// (1500 halves the throughput).
const MTU: &str = "65520";

/// How long the NAT may take to configure the namespace before the RUN fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Error from setting up a RUN's uplink.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the default network needs {program}, which is not in PATH ({path}): install it \
         (apt-get install {program}), or build with --network none (or RUN --network=none)"
    )]
    Missing { program: &'static str, path: String },
    #[error("create a network namespace for the sandbox")]
    Namespace(#[source] std::io::Error),
    #[error("start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not bring up the sandbox's network: {log}")]
    NotReady { program: PathBuf, log: String },
}

/// Finds [`NAT_PROGRAM`] in the directories of `path` (a `PATH` value).
///
/// # Errors
/// [`NetError::Missing`] when no directory has it.
pub fn find_nat(path: &str) -> Result<PathBuf, NetError> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(NAT_PROGRAM))
        .find(|p| nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file())
        .ok_or_else(|| NetError::Missing {
            program: NAT_PROGRAM,
            path: path.to_owned(),
        })
}

/// A RUN's network namespace with the NAT attached. Dropping it kills the NAT (by its pid) and
/// closes the namespace, which then goes away with the last process in it.
#[derive(Debug)]
pub(crate) struct Uplink {
    netns: OwnedFd,
    nat: tokio::process::Child,
    /// slirp4netns exits when this closes: on drop, or when hoist dies however it dies.
    _exit: OwnedFd,
}

impl Uplink {
    /// Makes a network namespace with `lo` up, attaches slirp4netns to it and waits until it
    /// has configured `eth0` with an address and a default route.
    pub(crate) async fn start() -> Result<Self, NetError> {
        let path = std::env::var("PATH").unwrap_or_default();
        let program = find_nat(&path)?;
        let netns = new_netns()?;
        let spawn_err = |source: std::io::Error| NetError::Spawn {
            program: program.clone(),
            source,
        };
        let (ready_r, ready_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let (exit_r, exit_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        // Its messages go to a memory file, read only when it fails: a pipe nobody drains
        // would stall it once full.
        let log = nix::sys::memfd::memfd_create(
            c"hoist-slirp4netns",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| spawn_err(e.into()))?;
        let mut command = tokio::process::Command::new(&program);
        command
            .args([
                "--configure",
                "--mtu",
                MTU,
                "--disable-host-loopback",
                // The sandbox gets the host's upstream servers in its resolv.conf instead.
                "--disable-dns",
            ])
            .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
            .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
            .arg("--netns-type=path")
            .arg(format!("/proc/self/fd/{}", netns.as_raw_fd()))
            .arg("eth0")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(
                log.try_clone().map_err(spawn_err)?,
            ))
            .stderr(std::process::Stdio::from(
                log.try_clone().map_err(spawn_err)?,
            ))
            .kill_on_drop(true);
        crate::sys::inherit_fds(
            command.as_std_mut(),
            [ready_w.as_raw_fd(), exit_r.as_raw_fd(), netns.as_raw_fd()],
        );
        let nat = command.spawn().map_err(spawn_err)?;
        drop((ready_w, exit_r));
        let mut ready =
            tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r).map_err(spawn_err)?;
        let mut byte = [0u8; 1];
        let outcome = tokio::time::timeout(
            READY_TIMEOUT,
            tokio::io::AsyncReadExt::read(&mut ready, &mut byte),
        )
        .await;
        match outcome {
            Ok(Ok(1)) => Ok(Self {
                netns,
                nat,
                _exit: exit_w,
            }),
            other => {
                let why = match other {
                    Err(_) => format!("no sign of life within {READY_TIMEOUT:?}"),
                    Ok(Err(e)) => format!("read its ready pipe: {e}"),
                    Ok(Ok(_)) => "it exited".to_owned(),
                };
                drop(nat);
                let text = read_log(log);
                Err(NetError::NotReady {
                    program,
                    log: format!("{why}; it said: {}", text.trim()),
                })
            }
        }
    }

    /// The namespace, for the built-in runtime's init to join.
    pub(crate) fn netns(&self) -> &OwnedFd {
        &self.netns
    }

    /// A path to the namespace that another process (runc) can open while this one lives.
    pub(crate) fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.netns.as_raw_fd()
        ))
    }

    /// The NAT's pid, for tests that check it is gone after the RUN.
    #[cfg(test)]
    pub(crate) fn nat_pid(&self) -> Option<u32> {
        self.nat.id()
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        // By its pid; tokio's reaper collects it.
        let _ = self.nat.start_kill();
    }
}

fn read_log(log: OwnedFd) -> String {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::from(log);
    let mut text = String::new();
    if file.seek(std::io::SeekFrom::Start(0)).is_ok() {
        let _ = file.take(64 * 1024).read_to_string(&mut text);
    }
    text
}

/// A fresh network namespace with `lo` up. A thread of its own makes it: a thread's network
/// namespace is its own, and the thread ends right after, so no other work ever runs in it.
fn new_netns() -> Result<OwnedFd, NetError> {
    std::thread::spawn(|| -> std::io::Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        crate::sys::interface_up("lo")?;
        Ok(fs_err::File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    .map_err(NetError::Namespace)
}

/// The servers Docker puts in a sandbox's `/etc/resolv.conf` when it has no resolver of its
/// own (moby's `TransformForLegacyNw`, with IPv6 as BuildKit calls it).
const FALLBACK_NAMESERVERS: [&str; 4] = [
    "8.8.8.8",
    "8.8.4.4",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
];

/// systemd-resolved's list of the upstream servers behind its 127.0.0.53 stub.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

fn nameserver(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    (words.next() == Some("nameserver"))
        .then(|| words.next())
        .flatten()
}

fn is_loopback(address: &str) -> bool {
    // A zone (fe80::1%eth0) is not part of the address.
    let address = address.split('%').next().unwrap_or(address);
    address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

/// Which file a sandbox's `/etc/resolv.conf` starts from, as BuildKit picks it: the host's,
/// unless its only server is systemd-resolved's stub, whose upstream list then serves.
#[must_use]
pub fn resolv_conf_source(host: &str, systemd: Option<&str>) -> Option<String> {
    let servers: Vec<&str> = host.lines().filter_map(nameserver).collect();
    match (servers.as_slice(), systemd) {
        (["127.0.0.53"], Some(upstream)) => Some(upstream.to_owned()),
        _ => None,
    }
}

/// The `/etc/resolv.conf` of a sandbox with a network namespace of its own (`default` and
/// `none`), from the host's: loopback servers removed (they are the host's, not the sandbox's),
/// and Docker's public fallback when none remain. Every other line stays.
#[must_use]
pub fn sandbox_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut kept = 0;
    for line in host.lines() {
        match nameserver(line) {
            Some(a) if is_loopback(a) => continue,
            Some(_) => kept += 1,
            None => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    if kept == 0 {
        for server in FALLBACK_NAMESERVERS {
            out.push_str("nameserver ");
            out.push_str(server);
            out.push('\n');
        }
    }
    out
}

/// The `/etc/resolv.conf` of a RUN on the host's network: the host's own file, as BuildKit
/// does (its loopback resolver is reachable there), unless it lists no server at all.
#[must_use]
pub fn host_resolv_conf(host: &str) -> String {
    if host.lines().any(|l| nameserver(l).is_some()) {
        host.to_owned()
    } else {
        sandbox_resolv_conf(host)
    }
}

/// `/etc/hosts` as BuildKit writes it for a RUN (`executor/oci/hosts.go`).
#[must_use]
pub fn hosts_file(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_go_and_the_rest_stays() {
        let host = "# from dhcp\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.1.2.3\n\
                    nameserver ::1\nnameserver 127.0.1.1\noptions edns0\n";
        assert_eq!(
            sandbox_resolv_conf(host),
            "# from dhcp\nsearch example.org\nnameserver 10.1.2.3\noptions edns0\n"
        );
    }

    #[test]
    fn only_loopback_servers_become_docker_fallback() {
        let out = sandbox_resolv_conf("nameserver 127.0.0.1\noptions ndots:2\n");
        assert_eq!(
            out,
            "options ndots:2\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n\
             nameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n"
        );
        assert!(sandbox_resolv_conf("").contains("nameserver 8.8.8.8\n"));
    }

    #[test]
    fn systemd_stub_alone_uses_the_upstream_list() {
        let upstream = "nameserver 192.0.2.53\n";
        assert_eq!(
            resolv_conf_source("nameserver 127.0.0.53\noptions edns0\n", Some(upstream)).as_deref(),
            Some(upstream)
        );
        // Without resolved's file, or beside other servers, the host's file is the source.
        assert_eq!(resolv_conf_source("nameserver 127.0.0.53\n", None), None);
        assert_eq!(
            resolv_conf_source(
                "nameserver 127.0.0.53\nnameserver 10.0.0.1\n",
                Some(upstream)
            ),
            None
        );
    }

    #[test]
    fn host_network_keeps_the_hosts_file() {
        let host = "nameserver 127.0.0.53\nsearch lan\n";
        assert_eq!(host_resolv_conf(host), host);
        assert!(host_resolv_conf("search lan\n").contains("nameserver 8.8.8.8"));
    }

    #[test]
    fn hosts_file_is_buildkits() {
        assert_eq!(
            hosts_file("hoist"),
            "127.0.0.1\tlocalhost hoist\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
    }

    #[test]
    fn missing_nat_names_it_and_the_fix() {
        let err = find_nat("/nonexistent:/also-not").unwrap_err().to_string();
        assert!(err.contains("slirp4netns"), "{err}");
        assert!(err.contains("apt-get install slirp4netns"), "{err}");
        assert!(err.contains("--network none"), "{err}");
    }

    #[tokio::test]
    async fn uplink_configures_the_namespace_and_its_nat_dies_with_it() {
        let uplink = Uplink::start().await.unwrap();
        let pid = uplink.nat_pid().unwrap();
        // The NAT sees the namespace through the fd path another process would use.
        let routes = std::process::Command::new("nsenter")
            .arg(format!("--net={}", uplink.netns_path().display()))
            .args(["ip", "-4", "route", "show", "default"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(routes.contains("via 10.0.2.2 dev eth0"), "routes: {routes}");
        drop(uplink);
        // kill_on_drop sends SIGKILL at once; the reaper may take a moment.
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            fs_err::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
        });
        assert!(gone, "slirp4netns {pid} outlived its uplink");
    }
}
