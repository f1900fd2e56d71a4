//! `hoist serve`: the build engine behind gRPC.
//!
//! - [`control`]: the `Control` service: builds (`Solve`, a stream that carries the build's
//!   events out and its callbacks both ways), `Attach`, `Cancel`, `ListBuilds`, `DiskUsage`,
//!   `Prune`, `Logs` and `Info`, over one shared [`hoist_worker::Engine`].
//! - [`cas`]: the `Cas` service: the content-addressed store that build contexts are uploaded
//!   into, and the trees a build's context is made from, held under a lease while it runs.
//! - [`session`]: a remote build's secrets, SSH agents and registry credentials, asked of its
//!   client over the build's stream when a step needs them, and never stored.
//! - [`auth`]: who may build: the unix socket's owner and mode, mutual TLS, bearer tokens.
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`convert`]: progress events and results to and from their wire form, for both sides.
//! - [`addr`]: `unix:///path` and `tcp://host:port`.
//! - [`listen`]: the listeners, each with its auth, and the health service.
//! - [`serve`]: all of it over one engine, with the drain on `SIGTERM`.
//! - [`context`]: an uploaded tree as a build context.
#![forbid(unsafe_code)]

pub mod addr;
pub mod auth;
pub mod cas;
pub mod context;
pub mod control;
pub mod convert;
pub mod listen;
pub mod metrics;
pub mod serve;
pub mod session;

pub use addr::Addr;

/// An error and its causes on one line, each cause once: tonic's and hyper's errors keep the
/// useful part in their sources, often repeating it.
#[must_use]
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// A mutex's guard; a panic elsewhere while it was held leaves the data as it was, which every
/// user here can go on with.
pub(crate) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
