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
//!
//! A profile names the architectures it covers; on x86_64 Docker's covers x86_64, i386 and
//! x32, so 32-bit programs run under it as they do under Docker ([`arch`] has the tables).
//! Module [`bpf`] writes the programs.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

mod arch;
mod bpf;

pub use bpf::Instruction;
use bpf::{Condition, RET_ALLOW, RET_KILL_PROCESS, Rules, Section, condition};
/// Error from [`compile`].
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// None of the profile's architectures has a syscall table here.
    #[error("seccomp compilation is not supported for the architectures {arches:?}")]
    UnsupportedArch { arches: Vec<Arch> },
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

/// Syscalls Docker's default profile allows unconditionally (moby `profiles/seccomp`), on every
/// architecture that has them: the 32-bit and time64 names are i386's (and x32's), and a name
/// an architecture lacks is skipped for it.
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
    "io_pgetevents",
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
    "name_to_handle_at",
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
];

/// i386's own names for what the 64-bit ABIs call otherwise (16-bit-uid-free `*32` calls,
/// `*64` offsets, time64 calls, the multiplexed `socketcall` and `ipc`), which Docker's profile
/// allows as well.
const DEFAULT_ALLOWED_32BIT: &[&str] = &[
    "_llseek",
    "_newselect",
    "chown32",
    "clock_adjtime64",
    "clock_getres_time64",
    "clock_gettime64",
    "clock_nanosleep_time64",
    "fadvise64_64",
    "fchown32",
    "fcntl64",
    "fstat64",
    "fstatat64",
    "fstatfs64",
    "ftruncate64",
    "futex_time64",
    "getegid32",
    "geteuid32",
    "getgid32",
    "getgroups32",
    "getresgid32",
    "getresuid32",
    "getuid32",
    "io_pgetevents_time64",
    "ipc",
    "lchown32",
    "lstat64",
    "mmap2",
    "mq_timedreceive_time64",
    "mq_timedsend_time64",
    "ppoll_time64",
    "pselect6_time64",
    "recvmmsg_time64",
    "rt_sigtimedwait_time64",
    "sched_rr_get_interval_time64",
    "semtimedop_time64",
    "sendfile64",
    "setfsgid32",
    "setfsuid32",
    "setgid32",
    "setgroups32",
    "setregid32",
    "setresgid32",
    "setresuid32",
    "setreuid32",
    "setuid32",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "stat64",
    "statfs64",
    "timer_gettime64",
    "timer_settime64",
    "timerfd_gettime64",
    "timerfd_settime64",
    "truncate64",
    "ugetrlimit",
    "utimensat_time64",
    "waitpid",
];

/// Allowed on x86 only, as in Docker's profile: `arch_prctl` on x86_64 and x32, `modify_ldt`
/// (which 32-bit programs use for thread-local storage) on all three.
const DEFAULT_ALLOWED_X86: &[&str] = &["arch_prctl", "modify_ldt"];

/// Docker allows these from kernel 4.8 on, where ptrace no longer bypasses seccomp; `chroot` is
/// granted by CAP_SYS_CHROOT, which is in the default capability set.
const DEFAULT_ALLOWED_WITH_CAPS: &[&str] = &[
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "chroot",
];

/// `personality` domains Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and the query value.
const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN (CLONE_NEWNS, NEWCGROUP,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`, the one socket family Docker's profile refuses.
const AF_VSOCK: u64 = 40;

/// Every name the default profile allows unconditionally on this host.
fn default_allowed() -> Vec<&'static str> {
    let x86: &[&str] = if cfg!(target_arch = "x86_64") {
        DEFAULT_ALLOWED_X86
    } else {
        &[]
    };
    [
        DEFAULT_ALLOWED,
        DEFAULT_ALLOWED_32BIT,
        x86,
        DEFAULT_ALLOWED_WITH_CAPS,
    ]
    .concat()
}

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
    let mut syscalls: Vec<LinuxSyscall> = vec![
        rule(&default_allowed(), LinuxSeccompAction::ScmpActAllow)?.build()?,
        // Any socket but AF_VSOCK (40), whose host side a sandbox has no business reaching.
        rule(&["socket"], LinuxSeccompAction::ScmpActAllow)?
            .args(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(AF_VSOCK)
                    .op(LinuxSeccompOperator::ScmpCmpNe)
                    .build()?,
            ])
            .build()?,
    ];
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

/// Compiles an OCI seccomp profile into BPF programs, to be installed in order.
///
/// The first program answers the profile's default action for any syscall no rule names and
/// carries the rules whose action is "allow"; each further program carries the rules of one
/// other action and allows everything else. Among equal actions the kernel takes the answer
/// of the filter installed last, so a specific errno beats the default one. Every program
/// covers each of the profile's architectures (this host's own when it names none) with that
/// architecture's numbers for the profile's names, and kills a call of any other.
///
/// Each program is a binary search over ranges of syscall numbers rather than a chain of
/// comparisons (as seccompiler and libseccomp by default emit): Docker's profile becomes
/// a few hundred instructions instead of 1,500 per architecture, a syscall runs about 10 of
/// them, and installing it costs less, since the kernel checks and translates every
/// instruction and then runs the filter once per syscall number to find the ones it can
/// allow without running it (its action cache, `seccomp_cache_prepare`).
///
/// # Errors
/// When no architecture of the profile has a syscall table here, for actions this compiler
/// cannot express, argument indexes past 5, and programs too long for the kernel.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<Instruction>>, CompileError> {
    let arches = match profile.architectures().as_deref() {
        Some(list) if !list.is_empty() => list.to_vec(),
        _ => vec![arch::native()],
    };
    let tables: Vec<&arch::Table> = arches.iter().filter_map(|a| arch::table(*a)).collect();
    if tables.is_empty() {
        return Err(CompileError::UnsupportedArch { arches });
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // Rules grouped by their action, in first-seen order, one rule set per architecture.
    let mut groups: Vec<(LinuxSeccompAction, u32, Vec<Rules>)> = Vec::new();
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
            .collect::<Result<Vec<Condition>, _>>()?;
        let index = match groups.iter().position(|(_, a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((syscall.action(), act, vec![Rules::new(); tables.len()]));
                groups.len() - 1
            }
        };
        for (table, rules) in tables.iter().zip(&mut groups[index].2) {
            for name in syscall.names() {
                let Some(nr) = table.number(name) else {
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
    }
    // Allow rules first (their misses get the default), then the others.
    groups.sort_by_key(|(_, a, _)| *a != RET_ALLOW);
    if groups.first().is_none_or(|(_, a, _)| *a != RET_ALLOW) {
        groups.insert(
            0,
            (
                LinuxSeccompAction::ScmpActAllow,
                RET_ALLOW,
                vec![Rules::new(); tables.len()],
            ),
        );
    }
    let mut programs = Vec::new();
    for (i, (oci_action, act, rules)) in groups.into_iter().enumerate() {
        let missed = if i == 0 { default } else { RET_ALLOW };
        if missed == act {
            // Only possible for the first group with an allow default: nothing to filter.
            continue;
        }
        let sections: Vec<Section<'_>> = tables
            .iter()
            .zip(rules)
            .map(|(table, rules)| Section { table, rules })
            .collect();
        let program = bpf::filter(&sections, act, missed).map_err(|len| CompileError::TooLong {
            action: oci_action,
            len: usize::from(len),
        })?;
        programs.push(program);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests;
