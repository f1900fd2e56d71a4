//! Decoding what a client or a server sends over `hoist.v1`, and reading it as hoist does.
//!
//! Input: a selector byte, then a message's bytes. Decoding any of the messages a peer sends
//! must never panic, and neither may turning an event into hoist's own (`convert::event_in`),
//! reading a blob's digest (`BlobId::parse`), or parsing an address.
#![no_main]
// `fuzz_target!` expands to a `std::fs::File::create` (libfuzzer-sys writes its debug output
// with it), which the workspace clippy.toml bans for project code.
#![allow(clippy::disallowed_methods)]

use hoist_proto::v1 as pb;
use hoist_server::cas::BlobId;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn digests<'a>(digests: impl Iterator<Item = &'a pb::Digest>) {
    for d in digests {
        let _ = BlobId::parse(d);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(m) = pb::ClientMessage::decode(bytes)
                && let Some(pb::client_message::Kind::Solve(solve)) = m.kind
            {
                digests(solve.context.iter());
                let _ = solve.platform.parse::<hoist_solver::Platform>();
            }
        }
        1 => {
            if let Ok(m) = pb::ServerMessage::decode(bytes)
                && let Some(pb::server_message::Kind::Event(event)) = m.kind
            {
                let _ = hoist_server::convert::event_in(event);
            }
        }
        2 => {
            if let Ok(m) = pb::WriteRequest::decode(bytes) {
                digests(m.digest.iter());
            }
        }
        3 => {
            if let Ok(m) = pb::BatchUpdateBlobsRequest::decode(bytes) {
                digests(m.requests.iter().filter_map(|r| r.digest.as_ref()));
            }
        }
        4 => {
            if let Ok(m) = pb::FindMissingTreeRequest::decode(bytes) {
                digests(m.root.iter());
            }
        }
        5 => {
            if let Ok(m) = pb::FindMissingBlobsRequest::decode(bytes) {
                digests(m.blob_digests.iter());
            }
        }
        6 => {
            if let Ok(e) = pb::Event::decode(bytes) {
                let _ = hoist_server::convert::event_in(e);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = text.parse::<hoist_server::Addr>();
            }
        }
    }
});
