//! The cost of a RUN's default network (its own namespace with a slirp4netns uplink). Prints
//! medians and ratios, asserts nothing:
//!
//! - start-to-exit of a RUN of `true` on the default network against `--network none`, for
//!   the built-in runtime and runc (the issue's target: at most 2×);
//! - download throughput of a 50 MB file, inside a RUN on the default network against the
//!   same download (busybox wget) on the host (target: at least 0.8×).
//!
//! ```text
//! cargo bench -p hoist --bench network -- [--runs N]
//! ```
//!
//! Needs root, slirp4netns, busybox-static and iproute2. The file is served by busybox httpd
//! in a network namespace this bench makes (veth, 198.18.0.1/30 and 198.18.0.2/30, the
//! benchmarking range) and removes again; no traffic leaves the machine.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)] // a report, not library code

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hoist_executor::oci_spec::runtime::User;
use hoist_executor::spec::{Limits, NetworkMode, SpecOptions, build_spec};
use hoist_executor::{Backend, Executor, ExecutorConfig, Rootfs, RunRequest};

const NETNS: &str = "hoist-bench-net";
const VETH: &str = "hoistbench0";
const SERVER: &str = "198.18.0.2";
const FILE_BYTES: usize = 50 << 20;

fn sh(script: &str) {
    let out = Command::new("sh").args(["-ec", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server namespace; removed (with its httpd) when dropped.
struct Server {
    httpd: std::process::Child,
    _www: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        // What an interrupted earlier run left.
        let _ = Command::new("ip").args(["link", "del", VETH]).output();
        let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
        let www = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 + i / 4096) as u8).collect();
        fs_err::write(www.path().join("f"), data).unwrap();
        sh(&format!(
            "ip netns add {NETNS}
             ip link add {VETH} type veth peer name {VETH}p
             ip link set {VETH}p netns {NETNS}
             ip addr add 198.18.0.1/30 dev {VETH}
             ip link set {VETH} up
             ip -n {NETNS} addr add {SERVER}/30 dev {VETH}p
             ip -n {NETNS} link set {VETH}p up
             ip -n {NETNS} link set lo up"
        ));
        let httpd = Command::new("ip")
            .args(["netns", "exec", NETNS, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{SERVER}:8080"))
            .arg("-h")
            .arg(www.path())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(format!("{SERVER}:8080")).is_err() {
            assert!(Instant::now() < deadline, "httpd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { httpd, _www: www }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = Command::new("ip").args(["link", "del", VETH]).output();
        let _ = Command::new("ip").args(["netns", "del", NETNS]).output();
    }
}

/// A busybox root filesystem (the static binary and its applet links).
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox");
    for d in ["bin", "proc", "dev", "sys", "etc", "tmp"] {
        fs_err::create_dir_all(root.join(d)).unwrap();
    }
    fs_err::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    root
}

struct Rig {
    executor: Executor,
    rootfs: PathBuf,
    tmp: PathBuf,
    n: std::cell::Cell<usize>,
}

impl Rig {
    /// Wall time of one RUN of `args` from request to exit.
    async fn run(&self, network: NetworkMode, args: &[&str]) -> Duration {
        let n = self.n.get();
        self.n.set(n + 1);
        let scratch = self.tmp.join(format!("run{n}"));
        let (upperdir, workdir) = (scratch.join("upper"), scratch.join("work"));
        fs_err::create_dir_all(&upperdir).unwrap();
        fs_err::create_dir_all(&workdir).unwrap();
        let spec = build_spec(&SpecOptions {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec!["PATH=/bin".to_owned()],
            cwd: "/".into(),
            user: User::default(),
            hostname: "hoist".into(),
            network,
            etc_files: self.executor.etc_files_for("hoist", network).unwrap(),
            limits: Limits::default(),
            insecure: false,
            mounts: Vec::new(),
        })
        .unwrap();
        let request = RunRequest {
            spec,
            rootfs: Rootfs {
                lowerdirs: vec![self.rootfs.clone()],
                upperdir,
                workdir,
            },
            timeout: Some(Duration::from_secs(120)),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let started = Instant::now();
        let outcome = self
            .executor
            .run(request, &mut out, &mut err)
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            outcome.status.success(),
            "{args:?} on {network:?} failed: {}",
            String::from_utf8_lossy(&err)
        );
        let _ = fs_err::remove_dir_all(&scratch);
        took
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if let Some(code) = hoist_executor::init::run_if_init() {
        std::process::exit(i32::from(code != std::process::ExitCode::SUCCESS));
    }
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(21);
    let tmp = tempfile::Builder::new()
        .prefix("hoist-bench-net")
        .tempdir()
        .unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let mut backends = vec![(
        "builtin",
        Backend::Builtin {
            init_program: PathBuf::from("/proc/self/exe"),
        },
    )];
    if let Some(runc) = runc {
        backends.push(("runc", Backend::External { program: runc }));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = Server::start();
    let fetch = format!("http://{SERVER}:8080/f");
    runtime.block_on(async {
        println!("RUN of `true`, start to exit, median of {runs}:");
        let mut builtin = None;
        for (name, backend) in backends {
            let mut config = ExecutorConfig::new(tmp.path().join(format!("state-{name}")));
            config.backend = backend;
            config.cgroup_parent = format!("hoist-bench-net-{}", std::process::id());
            let rig = Rig {
                executor: Executor::new(config).unwrap(),
                rootfs: rootfs.clone(),
                tmp: tmp.path().join(format!("runs-{name}")),
                n: 0.into(),
            };
            // Warm-up: the zygote, the page cache, the seccomp compile.
            for network in [NetworkMode::None, NetworkMode::Default] {
                for _ in 0..3 {
                    rig.run(network, &["true"]).await;
                }
            }
            let (mut none, mut default) = (Vec::new(), Vec::new());
            // Interleaved, so that drift on a shared machine hits both alike.
            for _ in 0..runs {
                none.push(rig.run(NetworkMode::None, &["true"]).await);
                default.push(rig.run(NetworkMode::Default, &["true"]).await);
            }
            let (none, default) = (median(none), median(default));
            println!(
                "  {name:8} none {:7.2} ms   default {:7.2} ms   default/none {:.2}x (target <= 2x)",
                ms(none),
                ms(default),
                default.as_secs_f64() / none.as_secs_f64()
            );
            if name == "builtin" {
                builtin = Some((rig, default));
            }
        }
        let (rig, true_default) = builtin.unwrap();

        let downloads = runs.min(9);
        let host: Vec<Duration> = (0..downloads)
            .map(|_| {
                let started = Instant::now();
                let status = Command::new("busybox")
                    .args(["wget", "-q", "-O", "/dev/null", &fetch])
                    .status()
                    .unwrap();
                assert!(status.success(), "wget on the host failed");
                started.elapsed()
            })
            .collect();
        let host = median(host);
        let mut sandbox = Vec::new();
        for _ in 0..downloads {
            sandbox.push(
                rig.run(
                    NetworkMode::Default,
                    &["wget", "-q", "-O", "/dev/null", &fetch],
                )
                .await,
            );
        }
        // The RUN's own start-up (its median for `true`) is not download time.
        let sandbox = median(sandbox).saturating_sub(true_default);
        let mb = FILE_BYTES as f64 / 1e6;
        let (host_rate, sandbox_rate) = (
            mb / host.as_secs_f64(),
            mb / sandbox.as_secs_f64().max(1e-6),
        );
        println!("50 MB download with busybox wget, median of {downloads}:");
        println!(
            "  host {:7.1} ms ({host_rate:.0} MB/s)   RUN on default {:7.1} ms ({sandbox_rate:.0} MB/s)   \
             RUN/host {:.2}x (target >= 0.8x)",
            ms(host),
            ms(sandbox),
            sandbox_rate / host_rate
        );
    });
    drop(server);
}
