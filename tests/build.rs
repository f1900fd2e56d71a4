//! `hoist build` end to end, as a user runs it: a busybox base made from Debian's busybox-static,
//! real RUN steps in the sandbox, the layer cache across runs, a real registry, and podman
//! running what was pushed. Needs root (namespaces, overlay, cgroups).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Project, Registry, mounts_under, processes_running};

/// The RUN, COPY and ADD steps that ran (not CACHED) in a plain progress log.
fn steps_that_ran(stderr: &str) -> Vec<String> {
    support::steps_that_ran(stderr)
        .into_iter()
        .filter(|name| name.contains(" RUN ") || name.contains(" COPY ") || name.contains(" ADD "))
        .collect()
}

const APP: &str = "FROM scratch\n\
                   ADD rootfs.tar /\n\
                   WORKDIR /app\n\
                   COPY a.txt .\n\
                   RUN cat a.txt > out.txt && echo ran >> out.txt\n\
                   CMD [\"cat\", \"/app/out.txt\"]\n";

#[test]
fn a_build_runs_its_steps_and_an_unchanged_rebuild_is_all_cached() {
    let p = Project::new(APP);
    p.write("a.txt", "first\n");
    let (log, rootfs) = p.build_to_dir(&[]);
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("app/out.txt")).unwrap(),
        "first\nran\n"
    );
    assert!(rootfs.path().join("bin/busybox").is_file());
    assert_eq!(steps_that_ran(&log).len(), 3, "{log}");

    let (log, _) = p.build_to_dir(&[]);
    assert!(
        steps_that_ran(&log).is_empty(),
        "a rebuild ran steps:\n{log}"
    );
    assert!(log.contains("CACHED"), "{log}");
}

#[test]
fn cache_invalidation_is_exact() {
    let p = Project::new(APP);
    p.write("a.txt", "aaaa\n");
    p.write("unused.txt", "not copied\n");
    p.build_to_dir(&[]);

    // A touch, or a change to a file no COPY selects, keeps every step cached.
    let a = p.path("a.txt");
    fs_err::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    p.write("unused.txt", "changed\n");
    let (log, _) = p.build_to_dir(&[]);
    assert!(steps_that_ran(&log).is_empty(), "{log}");

    // The case BuildKit gets wrong: same size, old mtime put back. The content changed, so
    // COPY and what follows run again and the image has the new bytes.
    let mtime = fs_err::metadata(&a).unwrap().modified().unwrap();
    p.write("a.txt", "bbbb\n");
    fs_err::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let (log, rootfs) = p.build_to_dir(&[]);
    let ran = steps_that_ran(&log);
    assert_eq!(ran.len(), 2, "COPY and RUN must rerun: {ran:?}\n{log}");
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("app/out.txt")).unwrap(),
        "bbbb\nran\n"
    );
    // The log says why: the context load read the one changed file again.
    assert!(
        log.contains("1 files, 0.0 MiB; 1 read and hashed"),
        "the context load does not say what it read again:\n{log}"
    );
}

#[test]
fn a_changed_build_arg_invalidates_from_its_first_use() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN echo before > /before\nARG V\nRUN echo $V > /v\nRUN cat /v > /after\n",
    );
    p.build_to_dir(&["--build-arg", "V=1"]);
    let (log, rootfs) = p.build_to_dir(&["--build-arg", "V=2"]);
    let ran = steps_that_ran(&log);
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran[0].contains("RUN echo $V"), "{ran:?}");
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("after")).unwrap(),
        "2\n"
    );
}

#[test]
fn a_failing_run_names_its_line_exit_code_and_output() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN echo preparing\n  RUN echo boom >&2; exit 3\nRUN echo never\n",
    );
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Line and column of the instruction, which is indented by two.
    assert!(
        stderr.contains("RUN echo boom >&2; exit 3 (line 4:3) failed"),
        "no Dockerfile line and column in:\n{stderr}"
    );
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains("boom"), "{stderr}");
    assert!(
        !stderr.contains("#5 [stage-0 4/4] RUN echo never\n#5 DONE"),
        "{stderr}"
    );
}

#[test]
fn unreached_stages_are_never_built_and_target_picks_a_stage() {
    // The unused stage's base does not exist anywhere: resolving it would fail the build.
    let p = Project::new(
        "FROM scratch AS base\nADD rootfs.tar /\nRUN echo base > /base\n\
         FROM 127.0.0.1:9/no/such:image AS unused\nRUN false\n\
         FROM base AS app\nRUN echo app > /app\n\
         FROM base AS other\nRUN echo other > /other\n",
    );
    let (_, rootfs) = p.build_to_dir(&["--target", "app"]);
    assert!(rootfs.path().join("app").is_file());
    assert!(!rootfs.path().join("other").exists());
    let (_, rootfs) = p.build_to_dir(&[]);
    assert!(rootfs.path().join("other").is_file());
}

#[test]
fn independent_stages_run_at_the_same_time() {
    // Stage `server` waits for a connection that only stage `client` makes: run one after the
    // other, the build could never finish. Loopback only, bounded by the test's timeout. The
    // port is outside the kernel's ephemeral range, so no other test's free port (or its
    // connection probes) can land on it.
    let port = port_outside_ephemeral_range();
    let p = Project::new(&format!(
        "FROM scratch AS base\nADD rootfs.tar /\n\
         FROM base AS server\nRUN --network=host nc -l -p {port} > /got\n\
         FROM base AS client\nRUN --network=host sh -c 'for i in $(seq 200); do echo hello | nc 127.0.0.1 {port} && exit 0; sleep 0.1; done; exit 1'\n\
         FROM base\nCOPY --from=server /got /got\nCOPY --from=client /bin/busybox /client-was-here\n"
    ));
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args([
            "build",
            "--progress=plain",
            "--max-parallelism=2",
            "--allow=network.host",
            "-o",
            &output,
            "--root",
        ])
        .arg(p.root.path())
        .arg(p.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(120));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    // Completing at all is the proof: the server's accept returns only once the client has
    // connected, and the client gives up unless the server is listening. What the server read
    // is not checked: busybox nc may stop reading as soon as its own stdin (/dev/null) ends.
    assert!(
        status.is_some_and(|s| s.success()),
        "the stages did not overlap:\n{stderr}"
    );
    assert!(dest.path().join("got").is_file());
}

fn port_outside_ephemeral_range() -> u16 {
    let base = 20_000 + u16::try_from(std::process::id() % 5_000).unwrap();
    (base..base + 1_000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port between 20000 and 26000")
}

fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pushed_image_runs_under_podman() {
    let registry = Registry::start();
    let p = Project::new(APP);
    p.write("a.txt", "pushed and pulled\n");
    // A build with no output only fills the cache (its layers are not compressed yet)...
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no output was asked for"),
        "a build without -t, --push or -o did not say where its result is:\n{stderr}"
    );
    // ...and pushing it later reuses every step: the blobs are made from the cached snapshots.
    let tag = format!("{}/hoist/e2e:latest", registry.addr);
    let meta = p.root.path().join("meta.json");
    let out = p.hoist(&[
        "-t",
        &tag,
        "--push",
        "--metadata-file",
        meta.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        steps_that_ran(&stderr).is_empty(),
        "the push after a cache-only build ran steps again:\n{stderr}"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&meta).unwrap()).unwrap();
    let digest = metadata["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let pinned = format!("{}/hoist/e2e@{digest}", registry.addr);
    assert!(
        stderr.contains(&format!("docker run --rm {tag}@{digest}")),
        "no run command in:\n{stderr}"
    );

    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is missing: apt-get install podman"
    );
    let nofile = rlimit_hard("-Hn");
    let nproc = rlimit_hard("-Hu").min(32768);
    let run = Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--tls-verify=false",
            "--network",
            "none",
        ])
        .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
        .arg(format!("--ulimit=nproc={nproc}:{nproc}"))
        .arg(&pinned)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "podman run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "pushed and pulled\nran\n"
    );
    let _ = Command::new("podman")
        .args(["rmi", "--force", &pinned])
        .output();
}

/// A hard resource limit of this process as `ulimit` reports it (podman may not raise past it).
fn rlimit_hard(flag: &str) -> u64 {
    let out = Command::new("sh")
        .args(["-c", &format!("ulimit {flag}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(32768)
}

#[test]
fn ctrl_c_stops_the_build_and_leaves_nothing_behind() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo started; sleep 3597\n");
    let (mut running, _lines) = p.start_until("started", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_running(&["sleep", "3597"]).is_empty() {
        assert!(Instant::now() < deadline, "the RUN's sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_or_kill(&mut running.0, Duration::from_secs(30))
        .expect("hoist did not stop after Ctrl-C");
    assert!(!exit.success(), "a cancelled build must not succeed");
    assert!(
        processes_running(&["sleep", "3597"]).is_empty(),
        "the sandbox outlived the build"
    );
    assert!(
        mounts_under(p.root.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(p.root.path())
    );
    let leftovers: Vec<_> = fs_err::read_dir(p.root.path().join("tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp state left: {leftovers:?}");
}

#[test]
fn kill_9_mid_build_leaves_a_cache_the_next_build_uses() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN echo one > /one\nRUN echo started; sleep 3596\n",
    );
    let (mut running, _lines) = p.start_until("started", &[]);
    running.0.kill().unwrap(); // SIGKILL: no cleanup of its own
    running.0.wait().unwrap();

    // The next build of the same steps reuses what finished, and cleans what the dead one left.
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nRUN echo one > /one\nRUN echo two > /two\n",
    );
    let (log, rootfs) = p.build_to_dir(&[]);
    let ran = steps_that_ran(&log);
    assert_eq!(ran.len(), 1, "only the new RUN may run: {ran:?}\n{log}");
    assert!(ran[0].contains("echo two"), "{ran:?}");
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("one")).unwrap(),
        "one\n"
    );
    assert!(
        processes_running(&["sleep", "3596"]).is_empty(),
        "the killed build's sandbox is still running"
    );
    assert!(
        mounts_under(p.root.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(p.root.path())
    );
}

#[test]
fn resource_limits_reach_every_run() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN dd if=/dev/zero of=/dev/null bs=64M count=2 && echo survived\n",
    );
    // dd holds a 64 MiB buffer: over a 32 MiB limit the kernel kills it, and the error says so.
    let out = p.hoist(&["--memory", "32m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a RUN over --memory succeeded:\n{stderr}"
    );
    assert!(
        stderr.contains("(line 3:1)") && stderr.contains("memory limit of 33554432 bytes"),
        "the failure does not name the line and the limit:\n{stderr}"
    );
    // Under a limit it fits in, the same step runs.
    let out = p.hoist(&[
        "--memory",
        "256m",
        "--pids-limit",
        "64",
        "--cpu-quota",
        "50000",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("survived"), "{stderr}");
    // Bad values are refused before anything runs, naming the flag.
    let out = p.hoist(&["--memory", "lots"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("invalid --memory \"lots\""),
        "{stderr}"
    );
}

#[test]
fn two_builds_share_one_state_root_at_once() {
    // Two hoist processes on one --root, overlapping in time (each RUN sleeps): both finish,
    // and a third build after them finds everything cached.
    let a = Project::new("FROM scratch\nADD rootfs.tar /\nRUN sleep 1 && echo a > /a\n");
    let b = Project::new("FROM scratch\nADD rootfs.tar /\nRUN sleep 1 && echo b > /b\n");
    let spawn = |p: &Project| {
        Command::new(env!("CARGO_BIN_EXE_hoist"))
            .args(["build", "--progress=plain", "--root"])
            .arg(a.root.path())
            .arg(p.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(&a);
    let second = spawn(&b);
    for (name, child) in [("first", first), ("second", second)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the {name} of two concurrent builds failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = a.hoist(&[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        steps_that_ran(&log).is_empty(),
        "a rebuild ran steps:\n{log}"
    );
}

#[test]
fn the_local_output_applies_deletions_and_replaced_directories() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN mkdir /d && touch /d/x && ln /bin/busybox /d/hard\n\
         RUN rm /bin/vi && rm -rf /d && mkdir /d && touch /d/y\n",
    );
    let (log, rootfs) = p.build_to_dir(&[]);
    let root = rootfs.path();
    assert!(
        !root.join("bin/vi").exists(),
        "a deleted file came back:\n{log}"
    );
    assert!(
        !root.join("d/x").exists(),
        "a replaced directory kept old files"
    );
    assert!(
        !root.join("d/hard").exists(),
        "a replaced directory kept old links"
    );
    assert!(root.join("d/y").is_file());
    assert!(root.join("bin/busybox").is_file() && root.join("bin/sh").exists());
}

#[test]
fn the_local_output_of_an_image_made_by_another_tool() {
    // A base image whose layer tar umoci wrote (not hoist), pushed with skopeo: the local output
    // must apply that layer as it is, not a tar hoist would have made of it.
    let registry = Registry::start();
    let p = Project::new("");
    let layout = p.root.path().join("layout");
    let reference = format!("{}/foreign/busybox:1", registry.addr);
    for args in [
        vec!["init", "--layout", layout.to_str().unwrap()],
        vec!["new", "--image", &format!("{}:b", layout.display())],
        vec![
            "raw",
            "add-layer",
            "--image",
            &format!("{}:b", layout.display()),
            p.path("rootfs.tar").to_str().unwrap(),
        ],
    ] {
        let out = Command::new("umoci").args(&args).output().expect("umoci");
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:b", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.write(
        "Dockerfile",
        &format!("FROM {reference}\nRUN rm /bin/vi && echo ok > /ok\n"),
    );
    let (log, rootfs) = p.build_to_dir(&[]);
    assert!(rootfs.path().join("bin/busybox").is_file(), "{log}");
    assert!(!rootfs.path().join("bin/vi").exists());
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("ok")).unwrap(),
        "ok\n"
    );
}

#[test]
fn copy_destinations_follow_image_symlinks_and_created_directories_take_the_owner() {
    use std::os::unix::fs::MetadataExt as _;
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN mkdir -p /target/real && ln -s /target/real /target/link && ln -s real /target/rel\n\
         COPY --chown=1234:5678 one/ /owned/x/y/\n\
         COPY one /single-dir\n\
         COPY a.txt /target/link/a.txt\n\
         COPY a.txt /target/rel/sub/b.txt\n\
         WORKDIR /target/link/wd\n\
         RUN pwd > /pwd\n",
    );
    fs_err::create_dir(p.path("one")).unwrap();
    p.write("one/only.txt", "only\n");
    p.write("a.txt", "a\n");
    let (log, rootfs) = p.build_to_dir(&[]);
    let root = rootfs.path();
    // Directories a COPY --chown creates belong to that owner, as in BuildKit.
    for dir in ["owned", "owned/x", "owned/x/y"] {
        let m = fs_err::metadata(root.join(dir)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "/{dir} owner\n{log}");
    }
    // A directory source holding one file still lands as a directory.
    assert!(
        root.join("single-dir").is_dir() && root.join("single-dir/only.txt").is_file(),
        "COPY of a one-file directory did not make a directory"
    );
    // Destinations through symlinks in the image land where the links point.
    assert_eq!(
        fs_err::read_to_string(root.join("target/real/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(
        fs_err::read_to_string(root.join("target/real/sub/b.txt")).unwrap(),
        "a\n"
    );
    assert!(
        fs_err::symlink_metadata(root.join("target/link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(root.join("target/real/wd").is_dir());
    // The RUN works in the directory the link leads to.
    assert_eq!(
        fs_err::read_to_string(root.join("pwd")).unwrap(),
        "/target/real/wd\n"
    );
}

/// A Dockerfile of `n` layer-making RUN steps after the base, each leaving `/f<i>`.
fn deep_dockerfile(n: usize) -> String {
    let mut text = String::from("FROM scratch\nADD rootfs.tar /\n");
    for i in 1..=n {
        text.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    text
}

fn hoist_run(p: &Project, image: &str, script: &str, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("run")
        .arg("--root")
        .arg(p.root.path())
        .args(["--rm", image, "sh", "-c", script])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn two_hundred_layer_making_steps_build_and_run() {
    // Past about 38 layers the overlay options outgrow the kernel's one page; BuildKit builds
    // such files, and so must hoist.
    let p = Project::new(&deep_dockerfile(200));
    let out = p.hoist(&["-t", "deep:200"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}",
        &stderr[stderr.len().saturating_sub(3000)..]
    );
    let out = hoist_run(
        &p,
        "deep:200",
        "cat /f1 /f100 /f200; ls / | grep -c '^f'",
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n100\n200\n200\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn layers_past_the_overlay_limit_are_merged_and_the_result_is_the_same() {
    // The limit lowered to 12 layers: RUN steps, COPY --from views and hoist run all see the
    // lowest layers merged into one, with every file and deletion in place.
    let mut dockerfile = deep_dockerfile(30);
    dockerfile.push_str("RUN rm /f3 && test ! -e /f3 && cat /f30 > /seen\n");
    dockerfile.push_str("FROM scratch\nCOPY --from=0 / /\n");
    let p = Project::new(&dockerfile);
    let limit = [("HOIST_OVERLAY_MAX_LAYERS", "12")];
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["build", "--progress=plain", "-t", "merged:1", "--root"])
        .arg(p.root.path())
        .arg(p.dir.path())
        .envs(limit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}",
        &stderr[stderr.len().saturating_sub(3000)..]
    );
    let merged = fs_err::read_dir(p.root.path().join("snapshots/merged"))
        .map(Iterator::count)
        .unwrap_or(0);
    assert!(merged > 0, "no layers were merged");
    let out = hoist_run(
        &p,
        "merged:1",
        "cat /f1 /f29 /seen; test -e /f3 || echo f3-gone",
        &limit,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n29\n30\nf3-gone\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[test]
fn a_run_that_prints_a_gibibyte_keeps_hoist_small_and_all_of_it_in_the_log() {
    const LINE: &str = "0123456789abcdefghijklmnopqrstuvwxyz-hoist-prints-a-gibibyte";
    const TOTAL: u64 = 1 << 30;
    let p = Project::new(&format!(
        "FROM scratch\nADD rootfs.tar /\nRUN yes {LINE} | head -c {TOTAL}\n"
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["build", "--progress=json", "--root"])
        .arg(p.root.path())
        .arg(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        // Everything the renderer wrote, kept only as far as the build id and a short tail.
        let mut head = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match std::io::Read::read(&mut stderr, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if head.len() < 4096 {
                        head.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    });
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    let head = drain.join().unwrap();
    assert!(status.success(), "{head}");
    assert!(
        peak < 100 << 20,
        "hoist's peak RSS was {} MiB while a RUN printed 1 GiB",
        peak >> 20
    );
    // The build's id is the first event; the RUN is step 4 (FROM, context, ADD, RUN).
    let build = head
        .split("\"build\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no build id in {head}"))
        .to_owned();
    let mut logs = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["logs", "--root"])
        .arg(p.root.path())
        .args([build.as_str(), "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::io::BufReader::with_capacity(1 << 20, logs.stdout.take().unwrap());
    let mut total = 0u64;
    for line in std::io::BufRead::split(reader, b'\n') {
        let line = line.unwrap();
        total += line.len() as u64 + 1;
        if total <= TOTAL {
            assert_eq!(line, LINE.as_bytes(), "line ending at byte {total}");
        } else {
            // The last line is cut where `head -c` stopped, and has no newline.
            assert!(LINE.as_bytes().starts_with(&line));
            total -= 1;
        }
    }
    assert!(logs.wait().unwrap().success());
    assert_eq!(
        total, TOTAL,
        "the log holds {total} of the RUN's {TOTAL} bytes"
    );
}

#[test]
fn user_sets_the_supplementary_groups_as_buildkit_does() {
    // BuildKit prints `groups=65534(nogroup)` for nobody on busybox: the primary group is a
    // supplementary group too, and so is every group that lists the user.
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\n\
         RUN echo 'staff:x:2345:nobody' >> /etc/group\n\
         USER nobody\nRUN id > /tmp/id-nobody\n\
         USER 4242:4343\nRUN id > /tmp/id-numbers\n",
    );
    let (_, rootfs) = p.build_to_dir(&[]);
    let read = |name: &str| fs_err::read_to_string(rootfs.path().join("tmp").join(name)).unwrap();
    assert_eq!(
        read("id-nobody"),
        "uid=65534(nobody) gid=65534(nogroup) groups=2345(staff),65534(nogroup)\n"
    );
    assert_eq!(read("id-numbers"), "uid=4242 gid=4343 groups=4343\n");
    // A name the image does not know is an error at its line.
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nUSER mallory\nRUN true\n",
    );
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("(line 4:1)") && stderr.contains("unable to find user mallory"),
        "{stderr}"
    );
}

#[test]
fn runs_that_change_nothing_leave_later_runs_working() {
    // Such RUNs make identical empty layers that share one snapshot; the overlay of the next
    // RUN must not list that directory twice (the kernel refuses it with ELOOP).
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN true\nRUN true\nRUN echo after > /after\n",
    );
    let (_, rootfs) = p.build_to_dir(&[]);
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("after")).unwrap(),
        "after\n"
    );
}

#[test]
fn source_date_epoch_makes_two_cold_builds_on_different_roots_the_same_image() {
    const DOCKERFILE: &str = "FROM scratch\nADD rootfs.tar /\nWORKDIR /app\n\
                              RUN mkdir -p /out/d && echo data > /out/d/f && ln -s f /out/d/l\n\
                              COPY ctx.txt /app/\n";
    let image = |epoch: Option<&str>| {
        let p = Project::new(DOCKERFILE);
        p.write("ctx.txt", "from the context\n");
        let mut args = vec!["-t", "repro:latest"];
        let arg;
        if let Some(e) = epoch {
            arg = format!("SOURCE_DATE_EPOCH={e}");
            args.extend(["--build-arg", arg.as_str()]);
        }
        let out = p.hoist(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // Seconds are what a tar keeps: the next build's files are a second younger.
        std::thread::sleep(Duration::from_millis(1100));
        (id, p)
    };
    let (plain_a, _) = image(None);
    let (plain_b, _) = image(None);
    assert_ne!(plain_a, plain_b, "without an epoch the file times differ");
    let (a, p) = image(Some("1000000000"));
    let (b, _) = image(Some("1000000000"));
    assert_eq!(a, b, "two builds with one SOURCE_DATE_EPOCH differ");
    // Every file the build made carries the epoch (older ones, as the base's, keep theirs).
    let (_, rootfs) = p.build_to_dir(&["--build-arg", "SOURCE_DATE_EPOCH=1000000000"]);
    for rel in ["out", "out/d", "out/d/f", "out/d/l", "app", "app/ctx.txt"] {
        let meta = fs_err::symlink_metadata(rootfs.path().join(rel)).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(meta.mtime(), 1_000_000_000, "{rel}");
    }
    // The epoch is in the key: another one makes the layers again.
    let out = p.hoist(&["--build-arg", "SOURCE_DATE_EPOCH=1000000001"]);
    assert!(out.status.success());
    assert_eq!(
        steps_that_ran(&String::from_utf8_lossy(&out.stderr)).len(),
        3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn quiet_prints_only_the_image_id_and_errors_still_show() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo chatty\n");
    for flag in ["-q", "--progress=quiet"] {
        let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .args(["build", "--no-cache", flag, "--root"])
            .arg(p.root.path())
            .arg(p.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("sha256:") && stdout.lines().count() == 1,
            "{flag}: {stdout}"
        );
        assert!(
            out.stderr.is_empty(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nRUN echo broken >&2; exit 3\n",
    );
    let out = p.hoist(&["-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("(line 3") && stderr.contains("exit code: 3") && stderr.contains("broken"),
        "{stderr}"
    );
}

#[test]
fn several_platforms_at_once_are_refused_clearly() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let out = p.hoist(&["--platform", "linux/amd64,linux/arm64"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("several platforms at once is not supported yet"),
        "{stderr}"
    );
}
