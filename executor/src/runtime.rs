//! The [`Executor`]: prepares a RUN's state and cgroup, runs its spec under a backend, streams
//! its output and cleans up whatever the outcome.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::runtime::{LinuxSeccomp, Spec};
use tokio::io::AsyncWrite;

use crate::cgroup::{Cgroup, CgroupError, CgroupRoot};
use crate::protocol::{INIT_ENV, InitConfig, InitOutcome, InitReport, ZYGOTE_MESSAGE_MAX};
use crate::run::{
    ExitStatus, RunError, RunGuard, RunOutcome, RunRequest, outcome_from, stream_with_timeout,
};
use crate::seccomp::Instruction;
use crate::spec::{EtcFiles, NetworkMode};
use crate::upper::remove_mount_stubs;

/// Which OCI runtime runs the spec.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The built-in runtime: `init_program` is a binary that calls
    /// [`crate::init::run_if_init`] first thing (normally the hoist binary itself).
    Builtin { init_program: PathBuf },
    /// An external OCI runtime such as runc, given a bundle.
    External { program: PathBuf },
}

/// Settings of an [`Executor`].
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The built-in runtime's rootfs mount point is `<state_dir>/rootfs` (shared: each RUN
    /// mounts in its own namespace); runc bundles live under `<state_dir>/runs`, runc's own
    /// state under `<state_dir>/runc`, and the `/etc` files under `<state_dir>/etc`.
    pub state_dir: PathBuf,
    pub backend: Backend,
    /// Where cgroup hierarchies are mounted, normally `/sys/fs/cgroup`.
    pub cgroup_mount_root: PathBuf,
    /// Name of the cgroup (under the caller's own) that holds one child per RUN.
    pub cgroup_parent: String,
}

impl ExecutorConfig {
    /// The defaults: the built-in runtime re-executing `/proc/self/exe`, cgroups under
    /// `/sys/fs/cgroup`, in a `hoist` parent.
    #[must_use]
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            backend: Backend::Builtin {
                init_program: PathBuf::from("/proc/self/exe"),
            },
            cgroup_mount_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "hoist".to_owned(),
        }
    }
}

/// Error from [`Executor::new`].
#[derive(Debug, thiserror::Error)]
pub enum NewExecutorError {
    #[error("create state dir {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read /proc/self/cgroup")]
    SelfCgroup(#[source] std::io::Error),
    #[error("set up cgroups")]
    Cgroup(#[from] CgroupError),
    #[error("clean stale run state {path}")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The most bytes `execve` copies for one argument or environment string, with its NUL
/// (`MAX_ARG_STRLEN`, 32 pages, in `include/uapi/linux/binfmts.h`).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Refuses a process the kernel would refuse to start (E2BIG), before anything is set up, with
/// a message that says which part is too long and what the limit is.
fn check_exec_limits(spec: &Spec) -> Result<(), RunError> {
    let process = spec.process().as_ref();
    let args = process
        .and_then(|p| p.args().as_deref())
        .unwrap_or_default();
    let env = process.and_then(|p| p.env().as_deref()).unwrap_or_default();
    let mut total = 0;
    for (i, arg) in args.iter().enumerate() {
        let bytes = arg.len() + 1;
        if bytes > MAX_ARG_STRLEN {
            let what = if i + 1 == args.len() && args.len() > 1 {
                "the command".to_owned()
            } else {
                format!("argument {i}")
            };
            return Err(RunError::ArgumentTooLong {
                what,
                bytes,
                limit: MAX_ARG_STRLEN,
            });
        }
        total += bytes + std::mem::size_of::<usize>();
    }
    for kv in env {
        let bytes = kv.len() + 1;
        if bytes > MAX_ARG_STRLEN {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            return Err(RunError::ArgumentTooLong {
                what: format!("the environment variable {name}"),
                bytes,
                limit: MAX_ARG_STRLEN,
            });
        }
        total += bytes + std::mem::size_of::<usize>();
    }
    let limit = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(2 << 20);
    if total > limit {
        return Err(RunError::ArgumentsTooLong {
            bytes: total,
            limit,
        });
    }
    Ok(())
}

fn prepare_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Prepare {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs RUN steps. One per process is enough; it is `Sync` and runs steps concurrently.
#[derive(Debug)]
pub struct Executor {
    config: ExecutorConfig,
    cgroups: CgroupRoot,
    /// `<pid>-<start time>` of this process: names of its runs start with it, so a later
    /// process can tell state left by a dead one.
    owner: String,
    counter: AtomicU64,
    /// The built-in runtime's zygote, started on first use.
    zygote: std::sync::Mutex<Option<Zygote>>,
    /// The last seccomp profile compiled and its filters: builds use one profile over and over.
    seccomp_cache: std::sync::Mutex<Option<(LinuxSeccomp, Vec<Vec<Instruction>>)>>,
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`), which with the pid identifies a
/// process across pid reuse.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_owned)
}

/// Whether a run named `<pid>-<start>-<n>` belongs to a process that is gone.
fn is_stale(name: &str) -> bool {
    let mut parts = name.splitn(3, '-');
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    match pid.parse::<u32>() {
        Ok(pid) => start_time(pid).as_deref() != Some(start),
        Err(_) => false,
    }
}

impl Executor {
    /// Detects the cgroup hierarchy and removes what runs of dead hoist processes left behind:
    /// their processes, cgroups, mounts and state.
    ///
    /// # Errors
    /// When the state dir cannot be created, no cgroup hierarchy is usable, or stale state
    /// cannot be removed.
    pub fn new(config: ExecutorConfig) -> Result<Self, NewExecutorError> {
        let runs = config.state_dir.join("runs");
        let root = config.state_dir.join("rootfs");
        for dir in [&runs, &root] {
            fs_err::create_dir_all(dir).map_err(|source| NewExecutorError::StateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let self_cgroup =
            fs_err::read_to_string("/proc/self/cgroup").map_err(NewExecutorError::SelfCgroup)?;
        let cgroups = CgroupRoot::detect(
            &config.cgroup_mount_root,
            &self_cgroup,
            &config.cgroup_parent,
        )?;
        let pid = std::process::id();
        let owner = format!("{pid}-{}", start_time(pid).unwrap_or_default());
        let executor = Self {
            config,
            cgroups,
            owner,
            counter: AtomicU64::new(0),
            seccomp_cache: std::sync::Mutex::new(None),
            zygote: std::sync::Mutex::new(None),
        };
        executor.clean_stale()?;
        Ok(executor)
    }

    /// Removes state of runs whose owning process is gone.
    fn clean_stale(&self) -> Result<(), NewExecutorError> {
        // Processes first: killing them tears down the built-in runtime's mount namespaces.
        self.cgroups.clean_stale(is_stale)?;
        let runs = self.config.state_dir.join("runs");
        let entries = fs_err::read_dir(&runs).map_err(|source| NewExecutorError::Stale {
            path: runs.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_stale(&name) {
                continue;
            }
            let dir = entry.path();
            if let Backend::External { program } = &self.config.backend {
                crate::runc::container(program, &dir, &name).delete();
            }
            let rootfs = dir.join("rootfs");
            // The external backend mounts the rootfs in the host namespace.
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            if crate::upper::is_mount_point(&rootfs) {
                return Err(NewExecutorError::Stale {
                    path: rootfs,
                    source: std::io::Error::from_raw_os_error(libc::EBUSY),
                });
            }
            // The run's tmpfs (see `run`).
            let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            fs_err::remove_dir_all(&dir)
                .map_err(|source| NewExecutorError::Stale { path: dir, source })?;
        }
        Ok(())
    }

    /// Sends one request to the zygote, starting it (again) when there is none or it is gone.
    fn send_to_zygote(
        &self,
        program: &Path,
        bytes: &[u8],
        fds: &[&OwnedFd],
    ) -> Result<(), RunError> {
        let mut slot = self
            .zygote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let zygote_err = |source: std::io::Error| RunError::Zygote {
            program: program.to_path_buf(),
            source,
        };
        for attempt in 0..2 {
            if slot.is_none() {
                *slot = Some(Zygote::start(program).map_err(zygote_err)?);
            }
            let Some(zygote) = slot.as_ref() else {
                continue;
            };
            match zygote.send(bytes, &raw) {
                Ok(()) => return Ok(()),
                // It died (killed, or its program was replaced); start another once.
                Err(e) if attempt == 0 => {
                    drop(e);
                    if let Some(old) = slot.take() {
                        old.stop();
                    }
                }
                Err(e) => return Err(zygote_err(e)),
            }
        }
        Err(zygote_err(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )))
    }

    fn compiled_seccomp(&self, profile: &LinuxSeccomp) -> Result<Vec<Vec<Instruction>>, RunError> {
        let mut cache = self
            .seccomp_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, programs)) = cache.as_ref()
            && cached == profile
        {
            return Ok(programs.clone());
        }
        let programs = crate::seccomp::compile(profile)?;
        *cache = Some((profile.clone(), programs.clone()));
        Ok(programs)
    }

    /// The cgroup layout in use.
    #[must_use]
    pub fn cgroups(&self) -> &CgroupRoot {
        &self.cgroups
    }

    /// [`Self::etc_files_for`] a sandbox with a network namespace of its own.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn etc_files(&self, hostname: &str) -> Result<EtcFiles, RunError> {
        self.etc_files_for(hostname, NetworkMode::None)
    }

    /// Writes (when missing or out of date) and returns the files mounted over `/etc/hosts`,
    /// `/etc/resolv.conf` and `/etc/hostname` for sandboxes named `hostname` on `network`.
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn etc_files_for(
        &self,
        hostname: &str,
        network: NetworkMode,
    ) -> Result<EtcFiles, RunError> {
        // The host's network keeps the host's resolver list; a namespace of its own cannot
        // reach the host's loopback resolvers.
        let (kind, resolv) = match network {
            NetworkMode::Host => (
                "host",
                crate::net::host_resolv_conf(
                    &fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                ),
            ),
            NetworkMode::Default | NetworkMode::None => {
                let host = fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let systemd = fs_err::read_to_string(crate::net::SYSTEMD_RESOLV_CONF).ok();
                let source =
                    crate::net::resolv_conf_source(&host, systemd.as_deref()).unwrap_or(host);
                ("private", crate::net::sandbox_resolv_conf(&source))
            }
        };
        let dir = self.config.state_dir.join("etc").join(hostname).join(kind);
        let files = EtcFiles {
            hosts: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            hostname: dir.join("hostname"),
        };
        // Rewritten when the host's list changed, as BuildKit does.
        if fs_err::read_to_string(&files.resolv_conf).is_ok_and(|old| old == resolv)
            && files.hostname.exists()
        {
            return Ok(files);
        }
        fs_err::create_dir_all(&dir).map_err(prepare_err(&dir))?;
        for (path, text) in [
            (&files.hosts, crate::net::hosts_file(hostname)),
            (&files.resolv_conf, resolv),
            (&files.hostname, format!("{hostname}\n")),
        ] {
            // Unique per call: two RUNs of one process may prepare the same files at once.
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
            fs_err::write(&tmp, text).map_err(prepare_err(&tmp))?;
            fs_err::rename(&tmp, path).map_err(prepare_err(path))?;
        }
        Ok(files)
    }

    /// Runs one RUN step, streaming its stdout and stderr into the sinks as it produces them.
    /// Dropping the returned future (cancelling it) kills every process of the RUN and removes
    /// its cgroup and state.
    ///
    /// # Errors
    /// When the sandbox cannot be set up, a sink fails, or cleanup fails. A non-zero exit, a
    /// signal, an OOM kill or a timeout is an [`RunOutcome`], not an error.
    pub async fn run<O, E>(
        &self,
        request: RunRequest,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<RunOutcome, RunError>
    where
        O: AsyncWrite + Unpin + Send + ?Sized,
        E: AsyncWrite + Unpin + Send + ?Sized,
    {
        check_exec_limits(&request.spec)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", self.owner);
        let dir = self.config.state_dir.join("runs").join(&name);
        let mut guard = RunGuard {
            dir: None,
            cgroup: None,
            external: None,
        };
        let resources = request
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref());
        guard.cgroup = Some(self.cgroups.create(&name, resources)?);
        // Lives until the RUN ends, here or by cancellation: dropping it kills the NAT.
        let uplink = if crate::spec::wants_uplink(&request.spec) {
            Some(crate::net::Uplink::start().await?)
        } else {
            None
        };
        let mut request = request;
        let outcome = match &self.config.backend {
            Backend::Builtin { init_program } => {
                // The overlay is mounted in the sandbox's own mount namespace, so every RUN can
                // use the same (empty) host directory as its mount point; a RUN leaves nothing
                // on disk but its cgroup, which is what makes stale state easy to find.
                let root = self.config.state_dir.join("rootfs");
                self.run_builtin(
                    init_program,
                    &request,
                    &root,
                    uplink.as_ref().map(crate::net::Uplink::netns),
                    &mut guard,
                    stdout,
                    stderr,
                )
                .await?
            }
            Backend::External { program } => {
                // The bundle's config.json and runc's state hold the process's environment,
                // which may carry a secret (`RUN --mount=type=secret,env=…`): both live on a
                // tmpfs of the run's own, never on the state root's disk.
                fs_err::create_dir_all(&dir).map_err(prepare_err(&dir))?;
                nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC,
                    Some("mode=0700,size=16m"),
                )
                .map_err(|e| RunError::Prepare {
                    path: dir.clone(),
                    source: e.into(),
                })?;
                guard.dir = Some(dir.clone());
                let root = dir.join("rootfs");
                fs_err::create_dir_all(&root).map_err(prepare_err(&root))?;
                if let Some(uplink) = &uplink {
                    join_network_namespace(&mut request.spec, &uplink.netns_path());
                }
                guard.external = Some(crate::runc::container(program, &dir, &name));
                crate::runc::run(program, &name, &request, &dir, &mut guard, stdout, stderr).await?
            }
        };
        drop(uplink);
        guard.finish()?;
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)] // the run's pieces, threaded through from run
    async fn run_builtin<O, E>(
        &self,
        init_program: &Path,
        request: &RunRequest,
        root: &Path,
        netns: Option<&OwnedFd>,
        guard: &mut RunGuard,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<RunOutcome, RunError>
    where
        O: AsyncWrite + Unpin + Send + ?Sized,
        E: AsyncWrite + Unpin + Send + ?Sized,
    {
        let mut spec = request.spec.clone();
        // The init gets the compiled filters instead of the profile, so it neither parses nor
        // compiles it: both are start-up time.
        let seccomp = match spec.linux_mut().as_mut().and_then(|l| l.seccomp().clone()) {
            Some(profile) => self.compiled_seccomp(&profile)?,
            None => Vec::new(),
        };
        if let Some(linux) = spec.linux_mut() {
            linux.set_seccomp(None);
        }
        let config = InitConfig {
            spec,
            root: root.to_path_buf(),
            overlay: Some(request.rootfs.clone()),
            cgroup_join: guard
                .cgroup
                .as_ref()
                .map(Cgroup::join_files)
                .unwrap_or_default(),
            seccomp,
            netns: netns.is_some(),
        };
        let bytes = serde_json::to_vec(&config).map_err(|source| RunError::Encode {
            path: root.to_path_buf(),
            source,
        })?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Spawn {
                program: init_program.to_path_buf(),
                source: e.into(),
            })
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (done_r, done_w) = pipe()?;
        let mut fds = vec![&out_w, &err_w, &done_w];
        fds.extend(netns);
        self.send_to_zygote(init_program, &bytes, &fds)?;
        // Only the init may hold the write ends now, so EOF means it and its sandbox are gone.
        drop((out_w, err_w, done_w));
        let receiver = |fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(|source| RunError::Spawn {
                program: init_program.to_path_buf(),
                source,
            })
        };
        let (child_out, child_err) = (receiver(out_r)?, receiver(err_r)?);
        let mut done = receiver(done_r)?;
        let timed_out = stream_with_timeout(
            Some(child_out),
            Some(child_err),
            stdout,
            stderr,
            request.timeout,
            guard,
        )
        .await
        .map_err(|e| e.with_program(init_program))?;
        let mut text = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut done, &mut text)
            .await
            .map_err(|source| RunError::Wait {
                program: init_program.to_path_buf(),
                source,
            })?;
        let report: Option<InitReport> = serde_json::from_slice(&text).ok();
        let stats = guard.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default();
        let report = match report {
            Some(report) => report,
            None if timed_out => InitReport {
                outcome: InitOutcome::Signaled(libc::SIGKILL),
                created: Vec::new(),
            },
            None => {
                return Err(RunError::NoReport {
                    program: init_program.to_path_buf(),
                });
            }
        };
        let status = match report.outcome {
            InitOutcome::Exited(code) => ExitStatus::Exited(code),
            InitOutcome::Signaled(signal) => ExitStatus::Signaled(signal),
            InitOutcome::SetupFailed(message) => return Err(RunError::Setup { message }),
        };
        remove_mount_stubs(&request.rootfs, &report.created)
            .map_err(|(path, source)| RunError::Upper { path, source })?;
        Ok(outcome_from(status, timed_out, stats, &request.rootfs))
    }
}

/// Points the spec's network namespace at `path` (a namespace made for the RUN), for runc to
/// join instead of making one.
fn join_network_namespace(spec: &mut Spec, path: &Path) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let Some(namespaces) = linux.namespaces_mut() else {
        return;
    };
    for ns in namespaces.iter_mut() {
        if ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
            ns.set_path(Some(path.to_path_buf()));
        }
    }
}

/// The zygote process and the runtime's end of its socket.
#[derive(Debug)]
struct Zygote {
    child: std::process::Child,
    socket: OwnedFd,
}

impl Zygote {
    fn start(program: &Path) -> std::io::Result<Self> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // A request is one datagram: room for large specs (a big environment, many mounts).
        // Failing that, the default limit (about 200 KiB) still applies.
        let _ = nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::SndBufForce,
            &ZYGOTE_MESSAGE_MAX,
        );
        let child = std::process::Command::new(program)
            .env_clear()
            .env(INIT_ENV, "zygote")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            socket: ours,
        })
    }

    fn send(&self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let iov = [std::io::IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Closes the socket, which makes the zygote exit, and reaps it.
    fn stop(self) {
        let Self { mut child, socket } = self;
        drop(socket);
        let _ = child.wait();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let zygote = self
            .zygote
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(zygote) = zygote {
            zygote.stop();
        }
    }
}
