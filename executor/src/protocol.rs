//! What the runtime and the re-executed init say to each other: the request of one RUN and
//! the init's report. Both sides use this module, and neither the other.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The rootfs of a RUN: an overlay of read-only snapshots with a fresh, empty upperdir that
/// collects the changes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rootfs {
    /// Snapshot directories, topmost first (overlayfs `lowerdir` order).
    pub lowerdirs: Vec<PathBuf>,
    /// Receives the changes: new and modified files, whiteouts, opaque directories.
    pub upperdir: PathBuf,
    /// overlayfs scratch space on the same filesystem as `upperdir`.
    pub workdir: PathBuf,
}

/// Environment variable that marks a process as the executor's init.
pub(crate) const INIT_ENV: &str = "_HOIST_EXECUTOR_INIT";

/// What the runtime hands the init program on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitConfig {
    pub(crate) spec: Spec,
    /// Host path of the directory the rootfs is assembled on.
    pub(crate) root: PathBuf,
    /// The overlay for `root`; `None` means `root` already is the rootfs.
    pub(crate) overlay: Option<Rootfs>,
    /// Files to write to in order to join the RUN's cgroup, before anything else
    /// ([`crate::cgroup::Cgroup::join_files`]).
    pub(crate) cgroup_join: Vec<PathBuf>,
    /// Compiled seccomp filters, installed in order, last thing before `execve`.
    pub(crate) seccomp: Vec<Vec<crate::seccomp::Instruction>>,
    /// The request carries, after the done pipe, a network namespace (with its uplink) for
    /// the RUN to join instead of making one.
    #[serde(default)]
    pub(crate) netns: bool,
}

/// How pid 1 ended, written by the init for the runtime.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum InitOutcome {
    Exited(i32),
    Signaled(i32),
    SetupFailed(String),
}

/// What the init reports once pid 1 has ended.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitReport {
    pub(crate) outcome: InitOutcome,
    /// Mount points that setup had to create in the rootfs (relative to it), for the runtime to
    /// remove from the upperdir so they do not show up as changes.
    pub(crate) created: Vec<PathBuf>,
}

/// Largest request the zygote accepts; it reads into a buffer of this size.
pub(crate) const ZYGOTE_MESSAGE_MAX: usize = 4 << 20;
