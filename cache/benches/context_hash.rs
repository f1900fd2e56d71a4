//! Context hashing on the BuildKit benchmark context (5,000 files of 123 bytes plus files of
//! 1, 10, 50 and 100 MiB, about 162 MiB): selecting it, a cold content key (an empty stat
//! cache: every file read; the page cache warm unless `--drop-caches`), a warm one (every file
//! known by its stat), and two keys of one build (two COPY sources: the small files and the
//! big ones) computed at once on one stat cache, as two steps of a build or two builds of one
//! process do.
//!
//! Run: `cargo bench -p hoist-cache --bench context_hash` (optional: `--runs N`, best of N,
//! default 3; `--drop-caches` also times cold hashes with the page cache dropped first, which
//! needs root).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use hoist_cache::context::{Selection, StatCache, content_key, select};
use hoist_parser::ignore::Matcher;

mod support;

fn sel(root: &Path, sources: &[&str]) -> Selection {
    let sources: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
    select(root, &sources, &Matcher::default()).unwrap()
}

fn best_of(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// CPU time of the whole process (every thread) so far.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap(),
        u32::try_from(t.tv_nsec).unwrap(),
    )
}

/// The best wall time and the best CPU time of `runs` cold keys of `selection` (an empty stat
/// cache each time), checking that each gives `key`.
fn cold_keys(root: &Path, selection: &Selection, key: &str, runs: usize) -> (Duration, Duration) {
    let (mut wall, mut cpu) = (Duration::MAX, Duration::MAX);
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu_time());
        let got = content_key(root, selection, &StatCache::default()).unwrap();
        (wall, cpu) = (wall.min(t.elapsed()), cpu.min(cpu_time() - c));
        assert_eq!(got.key, key);
    }
    (wall, cpu)
}

fn drop_page_cache() {
    rustix::fs::sync();
    fs_err::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let drop_caches = args.iter().any(|a| a == "--drop-caches");

    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("context");
    let input = support::make_context(&root, false, 1);
    println!(
        "context: {:.1} MiB in 5004 files; {} cores",
        input as f64 / (1 << 20) as f64,
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    );

    let mut all = Selection::default();
    let select_time = best_of(runs, || {
        let t = Instant::now();
        all = sel(&root, &["."]);
        t.elapsed()
    });
    println!(
        "select .: {} entries in {:.1} ms",
        all.entries.len(),
        select_time.as_secs_f64() * 1e3
    );

    // Warm the page cache, so that a cold key measures hashing, not the disk.
    let key = content_key(&root, &all, &StatCache::default()).unwrap().key;
    let (cold, cold_cpu) = cold_keys(&root, &all, &key, runs);
    println!(
        "cold key (empty stat cache, page cache warm): {:.0} ms wall, {:.0} ms CPU, {:.0} MB/s, {key}",
        cold.as_secs_f64() * 1e3,
        cold_cpu.as_secs_f64() * 1e3,
        mb_s(input, cold)
    );
    let small = sel(&root, &["small"]);
    let big = sel(&root, &["big*"]);
    for (what, selection) in [("the 5,000 small files", &small), ("the 4 big files", &big)] {
        let key = content_key(&root, selection, &StatCache::default())
            .unwrap()
            .key;
        let (wall, cpu) = cold_keys(&root, selection, &key, runs);
        println!(
            "  cold key of {what} alone: {:.0} ms wall, {:.0} ms CPU",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3
        );
    }

    if drop_caches {
        let cold_disk = best_of(runs, || {
            drop_page_cache();
            let t = Instant::now();
            assert_eq!(
                content_key(&root, &all, &StatCache::default()).unwrap().key,
                key
            );
            t.elapsed()
        });
        println!(
            "cold key (empty stat cache, page cache dropped): {:.0} ms, {:.0} MB/s",
            cold_disk.as_secs_f64() * 1e3,
            mb_s(input, cold_disk)
        );
    }

    // Past the racy window, every file is known by its stat.
    std::thread::sleep(Duration::from_millis(2100));
    let cache = StatCache::default();
    content_key(&root, &all, &cache).unwrap();
    let mut read = 0;
    let warm = best_of(runs, || {
        let t = Instant::now();
        let warm = content_key(&root, &all, &cache).unwrap();
        let took = t.elapsed();
        assert_eq!(warm.key, key);
        read += warm.files_read;
        took
    });
    println!(
        "warm key (every stat known): {:.2} ms ({read} files read again)",
        warm.as_secs_f64() * 1e3
    );

    // Two COPY sources of one build, on the one stat cache of its context.
    let one_by_one = best_of(runs, || {
        let cache = StatCache::default();
        let t = Instant::now();
        content_key(&root, &small, &cache).unwrap();
        content_key(&root, &big, &cache).unwrap();
        t.elapsed()
    });
    let together = best_of(runs, || {
        let cache = StatCache::default();
        let t = Instant::now();
        std::thread::scope(|s| {
            for selection in [&small, &big] {
                let (cache, root) = (&cache, &root);
                s.spawn(move || content_key(root, selection, cache).unwrap());
            }
        });
        t.elapsed()
    });
    println!(
        "two cold keys (small files, big files): {:.0} ms one after the other, {:.0} ms from two threads on one stat cache",
        one_by_one.as_secs_f64() * 1e3,
        together.as_secs_f64() * 1e3
    );
}
