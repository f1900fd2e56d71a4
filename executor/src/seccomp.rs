//! Seccomp: compiling the spec's `linux.seccomp` into a classic BPF program that the init
//! installs last, just before `execve`.

use serde::{Deserialize, Serialize};

/// One classic BPF instruction, as `struct sock_filter` lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
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
    /// Not implemented yet.
    #[error("seccomp profiles are not supported by the built-in runtime yet")]
    Unsupported,
}

/// Compiles an OCI seccomp profile into a BPF program for the init to install.
///
/// # Errors
/// Always, for now.
pub fn compile(
    _profile: &oci_spec::runtime::LinuxSeccomp,
) -> Result<Vec<Instruction>, CompileError> {
    Err(CompileError::Unsupported)
}
