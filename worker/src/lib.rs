//! The build engine as a library: it runs the ops of a solved graph on this machine, keeps
//! the state root, and assembles and exports images.
//!
//! # Data flow
//!
//! ```text
//! BuildRequest ──Engine::build──► frontend (hoist-solver) ──► Graph ──► scheduler
//!                                                                         │ per vertex
//!      IndexCache (cache index): hit? ◄──────────────────────────────────┤
//!      BuildWorker: miss ──► source (context, image) · exec (RUN) · file (COPY/ADD)
//!                               │
//!                               ▼
//!      State: snapshot + diffID recorded under the cache key; blobs compressed at export
//!                               │
//!                               ▼
//!      image assembly (config, manifest) ──► local store · registry push · exports
//! ```
//!
//! # Principal types
//!
//! - [`Engine`]: one per process, shared by every build it runs. A build request goes in
//!   ([`BuildRequest`]: the Dockerfile's text, a [`ContextSource`], options), progress events come out
//!   through a [`hoist_solver::ProgressSink`], a [`tokio_util::sync::CancellationToken`]
//!   stops it, and a [`BuildOutcome`] or a [`BuildError`] comes back.
//! - [`State`]: the state root: blobs, snapshots, the cache index, this process's scratch
//!   area. Every result is a chain of [`Layer`]s: snapshot plus diffID, with the compressed
//!   blob made once, at export, and remembered.
//! - [`BuildWorker`]: a build's [`hoist_solver::Worker`]: one module per op kind,
//!   [`source`], [`exec`] and [`file`], as BuildKit's `solver/llbsolver/ops`.
//! - [`IndexCache`]: the cache index as the scheduler's [`hoist_solver::Cache`].
//! - [`image`]: `hoist run`, `pull` and `push` on the same state.
//! - [`gc`]: `hoist du` and `hoist prune` over every kind of record, the hold a running
//!   build keeps on what it uses, and the automatic collection after builds.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cache_mounts;
pub mod context;
pub mod engine;
pub mod error;
pub mod exchange;
pub mod exec;
pub mod file;
pub mod gc;
pub mod git;
pub mod history;
pub mod http;
pub mod image;
pub mod logs;
mod mounts;
pub mod named;
pub mod session;
pub mod source;
pub mod state;
pub mod worker;

pub use cache::IndexCache;
pub use context::{ContextSource, LocalContext};
pub use engine::{BuildError, BuildOutcome, BuildRequest, Dockerfile, Engine};
pub use error::WorkerError;
pub use session::{LocalSession, Session};
pub use state::{Layer, Sandboxed, State};
pub use worker::{BuildWorker, Output};
