//! Progress events and build results to and from their wire form, for the server and for the
//! remote client, so that both sides agree on every field.

use std::time::Duration;

use hoist_proto::v1 as pb;
use hoist_solver::progress::{Event, ResourceUsage, Stream};

/// A wire event that hoist cannot read: a malformed message from a peer.
#[derive(Debug, thiserror::Error)]
#[error("malformed event from the server: {0}")]
pub struct EventError(&'static str);

fn id_in(id: u64) -> Result<usize, EventError> {
    usize::try_from(id).map_err(|_| EventError("a step id out of range"))
}

fn usage_out(usage: Option<ResourceUsage>) -> Option<pb::ResourceUsage> {
    usage.map(|u| pb::ResourceUsage {
        peak_memory_bytes: u.peak_memory_bytes,
        cpu_user_us: u.cpu_user_us,
        cpu_system_us: u.cpu_system_us,
    })
}

fn usage_in(usage: Option<pb::ResourceUsage>) -> Option<ResourceUsage> {
    usage.map(|u| ResourceUsage {
        peak_memory_bytes: u.peak_memory_bytes,
        cpu_user_us: u.cpu_user_us,
        cpu_system_us: u.cpu_system_us,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// An event in its wire form.
#[must_use]
pub fn event_out(event: &Event) -> pb::Event {
    use pb::event::Kind;
    let vertex = |id: usize, name: &str, digest: &str, line: Option<usize>| pb::event::Vertex {
        id: id as u64,
        name: name.to_owned(),
        digest: digest.to_owned(),
        line: line.map(|l| l as u64),
        reason: None,
    };
    let kind = match event {
        Event::Build { build } => Kind::Build(pb::event::BuildStarted {
            build: build.clone(),
        }),
        Event::Started {
            id,
            name,
            digest,
            line,
            reason,
        } => Kind::Started(pb::event::Vertex {
            reason: reason.clone(),
            ..vertex(*id, name, digest, *line)
        }),
        Event::Cached {
            id,
            name,
            digest,
            line,
        } => Kind::Cached(vertex(*id, name, digest, *line)),
        Event::Log { id, stream, data } => Kind::Log(pb::event::Log {
            id: *id as u64,
            stream: match stream {
                Stream::Stdout => pb::LogStream::Stdout,
                Stream::Stderr => pb::LogStream::Stderr,
            }
            .into(),
            data: data.clone(),
        }),
        Event::Finished { id, wall, usage } => Kind::Finished(pb::event::Finished {
            id: *id as u64,
            wall_us: micros(*wall),
            usage: usage_out(*usage),
        }),
        Event::Failed {
            id,
            error,
            wall,
            usage,
        } => Kind::Failed(pb::event::Failed {
            id: *id as u64,
            error: error.clone(),
            wall_us: micros(*wall),
            usage: usage_out(*usage),
        }),
        Event::Canceled { id } => Kind::Canceled(pb::event::Canceled { id: *id as u64 }),
    };
    pb::Event { kind: Some(kind) }
}

/// An event from its wire form.
///
/// # Errors
/// An event without a kind, or a step id that does not fit this machine.
pub fn event_in(event: pb::Event) -> Result<Event, EventError> {
    use pb::event::Kind;
    let line = |l: Option<u64>| l.and_then(|l| usize::try_from(l).ok());
    Ok(
        match event.kind.ok_or(EventError("an event without a kind"))? {
            Kind::Build(b) => Event::Build { build: b.build },
            Kind::Started(v) => Event::Started {
                id: id_in(v.id)?,
                name: v.name,
                digest: v.digest,
                line: line(v.line),
                reason: v.reason,
            },
            Kind::Cached(v) => Event::Cached {
                id: id_in(v.id)?,
                name: v.name,
                digest: v.digest,
                line: line(v.line),
            },
            Kind::Log(l) => Event::Log {
                id: id_in(l.id)?,
                stream: match pb::LogStream::try_from(l.stream) {
                    Ok(pb::LogStream::Stdout) => Stream::Stdout,
                    Ok(pb::LogStream::Stderr) => Stream::Stderr,
                    Err(_) => return Err(EventError("a log of an unknown stream")),
                },
                data: l.data,
            },
            Kind::Finished(f) => Event::Finished {
                id: id_in(f.id)?,
                wall: Duration::from_micros(f.wall_us),
                usage: usage_in(f.usage),
            },
            Kind::Failed(f) => Event::Failed {
                id: id_in(f.id)?,
                error: f.error,
                wall: Duration::from_micros(f.wall_us),
                usage: usage_in(f.usage),
            },
            Kind::Canceled(c) => Event::Canceled { id: id_in(c.id)? },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_event_survives_the_wire() {
        let usage = Some(ResourceUsage {
            peak_memory_bytes: Some(7 << 20),
            cpu_user_us: Some(1500),
            cpu_system_us: None,
        });
        let events = [
            Event::Build { build: "b1".into() },
            Event::Started {
                id: 3,
                name: "[2/3] RUN make".into(),
                digest: "sha256:ab".into(),
                line: Some(4),
                reason: Some("build-arg VERSION changed (1.2 → 1.3)".into()),
            },
            Event::Started {
                id: 2,
                name: "[internal] load build context".into(),
                digest: "sha256:cd".into(),
                line: None,
                reason: None,
            },
            Event::Cached {
                id: hoist_solver::progress::internal_id(0),
                name: "load metadata".into(),
                digest: String::new(),
                line: None,
            },
            Event::Log {
                id: 3,
                stream: Stream::Stderr,
                data: vec![0xff, b'\n', 0],
            },
            Event::Finished {
                id: 3,
                wall: Duration::from_micros(1_234_567),
                usage,
            },
            Event::Failed {
                id: 4,
                error: "exit 2".into(),
                wall: Duration::from_micros(5),
                usage: None,
            },
            Event::Canceled { id: 5 },
        ];
        for event in events {
            let wire = prost::Message::encode_to_vec(&event_out(&event));
            let back: pb::Event = prost::Message::decode(wire.as_slice()).unwrap();
            assert_eq!(event_in(back).unwrap(), event);
        }
        assert!(event_in(pb::Event { kind: None }).is_err());
    }
}
