//! Seccomp: Docker's default profile as an OCI `LinuxSeccomp`, and its compilation to classic
//! BPF for the built-in runtime (runc compiles the same profile itself, with libseccomp).
//!
//! Compilation uses the `seccompiler` crate rather than libseccomp: it is pure Rust (no C
//! library to install and link into every hoist build), and the runtime compiles in the
//! caller and ships finished instructions to the init, which only installs them. seccompiler
//! has one match action per filter and takes syscall numbers, not names, so this module adds a
//! name table and splits a profile into one filter per action; the kernel runs every installed
//! filter and keeps the most restrictive answer, which gives the profile's semantics.

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
    /// seccompiler rejected a filter.
    #[error("compile seccomp filter for action {action:?}")]
    Backend {
        action: LinuxSeccompAction,
        #[source]
        source: seccompiler::BackendError,
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

/// The seccompiler action for an OCI action, with its errno.
fn action(
    action: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<seccompiler::SeccompAction, CompileError> {
    use seccompiler::SeccompAction as S;
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => S::Allow,
        LinuxSeccompAction::ScmpActErrno => S::Errno(errno.unwrap_or(libc::EPERM as u32)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => S::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => S::KillProcess,
        LinuxSeccompAction::ScmpActTrap => S::Trap,
        LinuxSeccompAction::ScmpActLog => S::Log,
        LinuxSeccompAction::ScmpActTrace => S::Trace(errno.unwrap_or(0)),
        other => return Err(CompileError::UnsupportedAction { action: other }),
    })
}

fn condition(
    arg: &oci_spec::runtime::LinuxSeccompArg,
) -> Result<seccompiler::SeccompCondition, seccompiler::BackendError> {
    use seccompiler::SeccompCmpOp as Op;
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
    let index = u8::try_from(arg.index()).unwrap_or(u8::MAX);
    seccompiler::SeccompCondition::new(index, seccompiler::SeccompCmpArgLen::Qword, op, value)
}

/// Compiles an OCI seccomp profile into BPF programs, to be installed in order.
///
/// The first program answers the profile's default action for any syscall no rule names and
/// carries the rules whose action is "allow"; each further program carries the rules of one
/// other action and allows everything else. Among equal actions the kernel takes the answer
/// of the filter installed last, so a specific errno beats the default one.
///
/// # Errors
/// On architectures without a syscall table, for actions seccompiler cannot express, or when
/// a filter is rejected (for example, too long).
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<Instruction>>, CompileError> {
    #[cfg(target_arch = "x86_64")]
    let arch = seccompiler::TargetArch::x86_64;
    #[cfg(not(target_arch = "x86_64"))]
    return Err(CompileError::UnsupportedArch);

    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // Rules grouped by their action, in first-seen order: syscall number → `None` when every
    // call matches, else the alternative argument conditions.
    type Rules = BTreeMap<i64, Option<Vec<seccompiler::SeccompRule>>>;
    let mut groups: Vec<(LinuxSeccompAction, seccompiler::SeccompAction, Rules)> = Vec::new();
    for syscall in profile.syscalls().as_deref().unwrap_or_default() {
        let act = action(syscall.action(), syscall.errno_ret())?;
        if act == default {
            continue;
        }
        let backend = |source| CompileError::Backend {
            action: syscall.action(),
            source,
        };
        let conditions = syscall
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(seccompiler::SeccompRule::new(conditions).map_err(backend)?)
        };
        let index = match groups.iter().position(|(_, a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((syscall.action(), act.clone(), BTreeMap::new()));
                groups.len() - 1
            }
        };
        let rules = &mut groups[index].2;
        for name in syscall.names() {
            let Some(nr) = lookup(name) else {
                continue;
            };
            match (&rule, rules.entry(nr).or_insert_with(|| Some(Vec::new()))) {
                (None, entry) => *entry = None,
                (Some(_), None) => {}
                (Some(rule), Some(alternatives)) => alternatives.push(rule.clone()),
            }
        }
    }
    // Allow rules first (their misses get the default), then the others.
    groups.sort_by_key(|(_, a, _)| *a != seccompiler::SeccompAction::Allow);
    let mut programs = Vec::new();
    if groups.is_empty() || groups[0].1 != seccompiler::SeccompAction::Allow {
        groups.insert(
            0,
            (
                LinuxSeccompAction::ScmpActAllow,
                seccompiler::SeccompAction::Allow,
                BTreeMap::new(),
            ),
        );
    }
    for (i, (oci_action, act, rules)) in groups.into_iter().enumerate() {
        let mismatch = if i == 0 {
            default.clone()
        } else {
            seccompiler::SeccompAction::Allow
        };
        if mismatch == act {
            // Only possible for the first group with an allow default: nothing to filter.
            continue;
        }
        let rules = rules
            .into_iter()
            .map(|(nr, alternatives)| (nr, alternatives.unwrap_or_default()))
            .collect();
        let filter =
            seccompiler::SeccompFilter::new(rules, mismatch, act, arch).map_err(|source| {
                CompileError::Backend {
                    action: oci_action,
                    source,
                }
            })?;
        let program: seccompiler::BpfProgram =
            filter.try_into().map_err(|source| CompileError::Backend {
                action: oci_action,
                source,
            })?;
        programs.push(
            program
                .into_iter()
                .map(|f| Instruction {
                    code: f.code,
                    jt: f.jt,
                    jf: f.jf,
                    k: f.k,
                })
                .collect(),
        );
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

    #[test]
    fn default_profile_compiles_to_an_allow_filter_and_an_enosys_filter() {
        let programs = compile(&default_profile().unwrap()).unwrap();
        assert_eq!(programs.len(), 2);
        for program in &programs {
            assert!(program.len() < 4096);
        }
        // The first program's last instruction returns the default: ERRNO(EPERM).
        let last = programs[0].last().unwrap();
        assert_eq!(last.k, 0x0005_0000 | libc::EPERM as u32);
        // The second one's misses are allowed.
        assert_eq!(programs[1].last().unwrap().k, 0x7fff_0000);
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
