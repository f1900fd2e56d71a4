//! Push of a 162 MiB layer to a loopback distribution registry: throughput and peak RSS.
//!
//! Run with `cargo bench -p hoist-registry --bench push`. Needs `docker-registry`; `skopeo`,
//! when present, pushes the same image from an OCI layout as a peer figure. Peak RSS is the
//! process's VmHWM, reset (via /proc/self/clear_refs) before each measured step, and is shown
//! for a 32 MiB layer as well to show it does not grow with the layer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use hoist_cache::content::BlobStore;
use hoist_registry::oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfigurationBuilder, ImageManifestBuilder, MediaType,
    RootFsBuilder,
};
use hoist_registry::{Client, ClientConfig, DockerConfig, Platform, PushOptions, Reference};
use sha2::Digest as _;

const MIB: u64 = 1 << 20;

/// Writes `size` pseudo-random bytes into the store a MiB at a time (hash pass, then write
/// pass), so the benchmark itself never holds the layer in memory.
fn write_layer(store: &BlobStore, seed: u64, size: u64) -> Descriptor {
    let piece = |i: u64| support::pseudo_random(seed + i, MIB.min(size - i * MIB) as usize);
    let pieces = size.div_ceil(MIB);
    let mut hasher = sha2::Sha256::new();
    for i in 0..pieces {
        hasher.update(piece(i));
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()))
        .parse()
        .unwrap();
    let mut w = store.writer(&digest, Some(size)).unwrap();
    for i in 0..pieces {
        w.write_all(&piece(i)).unwrap();
    }
    w.commit().unwrap();
    DescriptorBuilder::default()
        .media_type(MediaType::ImageLayerGzip)
        .digest(digest)
        .size(size)
        .build()
        .unwrap()
}

fn image(store: &BlobStore, layer: &Descriptor) -> Descriptor {
    let config = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer.digest().to_string()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let config = support::put_blob(
        store,
        MediaType::ImageConfig,
        serde_json::to_string(&config).unwrap().as_bytes(),
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(vec![layer.clone()])
        .build()
        .unwrap();
    support::put_blob(
        store,
        MediaType::ImageManifest,
        serde_json::to_string(&manifest).unwrap().as_bytes(),
    )
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size (Documentation/filesystems/proc.rst).
    let _ = fs_err::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    let status = fs_err::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn report(what: &str, bytes: u64, secs: f64, rss: Option<f64>) {
    let mb_s = bytes as f64 / 1e6 / secs;
    let rss = rss.map_or(String::new(), |r| format!(", peak RSS {r:.1} MiB"));
    println!(
        "{what}: {:.1} MiB in {secs:.2} s = {mb_s:.0} MB/s{rss}",
        bytes as f64 / MIB as f64
    );
}

fn main() {
    let Some(registry) = support::Registry::start() else {
        eprintln!("docker-registry missing; nothing measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::new(dir.path()));
    let big = 162 * MIB;
    let layer = write_layer(&store, 7, big);
    let manifest = image(&store, &layer);
    let small_layer = write_layer(&store, 99, 32 * MIB);
    let small_manifest = image(&store, &small_layer);
    println!(
        "# push to docker-registry on {} ({} cores)",
        registry.host(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let push = |repo: &str, manifest: &Descriptor, config: ClientConfig| {
        let client = Client::new(config, DockerConfig::default()).unwrap();
        let target = Reference::parse(&format!("{}/bench/{repo}:v1", registry.host())).unwrap();
        reset_peak_rss();
        let start = Instant::now();
        let report = rt
            .block_on(client.push(&target, manifest, store.clone(), &PushOptions::default()))
            .unwrap();
        (
            start.elapsed().as_secs_f64(),
            peak_rss_mib(),
            report.bytes_sent(),
        )
    };

    let (secs, rss, sent) = push("chunked", &manifest, ClientConfig::default());
    report(
        "hoist push 162 MiB, 16 MiB PATCH chunks",
        sent,
        secs,
        Some(rss),
    );
    let mono = ClientConfig {
        monolithic_threshold: u64::MAX,
        ..ClientConfig::default()
    };
    let (secs, rss, sent) = push("monolithic", &manifest, mono.clone());
    report(
        "hoist push 162 MiB, one streamed PUT",
        sent,
        secs,
        Some(rss),
    );
    let (secs, rss, sent) = push("small", &small_manifest, mono);
    report("hoist push 32 MiB, one streamed PUT", sent, secs, Some(rss));
    let (secs, _, sent) = push("chunked", &manifest, ClientConfig::default());
    println!("hoist push again (HEAD skips every blob): {secs:.3} s, {sent} bytes sent");

    // Pull it back into a fresh store, verifying as it streams.
    let pull_dir = tempfile::tempdir().unwrap();
    let pull_store = Arc::new(BlobStore::new(pull_dir.path()));
    let client = Client::new(ClientConfig::default(), DockerConfig::default()).unwrap();
    let target = Reference::parse(&format!("{}/bench/chunked:v1", registry.host())).unwrap();
    reset_peak_rss();
    let start = Instant::now();
    rt.block_on(client.pull(&target, &Platform::host(), pull_store.clone()))
        .unwrap();
    report(
        "hoist pull 162 MiB (verified, fsynced)",
        big,
        start.elapsed().as_secs_f64(),
        Some(peak_rss_mib()),
    );
    assert_eq!(pull_store.stat(layer.digest()).unwrap(), Some(big));

    // Peer: skopeo pushing the same image from an OCI layout (the store's layout plus an index).
    if support::require_tool("/usr/bin/skopeo", "skopeo") {
        fs_err::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.digest().to_string(),
                "size": manifest.size(),
                "annotations": {"org.opencontainers.image.ref.name": "bench"}
            }]
        });
        fs_err::write(dir.path().join("index.json"), index.to_string()).unwrap();
        let start = Instant::now();
        let status = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:bench", dir.path().display()))
            .arg(format!("docker://{}/bench/skopeo:v1", registry.host()))
            .status()
            .unwrap();
        assert!(status.success(), "skopeo copy failed");
        report(
            "skopeo copy 162 MiB (peer)",
            big,
            start.elapsed().as_secs_f64(),
            None,
        );
    }
}
