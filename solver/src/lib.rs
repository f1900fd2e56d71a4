//! The Dockerfile frontend, the build graph and the scheduler.
//!
//! Data flow: a parsed [`hoist_parser::Dockerfile`] is lowered by the [`frontend`], stage by
//! stage, into [`op::Op`]s (`Source`, `Exec`, `File`, `Merge`). Each op with its inputs is a
//! [`graph::Vertex`] of a [`graph::Graph`] (a petgraph DAG). A vertex's digest is sha256 over the
//! canonical encoding of its op and its inputs' digests, so identical work merges; its cache key
//! later makes content concrete (a context source by the hash of the files it selects, an image
//! by its manifest digest). The frontend also builds the target stage's image config and
//! history ([`frontend::ImageConfig`]). The [`scheduler`] walks the graph on tokio, asks the
//! cache for each key, and runs misses through a [`scheduler::Worker`] (the `hoist-worker`
//! crate runs RUN in the sandbox, COPY/ADD through the cache's file ops, FROM through the
//! registry). This crate depends on the parser only.
#![forbid(unsafe_code)]

pub mod frontend;
pub mod graph;
pub mod op;
pub mod platform;
pub mod progress;
pub mod scheduler;

pub use frontend::{BuildOptions, BuildPlan, FrontendError, ImageResolver, lower};
pub use graph::{Graph, Vertex, VertexDigest, VertexId};
pub use op::Op;
pub use platform::Platform;
pub use progress::{Event, ProgressSink};
pub use scheduler::{Cache, CacheKey, Job, SolveError, Solver, Worker};
