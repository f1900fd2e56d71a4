//! The default RUN [`Spec`]: what `docker build` gives a RUN step when the Dockerfile asks for
//! nothing special. Both backends run the `Spec` this module builds.

use std::path::{Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, User,
};

/// Error from [`build_spec`].
#[derive(Debug, thiserror::Error)]
pub enum BuildSpecError {
    /// A part of the spec was rejected by oci-spec's builders.
    #[error("invalid runtime spec field {field}")]
    Invalid {
        field: &'static str,
        #[source]
        source: OciSpecError,
    },
}

fn invalid(field: &'static str) -> impl FnOnce(OciSpecError) -> BuildSpecError {
    move |source| BuildSpecError::Invalid { field, source }
}

/// Network of a RUN, as `docker build --network` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A new network namespace with only `lo`, which is up.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// A new network namespace with `lo` and an uplink through a user-space NAT
    /// ([`crate::net`]), as `docker build` gives a RUN by default.
    Default,
}

/// Spec annotation that marks a RUN whose network namespace the executor attaches an uplink
/// to (value `default`); runc ignores it.
pub const NETWORK_ANNOTATION: &str = "org.hoist.network";

/// Whether `spec` asks for an uplink ([`NetworkMode::Default`]).
#[must_use]
pub fn wants_uplink(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(NETWORK_ANNOTATION))
        .is_some_and(|v| v == "default")
}

/// Host files bind-mounted read-only over `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`,
/// so that they never land in the upperdir.
#[derive(Debug, Clone)]
pub struct EtcFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

/// cgroup limits of one RUN.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<i64>,
    /// CPU bandwidth: `quota` microseconds of CPU time per `period` microseconds.
    pub cpu_quota: Option<(i64, u64)>,
}

/// What a RUN step asks for; everything else takes Docker's defaults.
#[derive(Debug, Clone)]
pub struct SpecOptions {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Working directory inside the sandbox; created if missing.
    pub cwd: PathBuf,
    /// Numeric identity, usually from [`crate::user::resolve_user`].
    pub user: User,
    pub hostname: String,
    pub network: NetworkMode,
    pub etc_files: EtcFiles,
    pub limits: Limits,
    /// `RUN --security=insecure`: every capability, no seccomp profile, no masked or read-only
    /// paths. Only for builds granted the `security.insecure` entitlement.
    pub insecure: bool,
    /// Mounts after Docker's defaults (`RUN --mount`), over them where they share a target.
    pub mounts: Vec<Mount>,
}

/// Capabilities a Docker container gets by default (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the kernel of this crate's oci-spec knows, for insecure RUNs.
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// Paths runc masks by default (a /dev/null bind for files, an empty read-only tmpfs for dirs).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths runc makes read-only by default.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capability number the kernel uses for `cap` (`include/uapi/linux/capability.h`).
#[must_use]
pub fn capability_number(cap: Capability) -> u32 {
    match cap {
        Capability::Chown => 0,
        Capability::DacOverride => 1,
        Capability::DacReadSearch => 2,
        Capability::Fowner => 3,
        Capability::Fsetid => 4,
        Capability::Kill => 5,
        Capability::Setgid => 6,
        Capability::Setuid => 7,
        Capability::Setpcap => 8,
        Capability::LinuxImmutable => 9,
        Capability::NetBindService => 10,
        Capability::NetBroadcast => 11,
        Capability::NetAdmin => 12,
        Capability::NetRaw => 13,
        Capability::IpcLock => 14,
        Capability::IpcOwner => 15,
        Capability::SysModule => 16,
        Capability::SysRawio => 17,
        Capability::SysChroot => 18,
        Capability::SysPtrace => 19,
        Capability::SysPacct => 20,
        Capability::SysAdmin => 21,
        Capability::SysBoot => 22,
        Capability::SysNice => 23,
        Capability::SysResource => 24,
        Capability::SysTime => 25,
        Capability::SysTtyConfig => 26,
        Capability::Mknod => 27,
        Capability::Lease => 28,
        Capability::AuditWrite => 29,
        Capability::AuditControl => 30,
        Capability::Setfcap => 31,
        Capability::MacOverride => 32,
        Capability::MacAdmin => 33,
        Capability::Syslog => 34,
        Capability::WakeAlarm => 35,
        Capability::BlockSuspend => 36,
        Capability::AuditRead => 37,
        Capability::Perfmon => 38,
        Capability::Bpf => 39,
        Capability::CheckpointRestore => 40,
    }
}

/// The bit mask of a capability set, bit `n` for capability number `n`.
#[must_use]
pub fn capability_mask(caps: &Capabilities) -> u64 {
    caps.iter()
        .fold(0, |mask, cap| mask | (1u64 << capability_number(*cap)))
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount, BuildSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(invalid("mounts"))
}

/// The mounts of runc's default spec (`runc spec`), minus the cgroup filesystem, plus the
/// read-only `/etc` files.
fn default_mounts(etc: &EtcFiles) -> Result<Vec<Mount>, BuildSpecError> {
    Ok(vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/etc/hosts",
            "bind",
            &etc.hosts,
            &["rbind", "ro", "nosuid", "nodev"],
        )?,
        mount(
            "/etc/resolv.conf",
            "bind",
            &etc.resolv_conf,
            &["rbind", "ro", "nosuid", "nodev"],
        )?,
        mount(
            "/etc/hostname",
            "bind",
            &etc.hostname,
            &["rbind", "ro", "nosuid", "nodev"],
        )?,
    ])
}

/// The calling process's capability bounding set, from `/proc/self/status`.
fn own_bounding_set() -> Option<u64> {
    let status = fs_err::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Builds the spec of one RUN step. The root path is left for the executor to fill in.
///
/// # Errors
/// When oci-spec rejects a field (it does not for the values this function builds).
pub fn build_spec(opts: &SpecOptions) -> Result<Spec, BuildSpecError> {
    let all: Capabilities = if opts.insecure {
        // Every capability this process can pass on: asking for more would fail the capset.
        let bounding = own_bounding_set().unwrap_or(u64::MAX);
        ALL_CAPABILITIES
            .into_iter()
            .filter(|c| bounding & (1 << capability_number(*c)) != 0)
            .collect()
    } else {
        DEFAULT_CAPABILITIES.into_iter().collect()
    };
    // As Docker does for a non-root user, only the bounding set keeps the defaults: the process
    // gets capabilities back only through a setuid-root or file-capability binary.
    let granted = if opts.user.uid() == 0 {
        all.clone()
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(all)
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(invalid("process.capabilities"))?;
    // runc's default: lowering needs no privilege, while raising the hard limit past the
    // caller's needs CAP_SYS_RESOURCE, which the caller may not hold.
    let rlimits = vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .map_err(invalid("process.rlimits"))?,
    ];
    let mut user = opts.user.clone();
    if user.umask().is_none() {
        user.set_umask(Some(0o022));
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(opts.args.clone())
        .env(opts.env.clone())
        .cwd(opts.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()
        .map_err(invalid("process"))?;

    let mut namespaces = Vec::new();
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if opts.network != NetworkMode::Host {
        kinds.push(LinuxNamespaceType::Network);
    }
    for typ in kinds {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(invalid("linux.namespaces"))?,
        );
    }

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(limit) = opts.limits.memory_bytes {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(invalid("linux.resources.memory"))?,
        );
    }
    if let Some(limit) = opts.limits.pids {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(invalid("linux.resources.pids"))?,
        );
    }
    if let Some((quota, period)) = opts.limits.cpu_quota {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .map_err(invalid("linux.resources.cpu"))?,
        );
    }

    // Docker's device rules: mknod of anything, but only harmless devices may be opened. An
    // insecure RUN is privileged, as in BuildKit, and may open every device.
    resources = resources.devices(if opts.insecure {
        crate::devices::allow_all()
    } else {
        crate::devices::docker_default()
    });

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(invalid("linux.resources"))?);
    if opts.insecure {
        // Explicitly empty: oci-spec's defaults would fill them in.
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    } else {
        linux = linux
            .masked_paths(DEFAULT_MASKED_PATHS.map(str::to_owned).to_vec())
            .readonly_paths(DEFAULT_READONLY_PATHS.map(str::to_owned).to_vec())
            .seccomp(crate::seccomp::default_profile().map_err(invalid("linux.seccomp"))?);
    }
    let linux = linux.build().map_err(invalid("linux"))?;

    let mut spec = SpecBuilder::default();
    if opts.network == NetworkMode::Default {
        spec = spec.annotations(std::collections::HashMap::from([(
            NETWORK_ANNOTATION.to_owned(),
            "default".to_owned(),
        )]));
    }
    spec.version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(invalid("root"))?,
        )
        .hostname(opts.hostname.clone())
        .process(process)
        .mounts({
            let mut mounts = default_mounts(&opts.etc_files)?;
            mounts.extend(opts.mounts.iter().cloned());
            mounts
        })
        .linux(linux)
        .build()
        .map_err(invalid("spec"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(uid: u32) -> SpecOptions {
        let mut user = User::default();
        user.set_uid(uid);
        SpecOptions {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user,
            hostname: "sandbox".into(),
            network: NetworkMode::None,
            etc_files: EtcFiles {
                hosts: "/h".into(),
                resolv_conf: "/r".into(),
                hostname: "/n".into(),
            },
            limits: Limits::default(),
            insecure: false,
            mounts: Vec::new(),
        }
    }

    #[test]
    fn docker_default_capability_mask() {
        let set: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        // What `grep CapEff /proc/self/status` shows in a default Docker container.
        assert_eq!(capability_mask(&set), 0x0000_0000_a804_25fb);
    }

    #[test]
    fn root_gets_default_caps_and_others_only_bounding() {
        let spec = build_spec(&options(0)).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert_eq!(caps.effective().as_ref().unwrap().len(), 14);
        let spec = build_spec(&options(1000)).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    }

    #[test]
    fn insecure_grants_everything_and_drops_the_filters() {
        let mut opts = options(0);
        opts.insecure = true;
        let spec = build_spec(&opts).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let expected = own_bounding_set().unwrap().count_ones() as usize;
        assert_eq!(caps.effective().as_ref().unwrap().len(), expected.min(41));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    }

    #[test]
    fn network_none_adds_a_network_namespace() {
        let has_net = |spec: &Spec| {
            spec.linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Network)
        };
        let mut opts = options(0);
        assert!(has_net(&build_spec(&opts).unwrap()));
        assert!(!wants_uplink(&build_spec(&opts).unwrap()));
        opts.network = NetworkMode::Default;
        let spec = build_spec(&opts).unwrap();
        assert!(has_net(&spec) && wants_uplink(&spec));
        opts.network = NetworkMode::Host;
        assert!(!has_net(&build_spec(&opts).unwrap()));
    }
}
