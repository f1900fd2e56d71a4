//! How the frontend and a whole build scale with the size of a Dockerfile.
//!
//! 1. ENV lines: parse and lower `FROM scratch` plus N lines `ENV Ki=vi`, for N = 8k, 16k and
//!    400k, in this process. It prints the time per line and its ratio to the time per line at
//!    8k: 1.0 is linear; work that grows with the square of the file shows as a ratio near
//!    N / 8k (2 at 16k, 50 at 400k).
//! 2. 50 MB Dockerfiles: `hoist build` of a few shapes of 50 MB (one long COPY heredoc, long
//!    ENV and LABEL lines, short ENV lines), each in a fresh state root, under GNU time
//!    (`/usr/bin/time`, Debian package `time`). It prints the wall time and peak resident memory
//!    of each, and that memory as a multiple of the file's size. The `hoist` binary is the
//!    release build next to this benchmark (`cargo build --release --bin hoist` first), or
//!    `HOIST_BIN`.
//!
//! This is a benchmark, not a test: it prints figures and asserts nothing about them. Run it
//! with `cargo bench -p hoist-solver --bench scale`; `cargo test --benches` runs one quick pass
//! of part 1 only, to show that it still works.
// Printing the figures is what this program is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// The allocator the hoist binary ships with, so the figures are the ones users get.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hoist_solver::frontend::ResolvedImage;
use hoist_solver::{BuildOptions, ImageResolver, Platform};

const ENV_LINES: [usize; 3] = [8_000, 16_000, 400_000];
const RUNS: usize = 5;
/// The size of each Dockerfile of part 2.
const FILE_BYTES: usize = 50_000_000;

/// Every Dockerfile here starts `FROM scratch`, which needs no image.
struct NoImages;

impl ImageResolver for NoImages {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, hoist_solver::scheduler::BoxError> {
        Err(format!("the benchmark has no image {reference}").into())
    }
}

fn env_lines(n: usize) -> String {
    let mut text = String::from("FROM scratch\n");
    for i in 0..n {
        let _ = writeln!(text, "ENV K{i}=v{i}");
    }
    text
}

/// Parses and lowers `source`; returns the time it took.
fn lower(source: &str) -> Result<Duration, Box<dyn Error>> {
    let start = Instant::now();
    let file = hoist_parser::parse(std::hint::black_box(source))?;
    let plan = hoist_solver::lower(&file, source, &BuildOptions::default(), &NoImages)
        .map_err(|e| e.render("Dockerfile", source))?;
    let elapsed = start.elapsed();
    drop(std::hint::black_box(plan));
    Ok(elapsed)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn env_scaling(quick: bool) -> Result<(), Box<dyn Error>> {
    let runs = if quick { 1 } else { RUNS };
    println!("ENV lines: parse + lower, median of {runs} runs");
    let mut per_line_8k = None;
    for n in ENV_LINES {
        if quick && n > 16_000 {
            continue;
        }
        let source = env_lines(n);
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| lower(&source))
            .collect::<Result<_, _>>()?;
        let total = median(&mut times);
        let per_line = total.as_secs_f64() / n as f64;
        let base = *per_line_8k.get_or_insert(per_line);
        println!(
            "  {n:>7} lines: {:>9.1} ms, {:.2} us per line: {:.2}x the time per line at {}k \
             (1.00 is linear, {:.0} would be quadratic)",
            total.as_secs_f64() * 1e3,
            per_line * 1e6,
            per_line / base,
            ENV_LINES[0] / 1000,
            n as f64 / ENV_LINES[0] as f64,
        );
    }
    Ok(())
}

/// The `hoist` binary to build with: `HOIST_BIN`, else the release build in this target dir.
fn hoist_bin() -> Result<PathBuf, Box<dyn Error>> {
    if let Some(bin) = std::env::var_os("HOIST_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // This program is <target>/release/deps/scale-HASH.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|release| release.join("hoist"))
        .ok_or("cannot locate the target directory")?;
    if !bin.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release --bin hoist` first, or set HOIST_BIN",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// The Dockerfiles of part 2, by name, each `FILE_BYTES` long or a little more.
fn shapes() -> Vec<(&'static str, String)> {
    let line = "a line of the file that a COPY heredoc writes, about eighty bytes in all\n";
    let heredoc = format!(
        "FROM scratch\nCOPY <<EOF /big.txt\n{}EOF\n",
        line.repeat(FILE_BYTES / line.len())
    );
    let value = "v".repeat(100_000);
    let mut long_lines = String::from("FROM scratch\n");
    let mut i = 0;
    while long_lines.len() < FILE_BYTES {
        let _ = writeln!(long_lines, "ENV E{i}={value}\nLABEL l{i}=\"{value}\"");
        i += 1;
    }
    let mut short_lines = String::from("FROM scratch\n");
    i = 0;
    while short_lines.len() < FILE_BYTES {
        let _ = writeln!(short_lines, "ENV K{i}=v{i}");
        i += 1;
    }
    vec![
        ("one COPY heredoc", heredoc),
        ("500 long ENV and LABEL lines", long_lines),
        ("short ENV lines", short_lines),
    ]
}

/// Builds `dockerfile` with `bin` in a fresh context and state root; wall time and peak RSS in
/// KiB.
fn build(bin: &Path, dockerfile: &str) -> Result<(Duration, u64), Box<dyn Error>> {
    let context = tempfile::tempdir()?;
    let root = tempfile::tempdir()?;
    let rss = root.path().join("rss");
    fs_err::write(context.path().join("Dockerfile"), dockerfile)?;
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(bin)
        .arg("build")
        .arg("--root")
        .arg(root.path().join("state"))
        .arg("--progress=plain")
        .arg(context.path())
        .output()
        .map_err(|e| format!("running /usr/bin/time (apt-get install time): {e}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "hoist build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let kib = fs_err::read_to_string(&rss)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .ok_or("no peak RSS from /usr/bin/time")?;
    Ok((elapsed, kib))
}

fn big_files() -> Result<(), Box<dyn Error>> {
    let bin = hoist_bin()?;
    println!(
        "50 MB Dockerfiles: hoist build ({}), peak RSS by GNU time",
        bin.display()
    );
    for (name, dockerfile) in shapes() {
        let lines = dockerfile.lines().count();
        let (elapsed, kib) = build(&bin, &dockerfile)?;
        let mib = kib as f64 / 1024.0;
        let file_mib = dockerfile.len() as f64 / (1024.0 * 1024.0);
        println!(
            "  {name} ({:.1} MB, {lines} lines): {:.2} s, peak RSS {mib:.0} MiB = {:.1}x the file",
            dockerfile.len() as f64 / 1e6,
            elapsed.as_secs_f64(),
            mib / file_mib,
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let quick = !std::env::args().any(|a| a == "--bench");
    env_scaling(quick)?;
    if quick {
        println!(
            "(quick pass: pass --bench, as `cargo bench` does, for 400k lines and the builds)"
        );
        return Ok(());
    }
    big_files()
}
