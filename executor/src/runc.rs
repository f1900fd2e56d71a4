//! The external backend: an OCI bundle whose `config.json` is the RUN's spec, run by `runc run`.
//!
//! Differences from the built-in runtime, all of the runc CLI's making: the rootfs overlay is
//! mounted in the host's mount namespace for the duration of the run, and runc reports a death
//! by signal as exit code 128+signal, which this backend maps back to a signal.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use nix::mount::MntFlags;
use oci_spec::runtime::RootBuilder;
use tokio::io::AsyncWrite;

use crate::cgroup::Cgroup;
use crate::run::{
    ExitStatus, ExternalContainer, RunError, RunGuard, RunOutcome, RunRequest, outcome_from,
};

/// runc's own state directory for the container of one run: inside the run's directory, on
/// the tmpfs the runtime mounts there, because runc keeps the whole config (the process's
/// environment included) in its state.
fn runc_root(run_dir: &Path) -> PathBuf {
    run_dir.join("runc")
}

/// The runc container `name` of the run whose directory is `run_dir`.
pub(crate) fn container(program: &Path, run_dir: &Path, name: &str) -> ExternalContainer {
    ExternalContainer {
        program: program.to_path_buf(),
        root: runc_root(run_dir),
        name: name.to_owned(),
    }
}

/// Mount points of `spec` missing from the rootfs at `root`, with their missing parents,
/// relative to `root`: what runc will create, and what must not stay in the upperdir.
fn missing_mount_points(root: &Path, request: &RunRequest) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    for m in request.spec.mounts().as_deref().unwrap_or_default() {
        let Ok(resolved) = crate::mounts::secure_join(root, m.destination()) else {
            continue;
        };
        let Ok(rel) = resolved.strip_prefix(root) else {
            continue;
        };
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            if let Component::Normal(name) = component {
                prefix.push(name);
                if !root.join(&prefix).exists() && !missing.contains(&prefix) {
                    missing.push(prefix.clone());
                }
            }
        }
    }
    missing
}

#[allow(clippy::too_many_arguments)] // the run's pieces, threaded through from Executor::run
pub(crate) async fn run<O, E>(
    program: &Path,
    name: &str,
    request: &RunRequest,
    dir: &Path,
    guard: &mut RunGuard,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<RunOutcome, RunError>
where
    O: AsyncWrite + Unpin + Send + ?Sized,
    E: AsyncWrite + Unpin + Send + ?Sized,
{
    let root = dir.join("rootfs");
    let rootfs = &request.rootfs;
    let overlay = crate::overlay::Overlay {
        lowerdirs: &rootfs.lowerdirs,
        upper: Some((&rootfs.upperdir, &rootfs.workdir)),
    };
    crate::overlay::mount(&root, &overlay).map_err(|e| RunError::Overlay {
        target: root.clone(),
        source: e,
    })?;
    let created = missing_mount_points(&root, request);

    let mut spec = request.spec.clone();
    let readonly = spec.root().as_ref().and_then(|r| r.readonly());
    let mut builder = RootBuilder::default().path(&root);
    if let Some(readonly) = readonly {
        builder = builder.readonly(readonly);
    }
    spec.set_root(Some(builder.build().map_err(|e| RunError::External {
        program: program.to_path_buf(),
        message: e.to_string(),
    })?));
    if let Some(linux) = spec.linux_mut() {
        // Relative: runc puts it under its own cgroup for each controller, the same place the
        // executor made the RUN's cgroup.
        linux.set_cgroups_path(Some(Path::new(&guard_parent(guard)).join(name)));
    }
    let config = dir.join("config.json");
    let text = serde_json::to_vec_pretty(&spec).map_err(|source| RunError::Encode {
        path: config.clone(),
        source,
    })?;
    fs_err::write(&config, text).map_err(|source| RunError::Prepare {
        path: config.clone(),
        source,
    })?;

    let mut child = tokio::process::Command::new(program)
        .arg("--root")
        .arg(runc_root(dir))
        .args(["run", "--keep", "--bundle"])
        .arg(dir)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let child_out = child.stdout.take();
    let child_err = child.stderr.take();
    let timed_out = crate::run::stream_with_timeout(
        child_out,
        child_err,
        stdout,
        stderr,
        request.timeout,
        guard,
    )
    .await
    .map_err(|e| e.with_program(program))?;
    let status = child.wait().await.map_err(|source| RunError::Wait {
        program: program.to_path_buf(),
        source,
    })?;
    let stats = guard.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default();
    container(program, dir, name).delete();
    let _ = nix::mount::umount2(&root, MntFlags::MNT_DETACH);
    let status = match status.code() {
        Some(code) if code > 128 && code <= 128 + 64 => ExitStatus::Signaled(code - 128),
        Some(code) => ExitStatus::Exited(code),
        None if timed_out => ExitStatus::Signaled(libc::SIGKILL),
        None => {
            return Err(RunError::External {
                program: program.to_path_buf(),
                message: format!("runc itself ended with {status}"),
            });
        }
    };
    crate::upper::remove_mount_stubs(rootfs, &created)
        .map_err(|(path, source)| RunError::Upper { path, source })?;
    Ok(outcome_from(status, timed_out, stats, rootfs))
}

/// The name of the parent cgroup, taken from the RUN's own cgroup directory.
fn guard_parent(guard: &RunGuard) -> String {
    guard
        .cgroup
        .as_ref()
        .and_then(|c| c.dirs().first())
        .and_then(|d| d.parent())
        .and_then(|p| p.file_name())
        .map_or_else(|| "hoist".to_owned(), |n| n.to_string_lossy().into_owned())
}
