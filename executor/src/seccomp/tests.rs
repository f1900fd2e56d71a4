//! The compiler checked against the kernel's rules, run by an interpreter of the programs.

use super::arch::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64};
use super::bpf::{
    ALU_AND_K, JMP_JA, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K, LD_W_ABS, RET_K, RET_KILL_PROCESS,
};
use super::*;

/// The x86_64 number of `name`.
fn nr(name: &str) -> u32 {
    table(Arch::ScmpArchX86_64).number(name).unwrap()
}

fn table(arch: Arch) -> &'static arch::Table {
    arch::table(arch).unwrap()
}

#[test]
fn every_default_name_is_known_on_some_x86_abi() {
    let tables = [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32].map(table);
    for name in default_allowed() {
        assert!(tables.iter().any(|t| t.number(name).is_some()), "{name}");
    }
    assert_eq!(nr("read"), 0);
    assert_eq!(table(Arch::ScmpArchX86).number("read"), Some(3));
    assert_eq!(table(Arch::ScmpArchX32).number("read"), Some(0x4000_0000));
    assert_eq!(table(Arch::ScmpArchX86_64).number("no_such_syscall"), None);
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
    verdict_on(programs, AUDIT_ARCH_X86_64, nr, args)
}

fn verdict_on(programs: &[Vec<Instruction>], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut result = None::<u32>;
    for program in programs.iter().rev() {
        let ret = run(program, arch, nr, args);
        let action = |r: u32| (r & 0xffff_0000) as i32;
        if result.is_none_or(|best| action(ret) < action(best)) {
            result = Some(ret);
        }
    }
    result.unwrap()
}

const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;

/// What Docker's profile answers for syscall `name` without argument rules, on any ABI.
fn expected(name: Option<&str>) -> Option<u32> {
    match name {
        Some("clone3") => Some(ENOSYS),
        // Decided by their arguments: checked on their own below.
        Some("personality" | "clone" | "socket") => None,
        Some(n) if default_allowed().contains(&n) => Some(RET_ALLOW),
        _ => Some(EPERM),
    }
}

fn name_of(table: &arch::Table, n: u32) -> Option<&'static str> {
    default_allowed()
        .into_iter()
        .chain(["clone3", "personality", "clone", "socket"])
        .find(|name| table.number(name) == Some(n))
}

#[test]
fn default_profile_decides_every_syscall_number_as_docker_does() {
    let programs = compile(&default_profile().unwrap()).unwrap();
    assert_eq!(programs.len(), 2);
    // A binary search, not a chain: a few hundred instructions per ABI at most.
    assert!(programs[0].len() < 1200, "{}", programs[0].len());
    // x86_64, then i386 (32-bit programs, or `int 0x80`), then x32 numbers: each by its own
    // table, as Docker's profile (x86_64 with the sub-architectures x86 and x32) decides.
    for (arch, audit, numbers) in [
        (Arch::ScmpArchX86_64, AUDIT_ARCH_X86_64, 0..1024),
        (Arch::ScmpArchX86, AUDIT_ARCH_I386, 0..1024),
        (
            Arch::ScmpArchX32,
            AUDIT_ARCH_X86_64,
            0x4000_0000..0x4000_0400,
        ),
    ] {
        let table = table(arch);
        for n in numbers {
            let name = name_of(table, n);
            let Some(want) = expected(name) else {
                continue;
            };
            assert_eq!(
                verdict_on(&programs, audit, n, [0; 6]),
                want,
                "{arch:?} syscall {n} ({name:?})"
            );
        }
        let nr = |name| table.number(name).unwrap();
        for persona in [0, 8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
            let args = [persona, 0, 0, 0, 0, 0];
            assert_eq!(
                verdict_on(&programs, audit, nr("personality"), args),
                RET_ALLOW
            );
        }
        for persona in [1, 0x1_0000_0000, 0xffff_ffff_0000_0000] {
            let args = [persona, 0, 0, 0, 0, 0];
            assert_eq!(verdict_on(&programs, audit, nr("personality"), args), EPERM);
        }
        let clone = |flags| verdict_on(&programs, audit, nr("clone"), [flags, 0, 0, 0, 0, 0]);
        assert_eq!(clone(0x11), RET_ALLOW, "{arch:?}"); // SIGCHLD | CLONE_VM-less fork
        assert_eq!(clone(0x003d_0f00), RET_ALLOW); // a thread
        assert_eq!(clone(0x2000_0000 | 0x11), EPERM); // CLONE_NEWPID
        assert_eq!(clone(0x1_0000_0000 | 0x11), RET_ALLOW); // high bits are not flags
        if let Some(socket) = table.number("socket") {
            let family = |f| verdict_on(&programs, audit, socket, [f, 1, 0, 0, 0, 0]);
            assert_eq!(family(2), RET_ALLOW); // AF_INET
            assert_eq!(family(40), EPERM); // AF_VSOCK
        }
    }
    // The calls 32-bit programs make, by name.
    let i386 = table(Arch::ScmpArchX86);
    for name in [
        "socketcall",
        "_llseek",
        "mmap2",
        "fstat64",
        "getuid32",
        "clock_gettime64",
    ] {
        let n = i386.number(name).unwrap();
        assert_eq!(
            verdict_on(&programs, AUDIT_ARCH_I386, n, [0; 6]),
            RET_ALLOW,
            "{name}"
        );
    }
    // Another architecture (aarch64) is killed.
    assert_eq!(run(&programs[0], 0xc000_00b7, 0, [0; 6]), RET_KILL_PROCESS);
    assert_eq!(run(&programs[1], 0xc000_00b7, 0, [0; 6]), RET_KILL_PROCESS);
}

#[test]
fn a_profile_without_x32_kills_x32_calls() {
    let profile = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .architectures(vec![Arch::ScmpArchX86_64])
        .syscalls(vec![
            rule(&["read"], LinuxSeccompAction::ScmpActAllow)
                .unwrap()
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    let programs = compile(&profile).unwrap();
    assert_eq!(verdict(&programs, 0, [0; 6]), RET_ALLOW);
    assert_eq!(verdict(&programs, 1, [0; 6]), EPERM);
    assert_eq!(verdict(&programs, 0x4000_0000, [0; 6]), RET_KILL_PROCESS);
    assert_eq!(
        run(&programs[0], AUDIT_ARCH_I386, 3, [0; 6]),
        RET_KILL_PROCESS
    );
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
    let table = table(Arch::ScmpArchX86_64);
    let names: Vec<&str> = DEFAULT_ALLOWED
        .iter()
        .copied()
        .filter(|n| table.number(n).is_some_and(|nr| nr % 2 == 0))
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
        let allowed = names.iter().any(|name| table.number(name) == Some(n));
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

#[test]
fn the_x86_64_table_agrees_with_libc() {
    let table = table(Arch::ScmpArchX86_64);
    for (name, nr) in [
        ("read", libc::SYS_read),
        ("clone3", libc::SYS_clone3),
        ("personality", libc::SYS_personality),
        ("futex_waitv", libc::SYS_futex_waitv),
        ("fchmodat2", libc::SYS_fchmodat2),
        ("mseal", libc::SYS_mseal),
        ("arch_prctl", libc::SYS_arch_prctl),
    ] {
        assert_eq!(table.number(name).map(i64::from), Some(nr), "{name}");
    }
}
