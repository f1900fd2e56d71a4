//! Progress events of a build, for the CLI's renderers (`tty`, `plain`, `json`) and for remote
//! clients.
//!
//! The scheduler reports every vertex it touches through a [`ProgressSink`], one [`Event`] at a
//! time. A vertex is named in every event by its `id` ([`VertexId::index`] in the build's graph);
//! [`Event::Started`] carries its progress name, digest and Dockerfile line once. A vertex either
//! is [`Event::Cached`], or is [`Event::Started`], may log, and then ends in exactly one of
//! [`Event::Finished`], [`Event::Failed`] or [`Event::Canceled`]. A vertex whose cache key could
//! not be computed gets an [`Event::Failed`] without a start. A vertex that missed the cache but
//! is needed by nothing else (everything that uses it was cached) gets no event at all.
//!
//! Output is delivered as the worker wrote it, in chunks, in order per vertex, and never cut:
//! renderers split lines themselves. The [`json`] helpers encode one event per line; a log chunk
//! that is valid UTF-8 is a JSON string, any other chunk is `{"hex": "…"}`, so no byte is lost.
//!
//! Work that is not a vertex is shown as a step too: resolving a base image's metadata while the
//! Dockerfile is lowered (BuildKit's `[internal] load metadata for REF`). Such a step's id comes
//! from [`internal_id`], counted down from `u32::MAX`: no graph has that many vertices, and every
//! JSON reader holds such a number exactly (JavaScript's would round `usize::MAX`). Its digest
//! is empty.
//!
//! [`VertexId::index`]: crate::graph::VertexId::index

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The id of the `n`th internal step of a build (see the module doc).
#[must_use]
pub const fn internal_id(n: usize) -> usize {
    (u32::MAX as usize).saturating_sub(n)
}

/// Which output stream of a process a log chunk comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a worker measured while it ran a vertex (the sandbox's cgroup for a RUN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Peak memory of the step (cgroup `memory.peak`), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// CPU time spent in user mode, in microseconds (cgroup `cpu.stat` `user_usec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_user_us: Option<u64>,
    /// CPU time spent in the kernel, in microseconds (cgroup `cpu.stat` `system_usec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_system_us: Option<u64>,
}

/// One thing that happened to one vertex of a build (or, for [`Event::Build`], to the build).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The build began, under this id: `hoist logs ID` prints its complete log. First of all
    /// its events.
    Build { build: String },
    /// A worker began the vertex's work. Sent once per vertex and build, also to a build that
    /// joins work another build started (with that work's output so far replayed after it).
    Started {
        id: usize,
        /// The progress name, such as `[build 2/4] RUN make`.
        name: String,
        /// The vertex digest, `sha256:…`.
        digest: String,
        /// The Dockerfile line of the instruction, when the vertex has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
        /// Why the step missed the cache (`build-arg VERSION changed (1.2 → 1.3)`, `2 files
        /// changed: src/main.rs, Cargo.lock`, `--no-cache`), for a Dockerfile step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The result came from the cache; no worker ran.
    Cached {
        id: usize,
        name: String,
        digest: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<usize>,
    },
    /// A chunk of output, exactly as the worker wrote it.
    Log {
        id: usize,
        stream: Stream,
        #[serde(with = "log_data")]
        data: Vec<u8>,
    },
    /// The work succeeded.
    Finished {
        id: usize,
        /// Wall time of the work itself, from its start to its end, plus what computing its
        /// content key took before it could start (hashing the context files it selects).
        #[serde(rename = "wall_us", with = "micros")]
        wall: Duration,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<ResourceUsage>,
    },
    /// The work failed; `error` is the failure with its causes, as text.
    Failed {
        id: usize,
        error: String,
        #[serde(rename = "wall_us", with = "micros")]
        wall: Duration,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<ResourceUsage>,
    },
    /// The work was stopped because the build was cancelled or another vertex failed.
    Canceled { id: usize },
}

impl Event {
    /// The vertex the event is about; `None` for [`Event::Build`].
    #[must_use]
    pub fn id(&self) -> Option<usize> {
        match self {
            Self::Build { .. } => None,
            Self::Started { id, .. }
            | Self::Cached { id, .. }
            | Self::Log { id, .. }
            | Self::Finished { id, .. }
            | Self::Failed { id, .. }
            | Self::Canceled { id } => Some(*id),
        }
    }
}

/// The numbers a build shows its steps by (`#1`, `#2`, …), in the order the steps first show
/// up: with a start, a cache hit, or a failure before any start. Every renderer and the
/// build's log number them alike, so `hoist logs BUILD 4` is the step shown as `#4`.
#[derive(Debug, Default)]
pub struct StepNumbers {
    numbers: std::collections::HashMap<usize, usize>,
}

impl StepNumbers {
    /// The number of the event's step: given now when the event is the step's first showing,
    /// `None` for an event of a step not yet shown (or of the build itself).
    pub fn of(&mut self, event: &Event) -> Option<usize> {
        let id = event.id()?;
        let next = self.numbers.len() + 1;
        match event {
            Event::Started { .. } | Event::Cached { .. } | Event::Failed { .. } => {
                Some(*self.numbers.entry(id).or_insert(next))
            }
            _ => self.numbers.get(&id).copied(),
        }
    }
}

/// An error and its causes on one line (`what failed: why: the root cause`), as progress
/// events carry a failure: the one place a library flattens an error chain, because events are
/// data for renderers and remote clients, not errors.
#[must_use]
pub fn error_text(err: &(dyn std::error::Error + '_)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where a build's events go. Called from the scheduler's tasks, possibly at once from several
/// threads; it must not block (hand the event to a channel or a buffer and return).
pub trait ProgressSink: Send + Sync {
    fn event(&self, event: Event);
}

/// Events go to an unbounded channel, so a slow renderer never stalls a build and no output is
/// dropped. A closed receiver discards them.
impl ProgressSink for mpsc::UnboundedSender<Event> {
    fn event(&self, event: Event) {
        // The receiver is gone only when the caller stopped listening; the build goes on.
        let _ = self.send(event);
    }
}

/// Discards every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Discard;

impl ProgressSink for Discard {
    fn event(&self, _event: Event) {}
}

/// Keeps every event in memory, in arrival order (for tests and for `--metadata-file`).
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the events received so far.
    #[must_use]
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|events| events.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

impl ProgressSink for Recorder {
    fn event(&self, event: Event) {
        match self.events.lock() {
            Ok(mut events) => events.push(event),
            Err(poisoned) => poisoned.into_inner().push(event),
        }
    }
}

/// The `--progress json` encoding: one event per line.
pub mod json {
    use super::Event;

    /// Encodes one event as a line of JSON, with its trailing newline.
    ///
    /// # Errors
    /// Never for events made by this crate; the type is serde's.
    pub fn encode_line(event: &Event) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(event)?;
        line.push('\n');
        Ok(line)
    }

    /// Decodes one line written by [`encode_line`] (the newline is optional).
    ///
    /// # Errors
    /// The line is not an event.
    pub fn decode_line(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line.trim_end_matches(['\n', '\r']))
    }
}

/// A log chunk in JSON: text when it is UTF-8, else `{"hex": "…"}`.
mod log_data {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes { hex: String },
    }

    pub(super) fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(data) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Repr::Bytes {
                hex: hex::encode(data),
            }
            .serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(text) => Ok(text.into_bytes()),
            Repr::Bytes { hex } => hex::decode(hex).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration in JSON: whole microseconds.
mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Event> {
        vec![
            Event::Started {
                id: 3,
                name: "[build 2/4] RUN make".into(),
                digest: "sha256:00ff".into(),
                line: Some(7),
                reason: None,
            },
            Event::Cached {
                id: 1,
                name: "[base 1/1] FROM busybox".into(),
                digest: "sha256:ab".into(),
                line: None,
            },
            Event::Log {
                id: 3,
                stream: Stream::Stdout,
                data: b"hello\nwor".to_vec(),
            },
            Event::Log {
                id: 3,
                stream: Stream::Stderr,
                data: vec![0xff, 0xfe, b'\n', 0],
            },
            Event::Finished {
                id: 3,
                wall: Duration::from_micros(1_234_567),
                usage: Some(ResourceUsage {
                    peak_memory_bytes: Some(10 << 20),
                    cpu_user_us: Some(900_000),
                    cpu_system_us: None,
                }),
            },
            Event::Failed {
                id: 4,
                error: "process exited with code 2".into(),
                wall: Duration::from_millis(5),
                usage: None,
            },
            Event::Canceled { id: 5 },
        ]
    }

    #[test]
    fn json_lines_round_trip_every_kind() {
        let mut text = String::new();
        for event in all_kinds() {
            text.push_str(&json::encode_line(&event).unwrap());
        }
        assert_eq!(text.lines().count(), 7, "one line per event:\n{text}");
        let back: Vec<Event> = text
            .lines()
            .map(|l| json::decode_line(l).unwrap())
            .collect();
        assert_eq!(back, all_kinds());
    }

    #[test]
    fn json_shape_is_what_tools_read() {
        let line = json::encode_line(&all_kinds()[0]).unwrap();
        assert_eq!(
            line,
            "{\"event\":\"started\",\"id\":3,\"name\":\"[build 2/4] RUN make\",\
             \"digest\":\"sha256:00ff\",\"line\":7}\n"
        );
        let text = json::encode_line(&all_kinds()[2]).unwrap();
        assert_eq!(
            text,
            "{\"event\":\"log\",\"id\":3,\"stream\":\"stdout\",\"data\":\"hello\\nwor\"}\n"
        );
        let binary = json::encode_line(&all_kinds()[3]).unwrap();
        assert!(
            binary.contains("\"data\":{\"hex\":\"fffe0a00\"}"),
            "{binary}"
        );
        let done = json::encode_line(&all_kinds()[4]).unwrap();
        assert!(done.contains("\"wall_us\":1234567"), "{done}");
        assert!(done.contains("\"peak_memory_bytes\":10485760"), "{done}");
        assert!(
            !done.contains("cpu_system_us"),
            "absent usage is left out: {done}"
        );
    }

    #[test]
    fn internal_step_ids_stay_apart_and_exact_in_json() {
        let ids = [internal_id(0), internal_id(1)];
        assert_ne!(ids[0], ids[1]);
        for id in ids {
            // What a JavaScript reader does with the number: a double.
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
            let read_back = serde_json::from_str::<f64>(&id.to_string()).unwrap() as usize;
            assert_eq!(read_back, id);
        }
    }

    #[test]
    fn large_log_chunks_are_not_cut() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let event = Event::Log {
            id: 0,
            stream: Stream::Stderr,
            data: data.clone(),
        };
        let back = json::decode_line(&json::encode_line(&event).unwrap()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn channel_sink_delivers_and_survives_a_closed_receiver() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.event(Event::Canceled { id: 1 });
        assert_eq!(rx.try_recv().unwrap(), Event::Canceled { id: 1 });
        drop(rx);
        tx.event(Event::Canceled { id: 2 });
    }
}
