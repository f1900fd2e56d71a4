//! Layer diff + compression throughput on the BuildKit benchmark context: 5,000 files of 123
//! bytes plus files of 1, 10, 50 and 100 MiB (about 162 MiB). Reports MB/s (10^6 bytes of tar
//! input per second) for each codec and the peak RSS of each run.
//!
//! Run: `cargo bench -p hoist-cache --bench layer_diff` (optional args: `gzip`, `zstd`, `none`,
//! `--level N`, `--threads N`, `--text` for compressible data instead of random bytes,
//! `--scale N` to multiply the big files, showing that peak memory does not grow with them).
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark binary reports on stdout and fails loudly"
)]

use std::path::Path;
use std::time::Instant;

mod support;

use support::make_context;

use hoist_cache::{
    ApplyOptions, BlobStore, Compression, CompressionOptions, DiffOptions, apply_layer,
    diff_upperdir, store_upperdir_layer,
};

fn peak_rss_kib() -> u64 {
    let status = fs_err::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds of this process (all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = fs_err::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM (proc(5)), so each run reports its own peak.
    let _ = fs_err::write("/proc/self/clear_refs", "5");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = args.iter().any(|a| a == "--text");
    let arg_num = |flag: &str| -> Option<i64> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let level: Option<i32> = arg_num("--level").and_then(|v| i32::try_from(v).ok());
    let threads: usize = arg_num("--threads")
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(0);
    let mut codecs: Vec<Compression> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            "none" => Some(Compression::None),
            _ => None,
        })
        .collect();
    if codecs.is_empty() {
        codecs = vec![Compression::Gzip, Compression::Zstd];
    }

    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("context");
    let t = Instant::now();
    let scale = arg_num("--scale")
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(1);
    let input = make_context(&ctx, text, scale);
    println!(
        "context: {:.1} MiB in 5004 files ({} data), made in {:.2?}; {} cores",
        input as f64 / (1 << 20) as f64,
        if text { "text-like" } else { "random" },
        t.elapsed(),
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    );
    let store = BlobStore::new(work.path().join("state"));
    // Warm the page cache so the first codec is not charged for cold reads.
    store_upperdir_layer(
        &store,
        &ctx,
        &DiffOptions {
            compression: CompressionOptions::new(Compression::None),
            source_date_epoch: None,
        },
    )
    .unwrap();

    for c in codecs {
        let options = DiffOptions {
            compression: CompressionOptions {
                compression: c,
                level,
                threads,
            },
            source_date_epoch: None,
        };
        for target in ["sink", "store"] {
            let mut best = f64::MAX;
            let mut best_cpu = f64::MAX;
            let mut result = None;
            let mut peak = 0;
            for _ in 0..3 {
                reset_peak_rss();
                let cpu = cpu_seconds();
                let t = Instant::now();
                let d = if target == "sink" {
                    // Pure diff + compression: the blob goes nowhere.
                    diff_upperdir(&ctx, std::io::sink(), &options).unwrap().1
                } else {
                    // The real path: into the content store, fsynced and renamed.
                    store_upperdir_layer(&store, &ctx, &options).unwrap()
                };
                let secs = t.elapsed().as_secs_f64();
                best_cpu = best_cpu.min(cpu_seconds() - cpu);
                peak = peak.max(peak_rss_kib());
                best = best.min(secs);
                result = Some(d);
            }
            let d = result.unwrap();
            let mb = d.uncompressed_size as f64 / 1e6;
            println!(
                "{c:?} level {} -> {target}: {:.0} MB/s wall, {:.0} MB per CPU-second ({:.2} s wall, {:.2} s CPU for {:.1} MB tar -> {:.1} MB blob, ratio {:.3}), peak RSS {} MiB, digest {}",
                level.unwrap_or(c.default_level()),
                mb / best,
                mb / best_cpu,
                best,
                best_cpu,
                mb,
                d.size as f64 / 1e6,
                d.size as f64 / d.uncompressed_size as f64,
                peak / 1024,
                d.digest
            );
        }
        // The reverse direction: the stored blob applied into a fresh snapshot directory.
        let d = store_upperdir_layer(&store, &ctx, &options).unwrap();
        let t = Instant::now();
        let (_, mut r) = hoist_cache::decompress(store.open(&d.digest).unwrap()).unwrap();
        let n = std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        println!(
            "{c:?} decompress only: {:.0} MB/s",
            n as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
        let mut best = f64::MAX;
        for i in 0..3 {
            let dest = work.path().join(format!("snap-{c:?}-{i}"));
            reset_peak_rss();
            let t = Instant::now();
            let blob = store.open(&d.digest).unwrap();
            apply_layer(blob, &dest, &ApplyOptions::default()).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            fs_err::remove_dir_all(&dest).unwrap();
        }
        println!(
            "{c:?} apply (unpack into a snapshot): {:.0} MB/s wall ({:.2} s), peak RSS {} MiB",
            d.uncompressed_size as f64 / 1e6 / best,
            best,
            peak_rss_kib() / 1024
        );
        if args.iter().any(|a| a == "--umoci") && c == Compression::Gzip {
            umoci_comparison(&work.path().join("state"), &d, best);
        }
    }
}

/// The same layer as a one-layer OCI image in the store, unpacked by `umoci unpack` (which
/// also writes a bundle config): the peer figure for the unpack half of a pull.
fn umoci_comparison(state: &Path, d: &hoist_cache::LayerDigests, ours: f64) {
    use hoist_cache::oci_spec::image::{Arch, ImageConfigurationBuilder, Os, RootFsBuilder};
    let store = hoist_cache::ImageStore::open(state).unwrap();
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![d.diff_id.to_string()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let layer = hoist_cache::layer_descriptor(d, hoist_cache::MediaTypes::Oci).unwrap();
    let manifest = hoist_cache::write_image(
        store.blobs(),
        &config,
        &hoist_cache::DockerConfigExtras::default(),
        &[layer],
        hoist_cache::MediaTypes::Oci,
        None,
    )
    .unwrap();
    store.tag("bench", &manifest).unwrap();
    let bundle = state.join("umoci-bundle");
    let t = Instant::now();
    let status = std::process::Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:bench", state.display()))
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(status.success());
    let theirs = t.elapsed().as_secs_f64();
    println!(
        "umoci unpack of the same gzip layer: {:.2} s; hoist apply {:.2} s ({:.2}x of umoci's time)",
        theirs,
        ours,
        ours / theirs
    );
}
