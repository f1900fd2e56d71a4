//! Context upload: bytes sent and wall time of `hoist debug upload` against `hoist debug
//! serve-cas`, for the tree of the remote-build issue (50,000 files in 500 directories, 96 MiB),
//! beside BuildKit's figures for the same tree and hoist's targets.
//!
//! Run: `cargo bench -p hoist --bench upload`. Each case is a fresh `hoist` process, as a CI
//! job would run it; the server keeps running across cases, as a build server does.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const DIRS: usize = 500;
const FILES: usize = 50_000;
const TOTAL: u64 = 96 << 20;

/// xorshift64*: deterministic content without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// 20 top directories of 25 each: 500 directories with 100 files apiece, sizes spread around
/// the mean so that the total is 96 MiB.
fn make_tree(root: &Path) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mean = TOTAL / FILES as u64;
    let mut left = TOTAL;
    let per_dir = FILES / DIRS;
    for d in 0..DIRS {
        let dir = root.join(format!("top{:02}/dir{:03}", d / 25, d));
        fs_err::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            let last = d == DIRS - 1 && f == per_dir - 1;
            let size = if last {
                left
            } else {
                (mean / 2 + rng.next() % mean).min(left)
            };
            left -= size;
            let mut data = vec![0u8; usize::try_from(size).unwrap()];
            for chunk in data.chunks_mut(8) {
                let word = rng.next().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            fs_err::write(dir.join(format!("file{f:03}.dat")), data).unwrap();
        }
    }
    fs_err::write(root.join("Dockerfile"), "FROM scratch\nCOPY . /src\n").unwrap();
}

/// A copy with new inodes and mtimes: what a fresh CI clone of the same commit is.
fn clone_tree(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for entry in fs_err::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            clone_tree(&entry.path(), &dest);
        } else {
            fs_err::write(&dest, fs_err::read(entry.path()).unwrap()).unwrap();
        }
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn upload(hoist: &str, socket: &Path, state: &Path, context: &Path) -> serde_json::Value {
    let out = Command::new(hoist)
        .args(["debug", "upload", "--remote"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--state")
        .arg(state)
        .arg(context)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hoist debug upload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn main() {
    // `cargo bench` passes --bench; a filter or --list from the harness is not for this one.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let hoist = env!("CARGO_BIN_EXE_hoist");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let ctx = w.join("ctx");
    let started = Instant::now();
    make_tree(&ctx);
    println!(
        "tree: {FILES} files in {DIRS} directories, {} MiB, made in {:.1} s",
        TOTAL >> 20,
        started.elapsed().as_secs_f64()
    );
    // A file modified within the stat cache's racy window (2 s) of its hashing is hashed
    // again on the next upload (git's rule, see DESIGN.md): a real context is not written
    // the moment before it is sent, so neither is this one.
    std::thread::sleep(Duration::from_millis(2100));
    let socket = w.join("cas.sock");
    let _server = Server(
        Command::new(hoist)
            .args(["debug", "serve-cas", "--root"])
            .arg(w.join("store"))
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()))
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "serve-cas did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let client = w.join("client-state");
    let mut rows: Vec<(&str, serde_json::Value, &str, &str)> = Vec::new();
    rows.push((
        "cold",
        upload(hoist, &socket, &client, &ctx),
        "-",
        "100.3 MB, 9.2 s",
    ));
    rows.push((
        "unchanged",
        upload(hoist, &socket, &client, &ctx),
        "< 10 KB, < 0.5 s",
        "1.59 MB, 1.5 s",
    ));
    let clone = w.join("clone");
    clone_tree(&ctx, &clone);
    rows.push((
        "fresh clone",
        upload(hoist, &socket, &w.join("clone-state"), &clone),
        "< 2 MB, < 2 s",
        "100.3 MB, 12.5 s",
    ));
    let edited = ctx.join("top07/dir180/file042.dat");
    let mut bytes = fs_err::read(&edited).unwrap();
    bytes.extend_from_slice(b"one edit\n");
    fs_err::write(&edited, &bytes).unwrap();
    rows.push((
        "one file edited",
        upload(hoist, &socket, &client, &ctx),
        "the file + its tree nodes",
        "-",
    ));
    let second = w.join("second");
    clone_tree(&ctx, &second);
    rows.push((
        "second client",
        upload(hoist, &socket, &w.join("second-state"), &second),
        "no file bytes",
        "-",
    ));

    println!(
        "{:<16} {:>14} {:>8} {:>6} {:>9}   {:<26} BuildKit (docker 20.10, from the issue)",
        "case", "bytes sent", "blobs", "dirs", "seconds", "target"
    );
    for (name, v, target, buildkit) in rows {
        let n = |key: &str| v[key].as_u64().unwrap_or(0);
        println!(
            "{:<16} {:>14} {:>8} {:>6} {:>9.3}   {:<26} {}",
            name,
            n("bytes_sent"),
            n("blobs_sent"),
            n("dirs_sent"),
            v["seconds"].as_f64().unwrap_or(f64::NAN),
            target,
            buildkit
        );
    }
}
