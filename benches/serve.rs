//! Many builds through one `hoist serve`, against docker 20.10's BuildKit on the same
//! Dockerfile and contexts, in the same run. Prints wall times, ratios, the server's memory
//! and the issue's targets beside them; asserts nothing about speed, but exits non-zero when a
//! build through the server fails (printing the first failing client's output).
//!
//! ```text
//! cargo bench -p hoist --bench serve -- [--runs N] [--builds 16] [--many 64] [--no-peers] [--no-local]
//! ```
//!
//! - Case 1: `--builds` (16) concurrent S1 builds (`FROM busybox`, `COPY foo /etc/foo`,
//!   `RUN cp /etc/foo /etc/bar`), cold. Each build has its own context directory with the same
//!   Dockerfile and a different `foo`, so every build really copies and runs (a shared `foo`
//!   would let both builders run one build and serve the other fifteen from it). Cold means
//!   the base image is not there yet: a fresh server state root for hoist; for BuildKit,
//!   `docker builder prune -af` and the base image removed. The busybox pull is shared work
//!   that both deduplicate. The hoist side is 16 `hoist build --remote unix://…` client
//!   processes started at once against one server (`--max-builds 16`); the BuildKit side is 16
//!   `docker build` client processes started at once against dockerd.
//! - Case 2: `--many` (64) such builds at once, cold, against a fresh server with the same
//!   `--max-builds 16`, so that 48 of them queue: every one must succeed.
//! - Memory: the server's VmRSS right after start (idle), sampled every 20 ms during the
//!   builds (peak, cross-checked with VmHWM) and after them. docker 20.10 runs BuildKit inside
//!   dockerd, so BuildKit's side is dockerd's RSS, sampled the same way. Sandboxed RUN
//!   processes are counted on neither side.
//! - For reference (not a target): the same 16 builds as 16 in-process `hoist build`
//!   processes sharing one state root, which separates the server's overhead from the
//!   engine's.
//!
//! Needs root, `/usr/bin/docker` with a running dockerd for the peer (`../shared/peers/setup.sh`),
//! and a registry on 127.0.0.1:5000 holding `library/busybox:latest` (the peers script puts
//! one there; else this bench builds and pushes one from Debian's busybox-static with hoist).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss
)] // a report, not library code

mod common;

use common::{BUSYBOX, ensure_busybox, median, write};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const HOIST: &str = env!("CARGO_BIN_EXE_hoist");
const DOCKER: &str = "/usr/bin/docker";
/// What the issue measured for 16 concurrent S1 builds through docker 20.10's BuildKit here.
const BUILDKIT_16_ISSUE: f64 = 1.05;
/// A batch that has not ended after this long is killed and counted as failed: a hang must
/// end the bench with a failure, not stall it.
const WATCHDOG: Duration = Duration::from_secs(300);
/// How often the memory sampler reads VmRSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

struct Args {
    runs: usize,
    builds: usize,
    many: usize,
    peers: bool,
    local: bool,
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        builds: 16,
        many: 64,
        peers: true,
        local: true,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, default: usize| {
        v.and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => a.runs = number(it.next(), 3),
            "--builds" => a.builds = number(it.next(), 16),
            "--many" => a.many = number(it.next(), 64),
            "--no-peers" => a.peers = false,
            "--no-local" => a.local = false,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM), if the process is still there.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    proc_kib(pid, "status", field)
}

/// A field in KiB of a /proc/PID file of `Name: N kB` lines.
fn proc_kib(pid: u32, file: &str, field: &str) -> Option<u64> {
    let text = fs_err::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples a process's VmRSS until stopped; yields the highest value seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak.max(status_kib(pid, "VmRSS").unwrap_or(0))
        });
        Self { stop, thread }
    }

    fn peak_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// One client process's end.
struct Client {
    ok: bool,
    seconds: f64,
    stdout: String,
    stderr: String,
}

/// What a batch of concurrent clients did.
struct Batch {
    wall: f64,
    clients: Vec<Client>,
}

impl Batch {
    fn succeeded(&self) -> usize {
        self.clients.iter().filter(|c| c.ok).count()
    }

    fn first_failure(&self) -> Option<(usize, &Client)> {
        self.clients.iter().enumerate().find(|(_, c)| !c.ok)
    }

    /// Fastest, median and slowest client, in seconds.
    fn spread(&self) -> (f64, f64, f64) {
        let mut t: Vec<f64> = self.clients.iter().map(|c| c.seconds).collect();
        t.sort_by(f64::total_cmp);
        (t[0], t[t.len() / 2], t[t.len() - 1])
    }
}

/// Starts every command at once, one thread each, and waits for all of them. The wall time
/// runs from the moment all threads are released to the last exit.
fn run_batch(commands: Vec<Command>) -> Batch {
    let n = commands.len();
    let start_line = Arc::new(Barrier::new(n + 1));
    let live: Arc<Mutex<Vec<Option<u32>>>> = Arc::new(Mutex::new(vec![None; n]));
    let threads: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, mut cmd)| {
            let start_line = Arc::clone(&start_line);
            let live = Arc::clone(&live);
            std::thread::spawn(move || {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                start_line.wait();
                let start = Instant::now();
                let child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        return Client {
                            ok: false,
                            seconds: start.elapsed().as_secs_f64(),
                            stdout: String::new(),
                            stderr: format!("starting {cmd:?}: {e}"),
                        };
                    }
                };
                live.lock().unwrap()[i] = Some(child.id());
                let out = child.wait_with_output();
                live.lock().unwrap()[i] = None;
                let seconds = start.elapsed().as_secs_f64();
                match out {
                    Ok(out) => Client {
                        ok: out.status.success(),
                        seconds,
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: format!(
                            "{}(exit: {})",
                            String::from_utf8_lossy(&out.stderr),
                            out.status
                        ),
                    },
                    Err(e) => Client {
                        ok: false,
                        seconds,
                        stdout: String::new(),
                        stderr: format!("waiting for {cmd:?}: {e}"),
                    },
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        let live = Arc::clone(&live);
        std::thread::spawn(move || {
            let deadline = Instant::now() + WATCHDOG;
            while !done.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    for pid in live.lock().unwrap().iter().flatten() {
                        eprintln!(
                            "watchdog: client {pid} still running after {WATCHDOG:?}; killing it"
                        );
                        if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                            let _ =
                                rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        }
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    start_line.wait();
    let start = Instant::now();
    let clients: Vec<Client> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let wall = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    Batch { wall, clients }
}

/// `n` S1 contexts under `dir`: the same Dockerfile, a different `foo` each (`tag` keeps
/// them distinct across runs too).
fn contexts(dir: &Path, n: usize, tag: &str) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let ctx = dir.join(format!("ctx-{i}"));
            write(&ctx.join("foo"), &format!("foo {tag} {i}\n"));
            write(
                &ctx.join("Dockerfile"),
                &format!("FROM {BUSYBOX}\nCOPY foo /etc/foo\nRUN cp /etc/foo /etc/bar\n"),
            );
            ctx
        })
        .collect()
}

/// A running `hoist serve` on a unix socket, over a fresh state root.
struct Server {
    child: std::process::Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(max_builds: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let log = dir.path().join("server.log");
        let addr = format!("unix://{}", sock.display());
        let child = Command::new(HOIST)
            .args(["serve", "--root"])
            .arg(dir.path().join("root"))
            .args(["--addr", &addr, "--insecure-no-auth", "--grace", "10"])
            .args(["--max-builds", &max_builds.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs_err::File::create(&log).unwrap().into_parts().0)
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if server.log().contains(r#""msg":"serving""#) {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "hoist serve exited ({status}) before serving:\n{}",
                    server.log()
                );
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                panic!(
                    "hoist serve did not say it was serving within 30 s:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        fs_err::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's log, last lines first cut to what fits a report.
    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn client(&self, ctx: &Path, stat_cache: &Path) -> Command {
        let mut c = Command::new(HOIST);
        c.args(["build", "--progress=plain", "--network=none", "--remote"])
            .arg(&self.addr)
            .arg(ctx)
            // Each client its own (empty) stat cache, as separate machines would have.
            .env("XDG_CACHE_HOME", stat_cache)
            .env_remove("HOIST_REMOTE");
        c
    }

    /// SIGTERM, as an operator stops it; killed if it has not drained within 20 s.
    fn stop(mut self) -> String {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait().unwrap() {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    eprintln!("hoist serve did not stop within 20 s of SIGTERM; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.log()
    }
}

/// dockerd's PID, from the peers script's PID file.
fn dockerd_pid() -> Option<u32> {
    fs_err::read_to_string("/var/tmp/dockerd.pid")
        .or_else(|_| fs_err::read_to_string("/var/run/docker.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn docker_works() -> bool {
    Path::new(DOCKER).exists()
        && Command::new(DOCKER)
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .is_ok_and(|o| o.status.success())
}

fn docker_build(ctx: &Path) -> Command {
    let mut c = Command::new(DOCKER);
    c.env("DOCKER_BUILDKIT", "1")
        .args(["build", "--network", "none", "-q"])
        .arg(ctx);
    c
}

/// Forgets BuildKit's cache and the images built before, so that the next build is cold.
fn docker_reset(built: &mut Vec<String>) {
    let mut rm = Command::new(DOCKER);
    rm.args(["image", "rm", "-f", BUSYBOX]).args(built.iter());
    let _ = rm.output();
    built.clear();
    let out = Command::new(DOCKER)
        .args(["builder", "prune", "-af"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker builder prune -af: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image ids `docker build -q` printed, to remove them afterwards.
fn built_ids(batch: &Batch) -> impl Iterator<Item = String> + '_ {
    batch
        .clients
        .iter()
        .filter(|c| c.ok)
        .map(|c| c.stdout.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// hoist's figures from one batch through a fresh server.
struct Served {
    batch: Batch,
    idle_kib: u64,
    peak_kib: u64,
    hwm_kib: u64,
    /// Of the RSS after the builds, how much is transparent huge pages: memory an allocator
    /// that asks for them (MADV_HUGEPAGE) holds in 2 MiB pages.
    huge_kib: u64,
    after_kib: u64,
    log: String,
}

/// Starts a fresh server, runs one client per context at once, and stops the server.
fn through_server(ctxs: &[PathBuf], max_builds: usize, clients_dir: &Path) -> Served {
    let server = Server::start(max_builds);
    // Let start-up allocations settle before calling the server idle.
    std::thread::sleep(Duration::from_millis(500));
    let idle_kib = status_kib(server.pid(), "VmRSS").unwrap_or(0);
    let sampler = Sampler::start(server.pid());
    let commands = ctxs
        .iter()
        .enumerate()
        .map(|(i, ctx)| server.client(ctx, &clients_dir.join(format!("client-{i}"))))
        .collect();
    let batch = run_batch(commands);
    let peak_kib = sampler.peak_kib();
    let hwm_kib = status_kib(server.pid(), "VmHWM").unwrap_or(0);
    let huge_kib = proc_kib(server.pid(), "smaps_rollup", "AnonHugePages").unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let after_kib = status_kib(server.pid(), "VmRSS").unwrap_or(0);
    let tail = server.log_tail(20);
    let log = server.stop();
    Served {
        batch,
        idle_kib,
        peak_kib,
        hwm_kib,
        huge_kib,
        after_kib,
        log: if log.is_empty() { tail } else { log },
    }
}

/// BuildKit's figures from one cold batch through dockerd.
struct Peer {
    batch: Batch,
    idle_kib: u64,
    peak_kib: u64,
}

fn through_docker(ctxs: &[PathBuf], built: &mut Vec<String>) -> Peer {
    docker_reset(built);
    let pid = dockerd_pid();
    let idle_kib = pid.and_then(|p| status_kib(p, "VmRSS")).unwrap_or(0);
    let sampler = pid.map(Sampler::start);
    let batch = run_batch(ctxs.iter().map(|c| docker_build(c)).collect());
    let peak_kib = sampler.map_or(0, Sampler::peak_kib);
    built.extend(built_ids(&batch));
    Peer {
        batch,
        idle_kib,
        peak_kib,
    }
}

fn describe(batch: &Batch) -> String {
    let (fast, mid, slow) = batch.spread();
    format!(
        "wall {:>6.3}s  {}/{} ok  per client {fast:.3}/{mid:.3}/{slow:.3}s (min/median/max)",
        batch.wall,
        batch.succeeded(),
        batch.clients.len()
    )
}

/// Prints a failed batch's first failure; returns whether there was one.
fn report_failure(what: &str, batch: &Batch, server_log: Option<&str>) -> bool {
    let Some((i, client)) = batch.first_failure() else {
        return false;
    };
    println!(
        "\nFAILED: {what}: {}/{} clients failed; client {i}'s output:\n{}",
        batch.clients.len() - batch.succeeded(),
        batch.clients.len(),
        client.stderr.trim_end()
    );
    if let Some(log) = server_log {
        let lines: Vec<&str> = log.lines().collect();
        println!(
            "server log (last 20 lines):\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    let _ = std::io::stdout().flush();
    true
}

fn main() -> ExitCode {
    let args = args();
    ensure_busybox();
    let peers = args.peers && docker_works();
    if args.peers && !peers {
        println!("docker (BuildKit) is not reachable: only hoist's figures are printed");
    }
    let work = tempfile::tempdir().unwrap();
    let mut failed = false;
    let mut built = Vec::new();

    // Case 1: the same work on both sides, alternating, each cold.
    let mut hoist_walls = Vec::new();
    let mut docker_walls = Vec::new();
    let mut idle = Vec::new();
    let mut peak = 0u64;
    let mut hwm = 0u64;
    let mut huge = 0u64;
    let mut after = Vec::new();
    let mut docker_idle = Vec::new();
    let mut docker_peak = 0u64;
    println!(
        "case 1: {} concurrent S1 builds, cold, {} runs",
        args.builds, args.runs
    );
    for run in 0..args.runs {
        let ctxs = contexts(
            &work.path().join(format!("case1-{run}")),
            args.builds,
            &format!("run {run}"),
        );
        if peers {
            let p = through_docker(&ctxs, &mut built);
            println!("  run {run} BuildKit     {}", describe(&p.batch));
            report_failure("BuildKit, case 1", &p.batch, None);
            docker_walls.push(p.batch.wall);
            docker_idle.push(p.idle_kib);
            docker_peak = docker_peak.max(p.peak_kib);
        }
        let s = through_server(&ctxs, 16, &work.path().join(format!("case1-{run}-clients")));
        println!("  run {run} hoist serve  {}", describe(&s.batch));
        failed |= report_failure("hoist serve, case 1", &s.batch, Some(&s.log));
        hoist_walls.push(s.batch.wall);
        idle.push(s.idle_kib);
        peak = peak.max(s.peak_kib);
        hwm = hwm.max(s.hwm_kib);
        huge = huge.max(s.huge_kib);
        after.push(s.after_kib);
    }

    // Case 2: more builds than slots.
    println!(
        "case 2: {} concurrent S1 builds, cold, --max-builds 16",
        args.many
    );
    let ctxs = contexts(&work.path().join("case2"), args.many, "many");
    let docker_many = peers.then(|| {
        let p = through_docker(&ctxs, &mut built);
        println!("  BuildKit     {}", describe(&p.batch));
        report_failure("BuildKit, case 2", &p.batch, None);
        docker_peak = docker_peak.max(p.peak_kib);
        p.batch
    });
    let many = through_server(&ctxs, 16, &work.path().join("case2-clients"));
    println!("  hoist serve  {}", describe(&many.batch));
    failed |= report_failure("hoist serve, case 2", &many.batch, Some(&many.log));
    peak = peak.max(many.peak_kib);
    hwm = hwm.max(many.hwm_kib);
    huge = huge.max(many.huge_kib);
    if peers {
        let mut rm = Command::new(DOCKER);
        rm.args(["image", "rm", "-f"]).args(built.iter());
        let _ = rm.output();
    }

    // Reference: the engine without the server, one process per build over one root.
    let local = args.local.then(|| {
        let root = work.path().join("local-root");
        let ctxs = contexts(&work.path().join("local"), args.builds, "local");
        let commands = ctxs
            .iter()
            .map(|ctx| {
                let mut c = Command::new(HOIST);
                c.args(["build", "--progress=plain", "--network=none", "--root"])
                    .arg(&root)
                    .arg(ctx);
                c
            })
            .collect();
        let batch = run_batch(commands);
        println!(
            "reference: {} concurrent in-process `hoist build`, one root, cold: {}",
            args.builds,
            describe(&batch)
        );
        report_failure("in-process hoist build (reference)", &batch, None);
        batch
    });

    // The table.
    let hoist16 = median(hoist_walls);
    println!("\nhoist serve against docker 20.10's BuildKit (in dockerd), this run:");
    println!(
        "{:<40} {:>14} {:>14} {:>9}  target",
        "figure", "hoist serve", "BuildKit", "ratio"
    );
    let docker16 = (!docker_walls.is_empty()).then(|| median(docker_walls));
    println!(
        "{:<40} {:>13.3}s {:>14} {:>9}  ≤ 0.50× BuildKit (issue: BuildKit {BUILDKIT_16_ISSUE:.2} s, so ≤ {:.3} s)",
        format!(
            "{} concurrent S1, cold (median of {})",
            args.builds, args.runs
        ),
        hoist16,
        docker16.map_or("-".to_owned(), |d| format!("{d:.3}s")),
        docker16.map_or("-".to_owned(), |d| format!("{:.2}×", hoist16 / d)),
        BUILDKIT_16_ISSUE / 2.0,
    );
    println!(
        "{:<40} {:>14} {:>14} {:>9}  {}/{} succeed",
        format!("{} concurrent S1, cold: succeeded", args.many),
        format!("{}/{}", many.batch.succeeded(), args.many),
        docker_many.as_ref().map_or("-".to_owned(), |b| format!(
            "{}/{}",
            b.succeeded(),
            args.many
        )),
        "",
        args.many,
        args.many
    );
    println!(
        "{:<40} {:>13.3}s {:>14} {:>9}  -",
        format!("{} concurrent S1, cold: wall", args.many),
        many.batch.wall,
        docker_many
            .as_ref()
            .map_or("-".to_owned(), |b| format!("{:.3}s", b.wall)),
        docker_many.as_ref().map_or("-".to_owned(), |b| format!(
            "{:.2}×",
            many.batch.wall / b.wall
        )),
    );
    let dockerd_idle =
        (!docker_idle.is_empty()).then(|| median(docker_idle.iter().map(|k| *k as f64).collect()));
    println!(
        "{:<40} {:>10.1} MiB {:>14} {:>9}  ≤ 35 MiB (buildkitd: 70–150 MiB)",
        "server RSS idle (median)",
        mib(median(idle.iter().map(|k| *k as f64).collect()) as u64),
        dockerd_idle.map_or("-".to_owned(), |k| format!("{:.1} MiB", k / 1024.0)),
        ""
    );
    println!(
        "{:<40} {:>10.1} MiB {:>14} {:>9}  (buildkitd: 70–150 MiB)",
        "server RSS peak (20 ms samples)",
        mib(peak),
        if peers {
            format!("{:.1} MiB", mib(docker_peak))
        } else {
            "-".to_owned()
        },
        ""
    );
    println!(
        "{:<40} {:>10.1} MiB {:>14} {:>9}",
        "server VmHWM",
        mib(hwm),
        "",
        ""
    );
    println!(
        "{:<40} {:>10.1} MiB {:>14} {:>9}  (MIMALLOC_ALLOW_THP={})",
        "server AnonHugePages after builds (max)",
        mib(huge),
        "",
        "",
        std::env::var("MIMALLOC_ALLOW_THP").unwrap_or_else(|_| "unset".to_owned())
    );
    println!(
        "{:<40} {:>10.1} MiB {:>14} {:>9}",
        "server RSS after case 1 (median)",
        mib(median(after.iter().map(|k| *k as f64).collect()) as u64),
        "",
        ""
    );
    println!(
        "{:<40} {:>10.1} MiB {:>14} {:>9}",
        format!("server RSS after case 2"),
        mib(many.after_kib),
        "",
        ""
    );
    if let Some(local) = &local {
        println!(
            "{:<40} {:>13.3}s {:>14} {:>9}  (reference, no target)",
            format!("{} in-process builds, one root", args.builds),
            local.wall,
            "",
            format!("{:.2}×", hoist16 / local.wall)
        );
    }
    if peers {
        println!("BuildKit's column is dockerd's: docker 20.10 runs BuildKit inside dockerd.");
    }
    if failed {
        println!("\nhoist serve failed builds: see FAILED above");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
