//! The architectures a filter decides for, and their syscall numbers.
//!
//! A 64-bit x86 kernel runs three ABIs, each with numbers of its own: x86_64, i386 (32-bit
//! programs, and `int 0x80` from any program) and x32 (x86_64's registers with 32-bit
//! pointers, numbers with `__X32_SYSCALL_BIT`). The kernel tells a filter which one a call
//! uses (`seccomp_data.arch`), so a profile names the architectures it covers, and each name
//! of the profile is looked up in each architecture's table. The tables are data, generated
//! from the kernel's UAPI headers by `scripts/seccomp-tables.sh`.

use std::collections::HashMap;
use std::sync::OnceLock;

use oci_spec::runtime::Arch;

/// `AUDIT_ARCH_X86_64`: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`: EM_386 | __AUDIT_ARCH_LE.
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// Set in every x32 syscall number (`__X32_SYSCALL_BIT`).
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// One architecture's syscall numbers by name.
#[derive(Debug)]
pub(crate) struct Table {
    /// What `seccomp_data.arch` says for calls of this ABI.
    pub(crate) audit: u32,
    /// x32 shares x86_64's audit value; its numbers carry [`X32_SYSCALL_BIT`].
    pub(crate) x32: bool,
    numbers: HashMap<&'static str, u32>,
}

impl Table {
    fn parse(audit: u32, x32: bool, text: &'static str) -> Self {
        let numbers = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, nr) = l.split_once(' ')?;
                Some((name, nr.trim().parse().ok()?))
            })
            .collect();
        Self {
            audit,
            x32,
            numbers,
        }
    }

    /// The number of syscall `name`, or `None` when this architecture has no such call (a
    /// profile names every architecture's calls; the others are skipped, as libseccomp
    /// skips them).
    pub(crate) fn number(&self, name: &str) -> Option<u32> {
        self.numbers.get(name).copied()
    }
}

/// The table of `arch`, when this host can run it and hoist has its table.
pub(crate) fn table(arch: Arch) -> Option<&'static Table> {
    static X86_64: OnceLock<Table> = OnceLock::new();
    static X86: OnceLock<Table> = OnceLock::new();
    static X32: OnceLock<Table> = OnceLock::new();
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    Some(match arch {
        Arch::ScmpArchX86_64 => X86_64.get_or_init(|| {
            Table::parse(AUDIT_ARCH_X86_64, false, include_str!("tables/x86_64.tbl"))
        }),
        Arch::ScmpArchX86 => {
            X86.get_or_init(|| Table::parse(AUDIT_ARCH_I386, false, include_str!("tables/x86.tbl")))
        }
        Arch::ScmpArchX32 => X32
            .get_or_init(|| Table::parse(AUDIT_ARCH_X86_64, true, include_str!("tables/x32.tbl"))),
        _ => return None,
    })
}

/// The architecture of this host's own programs.
pub(crate) fn native() -> Arch {
    Arch::ScmpArchX86_64
}
