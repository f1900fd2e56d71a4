//! Isolation, limits, I/O and filesystem probes, run inside the sandbox under both backends:
//! every probe runs once with the built-in runtime and once with runc, on the same spec, and
//! expects the same observations.

// Probe helpers outside #[test] fns fail the test on unexpected errors, as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{HOSTNAME, Rig, Which};
use hoist_executor::ExitStatus;
use hoist_executor::RunRequest;
use hoist_executor::spec::build_spec;
use hoist_executor::user::resolve_user;

macro_rules! both_backends {
    ($($probe:ident),* $(,)?) => {
        mod builtin {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $probe() {
                    super::$probe(super::Rig::new(super::Which::Builtin)).await;
                }
            )*
        }
        mod runc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $probe() {
                    super::$probe(super::Rig::new(super::Which::Runc)).await;
                }
            )*
        }
    };
}

both_backends!(
    process_is_pid_one_and_host_processes_are_invisible,
    hostname_is_the_sandboxes,
    mount_umount_module_loading_and_proc_sys_writes_fail,
    proc_kcore_is_masked,
    cap_eff_is_dockers_default_set,
    seccomp_filters_like_dockers_default,
    network_none_shows_only_lo,
    every_run_gets_its_own_network_namespace,
    network_host_shares_the_hosts_namespace,
    memory_hog_is_oom_killed_and_reported,
    fork_bomb_is_contained_by_the_pids_limit,
    output_of_100_mb_streams_in_order_with_flat_memory,
    exit_codes_propagate,
    death_by_signal_propagates,
    cancel_kills_everything,
    upperdir_records_exactly_the_changes,
    user_by_name_and_by_number,
    env_cwd_and_umask,
    etc_files_are_the_sandboxes_and_stay_out_of_the_layer,
    timeout_kills_the_run_and_is_reported,
    extra_bind_and_tmpfs_mounts,
    insecure_run_may_mount,
    large_environment_reaches_the_process,
    a_block_device_node_made_by_mknod_cannot_be_opened,
    the_allowed_devices_still_work,
    an_insecure_run_may_open_any_device,
    a_32_bit_syscall_is_allowed_as_under_docker,
    signals_start_at_their_default_actions,
);

async fn process_is_pid_one_and_host_processes_are_invisible(rig: Rig) {
    let out = rig.sh_out("echo $$; ls -d /proc/[0-9]* | wc -l").await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "1", "{out:?}", out = out.stderr);
    // sh, ls and wc at most: none of the host's processes.
    let visible: usize = lines[1].trim().parse().unwrap();
    assert!(visible <= 3, "{visible} processes visible");
    assert!(out.outcome.status.success());
}

async fn hostname_is_the_sandboxes(rig: Rig) {
    let out = rig.sh_out("hostname; cat /etc/hostname").await;
    assert_eq!(out.stdout, format!("{HOSTNAME}\n{HOSTNAME}\n"));
}

async fn mount_umount_module_loading_and_proc_sys_writes_fail(rig: Rig) {
    let script = "\
        mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok || echo mount-denied
        umount /proc 2>/dev/null && echo umount-ok || echo umount-denied
        head -c 64 /dev/zero > /tmp/m.ko; insmod /tmp/m.ko 2>/dev/null && echo insmod-ok \
            || echo insmod-denied
        (echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sysctl-ok || echo sysctl-denied
        (echo 1 > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-ok || echo sysrq-denied";
    let out = rig.sh_out(script).await;
    assert_eq!(
        out.stdout, "mount-denied\numount-denied\ninsmod-denied\nsysctl-denied\nsysrq-denied\n",
        "{}",
        out.stderr
    );
}

async fn proc_kcore_is_masked(rig: Rig) {
    // This VM's kernel has no /proc/kcore; where it exists it must read as empty, and the other
    // masked files always do.
    let kcore = Path::new("/proc/kcore").exists();
    let out = rig
        .sh_out(
            "[ -e /proc/kcore ] && wc -c < /proc/kcore; wc -c < /proc/timer_list; \
             wc -c < /proc/keys; ls /proc/acpi | wc -l; ls /sys/firmware | wc -l",
        )
        .await;
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    let expected = if kcore { vec!["0"; 5] } else { vec!["0"; 4] };
    assert_eq!(fields, expected, "{}", out.stderr);
}

async fn cap_eff_is_dockers_default_set(rig: Rig) {
    let out = rig.sh_out("grep -E '^Cap(Eff|Bnd|Prm|Inh|Amb)' /proc/self/status; grep NoNewPrivs /proc/self/status").await;
    let expected = "CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\n\
                    CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n\
                    CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
    assert_eq!(out.stdout, expected, "{}", out.stderr);
}

async fn seccomp_filters_like_dockers_default(rig: Rig) {
    // A user namespace needs no capability, so only the seccomp profile stops `unshare -U`;
    // ordinary work goes on under the filter.
    let out = rig
        .sh_out(
            "grep '^Seccomp:' /proc/self/status; \
             unshare -U true 2>/dev/null && echo userns-ok || echo userns-denied; \
             echo data | sha256sum | cut -c1-8",
        )
        .await;
    assert_eq!(
        out.stdout, "Seccomp:\t2\nuserns-denied\n6667b2d1\n",
        "{}",
        out.stderr
    );
}

async fn network_none_shows_only_lo(rig: Rig) {
    let out = rig
        .sh_out("ls /sys/class/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip -o link | grep -c UP")
        .await;
    assert_eq!(out.stdout, "lo\nlo\n1\n", "{}", out.stderr);
}

fn netns_of(pid: &str) -> String {
    fs_err::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The built-in runtime makes network namespaces ahead of time; none may serve two RUNs.
/// Three RUNs that overlap in time must see three namespaces, none of them the host's.
/// (Sequential RUNs may legitimately see the same inode number: the kernel reuses the number
/// of a namespace that is gone.)
async fn every_run_gets_its_own_network_namespace(rig: Rig) {
    let run = |delay_ms: u64, sleep: &str| {
        let spec = rig.sh(&format!("readlink /proc/self/ns/net; sleep {sleep}"));
        let rig = &rig;
        async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let out = rig.run_spec(spec).await;
            assert_eq!(out.code(), Some(0), "{}", out.stderr);
            out.stdout.trim().to_owned()
        }
    };
    let (a, b, c) = tokio::join!(run(0, "1.5"), run(300, "1"), run(600, "0.5"));
    let host = netns_of("self");
    for ns in [&a, &b, &c] {
        assert!(ns.starts_with("net:["), "{ns}");
        assert_ne!(ns, &host);
    }
    assert!(a != b && b != c && a != c, "{a} {b} {c}");
}

async fn network_host_shares_the_hosts_namespace(rig: Rig) {
    let mut options = rig.options(&["readlink", "/proc/self/ns/net"]);
    options.network = hoist_executor::spec::NetworkMode::Host;
    // Twice: the first host RUN must not use up the built-in runtime's spare namespace.
    for _ in 0..2 {
        let out = rig.run_spec(build_spec(&options).unwrap()).await;
        assert_eq!(out.stdout.trim(), netns_of("self"), "{}", out.stderr);
    }
    let out = rig.sh_out("readlink /proc/self/ns/net").await;
    assert_ne!(out.stdout.trim(), netns_of("self"));
    // While a RUN holds the namespace it was given, a host RUN still gets the host's.
    let (none, host) = tokio::join!(
        rig.run_spec(rig.sh("readlink /proc/self/ns/net; sleep 1")),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            rig.run_spec(build_spec(&options).unwrap()).await
        }
    );
    assert_eq!(host.stdout.trim(), netns_of("self"), "{}", host.stderr);
    assert_ne!(none.stdout.trim(), netns_of("self"));
}

async fn memory_hog_is_oom_killed_and_reported(rig: Rig) {
    let mut options = rig.options(&["tail", "/dev/zero"]);
    options.limits.memory_bytes = Some(32 << 20);
    let spec = build_spec(&options).unwrap();
    let out = rig.run_spec(spec).await;
    assert_eq!(out.outcome.status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(out.outcome.oom_killed, Some(Some(32 << 20)));
    let peak = out.outcome.peak_memory_bytes.unwrap();
    assert!(((30 << 20)..=(33 << 20)).contains(&peak), "peak {peak}");
}

async fn fork_bomb_is_contained_by_the_pids_limit(rig: Rig) {
    // First, bounded: a shell tries 100 background processes under a limit of 32 tasks (it
    // gives up at the first failed fork), then pid 1 counts what runs, without forking.
    let mut options = rig.options(&[
        "sh",
        "-c",
        "sh -c 'i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done' 2>/dev/null; \
         set -- /proc/[0-9]*; echo $#",
    ]);
    options.limits.pids = Some(32);
    let out = rig.run_spec(build_spec(&options).unwrap()).await;
    let visible: usize = out.stdout.trim().parse().unwrap();
    assert!(
        (20..=32).contains(&visible),
        "{visible} processes under a limit of 32"
    );
    // Then the real thing. It ends when pid 1 itself fails to fork (busybox sh exits then) or at
    // the timeout; either way the limit kept it small and the cgroup kill took all of it.
    let mut options = rig.options(&["sh", "-c", "b() { b | b & }; b; sleep 60"]);
    options.limits.pids = Some(64);
    let started = std::time::Instant::now();
    let out = rig
        .run_request(RunRequest {
            spec: build_spec(&options).unwrap(),
            rootfs: rig.rootfs(),
            timeout: Some(Duration::from_secs(3)),
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.stderr.contains("can't fork"), "{}", out.stderr);
}

/// A sink that checks `seq` output line by line and keeps nothing but counters, sampling this
/// process's resident memory as data arrives.
struct SeqChecker {
    next: u64,
    partial: Vec<u8>,
    bytes: u64,
    max_rss_kb: u64,
}

fn rss_kb() -> u64 {
    let status = fs_err::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

impl tokio::io::AsyncWrite for SeqChecker {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        for &b in buf {
            if b == b'\n' {
                let line = std::str::from_utf8(&this.partial).unwrap();
                assert_eq!(line.parse::<u64>().unwrap(), this.next, "out of order");
                this.next += 1;
                this.partial.clear();
            } else {
                this.partial.push(b);
            }
        }
        this.bytes += buf.len() as u64;
        if this.bytes % (8 << 20) < buf.len() as u64 {
            this.max_rss_kb = this.max_rss_kb.max(rss_kb());
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn output_of_100_mb_streams_in_order_with_flat_memory(rig: Rig) {
    // 1..=12_500_000 is 100.9 MB of decimal lines.
    let lines = 12_500_000u64;
    let spec = build_spec(&rig.options(&["seq", "1", &lines.to_string()])).unwrap();
    let before = rss_kb();
    let mut sink = SeqChecker {
        next: 1,
        partial: Vec::new(),
        bytes: 0,
        max_rss_kb: before,
    };
    let mut stderr = Vec::new();
    let outcome = rig
        .executor
        .run(
            RunRequest {
                spec,
                rootfs: rig.rootfs(),
                timeout: None,
            },
            &mut sink,
            &mut stderr,
        )
        .await
        .unwrap();
    assert!(
        outcome.status.success(),
        "{}",
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(sink.next, lines + 1);
    assert!(sink.bytes > 100_000_000);
    let growth_kb = sink.max_rss_kb.saturating_sub(before);
    assert!(
        growth_kb < 32 * 1024,
        "memory grew by {growth_kb} KiB while streaming"
    );
}

async fn exit_codes_propagate(rig: Rig) {
    for code in [0, 1, 42, 127] {
        let out = rig.sh_out(&format!("exit {code}")).await;
        assert_eq!(out.outcome.status, ExitStatus::Exited(code));
    }
    // A missing program is a setup error for the built-in runtime; runc reports it as a failed
    // exit. Either way the RUN fails, naming the program.
    let mut stderr = Vec::new();
    let result = rig
        .executor
        .run(
            RunRequest {
                spec: build_spec(&rig.options(&["/no/such/program"])).unwrap(),
                rootfs: rig.rootfs(),
                timeout: None,
            },
            &mut Vec::new(),
            &mut stderr,
        )
        .await;
    match result {
        Err(e) => assert!(format!("{e}").contains("/no/such/program"), "{e}"),
        Ok(outcome) => {
            assert_ne!(outcome.status, ExitStatus::Exited(0));
            assert!(String::from_utf8_lossy(&stderr).contains("/no/such/program"));
        }
    }
}

async fn death_by_signal_propagates(rig: Rig) {
    // pid 1 ignores signals it has no handler for, even SIGKILL from inside its namespace; a
    // kernel-sent one gets through: the hard CPU-time limit.
    let mut spec = rig.sh("while :; do :; done");
    let process = spec.process_mut().as_mut().unwrap();
    let mut rlimits = process.rlimits().clone().unwrap();
    rlimits.push(
        hoist_executor::oci_spec::runtime::PosixRlimitBuilder::default()
            .typ(hoist_executor::oci_spec::runtime::PosixRlimitType::RlimitCpu)
            .soft(1u64)
            .hard(1u64)
            .build()
            .unwrap(),
    );
    process.set_rlimits(Some(rlimits));
    let out = rig.run_spec(spec).await;
    assert_eq!(out.outcome.status, ExitStatus::Signaled(libc::SIGKILL));
    assert!(out.outcome.oom_killed.is_none());
    // The kill came from the limit, after CPU time was spent, not at once. The bound is loose:
    // the kernel charges CPU time by ticks, and on a loaded machine the cgroup's figure came
    // out at 0.71 s for a 1 s limit.
    let cpu = out.outcome.cpu_time.unwrap();
    assert!(cpu >= Duration::from_millis(400), "cpu time {cpu:?}");
}

fn processes_with_arg(marker: &str) -> Vec<i32> {
    fs_err::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs_err::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

async fn cancel_kills_everything(rig: Rig) {
    let marker = format!("{}", 40_000 + std::process::id() % 10_000);
    let spec = rig.sh(&format!(
        "sleep {marker} & (sleep {marker} &) ; echo started; sleep {marker}"
    ));
    let request = RunRequest {
        spec,
        rootfs: rig.rootfs(),
        timeout: None,
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut run = Box::pin(rig.executor.run(request, &mut stdout, &mut stderr));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            result = &mut run => panic!("run ended before cancel: {:?}", result.map(|o| o.status)),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if processes_with_arg(&marker).len() >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleeps never started"
        );
    }
    // Dropping the future is cancelling it.
    drop(run);
    assert_eq!(processes_with_arg(&marker), Vec::<i32>::new());
}

/// Every path in `dir`, relative, with a description of what it is.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs_err::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = fs_err::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let kind = if meta.file_type().is_char_device() && meta.rdev() == 0 {
                "whiteout".to_owned()
            } else if meta.is_dir() {
                let mut buf = [0u8; 1];
                let opaque = rustix::fs::lgetxattr(&path, "trusted.overlay.opaque", &mut buf)
                    .is_ok_and(|n| n == 1 && buf[0] == b'y');
                stack.push(path.clone());
                if opaque { "opaque dir" } else { "dir" }.to_owned()
            } else {
                format!("file {:?}", fs_err::read_to_string(&path).unwrap())
            };
            out.push((rel, kind));
        }
    }
    out.sort();
    out
}

async fn upperdir_records_exactly_the_changes(rig: Rig) {
    let script = "\
        echo new > /data/new
        echo after >> /data/modify
        rm /data/delete
        rm -rf /replace
        mkdir /replace
        echo c > /replace/c
        cat /data/keep /etc/hosts /etc/resolv.conf > /dev/null";
    let out = rig.sh_out(script).await;
    assert!(out.outcome.status.success(), "{}", out.stderr);
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        tree(&out.outcome.upperdir),
        vec![
            pair("data", "dir"),
            pair("data/delete", "whiteout"),
            pair("data/modify", "file \"before\\nafter\\n\""),
            pair("data/new", "file \"new\\n\""),
            pair("replace", "opaque dir"),
            pair("replace/c", "file \"c\\n\""),
        ]
    );
    // A RUN that changes nothing leaves an empty upperdir, though /etc lacks the mount points.
    let out = rig.sh_out("true").await;
    assert_eq!(tree(&out.outcome.upperdir), vec![]);
}

async fn user_by_name_and_by_number(rig: Rig) {
    let layers = vec![common::busybox_rootfs().to_path_buf()];
    for (user, expected) in [
        ("alice", "1000 1000 10 100 1000\n"),
        ("alice:wheel", "1000 10 10\n"),
        ("1000", "1000 1000 10 100 1000\n"),
        ("4242:4343", "4242 4343 4343\n"),
        ("root", "0 0 0\n"),
    ] {
        let mut options = rig.options(&[
            "sh",
            "-c",
            "echo $(id -u) $(id -g) $(id -G | tr ' ' '\\n' | sort -n)",
        ]);
        options.user = resolve_user(&layers, user).unwrap();
        let out = rig.run_spec(build_spec(&options).unwrap()).await;
        assert_eq!(out.stdout, expected, "user {user}: {}", out.stderr);
    }
    // A non-root user gets no capabilities, only the bounding set.
    let mut options = rig.options(&["grep", "CapEff", "/proc/self/status"]);
    options.user = resolve_user(&layers, "alice").unwrap();
    let out = rig.run_spec(build_spec(&options).unwrap()).await;
    assert_eq!(out.stdout, "CapEff:\t0000000000000000\n");
}

async fn env_cwd_and_umask(rig: Rig) {
    let mut options = rig.options(&[
        "sh",
        "-c",
        "echo $GREETING; pwd; umask; touch f; stat -c %a f",
    ]);
    options.env.push("GREETING=hello world".into());
    options.cwd = "/work/dir".into();
    let out = rig.run_spec(build_spec(&options).unwrap()).await;
    assert_eq!(
        out.stdout, "hello world\n/work/dir\n0022\n644\n",
        "{}",
        out.stderr
    );
}

async fn etc_files_are_the_sandboxes_and_stay_out_of_the_layer(rig: Rig) {
    let out = rig
        .sh_out(
            "grep -c localhost /etc/hosts; grep -q hoist-sandbox /etc/hosts && echo named; \
                 echo x >> /etc/hosts 2>/dev/null || echo read-only",
        )
        .await;
    assert_eq!(out.stdout, "2\nnamed\nread-only\n", "{}", out.stderr);
    assert_eq!(tree(&out.outcome.upperdir), vec![]);
    // The image's /etc lacks these files; the sandbox's /etc still shows the image's owner
    // and mode (and with the built-in runtime, which does not copy /etc up for them, its
    // mtime), and a file written there lands in the layer under an /etc just like it.
    let image_etc = fs_err::metadata(common::busybox_rootfs().join("etc")).unwrap();
    let out = rig
        .sh_out("stat -c '%a %u %g' /etc; stat -c %Y /etc >&2; echo n > /etc/new")
        .await;
    assert_eq!(
        out.stdout,
        format!(
            "{:o} {} {}\n",
            image_etc.mode() & 0o7777,
            image_etc.uid(),
            image_etc.gid(),
        ),
        "{}",
        out.stderr
    );
    if rig.which == Which::Builtin {
        assert_eq!(out.stderr, format!("{}\n", image_etc.mtime()));
    }
    assert_eq!(
        tree(&out.outcome.upperdir),
        vec![
            ("etc".to_owned(), "dir".to_owned()),
            ("etc/new".to_owned(), "file \"n\\n\"".to_owned()),
        ]
    );
    let upper_etc = fs_err::metadata(out.outcome.upperdir.join("etc")).unwrap();
    assert_eq!(
        (upper_etc.mode(), upper_etc.uid(), upper_etc.gid()),
        (image_etc.mode(), image_etc.uid(), image_etc.gid())
    );
}

async fn timeout_kills_the_run_and_is_reported(rig: Rig) {
    let started = std::time::Instant::now();
    let out = rig
        .run_request(RunRequest {
            spec: rig.sh("echo before; sleep 30 & sleep 30; echo after"),
            rootfs: rig.rootfs(),
            timeout: Some(Duration::from_millis(500)),
        })
        .await;
    assert!(out.outcome.timed_out);
    assert_eq!(out.outcome.status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(out.stdout, "before\n");
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn extra_bind_and_tmpfs_mounts(rig: Rig) {
    use hoist_executor::oci_spec::runtime::MountBuilder;
    let host = rig.tmp.path().join("context");
    fs_err::create_dir_all(&host).unwrap();
    fs_err::write(host.join("file"), "from the host\n").unwrap();
    let mut spec = rig.sh(
        "cat /src/file; touch /src/x 2>/dev/null || echo read-only; \
         echo scratch > /cache/s && cat /cache/s; grep -c ' /cache tmpfs' /proc/mounts",
    );
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/src")
            .typ("bind")
            .source(&host)
            .options(vec!["rbind".to_owned(), "ro".to_owned()])
            .build()
            .unwrap(),
    );
    mounts.push(
        MountBuilder::default()
            .destination("/cache")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_owned(), "size=1m".to_owned()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let out = rig.run_spec(spec).await;
    assert_eq!(
        out.stdout, "from the host\nread-only\nscratch\n1\n",
        "{}",
        out.stderr
    );
    // The mount points were made for the RUN and are not part of its layer.
    assert_eq!(tree(&out.outcome.upperdir), vec![]);
    assert!(!host.join("x").exists());
}

async fn insecure_run_may_mount(rig: Rig) {
    let mut options = rig.options(&[
        "sh",
        "-c",
        "mount -t tmpfs none /mnt && echo mounted; grep '^Seccomp:' /proc/self/status; \
         wc -c < /proc/timer_list | grep -vqx 0 && echo unmasked",
    ]);
    options.insecure = true;
    let out = rig.run_spec(build_spec(&options).unwrap()).await;
    assert_eq!(
        out.stdout, "mounted\nSeccomp:\t0\nunmasked\n",
        "{}",
        out.stderr
    );
}

async fn large_environment_reaches_the_process(rig: Rig) {
    // 300 KB of environment: more than a default unix datagram holds.
    let mut options = rig.options(&["sh", "-c", "echo ${#A} ${#B} ${#C}"]);
    for name in ["A", "B", "C"] {
        options.env.push(format!("{name}={}", "x".repeat(100_000)));
    }
    let out = rig.run_spec(build_spec(&options).unwrap()).await;
    assert_eq!(out.stdout, "100000 100000 100000\n", "{}", out.stderr);
}

/// A script that makes a node for the host's first loop device and tries to open it for
/// reading, then for writing: prints what each open said.
const OPEN_HOST_DISK: &str = "mknod /tmp/disk b 7 0 && echo made; \
     (exec 3</tmp/disk) 2>&1 && echo read-opened; \
     (exec 3>>/tmp/disk) 2>&1 && echo write-opened; true";

async fn a_block_device_node_made_by_mknod_cannot_be_opened(rig: Rig) {
    let out = rig.sh_out(OPEN_HOST_DISK).await;
    // mknod is allowed (CAP_MKNOD, as under Docker); opening the node is not.
    assert!(
        out.stdout.starts_with("made\n"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stdout.contains("opened"),
        "a RUN opened the host's /dev/loop0: {}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("Operation not permitted").count(),
        2,
        "{}",
        out.stdout
    );
}

async fn the_allowed_devices_still_work(rig: Rig) {
    let out = rig
        .sh_out(
            "head -c 8 /dev/urandom | wc -c; head -c 8 /dev/random | wc -c; \
             head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null; \
             (echo x > /dev/full) 2>&1 | grep -o 'No space left on device'; \
             mknod /tmp/null2 c 1 3 && echo y > /tmp/null2 && echo own-null; \
             test -c /dev/ptmx && echo ptmx",
        )
        .await;
    assert_eq!(
        out.stdout, "8\n8\n4\nnull\nNo space left on device\nown-null\nptmx\n",
        "{}",
        out.stderr
    );
}

async fn an_insecure_run_may_open_any_device(rig: Rig) {
    let mut options = rig.options(&["sh", "-c", OPEN_HOST_DISK]);
    options.insecure = true;
    let out = rig.run_spec(build_spec(&options).unwrap()).await;
    assert_eq!(
        out.stdout, "made\nread-opened\nwrite-opened\n",
        "{}",
        out.stderr
    );
}

/// The cgroup v2 path, checked on the real kernel: this host runs RUNs under v1 (where the
/// devices controller is), but its unified hierarchy takes device programs all the same.
#[test]
fn the_v2_device_program_denies_a_disk_and_allows_the_short_list() {
    common::require_root();
    let unified = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.controllers").exists())
        .expect("no cgroup v2 hierarchy mounted under /sys/fs/cgroup");
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = unified.join(format!("hoist-devices-test-{}", std::process::id()));
    fs_err::create_dir(&cgroup).unwrap();
    let result = std::panic::catch_unwind(|| {
        hoist_executor::cgroup::restrict_devices_v2(
            &cgroup,
            &hoist_executor::devices::docker_default(),
        )
        .unwrap();
        let script = format!(
            "echo $$ > {procs} || exit 9; mknod {disk} b 7 0 && echo made; \
             (exec 3<{disk}) 2>&1 && echo read-opened; head -c 4 /dev/zero | wc -c",
            procs = cgroup.join("cgroup.procs").display(),
            disk = tmp.path().join("disk").display(),
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    // The shell has exited: the cgroup is empty and can go.
    fs_err::remove_dir(&cgroup).unwrap();
    let stdout = result.unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], "made");
    assert!(lines[1].ends_with("Operation not permitted"), "{stdout}");
    assert_eq!(lines[2].trim(), "4");
}

/// A static x86_64 ELF program that calls getpid through the i386 ABI (`int 0x80`, eax = 20,
/// as 32-bit programs do) and exits 0 when that returned a pid, 1 when it returned an error.
/// A filter that does not cover i386 kills it instead (SIGSYS).
fn i386_getpid_program() -> Vec<u8> {
    let code: &[u8] = &[
        0xb8, 0x14, 0, 0, 0, // mov eax, 20 (i386 getpid)
        0xcd, 0x80, // int 0x80
        0x31, 0xff, // xor edi, edi
        0x85, 0xc0, // test eax, eax
        0x7f, 0x05, // jg +5
        0xbf, 0x01, 0, 0, 0, // mov edi, 1
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (x86_64 exit)
        0x0f, 0x05, // syscall
    ];
    let base: u64 = 0x40_0000;
    let (header, program_header) = (64u16, 56u16);
    let entry = base + u64::from(header + program_header);
    let size = u64::from(header + program_header) + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&entry.to_le_bytes());
    elf.extend_from_slice(&u64::from(header).to_le_bytes()); // program headers follow
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for field in [header, program_header, 1, 0, 0, 0] {
        elf.extend_from_slice(&field.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R | X
    for field in [0, base, base, size, size, 0x1000] {
        elf.extend_from_slice(&field.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

async fn a_32_bit_syscall_is_allowed_as_under_docker(rig: Rig) {
    use hoist_executor::oci_spec::runtime::MountBuilder;
    use std::os::unix::fs::PermissionsExt;
    let host = rig.tmp.path().join("i386");
    fs_err::create_dir_all(&host).unwrap();
    let program = host.join("getpid32");
    fs_err::write(&program, i386_getpid_program()).unwrap();
    fs_err::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = rig.sh("/probe/getpid32; echo exit=$?");
    let mut mounts = spec.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/probe")
            .typ("bind")
            .source(&host)
            .options(vec!["rbind".to_owned(), "ro".to_owned()])
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    let out = rig.run_spec(spec).await;
    // 159 would be SIGSYS: the filter killed a 32-bit call that Docker's profile allows.
    assert_eq!(out.stdout, "exit=0\n", "{}", out.stderr);
}

async fn signals_start_at_their_default_actions(rig: Rig) {
    // An ignored SIGPIPE (the hoist binary's own) made `yes | head` run forever.
    let request = RunRequest {
        spec: rig.sh("grep -E '^Sig(Ign|Blk):' /proc/self/status; yes | head -c 4"),
        rootfs: rig.rootfs(),
        timeout: Some(Duration::from_secs(20)),
    };
    let out = rig.run_request(request).await;
    assert!(!out.outcome.timed_out, "yes | head did not end");
    let mask = |name: &str| {
        let line = out.stdout.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split('\t').nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{}", out.stdout);
    // Bit n is signal n + 1; signals from 32 on are the C library's own.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{}", out.stdout);
    assert!(
        out.stdout.ends_with("y\ny\n"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}
