//! kill -9 of the process that runs a RUN: the built-in sandbox dies with it, and the next
//! executor on the same state cleans up what it left, its processes, cgroups, mounts and state.

// Test helpers fail the test on unexpected errors, as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Rig, Which};
use hoist_executor::{Executor, RunRequest};

const STATE_ENV: &str = "HOIST_EXECUTOR_STALE_STATE";
const PARENT_ENV: &str = "HOIST_EXECUTOR_STALE_PARENT";
const BACKEND_ENV: &str = "HOIST_EXECUTOR_STALE_BACKEND";
const MARKER_ENV: &str = "HOIST_EXECUTOR_STALE_MARKER";

/// Not a test on its own: the child process that `killed_hoist_leaves_nothing_after_restart`
/// starts and then kills with SIGKILL in the middle of a RUN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of the kill -9 tests, started by them"]
async fn helper_run_until_killed() {
    let which = match std::env::var(BACKEND_ENV).unwrap().as_str() {
        "runc" => Which::Runc,
        _ => Which::Builtin,
    };
    let tmp = PathBuf::from(std::env::var(STATE_ENV).unwrap());
    let mut config = hoist_executor::ExecutorConfig::new(tmp.join("state"));
    config.backend = common::backend(which);
    config.cgroup_parent = std::env::var(PARENT_ENV).unwrap();
    let executor = Executor::new(config).unwrap();
    let marker = std::env::var(MARKER_ENV).unwrap();
    let mut options = hoist_executor::spec::SpecOptions {
        args: vec![
            "sh".into(),
            "-c".into(),
            format!("sleep {marker} & sleep {marker}"),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: hoist_executor::oci_spec::runtime::User::default(),
        hostname: common::HOSTNAME.into(),
        network: hoist_executor::spec::NetworkMode::None,
        etc_files: executor.etc_files(common::HOSTNAME).unwrap(),
        limits: hoist_executor::spec::Limits::default(),
        insecure: false,
        mounts: Vec::new(),
    };
    options.limits.pids = Some(16);
    let layer = tmp.join("layer");
    fs_err::create_dir_all(layer.join("upper")).unwrap();
    fs_err::create_dir_all(layer.join("work")).unwrap();
    let request = RunRequest {
        spec: hoist_executor::spec::build_spec(&options).unwrap(),
        rootfs: hoist_executor::Rootfs {
            lowerdirs: vec![common::busybox_rootfs().to_path_buf()],
            upperdir: layer.join("upper"),
            workdir: layer.join("work"),
        },
        timeout: None,
    };
    let _ = executor
        .run(request, &mut tokio::io::sink(), &mut tokio::io::sink())
        .await;
}

fn processes_with_arg(marker: &str) -> usize {
    fs_err::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs_err::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == marker.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

fn kill_mid_run_then_restart(which: Which, marker: &str) {
    // The rig's drop checks that no cgroup, run state or mount is left.
    let rig = Rig::new(which);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_run_until_killed", "--ignored", "--quiet"])
        .env(STATE_ENV, rig.tmp.path())
        .env(PARENT_ENV, &rig.config.cgroup_parent)
        .env(
            BACKEND_ENV,
            if which == Which::Runc {
                "runc"
            } else {
                "builtin"
            },
        )
        .env(MARKER_ENV, marker)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with_arg(marker) < 2 {
        assert!(Instant::now() < deadline, "the helper's RUN never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    match which {
        // The built-in sandbox dies with its owner: the zygote sees its socket close, and
        // the parent-death signals of the init and pid 1 take the pid namespace down.
        Which::Builtin => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while processes_with_arg(marker) > 0 {
                assert!(
                    Instant::now() < deadline,
                    "the sandbox outlived its killed owner"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // runc's container outlives its killed owner, with its cgroups, bundle and mounted
        // rootfs, until the next executor starts: nothing of runc's stops it before.
        Which::Runc => assert_eq!(processes_with_arg(marker), 2),
    }
    let left_behind = || {
        let runs = fs_err::read_dir(rig.config.state_dir.join("runs"))
            .unwrap()
            .count();
        let cgroups: usize = rig
            .cgroup_parents()
            .iter()
            .map(|p| {
                fs_err::read_dir(p)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .count()
            })
            .sum();
        (runs, cgroups)
    };
    let (runs, cgroups) = left_behind();
    assert!(cgroups >= 3, "{cgroups} run cgroups");
    assert_eq!(runs, usize::from(which == Which::Runc));

    let _executor = Executor::new(rig.config.clone()).unwrap();
    assert_eq!(processes_with_arg(marker), 0);
    // runc leaves its per-controller cgroups for `runc delete`, which the cleanup ran too.
    assert_eq!(left_behind(), (0, 0));
}

#[test]
fn killed_hoist_leaves_nothing_after_restart_builtin() {
    kill_mid_run_then_restart(
        Which::Builtin,
        &format!("{}", 50_000 + std::process::id() % 5000),
    );
}

#[test]
fn killed_hoist_leaves_nothing_after_restart_runc() {
    kill_mid_run_then_restart(
        Which::Runc,
        &format!("{}", 55_000 + std::process::id() % 5000),
    );
}
