//! Seccomp: Docker's default profile as an OCI `LinuxSeccomp`, and its compilation to classic
//! BPF for the built-in runtime (runc compiles the same profile itself, with libseccomp).
//!
//! The compiler is this module's own, neither libseccomp (a C library to install and link
//! into every hoist build) nor the `seccompiler` crate, which this module used before: both
//! emit a chain of one comparison per syscall, about 1,500 instructions for Docker's profile,
//! which cost a millisecond or two to install per RUN (the kernel runs a new filter once per
//! syscall number to build its action cache) and up to 1,500 instructions per syscall of the
//! sandbox. Here each filter is a binary search over ranges of syscall numbers (see
//! [`compile`]). The runtime compiles in the caller, once per profile, and ships finished
//! instructions to the init, which only installs them. A filter has one match action, so a
//! profile becomes one filter per action; the kernel runs every installed filter and keeps the
//! most restrictive answer, which gives the profile's semantics.

use std::collections::BTreeMap;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::{Deserialize, Serialize};

/// One classic BPF instruction, as `struct sock_filter` lays it out. Serialised as a tuple,
/// since a filter has about a thousand of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u16, u8, u8, u32)", into = "(u16, u8, u8, u32)")]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl From<(u16, u8, u8, u32)> for Instruction {
    fn from((code, jt, jf, k): (u16, u8, u8, u32)) -> Self {
        Self { code, jt, jf, k }
    }
}

impl From<Instruction> for (u16, u8, u8, u32) {
    fn from(i: Instruction) -> Self {
        (i.code, i.jt, i.jf, i.k)
    }
}

impl Instruction {
    pub(crate) fn to_sock_filter(self) -> libc::sock_filter {
        libc::sock_filter {
            code: self.code,
            jt: self.jt,
            jf: self.jf,
            k: self.k,
        }
    }
}

/// Error from [`compile`].
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Only x86_64 has a syscall table here.
    #[error("seccomp compilation is not supported on this architecture")]
    UnsupportedArch,
    /// The profile uses an action this compiler cannot express.
    #[error("unsupported seccomp action {action:?}")]
    UnsupportedAction { action: LinuxSeccompAction },
    /// A condition names an argument past the sixth.
    #[error("seccomp condition on argument {index}: syscalls have six")]
    ArgIndex { index: usize },
    /// The filter for one action is longer than the kernel accepts.
    #[error("seccomp filter for action {action:?} is too long ({len} instructions)")]
    TooLong {
        action: LinuxSeccompAction,
        len: usize,
    },
}

macro_rules! syscall_table {
    ($($name:ident),* $(,)?) => {
        /// The x86_64 number of the syscall `name`, or `None` for a name this architecture does
        /// not have (a profile may list other architectures' names; they are skipped, as
        /// libseccomp skips them).
        #[cfg(target_arch = "x86_64")]
        fn syscall_number(name: &str) -> Option<i64> {
            match name {
                $(stringify!($name) => Some(libc::$name),)*
                _ => None,
            }
        }
    };
}

// The libc constants for the names the default profile uses, plus the ones a custom profile
// is likely to restrict.
#[cfg(target_arch = "x86_64")]
fn lookup(name: &str) -> Option<i64> {
    syscall_number(&format!("SYS_{name}"))
}

#[cfg(not(target_arch = "x86_64"))]
fn lookup(_name: &str) -> Option<i64> {
    None
}

syscall_table!(
    SYS_accept,
    SYS_accept4,
    SYS_access,
    SYS_adjtimex,
    SYS_alarm,
    SYS_arch_prctl,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_chmod,
    SYS_chown,
    SYS_chroot,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_clock_settime,
    SYS_clone,
    SYS_clone3,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_creat,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_ctl_old,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchmodat2,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fork,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_futimesat,
    SYS_get_mempolicy,
    SYS_get_robust_list,
    SYS_get_thread_area,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpgrp,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_init_module,
    SYS_inotify_add_watch,
    SYS_inotify_init,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_io_setup,
    SYS_io_submit,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_io_uring_setup,
    SYS_ioctl,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_kcmp,
    SYS_keyctl,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lchown,
    SYS_lgetxattr,
    SYS_link,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_lstat,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_mknod,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_mount,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_open,
    SYS_openat,
    SYS_openat2,
    SYS_pause,
    SYS_personality,
    SYS_pidfd_getfd,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe,
    SYS_pipe2,
    SYS_pivot_root,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_poll,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_madvise,
    SYS_process_mrelease,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_pselect6,
    SYS_ptrace,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlink,
    SYS_readlinkat,
    SYS_readv,
    SYS_reboot,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rmdir,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_select,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_set_mempolicy,
    SYS_set_robust_list,
    SYS_set_thread_area,
    SYS_set_tid_address,
    SYS_setdomainname,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_sethostname,
    SYS_setitimer,
    SYS_setns,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_setsid,
    SYS_setsockopt,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd,
    SYS_signalfd4,
    SYS_socket,
    SYS_socketpair,
    SYS_splice,
    SYS_stat,
    SYS_statfs,
    SYS_statx,
    SYS_symlink,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_syslog,
    SYS_tee,
    SYS_tgkill,
    SYS_time,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_umount2,
    SYS_uname,
    SYS_unlink,
    SYS_unlinkat,
    SYS_unshare,
    SYS_userfaultfd,
    SYS_utime,
    SYS_utimensat,
    SYS_utimes,
    SYS_vfork,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
);

/// Syscalls Docker's default profile allows unconditionally (moby `profiles/seccomp`), as far as
/// they exist on x86_64; 32-bit-only and time64 names are left out.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socket",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
    // amd64 only.
    "arch_prctl",
    // Docker allows these from kernel 4.8 on, where ptrace no longer bypasses seccomp.
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    // Granted by CAP_SYS_CHROOT, which is in the default capability set.
    "chroot",
];

/// `personality` domains Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and the query value.
const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN (CLONE_NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

fn rule(
    names: &[&str],
    action: LinuxSeccompAction,
) -> Result<oci_spec::runtime::LinuxSyscallBuilder, OciSpecError> {
    Ok(LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .action(action))
}

/// Docker's default seccomp profile for a process with Docker's default capabilities: deny
/// with EPERM what is not listed; `clone` only without namespace flags; `clone3` answers
/// ENOSYS so that libc falls back to `clone`, whose flags can be checked.
///
/// # Errors
/// Never for these values; oci-spec's builders return `Result`.
pub fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls: Vec<LinuxSyscall> =
        vec![rule(DEFAULT_ALLOWED, LinuxSeccompAction::ScmpActAllow)?.build()?];
    for persona in ALLOWED_PERSONALITIES {
        syscalls.push(
            rule(&["personality"], LinuxSeccompAction::ScmpActAllow)?
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(persona)
                        .op(LinuxSeccompOperator::ScmpCmpEq)
                        .build()?,
                ])
                .build()?,
        );
    }
    syscalls.push(
        rule(&["clone"], LinuxSeccompAction::ScmpActAllow)?
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NAMESPACE_FLAGS)
                    .value_two(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?,
            ])
            .build()?,
    );
    syscalls.push(
        rule(&["clone3"], LinuxSeccompAction::ScmpActErrno)?
            .errno_ret(libc::ENOSYS as u32)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(syscalls)
        .build()
}

/// The filter's return value for an OCI action, with its errno (or trace data).
fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, CompileError> {
    // SECCOMP_RET_DATA keeps the low 16 bits.
    let data = |default: u32| errno.unwrap_or(default) & 0xffff;
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActErrno => 0x0005_0000 | data(libc::EPERM as u32),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => 0,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => 0x0003_0000,
        LinuxSeccompAction::ScmpActLog => 0x7ffc_0000,
        LinuxSeccompAction::ScmpActTrace => 0x7ff0_0000 | data(0),
        other => return Err(CompileError::UnsupportedAction { action: other }),
    })
}

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `AUDIT_ARCH_X86_64`: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Longest program the kernel accepts (BPF_MAXINSNS).
const MAX_PROGRAM_LEN: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
fn arg_offset(index: u8) -> u32 {
    16 + 8 * u32::from(index)
}

fn stmt(code: u16, k: u32) -> Instruction {
    Instruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// One comparison of a 64-bit syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition {
    index: u8,
    op: Op,
    value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

fn condition(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<Condition, CompileError> {
    // OCI's masked-equal puts the mask in `value` and the expected bits in `valueTwo`.
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (Op::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (Op::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (Op::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (Op::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (Op::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (Op::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (Op::MaskedEq(arg.value()), arg.value_two().unwrap_or(0))
        }
    };
    match u8::try_from(arg.index()) {
        Ok(index) if index < 6 => Ok(Condition { index, op, value }),
        _ => Err(CompileError::ArgIndex { index: arg.index() }),
    }
}

/// Where a jump inside one condition's code goes.
#[derive(Debug, Clone, Copy)]
enum To {
    Next,
    /// The condition holds: on to the next condition of the rule.
    Pass,
    /// It does not: on to the next rule.
    Fail,
}

/// The code of one condition: 64-bit comparisons as two 32-bit ones, high word first.
fn condition_code(c: Condition) -> Vec<(u16, u32, To, To)> {
    let lo_off = arg_offset(c.index);
    let hi_off = lo_off + 4;
    let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
    let ld = |off| (LD_W_ABS, off, To::Next, To::Next);
    match c.op {
        Op::Eq => vec![
            ld(hi_off),
            (JMP_JEQ_K, hi, To::Next, To::Fail),
            ld(lo_off),
            (JMP_JEQ_K, lo, To::Pass, To::Fail),
        ],
        Op::Ne => vec![
            ld(hi_off),
            (JMP_JEQ_K, hi, To::Next, To::Pass),
            ld(lo_off),
            (JMP_JEQ_K, lo, To::Fail, To::Pass),
        ],
        Op::MaskedEq(mask) => vec![
            ld(hi_off),
            (ALU_AND_K, (mask >> 32) as u32, To::Next, To::Next),
            (JMP_JEQ_K, hi, To::Next, To::Fail),
            ld(lo_off),
            (ALU_AND_K, mask as u32, To::Next, To::Next),
            (JMP_JEQ_K, lo, To::Pass, To::Fail),
        ],
        // a > v: high word greater, or equal and low word greater (unsigned, as libseccomp).
        Op::Gt | Op::Ge => vec![
            ld(hi_off),
            (JMP_JGT_K, hi, To::Pass, To::Next),
            (JMP_JEQ_K, hi, To::Next, To::Fail),
            ld(lo_off),
            (
                if c.op == Op::Gt { JMP_JGT_K } else { JMP_JGE_K },
                lo,
                To::Pass,
                To::Fail,
            ),
        ],
        // a < v is not a >= v; a <= v is not a > v.
        Op::Lt | Op::Le => vec![
            ld(hi_off),
            (JMP_JGT_K, hi, To::Fail, To::Next),
            (JMP_JEQ_K, hi, To::Next, To::Pass),
            ld(lo_off),
            (
                if c.op == Op::Le { JMP_JGT_K } else { JMP_JGE_K },
                lo,
                To::Fail,
                To::Pass,
            ),
        ],
    }
}

/// The code for a syscall with argument rules: each rule (all of its conditions) in turn;
/// the first that holds returns `matched`, and when none does the code returns `missed`.
fn rules_code(
    rules: &[Vec<Condition>],
    matched: u32,
    missed: u32,
) -> Result<Vec<Instruction>, u16> {
    let mut code = Vec::new();
    for rule in rules {
        let conditions: Vec<_> = rule.iter().map(|c| condition_code(*c)).collect();
        // The rule's code ends with `ret matched`; Fail jumps just past it.
        let len = conditions.iter().map(Vec::len).sum::<usize>() + 1;
        let mut at = 0;
        for cond in conditions {
            let end = at + cond.len();
            for (i, (op, k, jt, jf)) in cond.into_iter().enumerate() {
                let here = at + i;
                let offset = |to: To| -> Result<u8, u16> {
                    let target = match to {
                        To::Next => here + 1,
                        To::Pass => end,
                        To::Fail => len,
                    };
                    u8::try_from(target - here - 1).map_err(|_| u16::MAX)
                };
                code.push(Instruction {
                    code: op,
                    jt: offset(jt)?,
                    jf: offset(jf)?,
                    k,
                });
            }
            at = end;
        }
        code.push(stmt(RET_K, matched));
    }
    code.push(stmt(RET_K, missed));
    Ok(code)
}

/// What the filter does for a range of syscall numbers.
#[derive(Debug)]
enum Leaf<'a> {
    Return(u32),
    Rules(&'a [Vec<Condition>]),
}

/// A binary search over the ranges (sorted, covering every number from the first range's
/// start on): `jge` on the middle range's start, the lower half inline, the upper half after
/// it. The accumulator holds the syscall number throughout.
fn search_code(
    ranges: &[(u32, Leaf<'_>)],
    matched: u32,
    missed: u32,
) -> Result<Vec<Instruction>, u16> {
    match ranges {
        [] => Ok(vec![stmt(RET_K, missed)]),
        [(_, Leaf::Return(ret))] => Ok(vec![stmt(RET_K, *ret)]),
        [(_, Leaf::Rules(rules))] => rules_code(rules, matched, missed),
        _ => {
            let mid = ranges.len() / 2;
            let lower = search_code(&ranges[..mid], matched, missed)?;
            let upper = search_code(&ranges[mid..], matched, missed)?;
            let start = ranges[mid].0;
            let mut code = Vec::with_capacity(lower.len() + upper.len() + 2);
            match u8::try_from(lower.len()) {
                Ok(skip) => code.push(Instruction {
                    code: JMP_JGE_K,
                    jt: skip,
                    jf: 0,
                    k: start,
                }),
                // Too far for a conditional jump: through an unconditional one.
                Err(_) => {
                    code.push(Instruction {
                        code: JMP_JGE_K,
                        jt: 0,
                        jf: 1,
                        k: start,
                    });
                    let skip = u32::try_from(lower.len()).map_err(|_| u16::MAX)?;
                    code.push(stmt(JMP_JA, skip));
                }
            }
            code.extend(lower);
            code.extend(upper);
            Ok(code)
        }
    }
}

/// One filter: `rules` (syscall number → `None` when every call matches, else alternative
/// condition lists) return `matched`, everything else `missed`; a foreign architecture kills
/// the process.
fn filter<'a>(
    rules: &'a BTreeMap<u32, Option<Vec<Vec<Condition>>>>,
    matched: u32,
    missed: u32,
) -> Result<Vec<Instruction>, u16> {
    // Ranges of numbers with one outcome, by their first number: runs of unconditional
    // syscalls (and the gaps between them) merge into one range each.
    let mut ranges: Vec<(u32, Leaf<'_>)> = Vec::new();
    let mut push = |start: u32, leaf: Leaf<'a>| {
        if ranges.last().is_some_and(|(s, _)| *s == start) {
            ranges.pop();
        }
        let same = match (ranges.last(), &leaf) {
            (Some((_, Leaf::Return(a))), Leaf::Return(b)) => a == b,
            _ => false,
        };
        if !same {
            ranges.push((start, leaf));
        }
    };
    push(0, Leaf::Return(missed));
    for (&nr, conditions) in rules {
        match conditions {
            None => push(nr, Leaf::Return(matched)),
            Some(alternatives) => push(nr, Leaf::Rules(alternatives)),
        }
        if let Some(next) = nr.checked_add(1) {
            push(next, Leaf::Return(missed));
        }
    }
    let mut code = vec![
        stmt(LD_W_ABS, ARCH_OFFSET),
        Instruction {
            code: JMP_JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR_OFFSET),
    ];
    code.extend(search_code(&ranges, matched, missed)?);
    if code.len() > MAX_PROGRAM_LEN {
        return Err(u16::try_from(code.len()).unwrap_or(u16::MAX));
    }
    Ok(code)
}

/// Compiles an OCI seccomp profile into BPF programs, to be installed in order.
///
/// The first program answers the profile's default action for any syscall no rule names and
/// carries the rules whose action is "allow"; each further program carries the rules of one
/// other action and allows everything else. Among equal actions the kernel takes the answer
/// of the filter installed last, so a specific errno beats the default one.
///
/// Each program is a binary search over ranges of syscall numbers rather than a chain of
/// comparisons (as seccompiler and libseccomp by default emit): Docker's profile becomes
/// about 200 instructions instead of 1,500, a syscall runs about 10 of them instead of up to
/// 1,500, and installing it costs less, since the kernel checks and translates every
/// instruction and then runs the filter once per syscall number to find the ones it can
/// allow without running it (its action cache, `seccomp_cache_prepare`).
///
/// # Errors
/// On architectures without a syscall table, for actions this compiler cannot express,
/// argument indexes past 5, and programs too long for the kernel.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<Instruction>>, CompileError> {
    #[cfg(not(target_arch = "x86_64"))]
    return Err(CompileError::UnsupportedArch);

    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // Rules grouped by their action, in first-seen order: syscall number → `None` when every
    // call matches, else the alternative argument conditions.
    type Rules = BTreeMap<u32, Option<Vec<Vec<Condition>>>>;
    let mut groups: Vec<(LinuxSeccompAction, u32, Rules)> = Vec::new();
    for syscall in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        if act == default {
            continue;
        }
        let conditions = syscall
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        let index = match groups.iter().position(|(_, a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((syscall.action(), act, BTreeMap::new()));
                groups.len() - 1
            }
        };
        let rules = &mut groups[index].2;
        for name in syscall.names() {
            let Some(nr) = lookup(name).and_then(|nr| u32::try_from(nr).ok()) else {
                continue;
            };
            match (
                conditions.is_empty(),
                rules.entry(nr).or_insert_with(|| Some(Vec::new())),
            ) {
                (true, entry) => *entry = None,
                (false, None) => {}
                (false, Some(alternatives)) => alternatives.push(conditions.clone()),
            }
        }
    }
    // Allow rules first (their misses get the default), then the others.
    groups.sort_by_key(|(_, a, _)| *a != RET_ALLOW);
    if groups.first().is_none_or(|(_, a, _)| *a != RET_ALLOW) {
        groups.insert(
            0,
            (LinuxSeccompAction::ScmpActAllow, RET_ALLOW, BTreeMap::new()),
        );
    }
    let mut programs = Vec::new();
    for (i, (oci_action, act, rules)) in groups.into_iter().enumerate() {
        let missed = if i == 0 { default } else { RET_ALLOW };
        if missed == act {
            // Only possible for the first group with an allow default: nothing to filter.
            continue;
        }
        let program = filter(&rules, act, missed).map_err(|len| CompileError::TooLong {
            action: oci_action,
            len: usize::from(len),
        })?;
        programs.push(program);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_name_is_known_on_x86_64() {
        for name in DEFAULT_ALLOWED {
            assert!(lookup(name).is_some(), "{name}");
        }
        assert_eq!(lookup("read"), Some(0));
        assert_eq!(lookup("no_such_syscall"), None);
    }

    /// Runs a program the way the kernel does, on one `struct seccomp_data`.
    fn run(program: &[Instruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u32; 16];
        data[0] = nr;
        data[1] = arch;
        for (i, arg) in args.iter().enumerate() {
            data[4 + 2 * i] = *arg as u32;
            data[5 + 2 * i] = (*arg >> 32) as u32;
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_W_ABS => a = data[(i.k / 4) as usize],
                ALU_AND_K => a &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += jump(a == i.k),
                JMP_JGT_K => pc += jump(a > i.k),
                JMP_JGE_K => pc += jump(a >= i.k),
                RET_K => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// The kernel's verdict over every installed filter: the most restrictive action, and
    /// among equal ones the most recently installed filter's.
    fn verdict(programs: &[Vec<Instruction>], nr: u32, args: [u64; 6]) -> u32 {
        let mut result = None::<u32>;
        for program in programs.iter().rev() {
            let ret = run(program, AUDIT_ARCH_X86_64, nr, args);
            let action = |r: u32| (r & 0xffff_0000) as i32;
            if result.is_none_or(|best| action(ret) < action(best)) {
                result = Some(ret);
            }
        }
        result.unwrap()
    }

    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;

    #[test]
    fn default_profile_decides_every_syscall_number_as_docker_does() {
        let programs = compile(&default_profile().unwrap()).unwrap();
        assert_eq!(programs.len(), 2);
        // A binary search, not a chain: a few hundred instructions at most.
        assert!(programs[0].len() < 400, "{}", programs[0].len());
        let allowed: Vec<u32> = DEFAULT_ALLOWED
            .iter()
            .map(|n| u32::try_from(lookup(n).unwrap()).unwrap())
            .collect();
        let nr = |name| u32::try_from(lookup(name).unwrap()).unwrap();
        // Every number up to well past the table, and x32 numbers (which nothing allows).
        for n in (0..1024).chain(0x4000_0000..0x4000_0200).chain([u32::MAX]) {
            let expected = if n == nr("clone3") {
                ENOSYS
            } else if allowed.contains(&n) {
                RET_ALLOW
            } else if n == nr("personality") || n == nr("clone") {
                continue;
            } else {
                EPERM
            };
            assert_eq!(verdict(&programs, n, [0; 6]), expected, "syscall {n}");
        }
        for persona in [0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
            let args = [persona, 0, 0, 0, 0, 0];
            assert_eq!(verdict(&programs, nr("personality"), args), RET_ALLOW);
        }
        for persona in [1, 0x1_0000_0000, 0xffff_ffff_0000_0000] {
            let args = [persona, 0, 0, 0, 0, 0];
            assert_eq!(verdict(&programs, nr("personality"), args), EPERM);
        }
        let clone = |flags| verdict(&programs, nr("clone"), [flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(0x11), RET_ALLOW); // SIGCHLD | CLONE_VM-less fork
        assert_eq!(clone(0x003d_0f00), RET_ALLOW); // a thread
        assert_eq!(clone(0x2000_0000 | 0x11), EPERM); // CLONE_NEWPID
        assert_eq!(clone(0x1_0000_0000 | 0x11), RET_ALLOW); // high bits are not flags
        // A foreign architecture is killed.
        assert_eq!(run(&programs[0], 0x4000_0003, 0, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn every_comparison_holds_exactly_where_its_64_bit_meaning_does() {
        let ops = [
            LinuxSeccompOperator::ScmpCmpEq,
            LinuxSeccompOperator::ScmpCmpNe,
            LinuxSeccompOperator::ScmpCmpLt,
            LinuxSeccompOperator::ScmpCmpLe,
            LinuxSeccompOperator::ScmpCmpGt,
            LinuxSeccompOperator::ScmpCmpGe,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
        ];
        let value: u64 = 0x0000_0002_8000_0001;
        let probes = [
            0,
            1,
            value - 1,
            value,
            value + 1,
            value - (1 << 32),
            value + (1 << 32),
            0x0000_0002_0000_0000,
            0x0000_0002_ffff_ffff,
            0x0000_0003_0000_0000,
            0x0000_0001_ffff_ffff,
            u64::MAX,
        ];
        for (n, op) in ops.into_iter().enumerate() {
            let mask: u64 = 0x0000_00ff_f000_000f;
            let arg = LinuxSeccompArgBuilder::default()
                .index(3usize)
                .value(if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
                    mask
                } else {
                    value
                })
                .value_two(value & mask)
                .op(op)
                .build()
                .unwrap();
            let profile = LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActErrno)
                .syscalls(vec![
                    rule(&["read"], LinuxSeccompAction::ScmpActAllow)
                        .unwrap()
                        .args(vec![arg])
                        .build()
                        .unwrap(),
                ])
                .build()
                .unwrap();
            let programs = compile(&profile).unwrap();
            for probe in probes {
                let expected = match op {
                    LinuxSeccompOperator::ScmpCmpEq => probe == value,
                    LinuxSeccompOperator::ScmpCmpNe => probe != value,
                    LinuxSeccompOperator::ScmpCmpLt => probe < value,
                    LinuxSeccompOperator::ScmpCmpLe => probe <= value,
                    LinuxSeccompOperator::ScmpCmpGt => probe > value,
                    LinuxSeccompOperator::ScmpCmpGe => probe >= value,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => probe & mask == value & mask,
                };
                let got = verdict(&programs, 0, [0, 0, 0, probe, 0, 0]) == RET_ALLOW;
                assert_eq!(got, expected, "op {n} ({op:?}) on {probe:#x}");
                // Other syscalls get the default.
                assert_eq!(verdict(&programs, 1, [0, 0, 0, probe, 0, 0]), EPERM);
            }
        }
    }

    #[test]
    fn long_searches_jump_through_unconditional_jumps() {
        // Every other number allowed: no run merges, so the lower half of the search
        // outgrows a conditional jump's 255 instructions.
        let names: Vec<&str> = DEFAULT_ALLOWED
            .iter()
            .copied()
            .filter(|n| lookup(n).is_some_and(|nr| nr % 2 == 0))
            .collect();
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![
                rule(&names, LinuxSeccompAction::ScmpActAllow)
                    .unwrap()
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let programs = compile(&profile).unwrap();
        assert!(programs[0].iter().any(|i| i.code == JMP_JA));
        for n in 0..1024u32 {
            let allowed = names.iter().any(|name| lookup(name) == Some(i64::from(n)));
            let expected = if allowed { RET_ALLOW } else { EPERM };
            assert_eq!(verdict(&programs, n, [0; 6]), expected, "syscall {n}");
        }
    }

    #[test]
    fn an_argument_past_the_sixth_is_an_error() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![
                rule(&["read"], LinuxSeccompAction::ScmpActAllow)
                    .unwrap()
                    .args(vec![
                        LinuxSeccompArgBuilder::default()
                            .index(6usize)
                            .value(0u64)
                            .op(LinuxSeccompOperator::ScmpCmpEq)
                            .build()
                            .unwrap(),
                    ])
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        assert!(matches!(
            compile(&profile),
            Err(CompileError::ArgIndex { index: 6 })
        ));
    }

    #[test]
    fn names_of_other_architectures_are_skipped() {
        let profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![
                rule(
                    &["read", "chown32", "_llseek"],
                    LinuxSeccompAction::ScmpActAllow,
                )
                .unwrap()
                .build()
                .unwrap(),
            ])
            .build()
            .unwrap();
        assert_eq!(compile(&profile).unwrap().len(), 1);
    }
}
