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
