//! The RUN sandbox: runs one Dockerfile RUN step in its own namespaces and cgroup, on an overlay
//! rootfs, and reports what happened.
//!
//! # Data flow
//!
//! ```text
//! SpecOptions ──spec::build_spec──► oci_spec Spec ─┐   (user::resolve_user turns USER into uid/gid)
//! Rootfs { lowerdirs, upperdir, workdir } ─────────┼─► RunRequest ──Executor::run──► RunOutcome
//! stdout/stderr sinks (AsyncWrite) ◄── streamed ───┘        │                      status, OOM,
//!                                                           │                      peak memory,
//!                                                           │                      CPU, upperdir
//!                      ┌────────────────────────────────────┴────────────────────┐
//!                      │ Backend::Builtin: request to the zygote (init) over a     │
//!                      │   unix socket; it forks an init per RUN                   │
//!                      │ Backend::External: bundle + `runc run` (runc)             │
//!                      └─────────────────────────────────────────────────────────┘
//! ```
//!
//! # Principal types
//!
//! - [`Executor`] (with [`ExecutorConfig`] and [`Backend`]): one per process. On creation it picks
//!   the cgroup hierarchy ([`cgroup::CgroupRoot`]) and removes state left by dead hoist processes.
//!   [`Executor::run`] makes the RUN's [`cgroup::Cgroup`] (and, for runc, a bundle dir), runs the
//!   spec, streams output, and on every outcome (including a dropped, that is cancelled, future)
//!   kills the cgroup and removes what it made. A built-in RUN leaves nothing on disk but its
//!   cgroup: its mounts live and die in its own mount namespace.
//! - [`RunRequest`]: the [`oci_spec::runtime::Spec`], the [`Rootfs`] and a timeout. The spec is
//!   the single description of the sandbox for both backends.
//! - [`RunOutcome`]: [`ExitStatus`], OOM kill with its limit, timeout, peak memory, CPU time and
//!   the upperdir. The upperdir holds exactly the RUN's changes: mount points that setup had to
//!   create are removed again (module `upper`).
//! - `protocol` (private): what the runtime sends the re-executed init and what the init
//!   reports back, shared by both and depending on neither; `run` (private): the request,
//!   outcome, errors and cleanup guard of one RUN, shared by both backends.
//! - [`init`]: the container init of the built-in runtime. The hoist binary is re-executed once
//!   per [`Executor`] as a single-threaded *zygote* (as `runc init` re-executes runc), which
//!   forks one init per RUN; so the multithreaded caller never runs code between `fork` and
//!   `exec` itself, and the cost of loading the binary is not paid per RUN.
//! - [`seccomp`]: Docker's default profile and its compilation to BPF (a binary search
//!   over syscall numbers).
//! - [`cgroup`] and [`user`]: the per-RUN cgroup (v2, or v1 on hybrid hosts) and `USER`
//!   resolution against the image's passwd and group files.
//! - [`spec`]: Docker's defaults (capabilities, masked and read-only paths, mounts, rlimits).
//!
//! `unsafe` lives in the private `sys` module only.

pub use oci_spec;

pub mod cgroup;
pub mod devices;
pub mod init;
mod mounts;
pub mod net;
pub mod overlay;
mod protocol;
mod run;
mod runc;
mod runtime;
pub mod seccomp;
pub mod spec;
mod sys;
mod upper;
pub mod user;

pub use mounts::{SecureJoinError, secure_join};
pub use protocol::Rootfs;
pub use run::{ExitStatus, RunError, RunOutcome, RunRequest};
pub use runtime::{Backend, Executor, ExecutorConfig, NewExecutorError};
