//! One RUN as both backends see it: the request, the outcome, the errors, the streaming of
//! output, and the guard that cleans up after it whatever happens.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::Spec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::cgroup::{Cgroup, CgroupError};
use crate::protocol::Rootfs;

/// One RUN to execute.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The single description of the sandbox; its `root.path` is replaced by the executor's
    /// mount point.
    pub spec: Spec,
    pub rootfs: Rootfs,
    /// Kill everything and report [`RunOutcome::timed_out`] after this long.
    pub timeout: Option<Duration>,
}

/// How the sandbox's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    #[must_use]
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }
}

/// What a RUN produced besides its streamed output.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: ExitStatus,
    /// `Some(limit)` when the kernel's OOM killer killed a process of the RUN; `limit` is the
    /// memory limit in bytes when one was set.
    pub oom_killed: Option<Option<u64>>,
    /// The RUN hit [`RunRequest::timeout`] and was killed.
    pub timed_out: bool,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time: Option<Duration>,
    /// The upperdir, holding exactly the RUN's changes.
    pub upperdir: PathBuf,
}

/// Error from [`Executor::run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("prepare run state {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run cgroup")]
    Cgroup(#[from] CgroupError),
    #[error("encode spec for {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stream {stream} of the sandbox")]
    Stream {
        stream: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("wait for {program}")]
    Wait {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox could not be set up; the message comes from the init.
    #[error("sandbox setup failed: {message}")]
    Setup { message: String },
    /// The init ended without saying how pid 1 ended.
    #[error("sandbox init {program} ended without a report")]
    NoReport { program: PathBuf },
    /// The zygote (see [`crate::init`]) could not be started or reached.
    #[error("sandbox zygote {program}")]
    Zygote {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("external runtime {program} failed: {message}")]
    External { program: PathBuf, message: String },
    #[error("set up the sandbox's network")]
    Network(#[from] crate::net::NetError),
    #[error("clean up upperdir {path}")]
    Upper {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid seccomp profile")]
    Seccomp(#[from] crate::seccomp::CompileError),
    #[error("mount the rootfs at {target}")]
    Overlay {
        target: PathBuf,
        #[source]
        source: crate::overlay::OverlayError,
    },
    /// One argument or environment string is longer than the kernel passes to a program.
    #[error(
        "{what} is {bytes} bytes, over the kernel's limit of {limit} bytes for one argument \
         (MAX_ARG_STRLEN): put the script in a file (COPY it in, or write it with a heredoc \
         into a file) and run that"
    )]
    ArgumentTooLong {
        what: String,
        bytes: usize,
        limit: usize,
    },
    /// The arguments and environment together are more than `execve` takes.
    #[error(
        "the command and its environment are {bytes} bytes, over the kernel's limit of {limit} \
         bytes (ARG_MAX) for what a program is started with: shorten them, or put the script \
         in a file and run that"
    )]
    ArgumentsTooLong { bytes: usize, limit: usize },
}

pub(crate) fn outcome_from(
    status: ExitStatus,
    timed_out: bool,
    stats: crate::cgroup::CgroupStats,
    rootfs: &Rootfs,
) -> RunOutcome {
    RunOutcome {
        status,
        oom_killed: (stats.oom_kills > 0).then_some(stats.memory_limit_bytes),
        timed_out,
        peak_memory_bytes: stats.peak_memory_bytes,
        cpu_time: stats.cpu_time,
        upperdir: rootfs.upperdir.clone(),
    }
}

/// Error of [`stream_and_wait`], before the program is known.
pub(crate) enum StreamError {
    Stream(&'static str, std::io::Error),
    Cgroup(CgroupError),
}

impl StreamError {
    pub(crate) fn with_program(self, _program: &Path) -> RunError {
        match self {
            Self::Stream(stream, source) => RunError::Stream { stream, source },
            Self::Cgroup(e) => RunError::Cgroup(e),
        }
    }
}

async fn pump<R, W>(reader: Option<R>, sink: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    if let Some(reader) = reader {
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        tokio::io::copy_buf(&mut reader, sink).await?;
        sink.flush().await?;
    }
    Ok(())
}

/// Streams both outputs into the sinks until they end; at the timeout kills the RUN's cgroup
/// instead. Returns whether it timed out.
pub(crate) async fn stream_with_timeout<R1, R2, O, E>(
    child_out: Option<R1>,
    child_err: Option<R2>,
    stdout: &mut O,
    stderr: &mut E,
    timeout: Option<Duration>,
    guard: &RunGuard,
) -> Result<bool, StreamError>
where
    R1: AsyncRead + Unpin,
    R2: AsyncRead + Unpin,
    O: AsyncWrite + Unpin + Send + ?Sized,
    E: AsyncWrite + Unpin + Send + ?Sized,
{
    let work = async {
        let (out, err) = tokio::join!(pump(child_out, stdout), pump(child_err, stderr));
        out.map_err(|e| StreamError::Stream("stdout", e))?;
        err.map_err(|e| StreamError::Stream("stderr", e))?;
        Ok::<(), StreamError>(())
    };
    let timed_out = match timeout {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(result) => {
                result?;
                false
            }
            Err(_) => true,
        },
        None => {
            work.await?;
            false
        }
    };
    if timed_out && let Some(cgroup) = &guard.cgroup {
        cgroup.kill_all().map_err(StreamError::Cgroup)?;
    }
    Ok(timed_out)
}

/// Owns a RUN's cgroup and state dir: dropping it (a cancelled run) kills and removes them.
#[derive(Debug)]
pub(crate) struct RunGuard {
    /// The run's own state dir, for backends that need one.
    pub(crate) dir: Option<PathBuf>,
    pub(crate) cgroup: Option<Cgroup>,
    /// A container the external runtime may still know.
    pub(crate) external: Option<ExternalContainer>,
}

impl RunGuard {
    fn cleanup(&mut self) -> Result<(), RunError> {
        if let Some(container) = self.external.take() {
            container.delete();
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill_all()?;
            cgroup.remove()?;
        }
        if let Some(dir) = self.dir.take() {
            let rootfs = dir.join("rootfs");
            if crate::upper::is_mount_point(&rootfs) {
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            }
            // Never delete through a mounted rootfs: that would write whiteouts into the upperdir.
            if crate::upper::is_mount_point(&rootfs) {
                return Err(RunError::Prepare {
                    path: rootfs,
                    source: std::io::Error::from_raw_os_error(libc::EBUSY),
                });
            }
            // The external backend's run directory is a tmpfs of its own.
            if crate::upper::is_mount_point(&dir) {
                let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
            }
            match fs_err::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RunError::Prepare {
                        path: dir,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<(), RunError> {
        self.cleanup()
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        // Cancellation path: errors have nowhere to go, and the next start's stale cleanup
        // retries whatever is left.
        let _ = self.cleanup();
    }
}

/// A container of an external OCI runtime: its program, its state directory (`--root`) and
/// the container's name.
#[derive(Debug, Clone)]
pub(crate) struct ExternalContainer {
    pub(crate) program: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) name: String,
}

impl ExternalContainer {
    /// Deletes the container, killing whatever runs in it (the OCI runtime command line's
    /// `delete --force`); an error means it is gone already.
    pub(crate) fn delete(&self) {
        let _ = std::process::Command::new(&self.program)
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
