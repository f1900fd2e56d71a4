//! What a running worker gets besides its inputs (cancellation, output, measurements), and
//! how one computation's progress reaches every build that waits for it.

use super::*;

/// What a running worker gets besides its inputs: cancellation, output and measurements.
#[derive(Debug)]
pub struct VertexContext {
    pub(super) cancel: CancellationToken,
    pub(super) fanout: Arc<Fanout>,
    pub(super) usage: Mutex<Option<ResourceUsage>>,
}

impl VertexContext {
    /// Fires when the work must stop (the build failed elsewhere or was cancelled).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The token behind [`cancelled`](Self::cancelled), to hand to code that takes one.
    #[must_use]
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Reports a chunk of output, to every build that waits for this work, in call order.
    pub fn log(&self, stream: Stream, data: &[u8]) {
        self.fanout.log(stream, data);
    }

    /// Reports what the work used; the last report goes into [`Event::Finished`].
    pub fn report_usage(&self, usage: ResourceUsage) {
        *lock(&self.usage) = Some(usage);
    }

    pub(super) fn take_usage(&self) -> Option<ResourceUsage> {
        lock(&self.usage).take()
    }
}

/// A vertex as one build calls it in its events.
#[derive(Debug)]
pub(super) struct VertexInfo {
    pub(super) id: usize,
    pub(super) name: String,
    pub(super) digest: VertexDigest,
    pub(super) location: Option<Location>,
}

impl VertexInfo {
    pub(super) fn started(&self, reason: Option<String>) -> Event {
        Event::Started {
            id: self.id,
            name: self.name.clone(),
            digest: self.digest.to_string(),
            line: self.location.as_ref().map(|l| l.line),
            reason,
        }
    }

    pub(super) fn cached(&self) -> Event {
        Event::Cached {
            id: self.id,
            name: self.name.clone(),
            digest: self.digest.to_string(),
            line: self.location.as_ref().map(|l| l.line),
        }
    }

    pub(super) fn error(&self, phase: Phase, source: WorkerError) -> SolveError {
        SolveError::Vertex {
            name: self.name.clone(),
            digest: self.digest,
            location: self.location.clone(),
            phase,
            source,
        }
    }
}

/// A build's interest in a flight's progress.
pub(super) struct Subscriber {
    pub(super) serial: u64,
    pub(super) sink: Arc<dyn ProgressSink>,
    pub(super) info: Arc<VertexInfo>,
    pub(super) started: Arc<AtomicBool>,
    /// Why this build runs the vertex (see [`super::reason`]).
    pub(super) reason: Option<String>,
}

impl Subscriber {
    pub(super) fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.sink.event(self.info.started(self.reason.clone()));
    }
}

/// How much of a computation's output is kept for builds that join it late. The whole of it
/// goes to each waiting build's sink as it comes (which keeps it, on disk); what is kept here
/// must not grow with a step that prints gigabytes.
pub const REPLAY_BYTES: usize = 1 << 20;

/// Sends one computation's progress to every build that waits for it, and keeps the tail of
/// its output for builds that join late.
#[derive(Default)]
pub(super) struct Fanout {
    pub(super) state: Mutex<FanoutState>,
}

#[derive(Default)]
pub(super) struct FanoutState {
    pub(super) started: bool,
    /// The last chunks, at most [`REPLAY_BYTES`] (or one chunk, if larger) in all.
    pub(super) logs: std::collections::VecDeque<(Stream, Vec<u8>)>,
    pub(super) kept_bytes: usize,
    /// Bytes of output no longer kept.
    pub(super) dropped_bytes: u64,
    pub(super) subscribers: Vec<Subscriber>,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Fanout")
            .field("started", &state.started)
            .field("logs", &state.logs.len())
            .field("subscribers", &state.subscribers.len())
            .finish()
    }
}

impl Fanout {
    /// Adds a build; replays what it missed, under the lock, so it sees every chunk once and
    /// in order.
    pub(super) fn subscribe(&self, sub: Subscriber) {
        let mut state = lock(&self.state);
        if state.started {
            sub.start();
            if state.dropped_bytes > 0 {
                sub.sink.event(Event::Log {
                    id: sub.info.id,
                    stream: Stream::Stderr,
                    data: format!(
                        "[hoist: this step was already running; its first {} bytes of output are not shown]\n",
                        state.dropped_bytes
                    )
                    .into_bytes(),
                });
            }
            for (stream, data) in &state.logs {
                sub.sink.event(Event::Log {
                    id: sub.info.id,
                    stream: *stream,
                    data: data.clone(),
                });
            }
        }
        state.subscribers.push(sub);
    }

    pub(super) fn unsubscribe(&self, serial: u64) {
        lock(&self.state).subscribers.retain(|s| s.serial != serial);
    }

    pub(super) fn start(&self) {
        let mut state = lock(&self.state);
        state.started = true;
        for sub in &state.subscribers {
            sub.start();
        }
    }

    pub(super) fn log(&self, stream: Stream, data: &[u8]) {
        let mut state = lock(&self.state);
        for sub in &state.subscribers {
            sub.sink.event(Event::Log {
                id: sub.info.id,
                stream,
                data: data.to_vec(),
            });
        }
        state.logs.push_back((stream, data.to_vec()));
        state.kept_bytes += data.len();
        while state.kept_bytes > REPLAY_BYTES && state.logs.len() > 1 {
            if let Some((_, old)) = state.logs.pop_front() {
                state.kept_bytes -= old.len();
                state.dropped_bytes += old.len() as u64;
            }
        }
    }
}
