//! Issue #14's CI cache benchmark: two CI runners, each an empty state root on this machine,
//! sharing one loopback registry; runner A exports the build cache, runner B builds from it.
//! The same cases run with docker 20.10's BuildKit in the same run. Prints wall times, ratios
//! against the issue's target (hoist ≤ 0.5× BuildKit), export times and the bytes that went
//! to and from the registry. Asserts nothing about speed; a build that fails ends the bench.
//!
//! ```text
//! cargo bench -p hoist --bench ci -- [--runs N] [--no-peers] [--steps]
//! ```
//!
//! The context is BuildKit's S3 context (162 MiB, see `common::big_context`); the Dockerfile:
//!
//! ```text
//! FROM <registry>/library/busybox:latest
//! WORKDIR /src
//! COPY . .
//! RUN --mount=type=cache,target=/cache du -sh . > /cache/du && find . | wc -l > /files
//! ARG VERSION=1
//! RUN echo "$VERSION" > /version
//! ```
//!
//! The build-arg is a version stamp declared late, as CI pipelines pass a commit id or a
//! version: changing it changes the key of the last RUN only, which then runs on top of the
//! layers the cache holds (so a builder must fetch them to run it).
//!
//! - Runner A: cold (empty root; the base image not local), builds, pushes the image and
//!   exports the cache with every step (`mode=max`). Then "no-op export": A again, unchanged,
//!   on its now warm root, building, pushing and exporting again: a whole build whose cache
//!   export has nothing new.
//! - Runner B, each run from a fresh empty root, `--cache-from` A's cache, pushing the image
//!   to another tag: (1) the same commit; (2) one small file edited (a different content each
//!   run, so each run makes a new layer); (3) the build-arg changed (a different value each run).
//!
//! The registry is the bench's own `docker-registry` (CNCF distribution, as the peers' one) on
//! a free loopback port, with a throw-away storage directory, so that every cold push really
//! sends its blobs and no other process's traffic is counted. The busybox base image is
//! copied into it from the peers' registry on 127.0.0.1:5000 (or built there by
//! `common::ensure_busybox`). Builders reach it through a counting TCP relay in this process:
//! "pulled" is every byte the registry sent to the builder, "pushed" every byte the builder
//! sent to it, HTTP headers included, for the whole command. The relay copies each byte once
//! more in user space; both builders pay that.
//!
//! BuildKit: docker 20.10's built-in BuildKit (`/usr/bin/docker`, `DOCKER_BUILDKIT=1`), the
//! only BuildKit on this machine. It cannot export a registry cache with `mode=max` (that
//! needs buildx with a docker-container driver, i.e. the buildx plugin and a BuildKit image,
//! neither installable here); it exports the inline cache (`BUILDKIT_INLINE_CACHE=1`) in the
//! image it pushes, which has `mode=min` semantics: the steps of the final image. In this
//! single-stage Dockerfile those are all the steps, so runner B can hit every step with
//! either. BuildKit's runner A is `docker build` plus `docker push` (the push is its cache
//! export); runner B is `docker builder prune -af` and the removal of the bench's images
//! (outside the timing), then `docker build --cache-from A's image` plus `docker push`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss
)] // a report, not library code

mod common;

use common::{BUSYBOX, big_context, ensure_busybox, median, write};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HOIST: &str = env!("CARGO_BIN_EXE_hoist");
const DOCKER: &str = "/usr/bin/docker";
/// The issue's figures for BuildKit v0.24 on this kind of machine, in seconds.
const ISSUE_SAME_COMMIT: f64 = 1.63;
const ISSUE_NOOP_EXPORT: f64 = 0.31;
/// The issue's target: hoist's time over BuildKit's.
const TARGET_RATIO: f64 = 0.5;

struct Args {
    runs: usize,
    peers: bool,
    /// Print hoist's step lines (names and times) of each case's last run.
    steps: bool,
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        peers: true,
        steps: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                a.runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or(3);
            }
            "--no-peers" => a.peers = false,
            "--steps" => a.steps = true,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// Bytes through the relay: to the registry (pushed) and from it (pulled).
#[derive(Clone, Default)]
struct Counters {
    pushed: Arc<AtomicU64>,
    pulled: Arc<AtomicU64>,
}

impl Counters {
    fn read(&self) -> (u64, u64) {
        (
            self.pulled.load(Ordering::Relaxed),
            self.pushed.load(Ordering::Relaxed),
        )
    }
}

/// Copies `from` to `to` until EOF, counting, then passes the EOF on.
fn pipe(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A TCP relay on a free loopback port to `target`, counting the bytes each way.
fn relay(target: String, counters: Counters) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            // Without these, Nagle's algorithm and delayed acks add up to 40 ms to small
            // requests that the builders send straight to a registry without waiting.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = Arc::clone(&counters.pushed);
            let down = Arc::clone(&counters.pulled);
            std::thread::spawn(move || pipe(client, server, &up));
            std::thread::spawn(move || pipe(s2, c2, &down));
        }
    });
    addr
}

/// The bench's registry: `docker-registry serve` on a free loopback port over a temporary
/// directory, reached through a counting relay.
struct Registry {
    child: Child,
    /// The relay's `127.0.0.1:PORT`, which every image reference names.
    addr: String,
    counters: Counters,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: apt-get install docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let direct = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        write(
            &config,
            &format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {direct}\n",
                dir.path().join("data").display()
            ),
        );
        let log = fs_err::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log.into_parts().0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&direct).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not start on {direct}; its log: {}",
                dir.path().join("registry.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let counters = Counters::default();
        let addr = relay(direct, counters.clone());
        Self {
            child,
            addr,
            counters,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command's figures.
struct Run {
    seconds: f64,
    pulled: u64,
    pushed: u64,
    /// hoist: the `[internal] exporting cache` step's own time, from its progress; docker:
    /// the time of `docker push`, which carries the inline cache.
    export: Option<f64>,
    /// What `export` is called in the per-run lines.
    export_is: &'static str,
    stderr: String,
}

/// Runs `cmd` to its end; fails the bench, with its output, when it fails.
fn run(cmd: &mut Command, registry: &Registry) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let before = registry.counters.read();
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let seconds = start.elapsed().as_secs_f64();
    let after = registry.counters.read();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    Run {
        seconds,
        pulled: after.0 - before.0,
        pushed: after.1 - before.1,
        export: export_seconds(&stderr),
        export_is: "export",
        stderr,
    }
}

/// Two commands run one after the other, as one CI step (`docker build` then `docker push`).
fn both(first: Run, second: Run) -> Run {
    Run {
        seconds: first.seconds + second.seconds,
        pulled: first.pulled + second.pulled,
        pushed: first.pushed + second.pushed,
        export: Some(second.seconds),
        export_is: "push",
        stderr: format!("{}{}", first.stderr, second.stderr),
    }
}

/// The time of the cache export step in hoist's plain progress: its `DONE 1.234s` line.
fn export_seconds(progress: &str) -> Option<f64> {
    let id = progress.lines().find_map(|l| {
        let (id, rest) = l.split_once(' ')?;
        rest.starts_with("[internal] exporting cache")
            .then(|| id.to_owned())
    })?;
    progress.lines().find_map(|l| {
        let rest = l.strip_prefix(&id)?.strip_prefix(" DONE ")?;
        rest.split_whitespace()
            .next()?
            .trim_end_matches('s')
            .parse()
            .ok()
    })
}

/// hoist's own account of the cache export, from its log line `#N TIME … N blobs sent (B
/// bytes) …`.
fn export_line(progress: &str) -> Option<String> {
    let line = progress.lines().find(|l| l.contains("blobs sent"))?;
    let mut parts = line.splitn(3, ' ');
    parts.nth(2).map(|rest| rest.trim().to_owned())
}

/// hoist's progress cut to one line per step (its end and its name) plus the lines outside
/// steps: where a run's time went.
fn step_lines(progress: &str) -> Vec<String> {
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in progress.lines() {
        match line.split_once(' ') {
            Some((id, rest)) if id.starts_with('#') => {
                if rest.starts_with('[') {
                    names.insert(id, rest);
                } else if ["DONE", "CACHED", "ERROR"]
                    .iter()
                    .any(|s| rest.starts_with(s))
                {
                    let name = names.get(id).copied().unwrap_or("");
                    out.push(format!("{rest:<44} {name}"));
                }
            }
            _ => out.push(line.to_owned()),
        }
    }
    out
}

fn print_steps(case: &str, r: &Run) {
    println!("           hoist's steps, {case}:");
    for line in step_lines(&r.stderr) {
        println!("             {line}");
    }
}

fn mb(bytes: u64) -> String {
    if bytes < 1_000_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// The medians of several runs of one case.
struct Case {
    seconds: f64,
    pulled: u64,
    pushed: u64,
    export: Option<f64>,
    runs: usize,
}

fn summarize(runs: &[Run]) -> Case {
    let median_u64 = |f: fn(&Run) -> u64| {
        let mut v: Vec<u64> = runs.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let exports: Vec<f64> = runs.iter().filter_map(|r| r.export).collect();
    Case {
        seconds: median(runs.iter().map(|r| r.seconds).collect()),
        pulled: median_u64(|r| r.pulled),
        pushed: median_u64(|r| r.pushed),
        export: (!exports.is_empty()).then(|| median(exports)),
        runs: runs.len(),
    }
}

/// One row of the table: its name, its case, and the issue's BuildKit figure if it gives one.
type Row = (&'static str, fn(&Results) -> &Case, Option<f64>);

/// Every case of one builder.
struct Results {
    a_cold: Case,
    a_noop: Case,
    same: Case,
    edit: Case,
    arg: Case,
}

/// The context, its Dockerfile and the file that case 2 edits.
struct Project {
    dir: PathBuf,
    edited: PathBuf,
    original: String,
}

impl Project {
    fn new(dir: PathBuf, registry: &str) -> Self {
        big_context(&dir);
        write(
            &dir.join("Dockerfile"),
            &format!(
                "FROM {registry}/library/busybox:latest\n\
                 WORKDIR /src\n\
                 COPY . .\n\
                 RUN --mount=type=cache,target=/cache du -sh . > /cache/du && find . | wc -l > /files\n\
                 ARG VERSION=1\n\
                 RUN echo \"$VERSION\" > /version\n"
            ),
        );
        let edited = dir.join("small/08/00008.txt");
        let original = fs_err::read_to_string(&edited).unwrap();
        Self {
            dir,
            edited,
            original,
        }
    }

    /// A new commit with one small file changed: a new content for each `tag`.
    fn edit(&self, tag: &str) {
        write(&self.edited, &format!("edited by {tag}\n"));
    }

    fn restore(&self) {
        write(&self.edited, &self.original);
    }
}

fn hoist_build(root: &Path, ctx: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(HOIST);
    c.args(["build", "--progress=plain", "--network=none", "--root"])
        .arg(root)
        .args(extra)
        .arg(ctx);
    c
}

fn run_hoist(p: &Project, registry: &Registry, work: &Path, args: &Args) -> Results {
    let runs = args.runs;
    let reg = &registry.addr;
    let image = format!("{reg}/ci/hoist-app");
    let cache = format!("{reg}/ci/hoist-cache:main");
    let cache_to = format!("type=registry,ref={cache},mode=max");
    let root_a = work.join("hoist-a");
    let main = format!("{image}:main");
    let a_args = ["-t", &main, "--push", "--cache-to", &cache_to];

    let cold = run(&mut hoist_build(&root_a, &p.dir, &a_args), registry);
    report_run("hoist", "A cold", &cold);
    if args.steps {
        print_steps("A cold", &cold);
    }
    if let Some(line) = export_line(&cold.stderr) {
        println!("           hoist's cache export: {line}");
    }
    let a_cold = summarize(&[cold]);
    let noop: Vec<Run> = (0..runs)
        .map(|_| {
            let r = run(&mut hoist_build(&root_a, &p.dir, &a_args), registry);
            report_run("hoist", "A no-op export", &r);
            r
        })
        .collect();
    if let Some(line) = noop.last().and_then(|r| export_line(&r.stderr)) {
        println!("           hoist's cache export: {line}");
    }
    if args.steps {
        print_steps("A no-op export", noop.last().unwrap());
    }
    let a_noop = summarize(&noop);

    let b = |case: &str, i: usize, extra: &[&str]| {
        let root = work.join(format!("hoist-b-{case}-{i}"));
        let tag = format!("{image}:b-{case}");
        let mut flags = vec!["--cache-from", &cache, "-t", &tag, "--push"];
        flags.extend_from_slice(extra);
        let r = run(&mut hoist_build(&root, &p.dir, &flags), registry);
        report_run("hoist", &format!("B {case}"), &r);
        if args.steps && i + 1 == runs {
            print_steps(&format!("B {case}"), &r);
        }
        let _ = fs_err::remove_dir_all(&root);
        r
    };
    let same: Vec<Run> = (0..runs).map(|i| b("same", i, &[])).collect();
    let edit: Vec<Run> = (0..runs)
        .map(|i| {
            p.edit(&format!("hoist run {i}"));
            b("edit", i, &[])
        })
        .collect();
    p.restore();
    let arg: Vec<Run> = (0..runs)
        .map(|i| {
            let v = format!("VERSION=hoist-{i}");
            b("arg", i, &["--build-arg", &v])
        })
        .collect();
    Results {
        a_cold,
        a_noop,
        same: summarize(&same),
        edit: summarize(&edit),
        arg: summarize(&arg),
    }
}

fn docker(args: &[&str]) -> Command {
    let mut c = Command::new(DOCKER);
    c.env("DOCKER_BUILDKIT", "1").args(args);
    c
}

/// Forgets BuildKit's build cache and the images this bench made or pulled: an empty runner.
fn docker_reset(images: &[&str]) {
    let _ = docker(&["image", "rm", "-f"]).args(images).output();
    let out = docker(&["builder", "prune", "-af"]).output().unwrap();
    assert!(
        out.status.success(),
        "docker builder prune -af: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_docker(p: &Project, registry: &Registry, runs: usize) -> Results {
    let reg = &registry.addr;
    let image = format!("{reg}/ci/docker-app");
    let main = format!("{image}:main");
    let base = format!("{reg}/library/busybox:latest");
    let ctx = p.dir.to_str().unwrap();
    let tag = |case: &str| format!("{image}:b-{case}");
    let all = [
        main.clone(),
        base.clone(),
        tag("same"),
        tag("edit"),
        tag("arg"),
    ];
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let build_push = |tag: &str, extra: &[&str]| {
        let mut build = docker(&["build", "--network", "none", "-q", "-t", tag]);
        build.args(extra).arg(ctx);
        let built = run(&mut build, registry);
        let pushed = run(&mut docker(&["push", "-q", tag]), registry);
        both(built, pushed)
    };
    let inline = ["--build-arg", "BUILDKIT_INLINE_CACHE=1"];

    docker_reset(&all);
    let cold = build_push(&main, &inline);
    report_run("BuildKit", "A cold", &cold);
    let a_cold = summarize(&[cold]);
    let noop: Vec<Run> = (0..runs)
        .map(|_| {
            let r = build_push(&main, &inline);
            report_run("BuildKit", "A no-op export", &r);
            r
        })
        .collect();
    let a_noop = summarize(&noop);

    let b = |case: &str, extra: &[&str]| {
        docker_reset(&all);
        let mut args = vec!["--cache-from", main.as_str()];
        args.extend_from_slice(extra);
        let r = build_push(&tag(case), &args);
        report_run("BuildKit", &format!("B {case}"), &r);
        r
    };
    let same: Vec<Run> = (0..runs).map(|_| b("same", &[])).collect();
    let edit: Vec<Run> = (0..runs)
        .map(|i| {
            p.edit(&format!("docker run {i}"));
            b("edit", &[])
        })
        .collect();
    p.restore();
    let arg: Vec<Run> = (0..runs)
        .map(|i| {
            let v = format!("VERSION=docker-{i}");
            b("arg", &["--build-arg", &v])
        })
        .collect();
    docker_reset(&all);
    Results {
        a_cold,
        a_noop,
        same: summarize(&same),
        edit: summarize(&edit),
        arg: summarize(&arg),
    }
}

fn report_run(builder: &str, case: &str, r: &Run) {
    let export = r
        .export
        .map(|e| format!("  {} {e:.3}s", r.export_is))
        .unwrap_or_default();
    println!(
        "{builder:<9} {case:<15} {:>7.3}s  pulled {:>9}  pushed {:>9}{export}",
        r.seconds,
        mb(r.pulled),
        mb(r.pushed)
    );
    let _ = std::io::stdout().flush();
}

/// Copies the busybox base image into the bench's registry.
fn seed_base(registry: &Registry) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{BUSYBOX}"))
        .arg(format!("docker://{}/library/busybox:latest", registry.addr))
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "copying {BUSYBOX} into the bench's registry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let args = args();
    ensure_busybox();
    let registry = Registry::start();
    seed_base(&registry);
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let project = Project::new(work.path().join("ctx"), &registry.addr);
    println!(
        "context: 162 MiB (S3), made in {:.1}s; registry {} (counted relay); {} runs per case",
        started.elapsed().as_secs_f64(),
        registry.addr,
        args.runs
    );

    let hoist = run_hoist(&project, &registry, work.path(), &args);
    let peers =
        args.peers && Path::new(DOCKER).exists() && Path::new("/var/run/docker.sock").exists();
    if args.peers && !peers {
        println!("no dockerd: BuildKit is left out (bash ../shared/peers/setup.sh starts one)");
    }
    let buildkit = peers.then(|| run_docker(&project, &registry, args.runs));

    println!();
    if buildkit.is_some() {
        println!(
            "BuildKit here is docker 20.10's built-in BuildKit with the inline cache \
             (BUILDKIT_INLINE_CACHE=1 + --cache-from IMAGE, mode=min semantics): registry cache \
             export with mode=max needs buildx, which is not installed and cannot be. \
             Unlike BuildKit v0.24 pushing straight from its cache, docker 20.10 pulls every \
             layer of a cache hit into its image store before it pushes; the issue's v0.24 \
             figures are beside the table."
        );
    }
    println!(
        "{:<22} {:>8} {:>9} {:>7} {:>8} {:>16} {:>12}",
        "case (median)", "hoist", "BuildKit", "ratio", "target", "issue's BuildKit", "hoist/issue"
    );
    let rows: [Row; 5] = [
        ("A cold (1 run)", |r| &r.a_cold, None),
        ("A no-op export", |r| &r.a_noop, Some(ISSUE_NOOP_EXPORT)),
        ("B same commit", |r| &r.same, Some(ISSUE_SAME_COMMIT)),
        ("B one file edited", |r| &r.edit, None),
        ("B build-arg changed", |r| &r.arg, None),
    ];
    for (name, pick, issue) in rows {
        let h = pick(&hoist).seconds;
        let (bk, ratio) = match &buildkit {
            Some(b) => {
                let s = pick(b).seconds;
                (format!("{s:.3}s"), format!("{:.2}", h / s))
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        let target = if name.starts_with("A cold") {
            "-".to_owned()
        } else {
            format!("≤{TARGET_RATIO:.2}")
        };
        let (issue, versus) = issue.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |s| (format!("{s:.2}s"), format!("{:.2}", h / s)),
        );
        println!("{name:<22} {h:>7.3}s {bk:>9} {ratio:>7} {target:>8} {issue:>16} {versus:>12}");
    }

    println!(
        "\nbytes through the registry relay (median; pulled = registry to builder, pushed = builder to registry):"
    );
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>12}",
        "case", "hoist pull", "hoist push", "BK pull", "BK push"
    );
    for (name, pick, _) in rows {
        let h = pick(&hoist);
        let (bp, bs) = buildkit.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |b| (mb(pick(b).pulled), mb(pick(b).pushed)),
        );
        println!(
            "{name:<22} {:>12} {:>12} {bp:>12} {bs:>12}",
            mb(h.pulled),
            mb(h.pushed)
        );
    }

    println!("\nexport times (median):");
    let fmt = |c: &Case| {
        c.export
            .map_or_else(|| "-".to_owned(), |e| format!("{e:.3}s"))
    };
    println!(
        "  hoist A cold:   the cache export step {} of the whole {:.3}s (the image push before it is not in it)",
        fmt(&hoist.a_cold),
        hoist.a_cold.seconds
    );
    println!(
        "  hoist A no-op:  the cache export step {} of the whole {:.3}s ({} runs)",
        fmt(&hoist.a_noop),
        hoist.a_noop.seconds,
        hoist.a_noop.runs
    );
    if let Some(b) = &buildkit {
        println!(
            "  BuildKit A cold:  docker push (image + inline cache) {} of the whole {:.3}s",
            fmt(&b.a_cold),
            b.a_cold.seconds
        );
        println!(
            "  BuildKit A no-op: docker push {} of the whole {:.3}s ({} runs)",
            fmt(&b.a_noop),
            b.a_noop.seconds,
            b.a_noop.runs
        );
    }
}
