//! A build killed with `kill -9` at any point: the sandbox dies with it, and the next start of
//! hoist on that state root reclaims everything the dead process left (its half-written step
//! trees, blobs and snapshots, its cgroups) and says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Project, Registry, Running, mounts_under, processes_running};

/// Bytes under `dir`, and whether any file's name starts with `prefix`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = fs_err::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The files under the state root's `tmp/` whose name starts with `prefix` and that hold at
/// least `min` bytes: debris in the making.
fn files_growing(tmp: &Path, prefix: &str, min: u64) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![tmp.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t)
                    if t.is_file()
                        && name.starts_with(prefix)
                        && e.metadata().is_ok_and(|m| m.len() >= min) =>
                {
                    found.push(e.path());
                }
                _ => {}
            }
        }
    }
    found
}

/// Starts `hoist build` with `args` and kills it with SIGKILL as soon as a file whose name
/// starts with `prefix` has grown to `min` bytes somewhere under the state's `tmp/`.
fn kill_when_writing(p: &Project, args: &[&str], prefix: &str, min: u64) -> u32 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["build", "--progress=plain", "--root"])
        .arg(p.root.path())
        .args(args)
        .arg(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let tmp = p.root.path().join("tmp");
    while files_growing(&tmp, prefix, min).is_empty() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the build ended ({status}) before it wrote a {prefix}* file of {min} bytes");
        }
        assert!(
            Instant::now() < deadline,
            "the build never wrote a {prefix}* file"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = Running(child);
    kill_9(running);
    pid
}

fn kill_9(mut running: Running) {
    running.0.kill().unwrap(); // SIGKILL: no cleanup of its own
    running.0.wait().unwrap();
}

/// What the dead process left: at least `min` bytes of debris under `tmp/`. Then the next
/// start of hoist on the root reclaims it all and says so, and leaves nothing of its own.
fn next_start_reclaims(p: &Project, killed: u32, min: u64) {
    let tmp = p.root.path().join("tmp");
    let debris = bytes_under(&tmp);
    assert!(
        debris >= min,
        "the killed build left only {debris} bytes: the test did not catch it mid-write"
    );
    p.write("Dockerfile", "FROM scratch\nADD rootfs.tar /\n");
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("reclaimed") && stderr.contains("that 1 killed hoist process(es) left"),
        "the next start did not say what it reclaimed:\n{stderr}"
    );
    let left: Vec<_> = fs_err::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
    assert!(
        crate::support::cgroups_of_process(killed).is_empty(),
        "cgroups of the killed build: {:?}",
        crate::support::cgroups_of_process(killed)
    );
    assert!(
        mounts_under(p.root.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(p.root.path())
    );
}

const MB: u64 = 1 << 20;

#[test]
fn killed_during_a_run_the_sandbox_dies_and_its_upperdir_is_reclaimed() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN dd if=/dev/zero of=/big bs=1M count=200 2>/dev/null && echo started && sleep 3598\n",
    );
    let (running, _lines) = p.start_until("started", &[]);
    let pid = running.0.id();
    kill_9(running);
    // The sandbox dies with its builder, without waiting for the next start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_running(&["sleep", "3598"]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the RUN outlived its killed builder"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    next_start_reclaims(&p, pid, 200 * MB);
}

#[test]
fn killed_during_a_copy_the_half_copied_tree_is_reclaimed() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nCOPY big.bin /big.bin\n");
    let big = fs_err::File::create(p.path("big.bin")).unwrap();
    // Data, not a hole: the copy must write every byte.
    std::io::copy(
        &mut std::io::Read::take(fs_err::File::open("/dev/urandom").unwrap(), 300 * MB),
        &mut &big,
    )
    .unwrap();
    let pid = kill_when_writing(&p, &[], "big.bin", 8 * MB);
    next_start_reclaims(&p, pid, 8 * MB);
}

/// A base image with one layer of 120 MB of random bytes, pushed to `registry`.
fn push_big_base(registry: &Registry) -> String {
    let base = format!("{}/hostile/big:1", registry.addr);
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN dd if=/dev/urandom of=/big bs=1M count=120 2>/dev/null\n",
    );
    let out = p.hoist(&["-t", &base, "--push"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    base
}

#[test]
fn killed_during_a_pull_the_partial_blob_is_reclaimed() {
    let registry = Registry::start();
    let base = push_big_base(&registry);
    let p = Project::new(&format!("FROM {base}\nRUN true\n"));
    let pid = kill_when_writing(&p, &[], "blob-", 8 * MB);
    next_start_reclaims(&p, pid, 8 * MB);
}

#[test]
fn killed_while_compressing_for_a_push_the_partial_blob_is_reclaimed() {
    let registry = Registry::start();
    let name = format!("{}/hostile/pushed:1", registry.addr);
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN dd if=/dev/urandom of=/big bs=1M count=120 2>/dev/null\n",
    );
    // Build first, so that the kill lands in the export, not the RUN.
    let out = p.hoist(&[]);
    assert!(out.status.success());
    let pid = kill_when_writing(&p, &["-t", &name, "--push"], "blob-", 8 * MB);
    next_start_reclaims(&p, pid, 8 * MB);
}
