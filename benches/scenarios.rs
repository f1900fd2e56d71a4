//! BuildKit's build benchmark scenarios, run with hoist and, where installed, with buildah and
//! docker (BuildKit) on the same Dockerfiles and contexts. Prints the median wall time and the
//! peak memory of each, and hoist's figures next to the issue's targets. Asserts nothing.
//!
//! ```text
//! cargo bench -p hoist --bench scenarios -- [--runs N] [--only S1,S4] [--no-peers]
//! ```
//!
//! Needs root, and a registry on 127.0.0.1:5000 holding `library/busybox:latest`
//! (`../shared/peers/setup.sh` puts one there; else this runner builds and pushes one from
//! Debian's busybox-static with hoist itself).
//!
//! - S1: `FROM busybox`, `COPY foo /etc/foo`, `RUN cp /etc/foo /etc/bar`, cold and warm.
//! - S2: S1 plus `FROM scratch` and `COPY --from`.
//! - S3: `WORKDIR /src`, `COPY . .` of a 162 MiB context, `RUN du -sh . && find . | wc -l`.
//! - S4: S3 rebuilt unchanged, after a touch, and after a small file is edited.
//! - S5: four independent stages of about 1 s of shell CPU work, merged with `COPY --from`,
//!   against the same four stages run one at a time.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)] // a report, not library code

mod common;

use common::{BUSYBOX, big_context, ensure_busybox, median, write};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const REGISTRY: &str = "127.0.0.1:5000";

/// BuildKit v0.24 on this VM and the issue's targets, in seconds.
const TARGETS: &[(&str, f64, f64)] = &[
    ("S1 cold", 0.189, 0.095),
    ("S1 warm", 0.083, 0.025),
    ("S2 cold", 0.192, 0.10),
    ("S3 cold", 4.06, 2.0),
    ("S4 unchanged", 0.253, 0.05),
    ("S4 touch", 0.329, 0.05),
    ("S4 edit", 2.61, 1.3),
];

struct Measure {
    seconds: f64,
    peak_kib: u64,
}

/// Runs a command under GNU time; returns wall seconds and peak RSS.
fn timed(cmd: &mut Command) -> Measure {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    let out = wrapped
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs_err::read_to_string(report.path()).unwrap();
    let mut parts = text.split_whitespace();
    let seconds: f64 = parts.next().unwrap().parse().unwrap();
    let peak_kib: u64 = parts.next().unwrap().parse().unwrap();
    Measure { seconds, peak_kib }
}

/// Wall time measured with a monotonic clock around the whole run (GNU time's own %e has
/// only 10 ms resolution), peak memory from GNU time.
fn measure(cmd: &mut Command) -> Measure {
    let start = std::time::Instant::now();
    let m = timed(cmd);
    Measure {
        seconds: start.elapsed().as_secs_f64(),
        peak_kib: m.peak_kib,
    }
}

struct Args {
    runs: usize,
    only: Option<Vec<String>>,
    peers: bool,
}

fn args() -> Args {
    let mut a = Args {
        runs: 5,
        only: None,
        peers: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => a.runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(5),
            "--only" => a.only = it.next().map(|s| s.split(',').map(str::to_owned).collect()),
            "--no-peers" => a.peers = false,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// A builder under test.
trait Builder {
    fn name(&self) -> &'static str;
    /// Forgets every cached result and image.
    fn reset(&self);
    fn build(&self, context: &Path, extra: &[&str]) -> Command;
}

struct Hoist {
    root: PathBuf,
}

impl Builder for Hoist {
    fn name(&self) -> &'static str {
        "hoist"
    }
    fn reset(&self) {
        let _ = fs_err::remove_dir_all(&self.root);
    }
    fn build(&self, context: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hoist"));
        c.args(["build", "--progress=plain", "--network=none", "--root"])
            .arg(&self.root)
            .args(extra)
            .arg(context);
        c
    }
}

struct Buildah;

impl Builder for Buildah {
    fn name(&self) -> &'static str {
        "buildah"
    }
    fn reset(&self) {
        let _ = Command::new("buildah").args(["rm", "--all"]).output();
        let _ = Command::new("buildah")
            .args(["rmi", "--all", "--force"])
            .output();
    }
    fn build(&self, context: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new("buildah");
        c.args(["bud", "--layers", "--network", "none", "-q"])
            .args(extra)
            .arg(context);
        c
    }
}

struct Docker;

impl Builder for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }
    fn reset(&self) {
        let _ = Command::new("sh")
            .args(["-c", "/usr/bin/docker image rm -f $(/usr/bin/docker image ls -aq) 2>/dev/null; /usr/bin/docker builder prune -af"])
            .output();
    }
    fn build(&self, context: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network", "none", "-q"])
            .args(extra)
            .arg(context);
        c
    }
}

/// About one second of busybox shell arithmetic on this machine.
fn loop_count() -> u64 {
    let n = 200_000u64;
    let start = std::time::Instant::now();
    let status = Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do i=$((i+1)); done"),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let per_second = (n as f64 / start.elapsed().as_secs_f64()) as u64;
    per_second.max(1)
}

fn main() {
    let args = args();
    let wanted = |s: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|w| s.starts_with(w.as_str())))
    };
    ensure_busybox();
    let work = tempfile::tempdir().unwrap();
    let hoist = Hoist {
        root: work.path().join("hoist-root"),
    };
    let mut builders: Vec<Box<dyn Builder>> = vec![Box::new(hoist)];
    if args.peers {
        if Path::new("/usr/bin/buildah").exists() {
            builders.push(Box::new(Buildah));
        }
        if Path::new("/usr/bin/docker").exists() && Path::new("/var/run/docker.sock").exists() {
            builders.push(Box::new(Docker));
        }
    }
    let _ = REGISTRY;

    // Contexts.
    let s1 = work.path().join("s1");
    write(&s1.join("foo"), "foo\n");
    write(
        &s1.join("Dockerfile"),
        &format!("FROM {BUSYBOX}\nCOPY foo /etc/foo\nRUN cp /etc/foo /etc/bar\n"),
    );
    let s2 = work.path().join("s2");
    write(&s2.join("foo"), "foo\n");
    write(
        &s2.join("Dockerfile"),
        &format!(
            "FROM {BUSYBOX}\nCOPY foo /etc/foo\nRUN cp /etc/foo /etc/bar\nFROM scratch\nCOPY --from=0 /etc/bar /bar\n"
        ),
    );
    let s3 = work.path().join("s3");
    if wanted("S3") || wanted("S4") {
        big_context(&s3);
        write(
            &s3.join("Dockerfile"),
            &format!("FROM {BUSYBOX}\nWORKDIR /src\nCOPY . .\nRUN du -sh . && find . | wc -l\n"),
        );
    }
    let n = loop_count();
    let stage = |name: &str| {
        format!(
            "FROM {BUSYBOX} AS {name}\nRUN i=0; while [ $i -lt {n} ]; do i=$((i+1)); done; echo {name} > /{name}\n"
        )
    };
    let s5 = work.path().join("s5");
    write(
        &s5.join("Dockerfile"),
        &format!(
            "{}{}{}{}FROM {BUSYBOX}\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nCOPY --from=c /c /c\nCOPY --from=d /d /d\n",
            stage("a"),
            stage("b"),
            stage("c"),
            stage("d")
        ),
    );

    let mut results: BTreeMap<(String, &'static str), (f64, u64)> = BTreeMap::new();
    for builder in &builders {
        let b = builder.as_ref();
        let mut record = |scenario: &str, runs: Vec<Measure>| {
            let peak = runs.iter().map(|m| m.peak_kib).max().unwrap_or(0);
            let secs = median(runs.iter().map(|m| m.seconds).collect());
            println!(
                "{:<8} {:<14} median {:>7.3}s  peak {:>7.1} MiB",
                b.name(),
                scenario,
                secs,
                peak as f64 / 1024.0
            );
            let _ = std::io::stdout().flush();
            results.insert((scenario.to_owned(), b.name()), (secs, peak));
        };
        for (scenario, dir) in [("S1", &s1), ("S2", &s2)] {
            if !wanted(scenario) {
                continue;
            }
            let cold = (0..args.runs)
                .map(|_| {
                    b.reset();
                    measure(&mut b.build(dir, &[]))
                })
                .collect();
            record(&format!("{scenario} cold"), cold);
            let warm = (0..args.runs)
                .map(|_| measure(&mut b.build(dir, &[])))
                .collect();
            record(&format!("{scenario} warm"), warm);
        }
        if wanted("S3") || wanted("S4") {
            let cold = (0..args.runs.min(3))
                .map(|_| {
                    b.reset();
                    measure(&mut b.build(&s3, &[]))
                })
                .collect();
            record("S3 cold", cold);
            let unchanged = (0..args.runs)
                .map(|_| measure(&mut b.build(&s3, &[])))
                .collect();
            record("S4 unchanged", unchanged);
            let touch = (0..args.runs)
                .map(|_| {
                    let f = s3.join("small/07/00007.txt");
                    fs_err::File::options()
                        .write(true)
                        .open(&f)
                        .unwrap()
                        .set_modified(std::time::SystemTime::now())
                        .unwrap();
                    measure(&mut b.build(&s3, &[]))
                })
                .collect();
            record("S4 touch", touch);
            let edit = (0..args.runs)
                .map(|i| {
                    write(
                        &s3.join("small/08/00008.txt"),
                        &format!("edit {i} {}\n", b.name()),
                    );
                    measure(&mut b.build(&s3, &[]))
                })
                .collect();
            record("S4 edit", edit);
        }
        if wanted("S5") {
            let together = (0..args.runs.min(3))
                .map(|_| {
                    b.reset();
                    measure(&mut b.build(&s5, &[]))
                })
                .collect();
            record("S5", together);
        }
    }

    if wanted("S5") {
        // The same four stages one at a time: hoist with --max-parallelism 1.
        let one = Hoist {
            root: work.path().join("hoist-serial"),
        };
        let serial: Vec<Measure> = (0..args.runs.min(3))
            .map(|_| {
                one.reset();
                measure(&mut one.build(&s5, &["--max-parallelism", "1"]))
            })
            .collect();
        let serial = median(serial.iter().map(|m| m.seconds).collect());
        if let Some((parallel, _)) = results.get(&("S5".to_owned(), "hoist")) {
            println!(
                "\nS5: hoist {parallel:.3}s with both cores, {serial:.3}s one stage at a time: ratio {:.2} (target ≤ 0.6)",
                parallel / serial
            );
        }
    }

    println!("\nhoist against BuildKit v0.24's figures on this VM and the targets:");
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>12}",
        "scenario", "hoist", "BuildKit", "target", "hoist/target"
    );
    for (scenario, buildkit, target) in TARGETS {
        if let Some((secs, _)) = results.get(&((*scenario).to_owned(), "hoist")) {
            println!(
                "{scenario:<14} {secs:>8.3}s {buildkit:>8.3}s {target:>8.3}s {:>12.2}",
                secs / target
            );
        }
    }
    for peer in ["buildah", "docker"] {
        let pairs: Vec<String> = TARGETS
            .iter()
            .filter_map(|(s, _, _)| {
                let h = results.get(&((*s).to_owned(), "hoist"))?.0;
                let p = results.get(&((*s).to_owned(), peer))?.0;
                Some(format!("{s} {:.2}x", h / p))
            })
            .collect();
        if !pairs.is_empty() {
            println!("hoist/{peer}: {}", pairs.join(", "));
        }
    }
}
