//! One cgroup per RUN: cgroup v2 where the unified hierarchy has the memory and pids
//! controllers, else v1 `memory`, `pids`, `cpuacct` (for CPU time), `devices` and, when limits
//! ask for them, `cpu` and `cpuset`. The spec's device rules become a v1 `devices` cgroup or,
//! on v2, an eBPF program attached to the RUN's cgroup (module [`crate::devices`]).
//!
//! Every function takes the cgroup mount root and the caller's own cgroup as parameters, so unit
//! tests run against fixture directories as well as `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

/// Error from the cgroup operations, each naming the file it was working on.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable hierarchy: neither a v2 one with memory and pids nor v1 memory and pids.
    #[error("no usable cgroup hierarchy under {mount_root} (need memory and pids controllers)")]
    NoHierarchy { mount_root: PathBuf },
    #[error("create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {data:?} to {path}")]
    Write {
        path: PathBuf,
        data: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec restricts devices, and this v1 host has no devices controller to do it with.
    #[error(
        "no devices cgroup controller under {mount_root}: a RUN could open the host's devices; mount the v1 devices controller or use cgroup v2"
    )]
    NoDeviceController { mount_root: PathBuf },
    #[error("device rules of cgroup {path}")]
    DeviceRules {
        path: PathBuf,
        #[source]
        source: crate::devices::DeviceRuleError,
    },
    /// The kernel refused the device filter program; `log` is its verifier's output.
    #[error("load the device filter for cgroup {path}: {log}")]
    DeviceProgram {
        path: PathBuf,
        log: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attach the device filter to cgroup {path}")]
    DeviceAttach {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Processes kept appearing in the cgroup after repeated SIGKILLs.
    #[error("cgroup {path} still has processes after kill")]
    KillTimeout { path: PathBuf },
}

fn write(path: PathBuf, data: &str) -> Result<(), CgroupError> {
    fs_err::write(&path, data).map_err(|source| CgroupError::Write {
        path,
        data: data.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs_err::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_opt(path: &Path) -> Option<String> {
    fs_err::read_to_string(path).ok()
}

/// A v1 controller the executor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpuacct,
    Cpu,
    Cpuset,
    Devices,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Pids => "pids",
            Self::Cpuacct => "cpuacct",
            Self::Cpu => "cpu",
            Self::Cpuset => "cpuset",
            Self::Devices => "devices",
        }
    }
}

#[derive(Debug, Clone)]
enum Layout {
    V2 { unified: PathBuf, parent: PathBuf },
    V1 { parents: Vec<(Controller, PathBuf)> },
}

/// Where the per-RUN cgroups go: a `parent_name` cgroup under the caller's own cgroup (v1) or
/// under the unified root (v2).
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    layout: Layout,
}

/// The path of the caller's cgroup for `controller` (`""` for the v2 line) in the text of
/// `/proc/self/cgroup`.
fn own_cgroup<'a>(self_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then_some(path)
    })
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

impl CgroupRoot {
    /// Picks the hierarchy under `mount_root` (normally `/sys/fs/cgroup`), given the caller's
    /// `/proc/self/cgroup` text.
    ///
    /// # Errors
    /// [`CgroupError::NoHierarchy`] when neither version has the memory and pids controllers.
    pub fn detect(
        mount_root: &Path,
        self_cgroup: &str,
        parent_name: &str,
    ) -> Result<Self, CgroupError> {
        for unified in [mount_root.to_path_buf(), mount_root.join("unified")] {
            if let Some(controllers) = read_opt(&unified.join("cgroup.controllers")) {
                let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
                if has("memory") && has("pids") {
                    let parent = unified.join(parent_name);
                    return Ok(Self {
                        layout: Layout::V2 { unified, parent },
                    });
                }
            }
        }
        let mut parents = Vec::new();
        for controller in [
            Controller::Memory,
            Controller::Pids,
            Controller::Cpuacct,
            Controller::Cpu,
            Controller::Cpuset,
            Controller::Devices,
        ] {
            let dir = mount_root.join(controller.name());
            if !dir.join("cgroup.procs").exists() {
                continue;
            }
            let own = own_cgroup(self_cgroup, controller.name()).unwrap_or("/");
            parents.push((controller, dir.join(relative(own)).join(parent_name)));
        }
        let has = |c: Controller| parents.iter().any(|(x, _)| *x == c);
        if has(Controller::Memory) && has(Controller::Pids) {
            Ok(Self {
                layout: Layout::V1 { parents },
            })
        } else {
            Err(CgroupError::NoHierarchy {
                mount_root: mount_root.to_path_buf(),
            })
        }
    }

    /// Whether this is the v2 (unified) hierarchy.
    #[must_use]
    pub fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::V2 { .. })
    }

    /// Directories that hold one child cgroup per RUN.
    fn parents(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2 { parent, .. } => vec![parent.clone()],
            Layout::V1 { parents } => parents.iter().map(|(_, p)| p.clone()).collect(),
        }
    }

    /// The mount root, for errors: the v2 hierarchy, or the parent of the v1 ones.
    fn mount_root(&self) -> PathBuf {
        match &self.layout {
            Layout::V2 { unified, .. } => unified.clone(),
            Layout::V1 { parents } => parents
                .first()
                .and_then(|(c, p)| {
                    p.ancestors()
                        .find(|a| a.file_name().is_some_and(|f| f == c.name()))
                })
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// Creates the cgroup `name` and applies `resources`.
    ///
    /// # Errors
    /// When a directory cannot be created or a limit cannot be written.
    pub fn create(
        &self,
        name: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        let memory = resources.and_then(|r| r.memory().as_ref());
        let pids = resources.and_then(|r| r.pids().as_ref());
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let devices = resources
            .and_then(|r| r.devices().as_deref())
            .unwrap_or_default();
        let device_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CgroupError::DeviceRules { path, source }
        };
        let restricts_devices =
            !crate::devices::allows_everything(devices).map_err(device_err(&self.mount_root()))?;
        let mkdir = |path: &Path| {
            fs_err::create_dir_all(path).map_err(|source| CgroupError::Create {
                path: path.to_path_buf(),
                source,
            })
        };
        match &self.layout {
            Layout::V2 { unified, parent } => {
                mkdir(parent)?;
                let enable = "+memory +pids +cpu +cpuset";
                for dir in [unified, parent] {
                    // Controllers missing from the hierarchy make this write fail; the limits
                    // below then report what is really missing.
                    let _ = fs_err::write(dir.join("cgroup.subtree_control"), enable);
                }
                let dir = parent.join(name);
                mkdir(&dir)?;
                let cgroup = Cgroup {
                    dirs: vec![dir.clone()],
                    v2: true,
                };
                if let Some(limit) = memory.and_then(|m| m.limit()) {
                    write(dir.join("memory.max"), &limit_text(limit))?;
                    if dir.join("memory.swap.max").exists() {
                        write(dir.join("memory.swap.max"), "0")?;
                    }
                }
                if let Some(p) = pids {
                    write(dir.join("pids.max"), &limit_text(p.limit()))?;
                }
                restrict_devices_v2(&dir, devices)?;
                if let Some(cpu) = cpu {
                    if let Some(quota) = cpu.quota() {
                        let period = cpu.period().unwrap_or(100_000);
                        write(
                            dir.join("cpu.max"),
                            &format!("{} {period}", limit_text(quota)),
                        )?;
                    }
                    if let Some(cpus) = cpu.cpus() {
                        write(dir.join("cpuset.cpus"), cpus)?;
                    }
                    if let Some(mems) = cpu.mems() {
                        write(dir.join("cpuset.mems"), mems)?;
                    }
                }
                Ok(cgroup)
            }
            Layout::V1 { parents } => {
                let wants_cpu = cpu.is_some_and(|c| c.quota().is_some() || c.shares().is_some());
                let wants_cpuset = cpu.is_some_and(|c| c.cpus().is_some() || c.mems().is_some());
                if restricts_devices && !parents.iter().any(|(c, _)| *c == Controller::Devices) {
                    return Err(CgroupError::NoDeviceController {
                        mount_root: self.mount_root(),
                    });
                }
                let mut cgroup = Cgroup {
                    dirs: Vec::new(),
                    v2: false,
                };
                for (controller, parent) in parents {
                    let wanted = match controller {
                        Controller::Memory | Controller::Pids | Controller::Cpuacct => true,
                        Controller::Cpu => wants_cpu,
                        Controller::Cpuset => wants_cpuset,
                        Controller::Devices => restricts_devices,
                    };
                    if !wanted {
                        continue;
                    }
                    mkdir(parent)?;
                    if *controller == Controller::Cpuset {
                        inherit_cpuset(parent)?;
                    }
                    let dir = parent.join(name);
                    mkdir(&dir)?;
                    // Pushed first so a failed limit below still removes what was made.
                    cgroup.dirs.push(dir.clone());
                    match controller {
                        Controller::Memory => {
                            if let Some(limit) = memory.and_then(|m| m.limit()) {
                                write(dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                            }
                        }
                        Controller::Pids => {
                            if let Some(p) = pids {
                                write(dir.join("pids.max"), &limit_text(p.limit()))?;
                            }
                        }
                        Controller::Cpu => {
                            if let Some(cpu) = cpu {
                                if let Some(shares) = cpu.shares() {
                                    write(dir.join("cpu.shares"), &shares.to_string())?;
                                }
                                if let Some(period) = cpu.period() {
                                    write(dir.join("cpu.cfs_period_us"), &period.to_string())?;
                                }
                                if let Some(quota) = cpu.quota() {
                                    write(dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                                }
                            }
                        }
                        Controller::Cpuset => {
                            inherit_cpuset(&dir)?;
                            if let Some(cpu) = cpu {
                                if let Some(cpus) = cpu.cpus() {
                                    write(dir.join("cpuset.cpus"), cpus)?;
                                }
                                if let Some(mems) = cpu.mems() {
                                    write(dir.join("cpuset.mems"), mems)?;
                                }
                            }
                        }
                        Controller::Devices => {
                            for (file, line) in
                                crate::devices::v1_writes(devices).map_err(device_err(&dir))?
                            {
                                write(dir.join(file), &line)?;
                            }
                        }
                        Controller::Cpuacct => {}
                    }
                }
                Ok(cgroup)
            }
        }
    }

    /// Kills and removes every per-RUN cgroup whose name `is_stale` accepts: what a RUN left
    /// behind when its hoist process was killed. Returns the names it removed.
    ///
    /// # Errors
    /// When a parent cannot be listed or a stale cgroup cannot be emptied or removed.
    pub fn clean_stale(&self, is_stale: impl Fn(&str) -> bool) -> Result<Vec<String>, CgroupError> {
        let mut stale: Vec<String> = Vec::new();
        for parent in self.parents() {
            let entries = match fs_err::read_dir(&parent) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: parent,
                        source,
                    });
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && is_stale(&name) && !stale.contains(&name) {
                    stale.push(name);
                }
            }
        }
        for name in &stale {
            let dirs = self
                .parents()
                .into_iter()
                .map(|p| p.join(name))
                .filter(|d| d.is_dir())
                .collect();
            let cgroup = Cgroup {
                dirs,
                v2: self.is_v2(),
            };
            cgroup.kill_all()?;
            cgroup.remove()?;
        }
        Ok(stale)
    }
}

/// Applies the device `rules` to the v2 cgroup `dir`: an eBPF filter attached to it, which
/// decides every open and mknod of a device by its processes; nothing when the rules allow
/// everything.
///
/// # Errors
/// A rule the kernel cannot take, or the kernel refused the program or its attachment.
pub fn restrict_devices_v2(
    dir: &Path,
    rules: &[oci_spec::runtime::LinuxDeviceCgroup],
) -> Result<(), CgroupError> {
    let program =
        crate::devices::ebpf_program(rules).map_err(|source| CgroupError::DeviceRules {
            path: dir.to_path_buf(),
            source,
        })?;
    let Some(program) = program else {
        return Ok(());
    };
    let raw: Vec<[u8; 8]> = program.iter().map(|i| i.to_bytes()).collect();
    let loaded = crate::sys::load_device_program(&raw).map_err(|(source, log)| {
        CgroupError::DeviceProgram {
            path: dir.to_path_buf(),
            log,
            source,
        }
    })?;
    let attach_err = |source: std::io::Error| CgroupError::DeviceAttach {
        path: dir.to_path_buf(),
        source,
    };
    let cgroup: std::os::fd::OwnedFd = fs_err::File::open(dir).map_err(attach_err)?.into();
    crate::sys::attach_device_program(&cgroup, &loaded).map_err(attach_err)
}

fn limit_text(limit: i64) -> String {
    if limit < 0 {
        "max".to_owned()
    } else {
        limit.to_string()
    }
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and a task cannot join it
/// until both are set; copy them from the parent when empty.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = read_opt(&dir.join(file)).unwrap_or_default();
        if own.trim().is_empty() {
            let inherited = read(&parent.join(file))?;
            write(dir.join(file), inherited.trim())?;
        }
    }
    Ok(())
}

/// Figures from a RUN's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Peak memory use, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time used by all its processes.
    pub cpu_time: Option<Duration>,
    /// How many times the OOM killer killed a process in it.
    pub oom_kills: u64,
    /// Memory limit in force, in bytes, when one was set.
    pub memory_limit_bytes: Option<u64>,
}

/// The cgroup of one RUN: one directory per v1 controller, or one v2 directory.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

/// What the process joining a cgroup writes to `file`, one of [`Cgroup::join_files`]: `"0"`
/// (the calling thread) to a v1 `tasks` file, which is what takes the fast path there, else
/// `pid`.
#[must_use]
pub(crate) fn join_value(file: &Path, pid: u32) -> String {
    if file.file_name().is_some_and(|f| f == "tasks") {
        "0".to_owned()
    } else {
        pid.to_string()
    }
}

fn parse_u64(text: Option<String>) -> Option<u64> {
    text.and_then(|t| t.trim().parse().ok())
}

fn keyed(text: Option<&str>, key: &str) -> Option<u64> {
    text?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroup {
    /// The directories of this cgroup.
    #[must_use]
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    #[must_use]
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The files a single-threaded process writes [`join_value`] for in order to move itself into this cgroup.
    ///
    /// On v1 that is each hierarchy's `tasks` file: moving one thread, the writer itself, skips
    /// the global `cgroup_threadgroup_rwsem` that moving a whole process through
    /// `cgroup.procs` write-locks, and whose write side waits for an RCU grace period (5 to
    /// 15 ms here, at HZ=250; see `cgroup_procs_write_start` in the kernel's
    /// `kernel/cgroup/cgroup.c`: "If we migrate a single thread, we don't care about
    /// threadgroup stability. If the thread is `current` … we can skip the global lock").
    /// For a single-threaded process the outcome is the same: its one thread, and so the
    /// process and every child it forks afterwards, is in the cgroup. v2 only moves threads
    /// inside threaded subtrees, so there it is `cgroup.procs`.
    #[must_use]
    pub(crate) fn join_files(&self) -> Vec<PathBuf> {
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        self.dirs.iter().map(|d| d.join(file)).collect()
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        let controller = name.split('.').next().unwrap_or_default();
        self.dirs
            .iter()
            .find(|d| {
                self.v2
                    || d.ancestors()
                        .any(|a| a.file_name().is_some_and(|f| f == controller))
            })
            .map(|d| d.join(name))
            .filter(|p| p.exists())
    }

    /// Reads the peak memory, CPU time and OOM kills.
    #[must_use]
    pub fn stats(&self) -> CgroupStats {
        let get = |name: &str| self.file(name).and_then(|p| read_opt(&p));
        if self.v2 {
            let limit = get("memory.max").and_then(|t| t.trim().parse().ok());
            CgroupStats {
                peak_memory_bytes: parse_u64(get("memory.peak")),
                cpu_time: keyed(get("cpu.stat").as_deref(), "usage_usec")
                    .map(Duration::from_micros),
                oom_kills: keyed(get("memory.events").as_deref(), "oom_kill").unwrap_or(0),
                memory_limit_bytes: limit,
            }
        } else {
            // An unlimited v1 cgroup reports a limit near 2^63; only real limits count.
            let limit = parse_u64(get("memory.limit_in_bytes")).filter(|l| *l < (1 << 62));
            CgroupStats {
                peak_memory_bytes: parse_u64(get("memory.max_usage_in_bytes")),
                cpu_time: parse_u64(get("cpuacct.usage")).map(Duration::from_nanos),
                oom_kills: keyed(get("memory.oom_control").as_deref(), "oom_kill").unwrap_or(0),
                memory_limit_bytes: limit,
            }
        }
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = Vec::new();
        for file in self.procs_files() {
            match fs_err::read_to_string(&file) {
                Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CgroupError::Read { path: file, source }),
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Whether any process is still in the cgroup.
    ///
    /// # Errors
    /// When `cgroup.procs` cannot be read.
    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        Ok(!self.pids()?.is_empty())
    }

    /// SIGKILLs every process in the cgroup until none is left. v2 has `cgroup.kill` for this;
    /// v1 has no atomic kill, so this repeats until the cgroup stays empty (a fork racing the
    /// kill lands in the same cgroup and is caught by the next round).
    ///
    /// # Errors
    /// [`CgroupError::KillTimeout`] when processes remain after five seconds.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.v2 {
            for dir in &self.dirs {
                let kill = dir.join("cgroup.kill");
                if kill.exists() {
                    let _ = fs_err::write(&kill, "1");
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                // ESRCH: it died between the read and the kill.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if Instant::now() > deadline {
                return Err(CgroupError::KillTimeout {
                    path: self.dirs.first().cloned().unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the cgroup's directories. The cgroup must be empty; a just-killed process may
    /// keep a directory busy for a moment, so EBUSY is retried briefly.
    ///
    /// # Errors
    /// When a directory cannot be removed.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs_err::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(source) => {
                        return Err(CgroupError::Remove {
                            path: dir.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    const SELF_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/api/x\n3:cpuset:/\n\
                               2:cpuacct:/\n1:cpu:/\n0::/\n";

    fn v1_fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for c in ["memory/api/x", "pids", "cpuacct", "cpu", "cpuset"] {
            let d = dir.path().join(c);
            fs_err::create_dir_all(&d).unwrap();
            fs_err::write(d.join("cgroup.procs"), "").unwrap();
        }
        fs_err::write(dir.path().join("memory/cgroup.procs"), "").unwrap();
        fs_err::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs_err::write(dir.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        fs_err::create_dir_all(dir.path().join("unified")).unwrap();
        fs_err::write(dir.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        dir
    }

    fn resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(32).build().unwrap())
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(50_000)
                    .period(100_000u64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn hybrid_with_hugetlb_only_unified_uses_v1_under_own_cgroup() {
        let fx = v1_fixture();
        let root = CgroupRoot::detect(fx.path(), SELF_CGROUP, "hoist").unwrap();
        assert!(!root.is_v2());
        let cg = root.create("run1", Some(&resources())).unwrap();
        let mem = fx.path().join("memory/api/x/hoist/run1");
        assert_eq!(cg.dirs()[0], mem);
        assert_eq!(
            read(&mem.join("memory.limit_in_bytes")).unwrap(),
            "67108864"
        );
        assert_eq!(
            read(&fx.path().join("pids/hoist/run1/pids.max")).unwrap(),
            "32"
        );
        assert_eq!(
            read(&fx.path().join("cpu/hoist/run1/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(
            read(&fx.path().join("cpuset/hoist/cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            read(&fx.path().join("cpuset/hoist/run1/cpuset.cpus")).unwrap(),
            "0"
        );
        assert_eq!(
            read(&fx.path().join("cpuset/hoist/run1/cpuset.mems")).unwrap(),
            "0"
        );
        assert_eq!(cg.procs_files().len(), 5);
        // v1: each hierarchy's `tasks` file, with "0" for the writing thread.
        let join = cg.join_files();
        assert_eq!(join[0], mem.join("tasks"));
        assert!(join.iter().all(|f| join_value(f, 42) == "0"));
    }

    #[test]
    fn v1_without_cpu_limits_skips_cpu_and_cpuset() {
        let fx = v1_fixture();
        let root = CgroupRoot::detect(fx.path(), SELF_CGROUP, "hoist").unwrap();
        let cg = root.create("run2", None).unwrap();
        assert_eq!(cg.dirs().len(), 3);
        assert!(!fx.path().join("cpu/hoist/run2").exists());
    }

    #[test]
    fn v1_stats_read_peak_cpu_and_oom() {
        let fx = v1_fixture();
        let root = CgroupRoot::detect(fx.path(), SELF_CGROUP, "hoist").unwrap();
        let cg = root.create("run3", Some(&resources())).unwrap();
        let mem = fx.path().join("memory/api/x/hoist/run3");
        fs_err::write(mem.join("memory.max_usage_in_bytes"), "1234\n").unwrap();
        fs_err::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs_err::write(
            fx.path().join("cpuacct/hoist/run3/cpuacct.usage"),
            "5000000\n",
        )
        .unwrap();
        let stats = cg.stats();
        assert_eq!(
            stats,
            CgroupStats {
                peak_memory_bytes: Some(1234),
                cpu_time: Some(Duration::from_millis(5)),
                oom_kills: 2,
                memory_limit_bytes: Some(64 << 20),
            }
        );
    }

    #[test]
    fn unified_with_memory_and_pids_is_v2() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let root = CgroupRoot::detect(dir.path(), "0::/user.slice\n", "hoist").unwrap();
        assert!(root.is_v2());
        let cg = root.create("run", Some(&resources())).unwrap();
        let d = dir.path().join("hoist/run");
        assert_eq!(read(&d.join("memory.max")).unwrap(), "67108864");
        assert_eq!(read(&d.join("cpu.max")).unwrap(), "50000 100000");
        assert_eq!(read(&d.join("pids.max")).unwrap(), "32");
        // v2 moves whole processes only: `cgroup.procs` and the pid.
        assert_eq!(cg.join_files(), vec![d.join("cgroup.procs")]);
        assert_eq!(join_value(&d.join("cgroup.procs"), 42), "42");
        fs_err::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs_err::write(d.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        fs_err::write(d.join("memory.peak"), "4096\n").unwrap();
        let stats = cg.stats();
        assert_eq!(stats.oom_kills, 1);
        assert_eq!(stats.cpu_time, Some(Duration::from_micros(2500)));
        assert_eq!(stats.peak_memory_bytes, Some(4096));
    }

    fn with_devices(mut resources: LinuxResources) -> LinuxResources {
        resources.set_devices(Some(crate::devices::docker_default()));
        resources
    }

    #[test]
    fn v1_device_rules_go_to_the_devices_controller() {
        let fx = v1_fixture();
        let d = fx.path().join("devices");
        fs_err::create_dir_all(&d).unwrap();
        fs_err::write(d.join("cgroup.procs"), "").unwrap();
        let root = CgroupRoot::detect(fx.path(), SELF_CGROUP, "hoist").unwrap();
        let cg = root
            .create("run4", Some(&with_devices(resources())))
            .unwrap();
        let dir = d.join("hoist/run4");
        assert!(cg.dirs().contains(&dir));
        // A fixture file keeps only the last write of each: deny-all first, the list after.
        assert_eq!(read(&dir.join("devices.deny")).unwrap(), "a *:* rwm");
        assert_eq!(read(&dir.join("devices.allow")).unwrap(), "c 10:200 rwm");
        // Rules that allow everything need no devices cgroup.
        let mut open = resources();
        open.set_devices(Some(crate::devices::allow_all()));
        let cg = root.create("run5", Some(&open)).unwrap();
        assert!(!cg.dirs().iter().any(|p| p.starts_with(&d)));
    }

    #[test]
    fn restricting_devices_without_a_devices_controller_is_an_error() {
        let fx = v1_fixture();
        let root = CgroupRoot::detect(fx.path(), SELF_CGROUP, "hoist").unwrap();
        let err = root
            .create("run6", Some(&with_devices(resources())))
            .unwrap_err();
        assert!(
            matches!(err, CgroupError::NoDeviceController { ref mount_root } if mount_root == fx.path()),
            "{err:?}"
        );
    }

    #[test]
    fn no_memory_controller_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupRoot::detect(dir.path(), "0::/\n", "hoist"),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }
}
