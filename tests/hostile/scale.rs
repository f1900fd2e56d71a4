//! Inputs of hostile size: huge Dockerfiles, many ENV lines, a RUN line of many megabytes.
//!
//! Each build runs under GNU time (Debian package `time`), which reports the build's peak
//! resident memory, and under a watchdog that kills the build's process group when it runs
//! far past what it needs, so that a build that would take hours fails the test instead.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// GNU time: `-f %M` prints the peak resident set size of the command, in KiB.
const GNU_TIME: &str = "/usr/bin/time";

/// The peak resident memory allowed to a build of a 50 MB Dockerfile: several times the file,
/// which is what holding its text, its syntax tree and the image config it makes costs. Before
/// these builds were fixed they took 750 to 900 MiB.
const RSS_LIMIT_KIB: u64 = 400 * 1024;

/// A build that ended (or was killed by the watchdog).
struct Finished {
    status: ExitStatus,
    stderr: String,
    peak_rss_kib: u64,
}

/// Builds `dockerfile` in a fresh context and state root with `args`, under GNU time, and kills
/// it (its whole process group) when it runs past `watchdog`.
fn build(context: &Path, dockerfile: &str, args: &[&str], watchdog: Duration) -> Finished {
    use std::os::unix::process::CommandExt as _;
    assert!(
        Path::new(GNU_TIME).exists(),
        "{GNU_TIME} is missing: apt-get install time"
    );
    fs_err::write(context.join("Dockerfile"), dockerfile).unwrap();
    let root = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let rss = logs.path().join("rss");
    let stderr = logs.path().join("stderr");
    let mut child = Command::new(GNU_TIME)
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(root.path())
        .arg("--progress=plain")
        .args(args)
        .arg(context)
        .stdout(std::process::Stdio::null())
        .stderr(fs_err::File::create(&stderr).unwrap().into_file())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > watchdog {
            let group = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = child.wait();
            panic!(
                "the build of a {} byte Dockerfile was still running after {watchdog:?} and was \
                 killed; it takes seconds when the work grows linearly with the file",
                dockerfile.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = fs_err::read_to_string(&stderr).unwrap();
    // GNU time writes "Command exited with non-zero status N" before the figure on a failure.
    let peak_rss_kib = fs_err::read_to_string(&rss)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no peak RSS from {GNU_TIME}; build stderr:\n{stderr}"));
    Finished {
        status,
        stderr,
        peak_rss_kib,
    }
}

/// The image config in an OCI layout directory written by `-o type=oci,dest=DIR`.
fn oci_config(layout: &Path) -> serde_json::Value {
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs_err::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    blob(manifest["config"]["digest"].as_str().unwrap())
}

fn assert_built(finished: &Finished) {
    assert!(
        finished.status.success(),
        "hoist build failed:\n{}",
        finished.stderr
    );
}

fn assert_rss_within_limit(finished: &Finished, what: &str) {
    assert!(
        finished.peak_rss_kib <= RSS_LIMIT_KIB,
        "building {what} peaked at {} MiB of resident memory, over the {} MiB allowed",
        finished.peak_rss_kib / 1024,
        RSS_LIMIT_KIB / 1024
    );
}

#[test]
fn two_hundred_thousand_env_lines_build_without_quadratic_time() {
    // Each ENV line used to copy and rescan every variable set before it: 16k lines took
    // 3.7 s, and 200k lines about ten minutes. Linear, they take seconds.
    const LINES: usize = 200_000;
    let mut dockerfile = String::from("FROM scratch\n");
    for i in 0..LINES {
        writeln!(dockerfile, "ENV K{i}=v{i}").unwrap();
    }
    dockerfile.push_str("ENV LAST=${K199999}-${K0}\n");
    let context = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let output = format!("type=oci,dest={}", layout.path().display());
    let finished = build(
        context.path(),
        &dockerfile,
        &["-o", &output],
        Duration::from_secs(120),
    );
    assert_built(&finished);
    let config = oci_config(layout.path());
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // PATH (which every Linux stage gets), the lines, and LAST.
    assert_eq!(env.len(), LINES + 2);
    assert_eq!(env[1], "K0=v0");
    assert_eq!(env[LINES], "K199999=v199999");
    assert_eq!(env[LINES + 1], "LAST=v199999-v0");
    assert_eq!(
        config["history"].as_array().unwrap().len(),
        LINES + 1,
        "one history entry per ENV line"
    );
}

#[test]
fn a_50_mb_heredoc_builds_in_bounded_memory() {
    // The body was copied a dozen times over: into the logical line, the heredoc, the expanded
    // file, the split words nobody read, the op's encoding for its digest.
    let line = "a line of the file that a COPY heredoc writes, about eighty bytes in all\n";
    let body = line.repeat(50_000_000 / line.len());
    let dockerfile = format!("FROM scratch\nCOPY <<EOF /big.txt\n{body}EOF\n");
    let context = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let finished = build(
        context.path(),
        &dockerfile,
        &["-o", &output],
        Duration::from_secs(300),
    );
    assert_built(&finished);
    let written = fs_err::read(dest.path().join("big.txt")).unwrap();
    assert!(
        written == body.as_bytes(),
        "big.txt is not the heredoc's body"
    );
    assert_rss_within_limit(&finished, "a 50 MB COPY heredoc");
}

#[test]
fn a_50_mb_dockerfile_of_long_env_and_label_lines_builds_in_bounded_memory() {
    // Every value was copied into each step's variable scope, the history, a JSON tree of the
    // config, a second tree to sort it, the serialized bytes, and the config read back.
    const PAIRS: usize = 250;
    let value = "v".repeat(100_000);
    let mut dockerfile = String::from("FROM scratch\n");
    for i in 0..PAIRS {
        writeln!(dockerfile, "ENV E{i}={value}\nLABEL l{i}=\"{value}\"").unwrap();
    }
    assert!(dockerfile.len() > 50_000_000);
    let context = tempfile::tempdir().unwrap();
    let layout = tempfile::tempdir().unwrap();
    let output = format!("type=oci,dest={}", layout.path().display());
    let finished = build(
        context.path(),
        &dockerfile,
        &["-o", &output],
        Duration::from_secs(300),
    );
    assert_built(&finished);
    let config = oci_config(layout.path());
    let env = config["config"]["Env"].as_array().unwrap();
    assert_eq!(env.len(), PAIRS + 1, "PATH and one variable per ENV line");
    assert_eq!(env[PAIRS], format!("E{}={value}", PAIRS - 1).as_str());
    let labels = config["config"]["Labels"].as_object().unwrap();
    assert_eq!(labels.len(), PAIRS);
    assert_eq!(labels["l0"], value.as_str());
    assert_rss_within_limit(&finished, "50 MB of long ENV and LABEL lines");
}
