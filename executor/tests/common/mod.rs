//! The test rig: a busybox rootfs, an executor per test with its own state dir and cgroup
//! parent, and a check on drop that the test left no cgroup, mount or state behind.

#![allow(dead_code, unreachable_pub)]
// each test binary uses a different part of the rig
// Test helpers: a failed setup step should fail the test loudly, which is what unwrap does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hoist_executor::oci_spec::runtime::Spec;
use hoist_executor::spec::{Limits, NetworkMode, SpecOptions, build_spec};
use hoist_executor::{Backend, Executor, ExecutorConfig, Rootfs, RunOutcome, RunRequest};

pub const HOSTNAME: &str = "hoist-sandbox";

/// Fails (never skips) when the suite cannot run as it should.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the executor's integration tests need root (namespaces, mounts, cgroups)"
    );
}

/// The busybox rootfs shared by all tests of a binary, built once under the target dir.
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busybox-rootfs-v2");
        let done = base.join(".complete");
        if done.exists() {
            return base;
        }
        let tmp = base.with_extension(format!("tmp{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&tmp);
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: apt-get install busybox-static"
        );
        for dir in [
            "bin",
            "proc",
            "dev",
            "sys",
            "etc",
            "tmp",
            "root",
            "home/alice",
            "data",
            "mnt",
        ] {
            fs_err::create_dir_all(tmp.join(dir)).unwrap();
        }
        fs_err::copy(busybox, tmp.join("bin/busybox")).unwrap();
        let list = std::process::Command::new(busybox)
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet)).unwrap();
            }
        }
        fs_err::write(
            tmp.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n\
             nobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        fs_err::write(
            tmp.join("etc/group"),
            "root:x:0:\nwheel:x:10:alice\nusers:x:100:alice\nalice:x:1000:\nnogroup:x:65534:\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(tmp.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        fs_err::write(tmp.join("data/keep"), "keep\n").unwrap();
        fs_err::write(tmp.join("data/modify"), "before\n").unwrap();
        fs_err::write(tmp.join("data/delete"), "delete\n").unwrap();
        fs_err::create_dir_all(tmp.join("replace/old")).unwrap();
        fs_err::write(tmp.join("replace/a"), "a\n").unwrap();
        let _ = fs_err::remove_dir_all(&base);
        fs_err::rename(&tmp, &base).unwrap();
        fs_err::write(&done, "").unwrap();
        base
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Builtin,
    Runc,
}

pub fn backend(which: Which) -> Backend {
    match which {
        Which::Builtin => Backend::Builtin {
            init_program: PathBuf::from(env!("CARGO_BIN_EXE_hoist-executor-test-init")),
        },
        Which::Runc => {
            let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .expect("runc is missing: apt-get install runc");
            Backend::External { program: runc }
        }
    }
}

pub struct Rig {
    pub tmp: tempfile::TempDir,
    pub executor: Executor,
    pub config: ExecutorConfig,
    pub which: Which,
    runs: std::sync::atomic::AtomicUsize,
}

pub struct Output {
    pub outcome: RunOutcome,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        match self.outcome.status {
            hoist_executor::ExitStatus::Exited(c) => Some(c),
            hoist_executor::ExitStatus::Signaled(_) => None,
        }
    }
}

impl Rig {
    pub fn new(which: Which) -> Rig {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("hoist-exec-test")
            .tempdir()
            .unwrap();
        let mut config = ExecutorConfig::new(tmp.path().join("state"));
        config.backend = backend(which);
        config.cgroup_parent = format!(
            "hoist-test-{}",
            tmp.path().file_name().unwrap().to_string_lossy()
        );
        let executor = Executor::new(config.clone()).unwrap();
        Rig {
            tmp,
            executor,
            config,
            which,
            runs: 0.into(),
        }
    }

    pub fn options(&self, args: &[&str]) -> SpecOptions {
        SpecOptions {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            user: hoist_executor::oci_spec::runtime::User::default(),
            hostname: HOSTNAME.into(),
            network: NetworkMode::None,
            etc_files: self.executor.etc_files(HOSTNAME).unwrap(),
            limits: Limits::default(),
            insecure: false,
            mounts: Vec::new(),
        }
    }

    pub fn sh(&self, script: &str) -> Spec {
        build_spec(&self.options(&["sh", "-c", script])).unwrap()
    }

    /// A fresh upperdir and workdir over the busybox rootfs.
    pub fn rootfs(&self) -> Rootfs {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.tmp.path().join(format!("layer{n}"));
        fs_err::create_dir_all(dir.join("upper")).unwrap();
        fs_err::create_dir_all(dir.join("work")).unwrap();
        Rootfs {
            lowerdirs: vec![busybox_rootfs().to_path_buf()],
            upperdir: dir.join("upper"),
            workdir: dir.join("work"),
        }
    }

    pub async fn run_spec(&self, spec: Spec) -> Output {
        self.run_request(RunRequest {
            spec,
            rootfs: self.rootfs(),
            timeout: None,
        })
        .await
    }

    pub async fn run_request(&self, request: RunRequest) -> Output {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let outcome = self
            .executor
            .run(request, &mut stdout, &mut stderr)
            .await
            .unwrap();
        Output {
            outcome,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    pub async fn sh_out(&self, script: &str) -> Output {
        self.run_spec(self.sh(script)).await
    }

    /// Directories that hold this rig's per-run cgroups, in every hierarchy (runc joins them
    /// all), both under this process's own cgroup and at the top.
    pub fn cgroup_parents(&self) -> Vec<PathBuf> {
        let self_cgroup = fs_err::read_to_string("/proc/self/cgroup").unwrap();
        let mut out = Vec::new();
        for entry in fs_err::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let mount = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let own = self_cgroup
                .lines()
                .find_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let _ = parts.next();
                    let names = parts.next()?;
                    let path = parts.next()?;
                    let hit = if name == "unified" {
                        names.is_empty()
                    } else {
                        names
                            .split(',')
                            .any(|n| n == name || n == format!("name={name}"))
                    };
                    hit.then(|| path.trim_start_matches('/').to_owned())
                })
                .unwrap_or_default();
            for candidate in [
                mount.join(&own).join(&self.config.cgroup_parent),
                mount.join(&self.config.cgroup_parent),
            ] {
                if candidate.is_dir() && !out.contains(&candidate) {
                    out.push(candidate);
                }
            }
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Still tidy up what can be, without piling a second panic on the first.
            for parent in self.cgroup_parents() {
                let _ = fs_err::remove_dir(parent);
            }
            return;
        }
        // Nothing may be left: no per-run cgroup, no run state, no mount under the rig.
        for parent in self.cgroup_parents() {
            let children: Vec<_> = fs_err::read_dir(&parent)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect();
            assert!(children.is_empty(), "leaked cgroups: {children:?}");
            fs_err::remove_dir(&parent).unwrap();
        }
        let runs: Vec<_> = fs_err::read_dir(self.config.state_dir.join("runs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(runs.is_empty(), "leaked run state: {runs:?}");
        let mounts = fs_err::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = self.tmp.path().to_string_lossy().into_owned();
        assert!(
            !mounts.contains(&prefix),
            "leaked mounts under {prefix}:\n{mounts}"
        );
    }
}
