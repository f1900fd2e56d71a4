//! What the benches that compare hoist with its peers share: the busybox base image in the
//! loopback registry, and small helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)] // each bench uses some of it

use std::path::Path;
use std::process::Command;

/// The base image of BuildKit's scenarios, in the peers' loopback registry.
pub(crate) const BUSYBOX: &str = "127.0.0.1:5000/library/busybox:latest";

/// Writes `text` to `path`, making its directory.
pub(crate) fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir).unwrap();
    }
    fs_err::write(path, text).unwrap();
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Puts [`BUSYBOX`] in the registry unless it is there: built and pushed by hoist itself from
/// Debian's busybox-static.
pub(crate) fn ensure_busybox() {
    let have = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{BUSYBOX}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return;
    }
    eprintln!("seeding {BUSYBOX} with hoist");
    let dir = tempfile::tempdir().unwrap();
    let status =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh"))
            .arg(dir.path().join("rootfs.tar"))
            .status()
            .unwrap();
    assert!(status.success(), "scripts/busybox-rootfs.sh failed");
    write(
        &dir.path().join("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\nCMD [\"sh\"]\n",
    );
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args([
            "build",
            "--progress=plain",
            "-t",
            BUSYBOX,
            "--push",
            "--root",
        ])
        .arg(root.path())
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pushing {BUSYBOX}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// BuildKit's benchmark context (S3, 162 MiB): 5,000 files of 123 bytes plus 1, 10, 50 and
/// 100 MiB files of pseudo-random bytes, which no compressor shrinks.
pub(crate) fn big_context(dir: &Path) {
    for i in 0..5000 {
        write(
            &dir.join(format!("small/{:02}/{i:05}.txt", i % 50)),
            &format!("{i:0>122}\n"),
        );
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for (name, mib) in [("1m", 1usize), ("10m", 10), ("50m", 50), ("100m", 100)] {
        let mut bytes = vec![0u8; mib << 20];
        for chunk in bytes.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = chunk.len();
            chunk.copy_from_slice(&seed.to_le_bytes()[..n]);
        }
        fs_err::write(dir.join(format!("big-{name}.bin")), &bytes).unwrap();
    }
}
