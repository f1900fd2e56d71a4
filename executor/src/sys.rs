//! The only module that makes raw system calls. Everything else goes through `nix`, whose calls
//! are safe; what `nix` does not cover (or covers only unsafely) is wrapped here, one function
//! per call, each with the reason it is sound.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::unistd::{ForkResult, Pid};

/// Which side of a [`fork`] the caller is on.
#[derive(Debug)]
pub(crate) enum Forked {
    Parent(Pid),
    Child,
}

/// Forks the calling process.
///
/// Only the init program calls this, after a fresh `execve` and before it has started any thread,
/// so the child may run ordinary (allocating, locking) code: no other thread can have held a lock
/// at the moment of the fork.
pub(crate) fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the init program is single-threaded when it calls this (see above), which is the
    // condition nix documents for running arbitrary code in the child.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Ok(ForkResult::Child) => Ok(Forked::Child),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Ends the process at once, without running exit handlers or flushing stdio buffers that the
/// child shares with its parent by way of the fork.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Removes `cap` from the calling thread's bounding set.
pub(crate) fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes an integer capability number and no pointers.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) })
        .map(drop)
}

/// Clears the ambient capability set.
pub(crate) fn clear_ambient_caps() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes only integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(drop)
}

/// Raises `cap` in the ambient set (it must be permitted and inheritable already).
pub(crate) fn raise_ambient_cap(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_RAISE takes only integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            libc::c_ulong::from(cap),
            0,
            0,
        )
    })
    .map(drop)
}

/// Capability sets as 64-bit masks, bit `n` for capability number `n`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CapSets {
    pub(crate) effective: u64,
    pub(crate) permitted: u64,
    pub(crate) inheritable: u64,
}

/// Sets the calling thread's effective, permitted and inheritable capability sets.
pub(crate) fn capset(sets: CapSets) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let word = |mask: u64, i: u32| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(sets.effective, i),
        permitted: word(sets.permitted, i),
        inheritable: word(sets.inheritable, i),
    });
    // SAFETY: the header and the two data words are live, correctly laid out (repr(C)) for
    // capset(2) version 3, and the kernel only reads them.
    check(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) as libc::c_int })
        .map(drop)
}

/// Sets the IFF_UP flag of the interface named `name` (such as `lo`) in the current network
/// namespace.
pub(crate) fn interface_up(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let socket: OwnedFd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq that outlives the call; SIOCGIFFLAGS writes only its flags.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) })?;
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the initialised one.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) }).map(drop)
}

/// Installs a classic BPF seccomp filter on the calling thread. `no_new_privs` must already be
/// set, or the caller must hold CAP_SYS_ADMIN.
pub(crate) fn install_seccomp_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the filter
    // and never writes through the pointer.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &raw const prog,
            0,
            0,
        )
    })
    .map(drop)
}

/// Takes ownership of a descriptor the kernel just installed in this process for it (received
/// with SCM_RIGHTS).
pub(crate) fn owned_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a descriptor received through SCM_RIGHTS is new in this process, open, and
    // referenced by nothing else, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn set_sigchld(handler: nix::sys::signal::SigHandler) -> io::Result<()> {
    let action = nix::sys::signal::SigAction::new(
        handler,
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: SIG_IGN and SIG_DFL run no code in this process, so no handler can observe
    // inconsistent state.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGCHLD, &action) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Has the kernel reap this process's children as they exit.
pub(crate) fn ignore_sigchld() -> io::Result<()> {
    set_sigchld(nix::sys::signal::SigHandler::SigIgn)
}

/// Restores default SIGCHLD handling (an ignored SIGCHLD survives `execve`, and would break
/// `wait` in the sandboxed process).
pub(crate) fn default_sigchld() -> io::Result<()> {
    set_sigchld(nix::sys::signal::SigHandler::SigDfl)
}

/// Gives every signal its default action and unblocks them all, as a process started by a
/// shell or by runc finds them. The hoist binary ignores SIGPIPE (as every Rust program does),
/// and an ignored signal stays ignored across `execve`: left so, `yes | head` in a RUN would
/// never end.
pub(crate) fn default_signals() -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL runs no code in this process, so no handler can observe inconsistent
        // state.
        unsafe { nix::sys::signal::sigaction(signal, &default) }.map_err(io::Error::from)?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(io::Error::from)
}

/// `bpf(2)` commands, program and attach types, and flags used here
/// (`include/uapi/linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The head of `union bpf_attr` as `BPF_PROG_LOAD` reads it; the kernel requires every
/// field past those a command uses to be zero, which the zeroed tail provides.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    tail: [u8; 64],
}

/// The head of `union bpf_attr` as `BPF_PROG_ATTACH` reads it.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    tail: [u8; 44],
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program of raw 8-byte instructions. On failure the
/// load is repeated with the verifier's log, whose text is returned with the error.
pub(crate) fn load_device_program(insns: &[[u8; 8]]) -> Result<OwnedFd, (io::Error, String)> {
    use std::os::fd::FromRawFd;
    let license = c"Apache-2.0";
    let count = u32::try_from(insns.len())
        .map_err(|_| (io::Error::from(io::ErrorKind::InvalidInput), String::new()))?;
    let load = |log: &mut [u8]| {
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: count,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: u32::try_from(log.len()).unwrap_or(0),
            // The kernel refuses a buffer without a log level, even an empty one.
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            tail: [0; 64],
        };
        // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute whose pointers (instructions,
        // license, log buffer) are live for the call; the kernel reads the first two and
        // writes at most `log_size` bytes into the third.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &raw const attr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
        }
    };
    match load(&mut []) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; 64 * 1024];
            let _ = load(&mut log);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err((
                first,
                String::from_utf8_lossy(&log[..end]).trim().to_owned(),
            ))
        }
    }
}

/// Attaches a device program to the cgroup (v2) directory open as `cgroup`, beside any
/// programs its ancestors have (a device is allowed only when every one allows it).
pub(crate) fn attach_device_program(cgroup: &OwnedFd, program: &OwnedFd) -> io::Result<()> {
    let as_u32 = |fd: &OwnedFd| u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX);
    let attr = ProgAttachAttr {
        target_fd: as_u32(cgroup),
        attach_bpf_fd: as_u32(program),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
        tail: [0; 44],
    };
    // SAFETY: `attr` is a valid BPF_PROG_ATTACH attribute that the kernel only reads; both
    // descriptors are open for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &raw const attr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// Makes the child of `command` keep `fds` across its `execve` (they are close-on-exec in this
/// process, so that no other child inherits them), for programs that take descriptor numbers
/// as arguments.
pub(crate) fn inherit_fds<const N: usize>(
    command: &mut std::process::Command,
    fds: [std::os::fd::RawFd; N],
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before `execve` and calls only fcntl(2), which
    // is async-signal-safe, on descriptors the child inherited; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for fd in fds {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            Ok(())
        });
    }
}
