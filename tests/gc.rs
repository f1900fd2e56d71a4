//! Garbage collection end to end, as a user sees it: `hoist du` accounts for every byte of
//! the state root, `hoist prune` removes least recently used records first and keeps what a
//! build in another process holds, and the automatic GC after a build keeps the root under
//! its budget. Real builds in the real sandbox; needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Project, steps_that_ran};

/// Each build makes a 2 MB layer of its own, named by the build-arg `N`.
const DOCKERFILE: &str = "FROM scratch\n\
     ADD rootfs.tar /\n\
     ARG N\n\
     RUN dd if=/dev/urandom of=/big bs=1024 count=2048 2>/dev/null && echo \"$N\" > /n\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `hoist <command> --root ROOT ARGS…`, which must succeed; its stdout.
fn hoist(root: &Path, command: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg(command)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hoist {command} {args:?} failed:\n{}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The total `hoist du` reports, in bytes.
fn du_total(root: &Path) -> u64 {
    let out = hoist(root, "du", &[]);
    let line = out
        .lines()
        .find(|l| l.starts_with("total: "))
        .unwrap_or_else(|| panic!("hoist du printed no total:\n{out}"));
    line.split_once('(')
        .and_then(|(_, rest)| rest.split_once(" bytes"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"))
}

/// `du -sb` of the root.
fn du_sb(root: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(root).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Builds with `N=n` (and `extra` flags); returns whether the 2 MB step ran (was not cached).
fn build(p: &Project, n: &str, extra: &[&str]) -> bool {
    let arg = format!("N={n}");
    let mut args = vec!["--build-arg", arg.as_str()];
    args.extend_from_slice(extra);
    let out = p.hoist(&args);
    let text = stderr(&out);
    assert!(out.status.success(), "build N={n} failed:\n{text}");
    steps_that_ran(&text).iter().any(|s| s.contains("RUN dd"))
}

/// Last-used times are kept in seconds: this puts builds in distinct seconds.
fn next_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

#[test]
fn keep_storage_removes_the_least_recently_used_records_first() {
    let p = Project::new(DOCKERFILE);
    let root = p.root.path();
    assert!(build(&p, "a", &[]));
    next_second();
    assert!(build(&p, "b", &[]));
    next_second();
    assert!(build(&p, "c", &[]));
    next_second();
    // A cache hit makes `a` the most recently used: `b` is now the oldest.
    assert!(!build(&p, "a", &[]));

    let before = du_total(root);
    // Room for all but about one 2 MB layer.
    let keep = before - 1_500_000;
    let printed = hoist(root, "prune", &["--keep-storage", &keep.to_string()]);
    assert!(printed.contains("removed 1 cache record(s)"), "{printed}");
    let after = du_total(root);
    assert!(
        after <= keep,
        "the root holds {after} bytes after prune --keep-storage {keep}:\n{printed}"
    );
    assert!(!build(&p, "a", &[]), "a was used last and must stay cached");
    assert!(
        !build(&p, "c", &[]),
        "c was used after b and must stay cached"
    );
    assert!(
        build(&p, "b", &[]),
        "b was used least recently and must go first"
    );
}

#[test]
fn filter_until_keeps_what_was_used_recently() {
    let p = Project::new(DOCKERFILE);
    let root = p.root.path();
    assert!(build(&p, "old", &[]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(build(&p, "new", &[]));
    hoist(root, "prune", &["--filter", "until=2s"]);
    assert!(!build(&p, "new", &[]), "used within 2s: kept");
    assert!(build(&p, "old", &[]), "last used over 2s ago: removed");
}

#[test]
fn prune_keeps_named_images_and_prune_all_leaves_only_the_index() {
    let p = Project::new(DOCKERFILE);
    let root = p.root.path();
    assert!(build(&p, "1", &["-t", "kept:1"]));
    let printed = hoist(root, "prune", &[]);
    assert!(printed.contains("cache record(s)"), "{printed}");
    assert!(hoist(root, "images", &[]).contains("kept"));
    // The image is whole: it runs from its blobs.
    let run = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["run", "--rm", "--root"])
        .arg(root)
        .args(["kept:1", "cat", "/n"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "1\n");
    // Its step was pruned, so it runs again, and right.
    let (text, rootfs) = p.build_to_dir(&["--build-arg", "N=2"]);
    assert!(steps_that_ran(&text).iter().any(|s| s.contains("RUN dd")));
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("n")).unwrap(),
        "2\n"
    );
    assert_eq!(
        fs_err::metadata(rootfs.path().join("big")).unwrap().len(),
        2 << 20
    );

    let printed = hoist(root, "prune", &["--all"]);
    assert!(printed.contains("named image(s)"), "{printed}");
    assert!(!hoist(root, "images", &[]).contains("kept"));
    // No snapshot, blob, log or mount is left: only the index and the layout's files.
    let left = du_sb(root);
    assert!(
        left < 1_000_000,
        "{left} bytes are left after prune --all:\n{}",
        hoist(root, "du", &["--verbose"])
    );
    for dir in ["snapshots/sha256", "blobs/sha256"] {
        let entries = fs_err::read_dir(root.join(dir)).unwrap().count();
        assert_eq!(entries, 0, "{dir} is not empty after prune --all");
    }
}

#[test]
fn prune_all_during_a_build_in_another_process_keeps_what_the_build_holds() {
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         ARG N\n\
         RUN dd if=/dev/urandom of=/big bs=1024 count=2048 2>/dev/null && echo \"$N\" > /n\n\
         RUN echo gc-now && sleep 4\n\
         RUN md5sum /big > /sum && cat /n > /n2\n",
    );
    let root = p.root.path();
    // Another build's records, which nothing holds.
    let other = p.hoist(&["--build-arg", "N=other"]);
    assert!(other.status.success(), "{}", stderr(&other));

    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let (running, lines) = p.start_until("gc-now", &["--build-arg", "N=held", "-o", &output]);
    let printed = hoist(root, "prune", &["--all"]);
    let mut child = running;
    let status = child.0.wait().unwrap();
    let log: Vec<String> = lines.try_iter().collect();
    assert!(
        status.success(),
        "the build failed after prune --all ran beside it:\n{printed}\n{}",
        log.join("\n")
    );
    assert_eq!(
        fs_err::read_to_string(dest.path().join("n2")).unwrap(),
        "held\n"
    );
    assert!(
        fs_err::read_to_string(dest.path().join("sum"))
            .unwrap()
            .ends_with("/big\n")
    );
    // What nobody held went; what the build held (and recorded) stayed.
    assert!(printed.contains("cache record(s)"), "{printed}");
    let again = p.hoist(&["--build-arg", "N=held"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        steps_that_ran(&stderr(&again)),
        Vec::<String>::new(),
        "the held build's results were removed:\n{printed}"
    );
    assert!(
        build(&p, "other", &[]),
        "the other build's records were kept"
    );
}

#[test]
fn du_accounts_for_every_byte_of_the_root() {
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=cache,target=/c dd if=/dev/zero of=/c/f bs=1024 count=300 2>/dev/null\n\
         RUN ln /bin/busybox /hardlinked && echo x > /x\n",
    );
    let root = p.root.path();
    let out = p.hoist(&["-t", "counted:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ours, theirs) = (du_total(root), du_sb(root));
    let diff = ours.abs_diff(theirs);
    assert!(
        diff * 100 <= theirs,
        "hoist du says {ours} bytes, du -sb {theirs}:\n{}",
        hoist(root, "du", &["--verbose"])
    );
    let verbose = hoist(root, "du", &["--verbose"]);
    for kind in ["cache ", "cache-mount ", "image ", "logs "] {
        assert!(
            verbose.lines().any(|l| l.starts_with(kind)),
            "no {kind:?} record:\n{verbose}"
        );
    }
}

#[test]
fn automatic_gc_after_a_build_keeps_the_root_under_the_budget() {
    let p = Project::new(DOCKERFILE);
    let root = p.root.path();
    assert!(build(&p, "1", &[]));
    let before = du_total(root);
    assert!(before > 4_000_000, "{before}");
    let out = p.hoist(&["--build-arg", "N=2", "--gc-keep-storage", "1m"]);
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("gc: removed"), "{text}");
    let after = du_sb(root);
    assert!(after <= 1 << 20, "the root holds {after} bytes:\n{text}");
    // Under its budget, a build collects nothing.
    let out = p.hoist(&["--build-arg", "N=3", "--gc-keep-storage", "1g"]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains("gc: removed"));
}

#[test]
fn debris_of_interrupted_writes_is_removed_and_live_writes_are_not() {
    let p = Project::new(DOCKERFILE);
    let root = p.root.path();
    assert!(build(&p, "1", &[]));
    let old_blob = root.join("ingest/blob-old");
    let live_blob = root.join("ingest/blob-live");
    let old_unpack = root.join("snapshots/sha256/.unpack-old/fs");
    fs_err::create_dir_all(&old_unpack).unwrap();
    fs_err::write(old_unpack.join("f"), vec![0u8; 100_000]).unwrap();
    for f in [&old_blob, &live_blob] {
        fs_err::create_dir_all(f.parent().unwrap()).unwrap();
        fs_err::write(f, vec![0u8; 100_000]).unwrap();
    }
    for old in [&old_blob, &old_unpack.parent().unwrap().to_path_buf()] {
        let status = Command::new("touch")
            .args(["-d", "3 hours ago"])
            .arg(old)
            .status()
            .unwrap();
        assert!(status.success());
    }
    // A budget the root is far under: only debris goes.
    let printed = hoist(root, "prune", &["--keep-storage", "100g"]);
    assert!(printed.contains("piece(s) of debris"), "{printed}");
    assert!(!old_blob.exists());
    assert!(!old_unpack.exists());
    assert!(live_blob.exists(), "a blob being written was removed");
    assert!(!build(&p, "1", &[]), "the cache is under its budget: kept");
}
