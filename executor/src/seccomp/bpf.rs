//! Classic BPF for seccomp: the instruction, argument comparisons, and the filter program,
//! which dispatches on the architecture and then runs a binary search over ranges of syscall
//! numbers rather than a chain of comparisons.

use std::collections::BTreeMap;

use oci_spec::runtime::LinuxSeccompOperator;
use serde::{Deserialize, Serialize};

use super::CompileError;
use super::arch::{Table, X32_SYSCALL_BIT};

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

pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// Longest program the kernel accepts (BPF_MAXINSNS).
const MAX_PROGRAM_LEN: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h).
pub(crate) const LD_W_ABS: u16 = 0x20;
pub(crate) const ALU_AND_K: u16 = 0x54;
pub(crate) const JMP_JA: u16 = 0x05;
pub(crate) const JMP_JEQ_K: u16 = 0x15;
pub(crate) const JMP_JGT_K: u16 = 0x25;
pub(crate) const JMP_JGE_K: u16 = 0x35;
pub(crate) const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
pub(crate) const NR_OFFSET: u32 = 0;
pub(crate) const ARCH_OFFSET: u32 = 4;
pub(crate) fn arg_offset(index: u8) -> u32 {
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
pub(crate) struct Condition {
    index: u8,
    op: Op,
    value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

pub(crate) fn condition(
    arg: &oci_spec::runtime::LinuxSeccompArg,
) -> Result<Condition, CompileError> {
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
            let mut code = jump_if(JMP_JGE_K, start, lower.len())?;
            code.extend(lower);
            code.extend(upper);
            Ok(code)
        }
    }
}

/// A filter's rules for one syscall number: `None` when every call matches, else the
/// alternative condition lists (one must hold).
pub(crate) type Rules = BTreeMap<u32, Option<Vec<Vec<Condition>>>>;

/// The rules of one architecture.
#[derive(Debug)]
pub(crate) struct Section<'a> {
    pub(crate) table: &'a Table,
    pub(crate) rules: Rules,
}

/// Code that skips `skip` instructions when the comparison `code` (such as `jge k`) holds and
/// falls through otherwise, through an unconditional jump when `skip` is too far for a
/// conditional one.
fn jump_if(code: u16, k: u32, skip: usize) -> Result<Vec<Instruction>, u16> {
    Ok(match u8::try_from(skip) {
        Ok(jt) => vec![Instruction { code, jt, jf: 0, k }],
        Err(_) => vec![
            Instruction {
                code,
                jt: 0,
                jf: 1,
                k,
            },
            stmt(JMP_JA, u32::try_from(skip).map_err(|_| u16::MAX)?),
        ],
    })
}

/// The search over one architecture's numbers (the accumulator holds the syscall number).
fn section_code<'a>(rules: &'a Rules, matched: u32, missed: u32) -> Result<Vec<Instruction>, u16> {
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
    search_code(&ranges, matched, missed)
}

/// One filter: in each section, its rules return `matched` and other numbers `missed`; a call
/// of an architecture no section covers kills the process, as libseccomp's default for a
/// foreign architecture does.
///
/// Layout: the architecture is compared with each distinct audit value in turn, each hit
/// jumping to that value's part. x86_64 and x32 share theirs, which splits on the x32 bit:
/// numbers below it are x86_64's, the others x32's, and a half that no section covers kills.
pub(crate) fn filter(
    sections: &[Section<'_>],
    matched: u32,
    missed: u32,
) -> Result<Vec<Instruction>, u16> {
    let kill = || vec![stmt(RET_K, RET_KILL_PROCESS)];
    let mut audits: Vec<u32> = Vec::new();
    for s in sections {
        if !audits.contains(&s.table.audit) {
            audits.push(s.table.audit);
        }
    }
    // Each audit value's part, after the load of the syscall number.
    let mut parts = Vec::new();
    for &audit in &audits {
        let find = |x32: bool| {
            sections
                .iter()
                .find(|s| s.table.audit == audit && s.table.x32 == x32)
        };
        let native = match find(false) {
            Some(s) => section_code(&s.rules, matched, missed)?,
            None => kill(),
        };
        let mut part = vec![stmt(LD_W_ABS, NR_OFFSET)];
        if audit_has_x32(audit) {
            let x32_code = match find(true) {
                Some(s) => section_code(&s.rules, matched, missed)?,
                None => kill(),
            };
            part.extend(jump_if(JMP_JGE_K, X32_SYSCALL_BIT, native.len())?);
            part.extend(native);
            part.extend(x32_code);
        } else {
            part.extend(native);
        }
        parts.push(part);
    }
    // The dispatch: for each audit value, `jeq` falls into an unconditional jump to its part
    // (conditional jumps reach only 255 instructions); no match falls through to the kill.
    let mut code = vec![stmt(LD_W_ABS, ARCH_OFFSET)];
    let mut target = 1 + 2 * audits.len() + 1;
    for (i, &audit) in audits.iter().enumerate() {
        code.push(Instruction {
            code: JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: audit,
        });
        let after = code.len() + 1;
        code.push(stmt(
            JMP_JA,
            u32::try_from(target - after).map_err(|_| u16::MAX)?,
        ));
        target += parts[i].len();
    }
    code.extend(kill());
    for part in parts {
        code.extend(part);
    }
    if code.len() > MAX_PROGRAM_LEN {
        return Err(u16::try_from(code.len()).unwrap_or(u16::MAX));
    }
    Ok(code)
}

/// Whether calls with this audit value may carry the x32 bit: x86_64's, whose numbers above
/// it are x32 calls and must never be read as x86_64 ones.
fn audit_has_x32(audit: u32) -> bool {
    audit == super::arch::AUDIT_ARCH_X86_64
}
