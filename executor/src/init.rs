//! The container init: the program the built-in runtime executes to set up the sandbox, as
//! `runc init` is for runc.
//!
//! The caller runs on a multithreaded tokio runtime, where only async-signal-safe code may run
//! between `fork` and `exec`. So the runtime does not fork itself: it spawns the init program
//! (by default `/proc/self/exe`, that is the hoist binary) once, as a *zygote*, with a marker in
//! its environment and a unix socket as stdin. The binary calls [`run_if_init`] first thing in
//! `main`; in the zygote it never returns to normal start-up. The zygote stays single-threaded,
//! so it may fork and run ordinary code. Per RUN the runtime sends it an `InitConfig` with
//! the sandbox's stdout and stderr and a "done" pipe attached:
//!
//! ```text
//! hoist (tokio) ──request──► zygote ──fork──► init: join cgroup, keep the zygote's spare netns
//!                  (then makes   │               │    (or join the host's), unshare
//!                  the next      │               │    pid/ipc/uts/cgroup, hostname
//!                  spare netns)  ┘               │ fork
//!                                               ├─► (stays outside) waits for pid 1, writes the
//!                                               │   InitReport to the done pipe, exits
//!                                               └─► pid 1: unshare mount, overlay, mounts, /dev,
//!                                                   pivot_root, masked/readonly paths, rlimits,
//!                                                   user, caps, no_new_privs, seccomp, execve
//! ```
//!
//! Re-executing once and forking per RUN keeps the cost of loading a large binary (relocations,
//! page faults, libc start-up: about a millisecond and a half of CPU here) off every RUN; for
//! the same reason the zygote makes the next RUN's network namespace ahead of time (`SpareNet`).
//! The zygote exits when the runtime closes the socket, including when hoist dies.
//!
//! Setup errors of pid 1 travel back over a close-on-exec pipe: EOF without a message means
//! `execve` succeeded.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Mount, PosixRlimitType, Spec};
use serde::{Deserialize, Serialize};

use crate::mounts::{parse_mount_options, secure_join};
use crate::protocol::{INIT_ENV, InitConfig, InitOutcome, InitReport};
use crate::spec::capability_mask;
use crate::sys;

/// A message from pid 1 to the init over the setup pipe.
#[derive(Debug, Serialize, Deserialize)]
enum SetupMessage {
    Created(Vec<PathBuf>),
    Error(String),
}

/// Runs the container init when this process was started as one, and returns its exit code;
/// returns `None` in any other process. Call it first thing in `main`, before any thread starts,
/// and return the code from `main` at once:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     if let Some(code) = hoist_executor::init::run_if_init() {
///         return code;
///     }
///     // … normal start-up
///     std::process::ExitCode::SUCCESS
/// }
/// ```
#[must_use]
pub fn run_if_init() -> Option<ExitCode> {
    std::env::var_os(INIT_ENV)?;
    Some(match zygote_main() {
        Ok(()) => ExitCode::SUCCESS,
        // Nobody to tell: the runtime notices the closed socket and starts another zygote.
        Err(_) => ExitCode::from(125),
    })
}

/// Most file descriptors a request carries: stdout, stderr, the done pipe and, for a RUN on
/// the default network, its network namespace.
const REQUEST_FDS: usize = 4;

/// The zygote: serves one request per RUN on the socket it got as stdin, until the runtime
/// closes it. Per request it forks an init process that sets up that RUN, so the cost of
/// executing and loading the (large) hoist binary is paid once per executor, not per RUN.
fn zygote_main() -> Result<(), InitError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let socket = nix::unistd::dup(std::io::stdin()).map_err(sys_err("dup zygote socket"))?;
    let devnull = fs_err::File::open("/dev/null").map_err(sys_err("open /dev/null"))?;
    nix::unistd::dup2_stdin(devnull.file()).map_err(sys_err("dup2 /dev/null to stdin"))?;
    // Init processes report through their done pipe; the kernel reaps them.
    sys::ignore_sigchld().map_err(sys_err("ignore SIGCHLD"))?;
    let host_net = fs_err::File::open("/proc/self/ns/net").map_err(sys_err("open host netns"))?;
    let mut net = SpareNet {
        host: host_net.into(),
        ready: false,
    };
    net.refill()?;
    let mut buf = vec![0u8; crate::protocol::ZYGOTE_MESSAGE_MAX];
    loop {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; REQUEST_FDS]);
        let (len, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => other.map_err(sys_err("receive request"))?,
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(sys_err("read request fds"))? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    fds.extend(received.into_iter().map(sys::owned_fd));
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            // The runtime closed its end: hoist is done, or gone.
            return Ok(());
        }
        let Ok(config) = serde_json::from_slice::<InitConfig>(&buf[..len]) else {
            // The runtime sees the done pipe close without a report.
            continue;
        };
        if fds.len() != 3 + usize::from(config.netns) {
            continue;
        }
        let mut fds = fds.into_iter();
        let (Some(stdout), Some(stderr), Some(done)) = (fds.next(), fds.next(), fds.next()) else {
            continue;
        };
        let netns = fds.next();
        let zygote = nix::unistd::getpid();
        if let sys::Forked::Child = sys::fork_single_threaded().map_err(sys_err("fork init"))? {
            drop(socket);
            // The sandbox dies with its builder: hoist's death closes the socket, which ends
            // the zygote, whose death kills this init, whose death kills pid 1 (below), and
            // with it every process of the sandbox's pid namespace.
            if die_with_parent(zygote).is_err() {
                sys::exit_immediately(125);
            }
            let code = serve(&config, &net, netns.as_ref(), &stdout, &stderr, done);
            sys::exit_immediately(code);
        }
        let joined = netns.is_some();
        drop((stdout, stderr, done, netns));
        if net.ready && !joined && namespace_flags(&config.spec).contains(CloneFlags::CLONE_NEWNET)
        {
            // That init took the spare; make the next one while the RUN sets up.
            net.ready = false;
            net.refill()?;
        }
    }
}

/// A network namespace made ahead of the next RUN that asks for one.
///
/// Creating a network namespace (with `lo` up) is the most expensive namespace to make, about
/// 0.8 ms of CPU here (every per-namespace network subsystem initialises, and registers its
/// sysctls). The zygote makes the next one right after it hands one to an init, so that the
/// cost overlaps with that RUN, or with the time between RUNs, instead of lying on the path
/// from request to exec. The zygote itself sits in the spare namespace (that is how it holds
/// it); an init it forks is in it too, and keeps it when its RUN wants a network namespace, or
/// joins the host's through `host` when not. Each spare goes to one init only: the zygote
/// leaves it (for a fresh one, or for the host's) right after that fork.
struct SpareNet {
    /// The host's network namespace, as the zygote found it.
    host: OwnedFd,
    /// The zygote is in a fresh network namespace that no init has had yet.
    ready: bool,
}

impl SpareNet {
    /// Moves the zygote into a fresh network namespace with `lo` up. When that fails, back to
    /// the host's (inits then make their own, as without a spare); when even that fails, the
    /// zygote ends, so that no init ever shares a namespace with an earlier one (the runtime
    /// starts another zygote).
    fn refill(&mut self) -> Result<(), InitError> {
        let fresh = nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| sys::interface_up("lo"));
        self.ready = fresh.is_ok();
        if !self.ready {
            nix::sched::setns(&self.host, CloneFlags::CLONE_NEWNET)
                .map_err(sys_err("return to the host network namespace"))?;
        }
        Ok(())
    }
}

/// The init for one RUN, in a fresh child of the zygote. Its report goes to `done`, whose
/// closing (when this process exits) tells the runtime that the report is complete.
fn serve(
    config: &InitConfig,
    net: &SpareNet,
    netns: Option<&OwnedFd>,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
    done: OwnedFd,
) -> i32 {
    let mut done = std::fs::File::from(done);
    let result = sys::default_sigchld()
        .map_err(sys_err("restore SIGCHLD"))
        .and_then(|()| nix::unistd::dup2_stdout(stdout).map_err(sys_err("dup2 stdout")))
        .and_then(|()| nix::unistd::dup2_stderr(stderr).map_err(sys_err("dup2 stderr")))
        .and_then(|()| init_main(config, net, netns));
    let (report, code) = match result {
        Ok(report) => (report, 0),
        Err(error) => (
            InitReport {
                outcome: InitOutcome::SetupFailed(error_chain(&error)),
                created: Vec::new(),
            },
            125,
        ),
    };
    // Nowhere to report a failure to report: the runtime sees a missing report.
    if let Ok(bytes) = serde_json::to_vec(&report) {
        let _ = done.write_all(&bytes);
    }
    code
}

/// Error of the init before pid 1 exists; the runtime sees it as a missing report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys_err<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> InitError {
    let what = what.into();
    move |e| InitError::Sys {
        what,
        source: e.into(),
    }
}

fn namespace_flags(spec: &Spec) -> CloneFlags {
    let mut flags = CloneFlags::empty();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .cloned()
        .unwrap_or_default();
    for ns in namespaces {
        flags |= match ns.typ() {
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::User | LinuxNamespaceType::Time => CloneFlags::empty(),
        };
    }
    flags
}

fn init_main(
    config: &InitConfig,
    net: &SpareNet,
    netns: Option<&OwnedFd>,
) -> Result<InitReport, InitError> {
    // This process is single-threaded (a fork of the zygote), which the v1 fast path of
    // `join_value` relies on.
    let pid = std::process::id();
    for file in &config.cgroup_join {
        let value = crate::cgroup::join_value(file, pid);
        fs_err::write(file, value).map_err(sys_err(format!("join cgroup {}", file.display())))?;
    }

    let flags = namespace_flags(&config.spec);
    // This process starts in the zygote's network namespace: a fresh spare, or the host's.
    let mut unshare = flags - CloneFlags::CLONE_NEWNS;
    if let Some(netns) = netns {
        // Made by the runtime, with `lo` up and the NAT already attached.
        unshare -= CloneFlags::CLONE_NEWNET;
        nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
            .map_err(sys_err("join the sandbox's network namespace"))?;
    } else if net.ready {
        if flags.contains(CloneFlags::CLONE_NEWNET) {
            unshare -= CloneFlags::CLONE_NEWNET;
        } else {
            nix::sched::setns(&net.host, CloneFlags::CLONE_NEWNET)
                .map_err(sys_err("join the host network namespace"))?;
        }
    }
    // The mount namespace is made by pid 1 alone, so that this process keeps the host's view
    // (pivot_root moves the root of every process in the namespace).
    nix::sched::unshare(unshare).map_err(sys_err("unshare"))?;
    if flags.contains(CloneFlags::CLONE_NEWUTS)
        && let Some(hostname) = config.spec.hostname()
    {
        nix::unistd::sethostname(hostname).map_err(sys_err("sethostname"))?;
    }
    if unshare.contains(CloneFlags::CLONE_NEWNET) {
        sys::interface_up("lo").map_err(sys_err("bring up lo"))?;
    }

    let (reader, writer) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("create setup pipe"))?;
    match sys::fork_single_threaded().map_err(sys_err("fork pid 1"))? {
        sys::Forked::Child => {
            drop(reader);
            // Pid 1 sees no parent in its own namespace (getppid is 0), so an init that died
            // before the signal was armed shows up otherwise: the report of mount points,
            // written on the setup pipe before exec, then fails on the closed pipe.
            if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
                sys::exit_immediately(125);
            }
            let error = match setup_and_exec(config, &writer) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let message =
                serde_json::to_vec(&SetupMessage::Error(error_chain(&error))).unwrap_or_default();
            let mut pipe = std::fs::File::from(writer);
            let _ = pipe.write_all(&message);
            let _ = pipe.write_all(b"\n");
            sys::exit_immediately(127);
        }
        sys::Forked::Parent(child) => {
            drop(writer);
            let mut messages = String::new();
            let _ = std::fs::File::from(reader).read_to_string(&mut messages);
            let mut created = Vec::new();
            let mut setup_error = None;
            for line in messages.lines() {
                match serde_json::from_str(line) {
                    Ok(SetupMessage::Created(paths)) => created = paths,
                    Ok(SetupMessage::Error(e)) => setup_error = Some(e),
                    Err(_) => setup_error = Some(format!("garbled setup message {line:?}")),
                }
            }
            let outcome = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break InitOutcome::Exited(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => {
                        break InitOutcome::Signaled(signal as i32);
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => break InitOutcome::SetupFailed(format!("wait for pid 1: {e}")),
                }
            };
            let outcome = match setup_error {
                Some(e) => InitOutcome::SetupFailed(e),
                None => outcome,
            };
            Ok(InitReport { outcome, created })
        }
    }
}

/// Arms SIGKILL for when the parent `parent` dies; fails when it already has (the child was
/// then reparented before the signal was armed).
fn die_with_parent(parent: nix::unistd::Pid) -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid() == parent {
        Ok(())
    } else {
        Err(nix::errno::Errno::ESRCH)
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

enum Never {}

fn dest_in(root: &Path, destination: &Path) -> Result<PathBuf, InitError> {
    secure_join(root, destination).map_err(|e| InitError::Sys {
        what: format!("resolve {} in rootfs", destination.display()),
        source: std::io::Error::other(error_chain(&e)),
    })
}

/// Creates `path` (a directory, or an empty file when `file`) and any missing parents, and
/// records each thing created relative to `root`.
fn create_mount_point(
    root: &Path,
    path: &Path,
    file: bool,
    created: &mut Vec<PathBuf>,
) -> Result<(), InitError> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cursor = path.parent();
    while let Some(dir) = cursor {
        if dir.symlink_metadata().is_ok() || dir == root {
            break;
        }
        missing.push(dir.to_path_buf());
        cursor = dir.parent();
    }
    for dir in missing.iter().rev() {
        fs_err::create_dir(dir).map_err(sys_err("create mount point parent"))?;
        created.push(dir.strip_prefix(root).unwrap_or(dir).to_path_buf());
    }
    if file {
        fs_err::File::create(path).map_err(sys_err("create mount point file"))?;
    } else {
        fs_err::create_dir(path).map_err(sys_err("create mount point dir"))?;
    }
    created.push(path.strip_prefix(root).unwrap_or(path).to_path_buf());
    Ok(())
}

fn mount_one(root: &Path, m: &Mount, created: &mut Vec<PathBuf>) -> Result<(), InitError> {
    let options = parse_mount_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("bind");
    let dest = dest_in(root, m.destination())?;
    let what = || format!("mount {} on {}", typ, m.destination().display());
    let data = (!options.data.is_empty()).then_some(options.data.as_str());
    if options.is_bind() || typ == "bind" {
        let source = m.source().as_deref().unwrap_or(Path::new(""));
        let is_file = !fs_err::metadata(source).map_err(sys_err(what()))?.is_dir();
        create_mount_point(root, &dest, is_file, created)?;
        let bind = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
        mount(Some(source), &dest, None::<&str>, bind, None::<&str>).map_err(sys_err(what()))?;
        let rest = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(sys_err(format!("remount {}", m.destination().display())))?;
        }
    } else {
        create_mount_point(root, &dest, false, created)?;
        let source = m.source().as_deref().unwrap_or(Path::new(typ));
        mount(Some(source), &dest, Some(typ), options.flags, data).map_err(sys_err(what()))?;
    }
    if !options.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .map_err(sys_err(format!(
            "set propagation of {}",
            m.destination().display()
        )))?;
    }
    Ok(())
}

/// The device nodes of a minimal `/dev`, as runc creates them on a tmpfs `/dev`.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn populate_dev(dev: &Path) -> Result<(), InitError> {
    let old = nix::sys::stat::umask(Mode::empty());
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        nix::sys::stat::mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        )
        .map_err(sys_err(format!("mknod {}", path.display())))?;
    }
    nix::sys::stat::umask(old);
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(sys_err(format!("symlink /dev/{link}")))?;
    }
    Ok(())
}

fn pivot(root: &Path) -> Result<(), InitError> {
    nix::unistd::chdir(root).map_err(sys_err("chdir to rootfs"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one at "/", where unmounting it
    // needs no directory inside the image (runc's approach).
    nix::unistd::pivot_root(".", ".").map_err(sys_err("pivot_root"))?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err("make old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys_err("detach old root"))?;
    nix::unistd::chdir("/").map_err(sys_err("chdir to /"))?;
    Ok(())
}

fn mask_path(path: &str) -> Result<(), InitError> {
    let target = Path::new(path);
    let Ok(meta) = target.symlink_metadata() else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(sys_err(format!("mask {path}")))
}

fn readonly_path(path: &str) -> Result<(), InitError> {
    let target = Path::new(path);
    if target.symlink_metadata().is_err() {
        return Ok(());
    }
    mount(
        Some(target),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err(format!("bind {path}")))?;
    let current = nix::sys::statvfs::statvfs(target).map_err(sys_err(format!("statvfs {path}")))?;
    let keep = [
        (nix::sys::statvfs::FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (nix::sys::statvfs::FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (nix::sys::statvfs::FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ]
    .into_iter()
    .filter(|(f, _)| current.flags().contains(*f))
    .fold(MsFlags::empty(), |acc, (_, m)| acc | m);
    mount(
        None::<&str>,
        target,
        None::<&str>,
        keep | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err(format!("remount {path} read-only")))
}

fn rlimit_resource(typ: PosixRlimitType) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource;
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Finds `program` the way `execvp` would, but in the sandbox's `PATH`.
fn lookup(program: &str, env: &[String]) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok()
                && candidate.is_file()
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

fn cstring(s: &str) -> Result<CString, InitError> {
    CString::new(s).map_err(|e| InitError::Sys {
        what: format!("argument {s:?} contains a NUL byte"),
        source: std::io::Error::other(e),
    })
}

/// Mount points that the image lacks, to be made in a layer of their own (see
/// [`make_stub_layer`]) instead of in the upperdir.
#[derive(Debug, Default)]
struct StubPlan {
    /// Relative to the rootfs; `true` for a file.
    stubs: Vec<(PathBuf, bool)>,
    /// Their parent directories (relative), with the metadata of the image's own.
    parents: Vec<(PathBuf, std::fs::Metadata)>,
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Looks `rel` (one or two plain components) up in the image's layers, topmost first, as
/// overlayfs does: a whiteout deletes it, an opaque parent hides the layers below. Returns
/// `Some` with the image's parent directory (`None` for a top-level path) when the image
/// lacks `rel` but has that parent as a directory; `None` when the image has `rel`, or in any
/// case this does not handle (which the ordinary path, a mount point made in the upperdir,
/// then takes).
#[allow(clippy::option_option)] // "absent, with or without a parent" vs "not for a stub"
fn absent_from_image(lowerdirs: &[PathBuf], rel: &Path) -> Option<Option<std::fs::Metadata>> {
    let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
    let mut parent_meta = None;
    for layer in lowerdirs {
        if let Some(p) = parent {
            match fs_err::symlink_metadata(layer.join(p)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Ok(meta) if meta.is_dir() => {
                    parent_meta.get_or_insert(meta);
                }
                // A whiteout or a non-directory parent, or an error: not for a stub.
                _ => return None,
            }
        }
        match fs_err::symlink_metadata(layer.join(rel)) {
            Ok(meta) if is_whiteout(&meta) => break,
            Ok(_) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
        if parent.is_some_and(|p| crate::user::is_opaque(&layer.join(p))) {
            break;
        }
    }
    match parent {
        Some(_) => parent_meta.map(Some),
        None => Some(None),
    }
}

/// Which mount points of `mounts` go in the stub layer: those the image lacks, one or two
/// components deep, whose parent the image has, and that do not lie on an earlier mount
/// (`/dev/pts` is made in the `/dev` tmpfs anyway).
fn plan_stubs(lowerdirs: &[PathBuf], mounts: &[Mount]) -> StubPlan {
    use std::path::Component;
    let mut plan = StubPlan::default();
    for (i, m) in mounts.iter().enumerate() {
        let dest = m.destination();
        if mounts[..i]
            .iter()
            .any(|earlier| dest.starts_with(earlier.destination()))
        {
            continue;
        }
        let Ok(rel) = dest.strip_prefix("/") else {
            continue;
        };
        let depth = rel.components().count();
        let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || depth == 0 || depth > 2 {
            continue;
        }
        let options = parse_mount_options(m.options().as_deref().unwrap_or_default());
        let bind = options.is_bind() || m.typ().as_deref().unwrap_or("bind") == "bind";
        let file = bind
            && m.source()
                .as_deref()
                .is_some_and(|s| fs_err::metadata(s).is_ok_and(|meta| !meta.is_dir()));
        let Some(parent) = absent_from_image(lowerdirs, rel) else {
            continue;
        };
        if let (Some(meta), Some(p)) = (parent, rel.parent())
            && !plan.parents.iter().any(|(q, _)| q == p)
        {
            plan.parents.push((p.to_path_buf(), meta));
        }
        plan.stubs.push((rel.to_path_buf(), file));
    }
    plan
}

/// Makes the stub layer on a small tmpfs mounted over `root` (in pid 1's own mount namespace,
/// so nobody else sees it) and returns it and the directory to mount the overlay on.
///
/// The mount points for `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname` (and the like) are
/// missing from many images. Made in the merged rootfs, each is a new inode in the upperdir,
/// plus a copy-up of its parent, all removed again after the RUN (`upper::remove_mount_stubs`);
/// on this VM's journal-less ext4, where allocating an inode scans past every recently deleted
/// one, that was about a quarter of the init's CPU time per RUN. As the topmost lower layer
/// they cost a few tmpfs operations and never reach the upperdir. The parent directories copy
/// the image's owner, mode and times, because overlayfs shows (and copies up) a merged
/// directory's attributes from its topmost layer.
fn make_stub_layer(root: &Path, plan: &StubPlan) -> Result<(PathBuf, PathBuf), InitError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=64k"),
    )
    .map_err(sys_err("mount stub layer tmpfs"))?;
    let (layer, merged) = (root.join("stubs"), root.join("merged"));
    for dir in [&layer, &merged] {
        fs_err::create_dir(dir).map_err(sys_err("create stub layer dir"))?;
    }
    for (rel, _) in &plan.parents {
        fs_err::create_dir(layer.join(rel)).map_err(sys_err("create stub parent"))?;
    }
    for (rel, file) in &plan.stubs {
        let path = layer.join(rel);
        if *file {
            fs_err::File::create(&path).map(drop)
        } else {
            fs_err::create_dir(&path)
        }
        .map_err(sys_err("create stub"))?;
    }
    // Attributes last: creating the stubs changed the parents' times.
    for (rel, meta) in &plan.parents {
        let dir = layer.join(rel);
        nix::unistd::chown(
            &dir,
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
        )
        .map_err(sys_err(format!("chown stub parent {}", rel.display())))?;
        fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(sys_err("chmod stub parent"))?;
        let time = |secs: i64, nanos: i64| nix::sys::time::TimeSpec::new(secs, nanos);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dir,
            &time(meta.atime(), meta.atime_nsec()),
            &time(meta.mtime(), meta.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys_err(format!(
            "set times of stub parent {}",
            rel.display()
        )))?;
    }
    Ok((layer, merged))
}

#[allow(clippy::too_many_lines)] // one linear recipe reads better than scattered helpers
fn setup_and_exec(config: &InitConfig, pipe: &OwnedFd) -> Result<Never, InitError> {
    let spec = &config.spec;
    let mut root = config.root.clone();
    let linux = spec.linux().clone().unwrap_or_default();
    let process = spec.process().clone().unwrap_or_default();

    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(sys_err("unshare mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err("make / a slave"))?;
    match &config.overlay {
        Some(rootfs) => {
            let mounts = spec.mounts().as_deref().unwrap_or_default();
            let plan = plan_stubs(&rootfs.lowerdirs, mounts);
            let mut lowerdirs = rootfs.lowerdirs.clone();
            if !plan.stubs.is_empty() {
                let (layer, merged) = make_stub_layer(&root, &plan)?;
                lowerdirs.insert(0, layer);
                root = merged;
            }
            let overlay = crate::overlay::Overlay {
                lowerdirs: &lowerdirs,
                upper: Some((&rootfs.upperdir, &rootfs.workdir)),
            };
            crate::overlay::mount(&root, &overlay).map_err(|e| InitError::Sys {
                what: "mount the rootfs".into(),
                source: std::io::Error::other(error_chain(&e)),
            })?;
        }
        None => {
            mount(
                Some(&root),
                &root,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys_err("bind rootfs"))?;
        }
    }
    let root = root.as_path();

    let mut created = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(root, m, &mut created)?;
        let is_dev_tmpfs =
            m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs");
        if is_dev_tmpfs {
            populate_dev(&dest_in(root, Path::new("/dev"))?)?;
        }
    }
    let message = serde_json::to_vec(&SetupMessage::Created(created)).unwrap_or_default();
    let mut writer = std::fs::File::from(
        pipe.as_fd()
            .try_clone_to_owned()
            .map_err(sys_err("dup pipe"))?,
    );
    writer
        .write_all(&message)
        .and_then(|()| writer.write_all(b"\n"))
        .map_err(sys_err("report mount points"))?;
    drop(writer);

    pivot(root)?;
    for path in linux.masked_paths().as_deref().unwrap_or_default() {
        mask_path(path)?;
    }
    for path in linux.readonly_paths().as_deref().unwrap_or_default() {
        readonly_path(path)?;
    }
    if let Some(sysctl) = linux.sysctl() {
        for (key, value) in sysctl {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs_err::write(&path, value).map_err(sys_err(format!("sysctl {key}")))?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys_err("remount rootfs read-only"))?;
    }

    for rlimit in process.rlimits().as_deref().unwrap_or_default() {
        nix::sys::resource::setrlimit(rlimit_resource(rlimit.typ()), rlimit.soft(), rlimit.hard())
            .map_err(sys_err(format!("setrlimit {:?}", rlimit.typ())))?;
    }

    let cwd = process.cwd();
    fs_err::create_dir_all(cwd).map_err(sys_err(format!("create cwd {}", cwd.display())))?;
    nix::unistd::chdir(cwd).map_err(sys_err(format!("chdir {}", cwd.display())))?;
    let user = process.user();
    nix::sys::stat::umask(Mode::from_bits_truncate(user.umask().unwrap_or(0o022)));

    let caps = process.capabilities().clone().unwrap_or_default();
    let mask =
        |set: &Option<oci_spec::runtime::Capabilities>| set.as_ref().map_or(0, capability_mask);
    let bounding = mask(caps.bounding());
    for cap in 0..64u32 {
        if bounding & (1 << cap) == 0 {
            match sys::drop_bounding_cap(cap) {
                // Past the kernel's last capability.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                other => other.map_err(sys_err(format!("drop capability {cap}")))?,
            }
        }
    }
    let no_new_privs = process.no_new_privileges() == Some(true);
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which the process is about to
    // lose; so then the filter goes in before the identity change (runc orders it the same way).
    if !no_new_privs {
        install_seccomp(config)?;
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(sys_err("setgroups"))?;
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(sys_err("setresgid"))?;
    nix::sys::prctl::set_keepcaps(true).map_err(sys_err("set keepcaps"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(sys_err("setresuid"))?;
    sys::capset(sys::CapSets {
        effective: mask(caps.effective()),
        permitted: mask(caps.permitted()),
        inheritable: mask(caps.inheritable()),
    })
    .map_err(sys_err("capset"))?;
    sys::clear_ambient_caps().map_err(sys_err("clear ambient capabilities"))?;
    for cap in 0..64u32 {
        if mask(caps.ambient()) & (1 << cap) != 0 {
            sys::raise_ambient_cap(cap).map_err(sys_err(format!("raise ambient {cap}")))?;
        }
    }
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(sys_err("set no_new_privs"))?;
        install_seccomp(config)?;
    }

    sys::default_signals().map_err(sys_err("reset signal dispositions"))?;
    let env = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let Some(program) = args.first() else {
        return Err(InitError::Sys {
            what: "process.args is empty".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    };
    let path = lookup(program, &env);
    let c_path = cstring(&path.to_string_lossy())?;
    let c_args = args
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let c_env = env
        .iter()
        .map(|e| cstring(e))
        .collect::<Result<Vec<_>, _>>()?;
    let errno = nix::unistd::execve(&c_path, &c_args, &c_env).map_or_else(|e| e, |n| match n {});
    Err(InitError::Sys {
        what: format!("exec {}", path.display()),
        source: errno.into(),
    })
}

fn install_seccomp(config: &InitConfig) -> Result<(), InitError> {
    for program in &config.seccomp {
        let filter: Vec<libc::sock_filter> = program.iter().map(|i| i.to_sock_filter()).collect();
        sys::install_seccomp_filter(&filter).map_err(sys_err("install seccomp filter"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let (top, base) = (dir.path().join("top"), dir.path().join("base"));
        for d in [top.join("etc"), base.join("etc"), base.join("proc")] {
            fs_err::create_dir_all(d).unwrap();
        }
        fs_err::write(base.join("etc/passwd"), "").unwrap();
        fs_err::write(top.join("etc/hosts"), "").unwrap();
        (dir, vec![top, base])
    }

    #[test]
    fn a_path_is_absent_only_when_no_layer_has_it_and_its_parent_is_a_directory() {
        let (_dir, layers) = layers();
        let absent = |rel: &str| absent_from_image(&layers, Path::new(rel));
        // In a lower layer, in the top one: present.
        assert!(absent("etc/passwd").is_none());
        assert!(absent("etc/hosts").is_none());
        // Missing, with the topmost /etc's attributes for its parent.
        let parent = absent("etc/hostname").unwrap().unwrap();
        let top_etc = fs_err::metadata(layers[0].join("etc")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&parent),
            std::os::unix::fs::MetadataExt::ino(&top_etc)
        );
        // Top level: no parent to copy.
        assert!(absent("run").unwrap().is_none());
        assert!(absent("proc").is_none());
        // No parent in the image: not for a stub.
        assert!(absent("run/secrets").is_none());
    }

    #[test]
    fn stubs_skip_mounts_inside_earlier_mounts_and_deep_paths() {
        let (_dir, layers) = layers();
        let mount = |dest: &str, typ: &str| {
            oci_spec::runtime::MountBuilder::default()
                .destination(dest)
                .typ(typ)
                .source(typ)
                .build()
                .unwrap()
        };
        let mounts = [
            mount("/proc", "proc"),
            mount("/dev", "tmpfs"),
            mount("/dev/pts", "devpts"),
            mount("/etc/hostname", "tmpfs"),
            mount("/etc/passwd", "tmpfs"),
            mount("/a/b/c", "tmpfs"),
        ];
        let plan = plan_stubs(&layers, &mounts);
        let stubs: Vec<_> = plan.stubs.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            stubs,
            vec![PathBuf::from("dev"), PathBuf::from("etc/hostname")]
        );
        assert_eq!(plan.parents.len(), 1);
        assert_eq!(plan.parents[0].0, PathBuf::from("etc"));
    }
}
