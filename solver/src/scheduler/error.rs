//! Why a solve failed: the vertex, what it was doing, and the worker's error.

use super::*;

/// A worker's error, shared by every build that waited for the failed work.
#[derive(Clone)]
pub struct WorkerError(Arc<dyn Error + Send + Sync + 'static>);

impl WorkerError {
    /// The error the worker returned, for downcasting (e.g. to the executor's error to show an
    /// exit code).
    #[must_use]
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    #[must_use]
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl From<BoxError> for WorkerError {
    fn from(err: BoxError) -> Self {
        Self(Arc::from(err))
    }
}

impl fmt::Display for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for WorkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Error for WorkerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// What a vertex was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// [`Worker::content_key`].
    ContentKey,
    /// [`Cache::lookup`].
    CacheLookup,
    /// [`Worker::run`].
    Run,
    /// [`Cache::record`].
    CacheRecord,
}

/// Why a solve failed.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// A vertex failed; the first failure of the build.
    #[error("{}", describe_failure(*.phase, .name, .location.as_ref()))]
    Vertex {
        /// The progress name, such as `[build 2/4] RUN make`.
        name: String,
        digest: VertexDigest,
        /// Where in the Dockerfile the vertex comes from.
        location: Option<Location>,
        phase: Phase,
        #[source]
        source: WorkerError,
    },
    /// The job's cancellation token fired.
    #[error("build cancelled")]
    Cancelled,
}

pub(super) fn describe_failure(phase: Phase, name: &str, location: Option<&Location>) -> String {
    let at = location.map_or_else(String::new, |l| format!(" (line {}:{})", l.line, l.column));
    match phase {
        Phase::ContentKey => format!("cannot compute the cache key of {name}{at}"),
        Phase::CacheLookup => format!("cache lookup for {name}{at} failed"),
        Phase::Run => format!("{name}{at} failed"),
        Phase::CacheRecord => format!("cannot record the result of {name}{at} in the cache"),
    }
}

/// The worker panicked; reported as the vertex's error.
#[derive(Debug, thiserror::Error)]
#[error("the worker panicked")]
pub(super) struct Panicked;

/// The work was cancelled although this build still wanted it (a defect, reported rather than
/// hidden).
#[derive(Debug, thiserror::Error)]
#[error("the work was cancelled by another build")]
pub(super) struct CancelledElsewhere;

pub(super) fn worker_error(err: impl Error + Send + Sync + 'static) -> WorkerError {
    WorkerError(Arc::new(err))
}
