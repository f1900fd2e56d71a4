//! The worker: each vertex's content key and work, dispatched by op kind to the modules
//! [`crate::source`], [`crate::exec`] and [`crate::file`].

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hoist_cache::context::{self, Selection};
use hoist_cache::{CompressionOptions, DiffOptions};
use hoist_executor::Executor;
use hoist_executor::spec::Limits;
use hoist_registry::Client;
use tokio_util::sync::CancellationToken;

use hoist_solver::graph::{Vertex, VertexDigest};
use hoist_solver::op::{Op, SourceOp};
use hoist_solver::progress::Stream;
use hoist_solver::scheduler::{BoxError, BoxFuture, ContextFiles, VertexContext, Worker};

use crate::context::ContextSource;
use crate::error::WorkerError;
use crate::{Layer, State};

/// What a vertex produced.
#[derive(Clone, Debug)]
pub enum Output {
    /// A filesystem: its layers, bottom first.
    Chain(Arc<Vec<Layer>>),
    /// Files of a build context (the main one or a named one), for the COPY that selected
    /// them, with the context they are read from.
    Context(Arc<Selection>, Arc<dyn ContextSource>),
}

impl Output {
    pub(crate) fn chain(&self) -> Result<&[Layer], WorkerError> {
        match self {
            Self::Chain(layers) => Ok(layers),
            Self::Context(..) => Err(WorkerError::Internal(
                "a filesystem input is the build context",
            )),
        }
    }
}

/// What keying a context selection took, for the progress log of "load build context".
#[derive(Clone, Copy, Debug)]
pub struct ContextSummary {
    pub files: u64,
    pub bytes: u64,
    /// Files read and hashed (new or changed since the last build); the others were known
    /// by their stat.
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    pub took: std::time::Duration,
}

impl std::fmt::Display for ContextSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[allow(clippy::cast_precision_loss)] // a human-readable size
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "{} files, {:.1} MiB; {} read and hashed ({:.1} MiB), the rest unchanged since they were last hashed; {:.3}s",
            self.files,
            mib(self.bytes),
            self.hashed_files,
            mib(self.hashed_bytes),
            self.took.as_secs_f64()
        )
    }
}

/// Does the work of one build's vertices.
pub struct BuildWorker {
    pub state: Arc<State>,
    pub executor: Arc<Executor>,
    pub registry: Arc<Client>,
    pub context: Arc<dyn ContextSource>,
    /// `--build-context`: the named local contexts and OCI layouts, by name.
    pub named_contexts: crate::named::NamedContexts,
    /// Secrets and SSH agents lent to the build.
    pub session: Arc<dyn crate::Session>,
    /// Proxy build-args, given to every RUN but part of no key.
    pub proxy_env: Vec<(String, String)>,
    pub diff_options: DiffOptions,
    /// cgroup limits of every RUN of the build.
    pub limits: Limits,
    /// Context selections made while computing content keys, by vertex digest, so that the
    /// source's run uses the very files that were hashed instead of walking the context again.
    pub selections: Mutex<HashMap<VertexDigest, Keyed>>,
    /// The build's `--cache-from` caches, for the cache mounts they carry.
    pub imported: Option<crate::exchange::ImportedCache>,
    /// What keying URL and git sources fetched or resolved, by vertex digest, so that the
    /// run uses exactly what was keyed.
    pub remote_keyed: Mutex<HashMap<VertexDigest, crate::source::RemoteKeyed>>,
}

/// A context selection as its content key was computed.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub selection: Arc<Selection>,
    pub summary: ContextSummary,
    /// The content digest of each regular file, by entry index of the selection.
    pub file_digests: Arc<Vec<Option<String>>>,
}

impl std::fmt::Debug for BuildWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildWorker")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl BuildWorker {
    pub(crate) fn cache_mounts(&self) -> crate::cache_mounts::CacheMounts {
        crate::cache_mounts::CacheMounts::new(Arc::clone(&self.state))
    }

    /// Default layer options: gzip at the default level.
    #[must_use]
    pub fn default_diff_options() -> DiffOptions {
        DiffOptions {
            compression: CompressionOptions::default(),
            source_date_epoch: None,
        }
    }
}

impl Worker for BuildWorker {
    type Output = Output;

    fn content_key<'a>(
        &'a self,
        vertex: &'a Vertex,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Option<String>, BoxError>> {
        Box::pin(async move {
            if let Op::Source(op @ (SourceOp::Http { .. } | SourceOp::Git { .. })) = &vertex.op {
                return self.remote_content_key(vertex.digest, op).await;
            }
            let Op::Source(SourceOp::Local {
                name,
                include,
                exclude,
                parents,
            }) = &vertex.op
            else {
                return Ok(None);
            };
            let started = std::time::Instant::now();
            let context = self.context_named(name)?;
            let selection =
                Arc::new(self.select_context(context.as_ref(), include, exclude, *parents)?);
            let hashed = Arc::clone(&selection);
            let keyed = tokio::task::spawn_blocking(move || context.content_key(&hashed))
                .await
                .map_err(|_| WorkerError::Internal("the hashing task panicked"))?
                .map_err(WorkerError::Context)?;
            let read = keyed.hashed;
            let files = selection
                .entries
                .iter()
                .filter(|e| e.kind == context::EntryKind::File);
            let summary = ContextSummary {
                files: files.clone().count() as u64,
                bytes: files.map(|e| e.size).sum(),
                hashed_files: read.files,
                hashed_bytes: read.bytes,
                took: started.elapsed(),
            };
            if let Ok(mut selections) = self.selections.lock() {
                selections.insert(
                    vertex.digest,
                    Keyed {
                        selection,
                        summary,
                        file_digests: Arc::new(keyed.file_digests),
                    },
                );
            }
            Ok(Some(keyed.key))
        })
    }

    fn context_files(&self, vertex: &Vertex) -> Option<ContextFiles> {
        let keyed = self.selections.lock().ok()?.get(&vertex.digest).cloned()?;
        Some(crate::history::context_files(
            &keyed.selection,
            &keyed.file_digests,
        ))
    }

    fn run<'a>(
        &'a self,
        vertex: &'a Vertex,
        inputs: &'a [Output],
        ctx: &'a VertexContext,
    ) -> BoxFuture<'a, Result<Output, BoxError>> {
        Box::pin(async move {
            // An input that an imported cache hit gave has no snapshots yet.
            for input in inputs {
                if let Output::Chain(chain) = input {
                    self.state.materialize(chain).await?;
                }
            }
            let chain = match &vertex.op {
                Op::Source(SourceOp::Scratch) => Vec::new(),
                Op::Source(SourceOp::Image {
                    reference,
                    platform,
                }) => self.pull(reference, platform, ctx).await?,
                Op::Source(SourceOp::Layout { name, manifest, .. }) => {
                    self.layout_image(name, manifest).await?
                }
                Op::Source(SourceOp::Local {
                    name,
                    include,
                    exclude,
                    parents,
                }) => {
                    let context = self.context_named(name)?;
                    let hashed = self
                        .selections
                        .lock()
                        .ok()
                        .and_then(|s| s.get(&vertex.digest).cloned());
                    let selection = match hashed {
                        Some(keyed) => {
                            ctx.log(Stream::Stdout, format!("{}\n", keyed.summary).as_bytes());
                            keyed.selection
                        }
                        None => Arc::new(self.select_context(
                            context.as_ref(),
                            include,
                            exclude,
                            *parents,
                        )?),
                    };
                    for socket in &selection.skipped {
                        let warning = format!(
                            "warning: {:?} is a socket, left out: a layer cannot hold sockets\n",
                            socket.display().to_string()
                        );
                        ctx.log(Stream::Stderr, warning.as_bytes());
                    }
                    return Ok(Output::Context(selection, context));
                }
                Op::Source(op @ (SourceOp::Http { .. } | SourceOp::Git { .. })) => {
                    vec![self.remote_layer(vertex.digest, op).await?]
                }
                Op::File(op) => {
                    // File ops are plain blocking file system work.
                    tokio::task::block_in_place(|| self.file_op(op, inputs))?
                }
                Op::Exec(exec) => self.exec(exec, inputs, ctx).await?,
                Op::Merge(_) => {
                    return Err(WorkerError::Internal("merge ops are not produced yet").into());
                }
            };
            Ok(Output::Chain(Arc::new(chain)))
        })
    }
}
