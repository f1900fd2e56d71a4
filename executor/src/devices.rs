//! Which device nodes a RUN may open: one rule list, the spec's `linux.resources.devices`, made
//! into either cgroup v1 `devices.allow`/`devices.deny` writes or a cgroup v2 eBPF program
//! (`BPF_PROG_TYPE_CGROUP_DEVICE`). runc reads the same list from the spec.
//!
//! A RUN holds `CAP_MKNOD`, as under Docker, so it can make a node for any device, including
//! the host's disks. What stops it from using one is this rule list: Docker's default denies
//! every device but a short list of harmless ones (runc's `AllowedDevices` in
//! `libcontainer/specconv/spec_linux.go`, plus `/dev/console`), while still allowing `mknod`
//! itself, so that `RUN mknod` in a Dockerfile keeps working.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Access bits, as the v1 files spell them and as the eBPF context carries them
/// (`BPF_DEVCG_ACC_*` in `include/uapi/linux/bpf.h`).
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Device types in the eBPF context (`BPF_DEVCG_DEV_*`).
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

/// Error from turning a rule list into kernel form.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRuleError {
    #[error("device rule {rule:?}: access {access:?} is not a combination of r, w and m")]
    Access { rule: String, access: String },
    #[error("device rule {rule:?}: {what} {value} is out of range")]
    Number {
        rule: String,
        what: &'static str,
        value: i64,
    },
    #[error("device rule {rule:?}: type {typ} is not a, b or c")]
    Type { rule: String, typ: String },
}

fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    number: Option<(i64, Option<i64>)>,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow);
    rule.set_typ(Some(typ));
    if let Some((major, minor)) = number {
        rule.set_major(Some(major));
        rule.set_minor(minor);
    }
    rule.set_access(Some(
        if number.is_some() || !allow {
            "rwm"
        } else {
            "m"
        }
        .to_owned(),
    ));
    rule
}

/// Docker's default: every device denied, then `mknod` of any character or block device
/// allowed, and these opened: null, zero, full, random, urandom, tty, console, ptmx, the pty
/// slaves (`/dev/pts/*`) and tun.
#[must_use]
pub fn docker_default() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    let mut rules = vec![
        rule(false, A, None),
        rule(true, C, None),
        rule(true, B, None),
    ];
    for (major, minor) in [
        (1, Some(3)),    // null
        (1, Some(5)),    // zero
        (1, Some(7)),    // full
        (1, Some(8)),    // random
        (1, Some(9)),    // urandom
        (5, Some(0)),    // tty
        (5, Some(1)),    // console
        (5, Some(2)),    // ptmx
        (136, None),     // /dev/pts/*
        (10, Some(200)), // tun
    ] {
        rules.push(rule(true, C, Some((major, minor))));
    }
    rules
}

/// Every device, for `RUN --security=insecure` (Docker's privileged mode).
#[must_use]
pub fn allow_all() -> Vec<LinuxDeviceCgroup> {
    let mut all = rule(true, LinuxDeviceType::A, None);
    all.set_access(Some("rwm".to_owned()));
    vec![all]
}

/// One rule in the kernel's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    allow: bool,
    /// `None` for any type (`a`).
    typ: Option<u32>,
    major: Option<u32>,
    minor: Option<u32>,
    access: u32,
}

impl Rule {
    fn parse(rule: &LinuxDeviceCgroup) -> Result<Self, DeviceRuleError> {
        let text = rule.to_string();
        let typ = match rule.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::P => {
                return Err(DeviceRuleError::Type {
                    rule: text,
                    typ: "p".to_owned(),
                });
            }
        };
        let number = |what: &'static str, value: Option<i64>| match value {
            None | Some(-1) => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| DeviceRuleError::Number {
                    rule: text.clone(),
                    what,
                    value: v,
                }),
        };
        let access_text = rule.access().as_deref().unwrap_or("rwm");
        let mut access = 0;
        for c in access_text.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => {
                    return Err(DeviceRuleError::Access {
                        rule: text,
                        access: access_text.to_owned(),
                    });
                }
            };
        }
        if access_text.is_empty() {
            access = ACC_ALL;
        }
        Ok(Self {
            allow: rule.allow(),
            typ,
            major: number("major", rule.major())?,
            minor: number("minor", rule.minor())?,
            access,
        })
    }

    /// `a *:* rwm`: a rule that resets the whole policy.
    fn is_everything(&self) -> bool {
        self.typ.is_none() && self.major.is_none() && self.minor.is_none() && self.access == ACC_ALL
    }

    /// Whether every device and access that `other` names is also named by `self`.
    fn covers(&self, other: &Self) -> bool {
        let field = |mine: Option<u32>, theirs: Option<u32>| mine.is_none() || mine == theirs;
        field(self.typ, other.typ)
            && field(self.major, other.major)
            && field(self.minor, other.minor)
            && other.access & !self.access == 0
    }
}

/// A rule list reduced to what the kernel's v1 controller keeps: a default and the rules
/// that make exceptions to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    default_allow: bool,
    exceptions: Vec<Rule>,
}

impl Policy {
    /// Applies the rules in order, from the kernel's default (everything allowed), as the v1
    /// controller does: `a *:* rwm` resets the default and drops every exception; a rule of
    /// the other polarity than the default is an exception; a rule of the same polarity takes
    /// back the exceptions it covers.
    fn of(rules: &[LinuxDeviceCgroup]) -> Result<Self, DeviceRuleError> {
        let mut policy = Self {
            default_allow: true,
            exceptions: Vec::new(),
        };
        for rule in rules {
            let rule = Rule::parse(rule)?;
            if rule.is_everything() {
                policy.default_allow = rule.allow;
                policy.exceptions.clear();
            } else if rule.allow == policy.default_allow {
                policy.exceptions.retain(|e| !rule.covers(e));
            } else {
                policy.exceptions.push(rule);
            }
        }
        Ok(policy)
    }

    fn allows_everything(&self) -> bool {
        self.default_allow && self.exceptions.is_empty()
    }
}

/// Whether `rules` leave every device open, so that no cgroup device setup is needed.
///
/// # Errors
/// A rule the kernel could not take.
pub fn allows_everything(rules: &[LinuxDeviceCgroup]) -> Result<bool, DeviceRuleError> {
    Ok(Policy::of(rules)?.allows_everything())
}

/// The v1 writes for `rules`, in order: `(file name, line)` with the file `devices.allow` or
/// `devices.deny` of the RUN's devices cgroup.
///
/// # Errors
/// A rule the kernel could not take.
pub fn v1_writes(
    rules: &[LinuxDeviceCgroup],
) -> Result<Vec<(&'static str, String)>, DeviceRuleError> {
    rules
        .iter()
        .map(|r| {
            let rule = Rule::parse(r)?;
            let typ = match rule.typ {
                None => 'a',
                Some(DEV_BLOCK) => 'b',
                Some(_) => 'c',
            };
            let number = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
            let mut access = String::new();
            for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
                if rule.access & bit != 0 {
                    access.push(c);
                }
            }
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            Ok((
                file,
                format!(
                    "{typ} {}:{} {access}",
                    number(rule.major),
                    number(rule.minor)
                ),
            ))
        })
        .collect()
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbpfInstruction {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl EbpfInstruction {
    /// The instruction as the kernel reads it: opcode, registers (dst in the low nibble),
    /// offset and immediate, little-endian as on every architecture hoist runs on.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

// Opcodes (`include/uapi/linux/bpf.h`, `bpf_common.h`).
const LDX_MEM_W: u8 = 0x61;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JNE_K: u8 = 0x55;
const JMP_JEQ_K: u8 = 0x15;
const JMP_EXIT: u8 = 0x95;

// Registers: r1 holds the context on entry; the program keeps the device type in r2, the
// requested access in r3, major and minor in r4 and r5, and uses r6 as scratch.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> EbpfInstruction {
    EbpfInstruction {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// The `BPF_PROG_TYPE_CGROUP_DEVICE` program for `rules`: it reads `struct bpf_cgroup_dev_ctx`
/// (`access_type` = access << 16 | type, then major, then minor) and returns 1 to allow, 0 to
/// deny. Each exception is a block of tests that jumps to the next block on the first
/// mismatch and returns the exception's verdict when all pass; past the last block, the
/// default. `None` when the rules allow everything (no program is needed).
///
/// # Errors
/// A rule the kernel could not take.
pub fn ebpf_program(
    rules: &[LinuxDeviceCgroup],
) -> Result<Option<Vec<EbpfInstruction>>, DeviceRuleError> {
    let policy = Policy::of(rules)?;
    if policy.allows_everything() {
        return Ok(None);
    }
    let mut code = vec![
        insn(LDX_MEM_W, TYPE, R1, 0, 0),
        insn(ALU64_MOV_X, ACCESS, TYPE, 0, 0),
        insn(ALU64_AND_K, TYPE, 0, 0, 0xffff),
        insn(ALU64_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_MEM_W, MAJOR, R1, 4, 0),
        insn(LDX_MEM_W, MINOR, R1, 8, 0),
    ];
    for exception in &policy.exceptions {
        // (instruction, whether it jumps to the next block on a mismatch).
        let mut block: Vec<(EbpfInstruction, bool)> = Vec::new();
        let field_tests = [
            (TYPE, exception.typ),
            (MAJOR, exception.major),
            (MINOR, exception.minor),
        ];
        for (reg, value) in field_tests {
            if let Some(value) = value {
                block.push((insn(JMP_JNE_K, reg, 0, 0, value as i32), true));
            }
        }
        // An allow exception (default deny) matches when every requested access is granted;
        // a deny exception (default allow) when any requested access is denied, as the v1
        // controller decides.
        if exception.access != ACC_ALL {
            let (mask, mismatch) = if exception.allow {
                (!exception.access & ACC_ALL, JMP_JNE_K)
            } else {
                (exception.access, JMP_JEQ_K)
            };
            block.push((insn(ALU64_MOV_X, SCRATCH, ACCESS, 0, 0), false));
            block.push((insn(ALU64_AND_K, SCRATCH, 0, 0, mask as i32), false));
            block.push((insn(mismatch, SCRATCH, 0, 0, 0), true));
        }
        block.push((
            insn(ALU64_MOV_K, R0, 0, 0, i32::from(exception.allow)),
            false,
        ));
        block.push((insn(JMP_EXIT, 0, 0, 0, 0), false));
        let len = block.len();
        for (i, (mut instruction, to_next)) in block.into_iter().enumerate() {
            if to_next {
                // Relative to the next instruction: land just past this block.
                instruction.off = (len - i - 1) as i16;
            }
            code.push(instruction);
        }
    }
    code.push(insn(ALU64_MOV_K, R0, 0, 0, i32::from(policy.default_allow)));
    code.push(insn(JMP_EXIT, 0, 0, 0, 0));
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a device program as the kernel does, on one `struct bpf_cgroup_dev_ctx`.
    fn run(program: &[EbpfInstruction], typ: u32, access: u32, major: u32, minor: u32) -> i64 {
        let ctx = [(access << 16) | typ, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            pc += 1;
            let (d, s) = (usize::from(i.dst), usize::from(i.src));
            let imm = i64::from(i.imm) as u64;
            let jump = |taken: bool, pc: &mut usize| {
                if taken {
                    *pc = (*pc as i64 + i64::from(i.off)) as usize;
                }
            };
            match i.code {
                LDX_MEM_W => regs[d] = u64::from(ctx[(i.off / 4) as usize]),
                ALU64_MOV_X => regs[d] = regs[s],
                ALU64_MOV_K => regs[d] = imm,
                ALU64_AND_K => regs[d] &= imm,
                ALU64_RSH_K => regs[d] >>= imm,
                JMP_JNE_K => jump(regs[d] != imm, &mut pc),
                JMP_JEQ_K => jump(regs[d] == imm, &mut pc),
                JMP_EXIT => return regs[0] as i64,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn docker_default_as_v1_writes() {
        let writes = v1_writes(&docker_default()).unwrap();
        let text: Vec<String> = writes.iter().map(|(f, l)| format!("{f} {l}")).collect();
        assert_eq!(
            text,
            [
                "devices.deny a *:* rwm",
                "devices.allow c *:* m",
                "devices.allow b *:* m",
                "devices.allow c 1:3 rwm",
                "devices.allow c 1:5 rwm",
                "devices.allow c 1:7 rwm",
                "devices.allow c 1:8 rwm",
                "devices.allow c 1:9 rwm",
                "devices.allow c 5:0 rwm",
                "devices.allow c 5:1 rwm",
                "devices.allow c 5:2 rwm",
                "devices.allow c 136:* rwm",
                "devices.allow c 10:200 rwm",
            ]
        );
    }

    #[test]
    fn docker_default_program_denies_disks_and_allows_the_short_list() {
        let program = ebpf_program(&docker_default()).unwrap().unwrap();
        let rw = ACC_READ | ACC_WRITE;
        // A loop device and a disk: neither read nor written, but a node may be made.
        assert_eq!(run(&program, DEV_BLOCK, ACC_READ, 7, 1), 0);
        assert_eq!(run(&program, DEV_BLOCK, ACC_WRITE, 8, 0), 0);
        assert_eq!(run(&program, DEV_BLOCK, rw, 253, 0), 0);
        assert_eq!(run(&program, DEV_BLOCK, ACC_MKNOD, 7, 1), 1);
        assert_eq!(run(&program, DEV_CHAR, ACC_MKNOD, 1, 1), 1);
        // /dev/mem, /dev/kmsg, fuse: denied.
        assert_eq!(run(&program, DEV_CHAR, ACC_READ, 1, 1), 0);
        assert_eq!(run(&program, DEV_CHAR, rw, 1, 11), 0);
        assert_eq!(run(&program, DEV_CHAR, rw, 10, 229), 0);
        // The list.
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
        ] {
            assert_eq!(
                run(&program, DEV_CHAR, rw, major, minor),
                1,
                "{major}:{minor}"
            );
        }
        assert_eq!(run(&program, DEV_CHAR, rw, 136, 7), 1);
        assert_eq!(run(&program, DEV_CHAR, rw, 10, 200), 1);
        // The same numbers as a block device are not on the list.
        assert_eq!(run(&program, DEV_BLOCK, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn allow_all_needs_no_program_and_deny_exceptions_take_partial_access() {
        assert!(ebpf_program(&allow_all()).unwrap().is_none());
        assert!(allows_everything(&allow_all()).unwrap());
        assert!(!allows_everything(&docker_default()).unwrap());
        // Everything allowed but writing /dev/null.
        let mut deny = LinuxDeviceCgroup::default();
        deny.set_allow(false);
        deny.set_typ(Some(LinuxDeviceType::C));
        deny.set_major(Some(1));
        deny.set_minor(Some(3));
        deny.set_access(Some("w".to_owned()));
        let mut rules = allow_all();
        rules.push(deny);
        let program = ebpf_program(&rules).unwrap().unwrap();
        assert_eq!(run(&program, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&program, DEV_CHAR, ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&program, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&program, DEV_BLOCK, ACC_WRITE, 7, 0), 1);
    }

    #[test]
    fn a_later_rule_like_the_default_takes_back_exceptions() {
        // deny all, allow c 1:3, then deny it again: the exception is gone.
        let mut rules = docker_default();
        let mut deny_null = LinuxDeviceCgroup::default();
        deny_null.set_allow(false);
        deny_null.set_typ(Some(LinuxDeviceType::C));
        deny_null.set_major(Some(1));
        deny_null.set_minor(Some(3));
        deny_null.set_access(Some("rwm".to_owned()));
        // Same polarity as the default (deny): takes back the allow of 1:3.
        rules.push(deny_null);
        let program = ebpf_program(&rules).unwrap().unwrap();
        assert_eq!(run(&program, DEV_CHAR, ACC_READ, 1, 3), 0);
        assert_eq!(run(&program, DEV_CHAR, ACC_READ, 1, 5), 1);
    }

    #[test]
    fn bad_rules_are_errors() {
        let mut bad = LinuxDeviceCgroup::default();
        bad.set_access(Some("rwx".to_owned()));
        assert!(matches!(
            v1_writes(&[bad.clone()]),
            Err(DeviceRuleError::Access { .. })
        ));
        bad.set_access(Some("r".to_owned()));
        bad.set_major(Some(1 << 40));
        assert!(matches!(
            ebpf_program(&[bad]),
            Err(DeviceRuleError::Number { .. })
        ));
    }
}
