//! Parse throughput on one thread, against the target of 100 MB/s (issue 2).
//!
//! The input is BuildKit's parser conformance Dockerfiles (`HOIST_CONFORMANCE_DIR`, or
//! `../shared/conformance/buildkit-parser` beside the repository) concatenated until the text
//! reaches 50 MB. A file joins only if it is safe to repeat: it parses on its own, keeps the
//! default escape character (an `escape` directive only counts at the top of a file), and two
//! copies of it parse to twice its instructions (so a trailing line continuation or an open
//! heredoc cannot swallow the next copy). The whole input is then checked the same way.
//!
//! This is a benchmark, not a test: it prints the median of several runs and the ratio to the
//! target, and asserts nothing about time. Besides wall-clock time it reports the time the
//! thread spent on a CPU (Linux `/proc/thread-self/schedstat`), which stays meaningful when
//! other work shares the cores: on a busy machine the wall-clock figure understates the parser. Run it with `cargo bench -p hoist-parser --bench
//! parse`.
// Printing the figures is what this program is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

/// The allocator the hoist binary ships with, so the figure is the one users get.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The size the concatenated input must reach.
const MIN_BYTES: usize = 50 * 1000 * 1000;
/// The throughput to meet, in MB/s (1 MB = 10^6 bytes).
const TARGET_MB_S: f64 = 100.0;
const RUNS: usize = 7;

fn conformance_dir() -> PathBuf {
    std::env::var_os("HOIST_CONFORMANCE_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/conformance/buildkit-parser")
        },
        PathBuf::from,
    )
}

/// Nanoseconds this thread has spent running on a CPU, where Linux reports it.
fn thread_cpu_ns() -> Option<u64> {
    let stat = fs_err::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn instruction_count(text: &str) -> Option<usize> {
    hoist_parser::parse(text).ok().map(|f| f.instructions.len())
}

/// A conformance Dockerfile that can be repeated: its text and instruction count.
struct Repeatable {
    text: String,
    instructions: usize,
}

/// The repeatable conformance Dockerfiles, and the names of the cases left out.
fn repeatable_files() -> Result<(Vec<Repeatable>, Vec<String>), Box<dyn Error>> {
    let dir = conformance_dir().join("testfiles");
    let mut cases: Vec<PathBuf> = fs_err::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    cases.sort();
    let (mut kept, mut skipped) = (Vec::new(), Vec::new());
    for case in cases {
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut text = fs_err::read_to_string(case.join("Dockerfile"))?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let repeatable = hoist_parser::parse(&text).ok().and_then(|file| {
            let n = file.instructions.len();
            let two = instruction_count(&text.repeat(2))?;
            (file.escape == '\\' && n > 0 && two == 2 * n).then_some(n)
        });
        match repeatable {
            Some(instructions) => kept.push(Repeatable { text, instructions }),
            None => skipped.push(name),
        }
    }
    if kept.is_empty() {
        return Err(format!("no repeatable Dockerfile under {}", dir.display()).into());
    }
    Ok((kept, skipped))
}

fn main() -> Result<(), Box<dyn Error>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then one quick parse
    // of the input is enough to show that the benchmark still works.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (files, skipped) = repeatable_files()?;
    let unit: String = files.iter().map(|f| f.text.as_str()).collect();
    let unit_instructions: usize = files.iter().map(|f| f.instructions).sum();
    let copies = MIN_BYTES.div_ceil(unit.len());
    let input = unit.repeat(copies);
    let expected = unit_instructions * copies;

    println!(
        "input: {} conformance Dockerfiles ({} bytes, {unit_instructions} instructions) x {copies} = {:.1} MB, {expected} instructions",
        files.len(),
        unit.len(),
        input.len() as f64 / 1e6,
    );
    if !skipped.is_empty() {
        println!(
            "skipped (not repeatable: escape directive, trailing continuation, or parse error): {}",
            skipped.join(", ")
        );
    }

    let runs = if quick { 1 } else { RUNS };
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut cpu_times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let cpu_start = thread_cpu_ns();
        let start = Instant::now();
        let file = hoist_parser::parse(std::hint::black_box(&input))
            .map_err(|e| format!("the concatenated input does not parse: {e}"))?;
        let elapsed = start.elapsed();
        if let (Some(a), Some(b)) = (cpu_start, thread_cpu_ns()) {
            cpu_times.push(Duration::from_nanos(b.saturating_sub(a)));
        }
        if file.instructions.len() != expected {
            return Err(format!(
                "the concatenated input parsed to {} instructions, expected {expected}",
                file.instructions.len()
            )
            .into());
        }
        drop(std::hint::black_box(file));
        times.push(elapsed);
    }
    let median_wall = median(&mut times);
    let mb_s = input.len() as f64 / 1e6 / median_wall.as_secs_f64();
    let runs_ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
        .collect();
    println!(
        "parse: median {:.1} ms over {runs} runs (sorted, ms: {})",
        median_wall.as_secs_f64() * 1e3,
        runs_ms.join(" ")
    );
    println!(
        "throughput: {mb_s:.1} MB/s on one thread (wall clock); target {TARGET_MB_S:.0} MB/s; ratio {:.2}x the target",
        mb_s / TARGET_MB_S
    );
    if cpu_times.len() == runs {
        let cpu = median(&mut cpu_times);
        let cpu_mb_s = input.len() as f64 / 1e6 / cpu.as_secs_f64();
        println!(
            "on-CPU: median {:.1} ms, {cpu_mb_s:.1} MB/s of CPU time; ratio {:.2}x the target",
            cpu.as_secs_f64() * 1e3,
            cpu_mb_s / TARGET_MB_S
        );
    }
    if quick {
        println!("(one run only: pass --bench, as `cargo bench` does, for the measurement)");
    }
    Ok(())
}
