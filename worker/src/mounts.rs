//! `RUN --mount`: what each mount of an exec op becomes on this machine before the sandbox
//! starts. Every source is a host path that the sandbox binds (or a tmpfs it makes), so both
//! backends take them as plain spec mounts; what they leave in the upperdir as mount points
//! is removed from the layer by the executor.
//!
//! - bind: the input's files under `source`: a copy of the context's selected files, or a view
//!   of a stage's or image's layers (read-only, or over a throwaway upperdir with `rw`).
//! - cache: a directory under `cache-mounts/` in the state root, kept across builds (see
//!   [`CacheMounts`]).
//! - tmpfs: made by the sandbox itself.
//! - secret: a file on a tmpfs that this module mounts on the host for the step alone, so a
//!   secret never touches the disk; or a variable of the process.
//! - ssh: a socket that forwards to the agent, owned and moded as the mount asks, so the
//!   agent's own socket keeps its permissions.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hoist_cache::context::{self, Origin};
use hoist_cache::copy::{self, CopyOptions};
use hoist_executor::oci_spec::runtime::{Mount as SpecMount, MountBuilder};
use hoist_solver::op::{CopyFrom, ExecOp, Mount};

use crate::cache_mounts::{CacheLease, CacheMount};
use crate::error::{WorkerError, io_err};
use crate::file::View;
use crate::{BuildWorker, Output};
use hoist_solver::progress::Stream;
use hoist_solver::scheduler::VertexContext;

/// What a RUN's mounts became: spec mounts for the sandbox, variables for its process, and
/// what must live until it ends.
#[derive(Default)]
pub(crate) struct Prepared {
    pub(crate) mounts: Vec<SpecMount>,
    pub(crate) env: Vec<String>,
    /// Dropped after the RUN, in order: views are unmounted, copies removed, cache leases
    /// released, agent proxies stopped.
    held: Vec<Held>,
}

// Each is held for what its drop does.
#[allow(dead_code)]
enum Held {
    View(View),
    Dir(tempfile::TempDir),
    Cache(CacheLease),
    Tmpfs(HostTmpfs),
    Proxy(tokio::task::JoinHandle<()>),
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for held in self.held.drain(..).rev() {
            match held {
                Held::Proxy(task) => task.abort(),
                other => drop(other),
            }
        }
    }
}

impl BuildWorker {
    pub(crate) async fn prepare_mounts(
        &self,
        exec: &ExecOp,
        inputs: &[Output],
        ctx: &VertexContext,
    ) -> Result<Prepared, WorkerError> {
        let mut prepared = Prepared::default();
        let mut secret_files = Vec::new();
        let mut first_agent = None;
        for mount in &exec.mounts {
            match mount {
                Mount::Bind {
                    input,
                    source,
                    target,
                    read_write,
                    from,
                } => {
                    let host = tokio::task::block_in_place(|| {
                        self.bind_source(inputs, *input, source, *read_write, from.as_ref())
                    })?;
                    prepared.mounts.push(bind(&host.path, target, !read_write)?);
                    prepared.held.push(host.held);
                }
                Mount::Cache {
                    id,
                    target,
                    sharing,
                    seed,
                    source,
                    read_only,
                    mode,
                    uid,
                    gid,
                } => {
                    let seed = match seed {
                        Some(i) => Some(
                            inputs
                                .get(*i)
                                .ok_or(WorkerError::Internal("a cache mount's seed is missing"))?
                                .chain()?
                                .to_vec(),
                        ),
                        None => None,
                    };
                    let mut mount = CacheMount {
                        id: id.clone(),
                        seed,
                        source: source.clone(),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        restore: None,
                    };
                    // A mount this root has never had starts from what `--cache-from`
                    // exported of it (`--cache-to …,mounts=true`), when it has it.
                    if mount.seed.is_none()
                        && let Some(imported) = &self.imported
                        && !self.cache_mounts().exists(&mount)
                        && let Some((blob, diff_id)) = imported.mount(id).await
                    {
                        match self.state.fetch_blobs(std::slice::from_ref(&blob)).await {
                            Ok(()) => {
                                ctx.log(
                                    Stream::Stdout,
                                    format!(
                                        "cache mount {id:?} restored from the imported cache \
                                         ({} bytes)\n",
                                        blob.size()
                                    )
                                    .as_bytes(),
                                );
                                mount.restore = Some((blob, diff_id));
                            }
                            Err(e) => ctx.log(
                                Stream::Stderr,
                                format!(
                                    "warning: cache mount {id:?} starts empty: {}\n",
                                    crate::exchange::error_text(&e)
                                )
                                .as_bytes(),
                            ),
                        }
                    }
                    let lease = self.cache_mounts().lease(mount, *sharing).await?;
                    prepared
                        .mounts
                        .push(bind(lease.path(), target, *read_only)?);
                    prepared.held.push(Held::Cache(lease));
                }
                Mount::Tmpfs { target, size } => {
                    let mut options = vec!["nosuid".to_owned(), "nodev".to_owned()];
                    if let Some(size) = size {
                        options.push(format!("size={size}"));
                    }
                    prepared.mounts.push(
                        MountBuilder::default()
                            .destination(target)
                            .typ("tmpfs")
                            .source("tmpfs")
                            .options(options)
                            .build()
                            .map_err(|_| WorkerError::Internal("a tmpfs mount spec"))?,
                    );
                }
                Mount::Secret {
                    id,
                    target,
                    env,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(bytes) = self.session.secret(id).await? else {
                        if *required {
                            return Err(WorkerError::SecretMissing { id: id.clone() });
                        }
                        continue;
                    };
                    if let Some(var) = env {
                        let value = String::from_utf8(bytes.clone())
                            .map_err(|_| WorkerError::SecretNotText { id: id.clone() })?;
                        prepared.env.push(format!("{var}={value}"));
                    }
                    if let Some(target) = target {
                        secret_files.push((target.clone(), bytes, *mode, *uid, *gid));
                    }
                }
                Mount::Ssh {
                    id,
                    target,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    let Some(agent) = self.session.ssh_agent(id) else {
                        if *required {
                            return Err(WorkerError::SshMissing { id: id.clone() });
                        }
                        continue;
                    };
                    let dir = self.state.scratch()?;
                    let socket = dir.path().join("agent.sock");
                    let task = agent_proxy(&socket, agent, *mode, *uid, *gid)?;
                    // Held in this order, dropped in reverse: the proxy stops, then its
                    // directory goes.
                    prepared.held.push(Held::Dir(dir));
                    prepared.held.push(Held::Proxy(task));
                    prepared.mounts.push(bind(&socket, target, false)?);
                    first_agent.get_or_insert_with(|| target.clone());
                }
            }
        }
        if !secret_files.is_empty() {
            let dir = self.state.scratch()?;
            let tmpfs = HostTmpfs::mount(&dir.path().join("secrets"), &secret_files)?;
            for (i, (target, ..)) in secret_files.iter().enumerate() {
                prepared
                    .mounts
                    .push(bind(&tmpfs.path.join(i.to_string()), target, true)?);
            }
            // Dropped in reverse: the tmpfs is unmounted before its directory goes.
            prepared.held.push(Held::Dir(dir));
            prepared.held.push(Held::Tmpfs(tmpfs));
        }
        // A mount inside another's target goes after it, whatever the Dockerfile's order (as
        // BuildKit sorts them); the sort is stable, so equal depths keep their order.
        prepared
            .mounts
            .sort_by_key(|m| m.destination().components().count());
        // As BuildKit: the first agent is the process's agent unless the RUN names another.
        if let Some(target) = first_agent
            && !exec.env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK")
        {
            prepared.env.push(format!("SSH_AUTH_SOCK={target}"));
        }
        Ok(prepared)
    }

    /// The host path a bind mount shows, with what keeps it there.
    fn bind_source(
        &self,
        inputs: &[Output],
        input: usize,
        source: &str,
        read_write: bool,
        from: Option<&CopyFrom>,
    ) -> Result<HostPath, WorkerError> {
        let input = inputs
            .get(input)
            .ok_or(WorkerError::Internal("a bind mount's input is missing"))?;
        match input {
            Output::Context(selection, context) => {
                // A copy of exactly the files that were hashed into the key: the context
                // itself may hold ignored files, and may change while the step runs. The
                // selection already lays out the source as COPY would: a directory's
                // contents at the top, a lone file by its name.
                let dir = self.state.scratch()?;
                let root = dir.path().join("context");
                fs_err::create_dir(&root).map_err(io_err("create", &root))?;
                let empty = dir.path().join("empty");
                fs_err::create_dir(&empty).map_err(io_err("create", &empty))?;
                copy::copy_selection(
                    context.root(),
                    selection,
                    "/",
                    &empty,
                    &root,
                    CopyOptions {
                        chown: None,
                        chmod: None,
                    },
                )?;
                let path = match selection.entries.as_slice() {
                    [one] if one.named && one.kind != context::EntryKind::Dir => {
                        root.join(&one.dest)
                    }
                    _ => root,
                };
                // A private copy: with `rw` the step writes to it, and it goes away.
                Ok(HostPath {
                    path,
                    held: Held::Dir(dir),
                })
            }
            Output::Chain(chain) => {
                let layers = self.state.snapshot_dirs(chain)?;
                let view = if read_write {
                    View::writable(&self.state, &layers)?
                } else {
                    View::new(&self.state, &layers)?
                };
                let origin = match from {
                    Some(CopyFrom::Stage(name)) => Origin::Stage(name.clone()),
                    Some(CopyFrom::Image(reference)) => Origin::Image(reference.clone()),
                    Some(CopyFrom::Context(name)) => Origin::NamedContext(name.clone()),
                    Some(CopyFrom::Remote(source)) => Origin::Remote(source.clone()),
                    None => {
                        return Err(WorkerError::Internal(
                            "a bind of a filesystem names no stage or image",
                        ));
                    }
                };
                let path =
                    hoist_executor::secure_join(view.path(), Path::new(source)).map_err(|e| {
                        WorkerError::Mount {
                            what: format!("bind source {source:?}"),
                            reason: e.to_string(),
                        }
                    })?;
                if fs_err::symlink_metadata(&path).is_err() {
                    return Err(WorkerError::Context(context::ContextError::NotFound {
                        path: source.to_owned(),
                        origin,
                    }));
                }
                Ok(HostPath {
                    path,
                    held: Held::View(view),
                })
            }
        }
    }
}

struct HostPath {
    path: PathBuf,
    held: Held,
}

fn bind(source: &Path, target: &str, read_only: bool) -> Result<SpecMount, WorkerError> {
    let mut options = vec!["rbind".to_owned()];
    if read_only {
        options.push("ro".to_owned());
    }
    MountBuilder::default()
        .destination(target)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
        .map_err(|_| WorkerError::Internal("a bind mount spec"))
}

/// A small tmpfs mounted on the host for one step's secret files, so that they never reach
/// a disk; unmounted when dropped.
struct HostTmpfs {
    path: PathBuf,
}

impl HostTmpfs {
    fn mount(path: &Path, files: &[(String, Vec<u8>, u32, u32, u32)]) -> Result<Self, WorkerError> {
        fs_err::create_dir(path).map_err(io_err("create", path))?;
        let bytes: usize = files.iter().map(|f| f.1.len()).sum();
        // Pages for the data plus room for the inodes; a secret is at most 500 KiB.
        let size = bytes + 64 * 1024 * (files.len() + 1);
        // Only root passes the directory; each file carries the mount's owner and mode.
        let data = std::ffi::CString::new(format!("mode=0711,size={size}"))
            .map_err(|_| WorkerError::Internal("tmpfs options"))?;
        rustix::mount::mount(
            "tmpfs",
            path,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOEXEC,
            data.as_c_str(),
        )
        .map_err(|e| io_err("mount a tmpfs for secrets at", path)(e.into()))?;
        let tmpfs = Self {
            path: path.to_path_buf(),
        };
        for (i, (_, data, mode, uid, gid)) in files.iter().enumerate() {
            let file = path.join(i.to_string());
            fs_err::write(&file, data).map_err(io_err("write", &file))?;
            std::os::unix::fs::chown(&file, Some(*uid), Some(*gid))
                .map_err(io_err("chown", &file))?;
            fs_err::set_permissions(&file, std::fs::Permissions::from_mode(*mode))
                .map_err(io_err("chmod", &file))?;
        }
        Ok(tmpfs)
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Listens at `socket` (with the mount's owner and mode) and forwards every connection to
/// the agent at `agent`, until the returned task is aborted.
fn agent_proxy(
    socket: &Path,
    agent: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    let listener = tokio::net::UnixListener::bind(socket).map_err(io_err("listen at", socket))?;
    std::os::unix::fs::chown(socket, Some(uid), Some(gid)).map_err(io_err("chown", socket))?;
    fs_err::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", socket))?;
    Ok(tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let agent = agent.clone();
            connections.spawn(async move {
                // An agent that went away ends this connection only; the client sees EOF.
                if let Ok(mut upstream) = tokio::net::UnixStream::connect(&agent).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    }))
}
