//! Telling a slow registry from a silent one.
//!
//! A registry that accepts a connection and then says nothing must end a pull or push with an
//! error, but a big blob over a slow link must not: so no request has a total timeout, only a
//! limit on time without progress ([`ClientConfig::stall_timeout`]). Progress is a byte of the
//! request body taken by the connection, or a piece of the reply arriving. While the client
//! itself is the slow side (reading a blob from a slow disk, or a consumer that has not asked
//! for the next piece of a reply), the clock does not run.
//!
//! reqwest's own `read_timeout` is not used: it counts from the start of a request until its
//! reply's headers, so an upload that takes longer than the limit would fail however steadily
//! its bytes went out.
//!
//! [`ClientConfig::stall_timeout`]: crate::ClientConfig::stall_timeout

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use oci_spec::image::Digest;
use tokio::time::{Instant, Sleep};

/// What a request is waiting for, as errors and progress name it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Awaited {
    /// A manifest or index, by the reference it was asked for with.
    Manifest { reference: String },
    /// A blob of an image being pulled.
    Blob { digest: Digest, reference: String },
    /// A blob being pushed: the check whether the registry has it, a mount, or the upload.
    BlobPush { digest: Digest, reference: String },
    /// A manifest being pushed, under `reference` (its tag or digest).
    ManifestPush { reference: String },
    /// A bearer token from the registry's token service.
    Token { realm: String },
}

impl std::fmt::Display for Awaited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifest { reference } => write!(f, "the manifest of {reference}"),
            Self::Blob { digest, reference } => write!(f, "blob {digest} of {reference}"),
            Self::BlobPush { digest, reference } => {
                write!(f, "the push of blob {digest} to {reference}")
            }
            Self::ManifestPush { reference } => write!(f, "the push of manifest {reference}"),
            Self::Token { realm } => write!(f, "a token from {realm}"),
        }
    }
}

/// Where a request stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// The registry did not accept a connection within the connect timeout.
    Connect,
    /// The registry stopped taking the request body after `sent` bytes.
    Upload { sent: u64 },
    /// The request went out and no reply came.
    Reply,
    /// The reply's body stopped after `received` bytes.
    Body { received: u64 },
}

impl Stall {
    /// What the registry did, for a sentence that starts with "registry HOST".
    pub(crate) fn describe(self, after: Duration) -> String {
        let after = seconds(after);
        match self {
            Self::Connect => format!("did not accept a connection within {after}"),
            Self::Upload { sent } => format!("took no data for {after} after {sent} bytes"),
            Self::Reply => format!("did not answer within {after}"),
            Self::Body { received } => format!("sent nothing for {after} after {received} bytes"),
        }
    }
}

/// A registry that stopped answering, once the tries allowed for the object were spent.
#[derive(Debug, thiserror::Error)]
#[error(
    "registry {registry} {} while waiting for {awaited} ({attempts} {}); check that the registry is up, or raise --registry-timeout",
    .stall.describe(*.after),
    if *.attempts == 1 { "attempt" } else { "attempts" }
)]
pub struct Stalled {
    /// The host that was asked.
    pub registry: String,
    pub awaited: Awaited,
    /// How the last try stalled.
    pub stall: Stall,
    /// The timeout that ran out: the connect timeout or the stall timeout.
    pub after: Duration,
    /// Tries that stalled, the last included.
    pub attempts: u32,
}

/// `60s`, `1.5s`, `250ms`: as short as the value allows.
pub(crate) fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The requests made for one object (a manifest, a blob): what they wait for, and how many of
/// them stalled. Nested retries (a blob's attempts, each request's own) share this count, so a
/// silent registry costs `stalled_attempts` timeouts per object, not their product.
#[derive(Debug)]
pub(crate) struct Wait {
    pub(crate) awaited: Awaited,
    stalls: AtomicU32,
}

impl Wait {
    pub(crate) fn new(awaited: Awaited) -> Self {
        Self {
            awaited,
            stalls: AtomicU32::new(0),
        }
    }

    /// Counts one more stall and returns the count.
    pub(crate) fn stalled(&self) -> u32 {
        self.stalls.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// The reply body's error when it stalled; found again in reqwest's error chain by
/// [`body_stall`].
#[derive(Debug, thiserror::Error)]
#[error("no data for {} after {received} bytes", seconds(*.after))]
pub(crate) struct BodyStalled {
    after: Duration,
    received: u64,
}

/// The stall behind a reply-body error, if a stall caused it.
pub(crate) fn body_stall(e: &(dyn std::error::Error + 'static)) -> Option<Stall> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<BodyStalled>() {
            return Some(Stall::Body {
                received: s.received,
            });
        }
        cur = err.source();
    }
    None
}

/// How a request body is getting on, shared between the body (which the connection polls)
/// and the watch on the request.
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Nanoseconds from `base` to the last progress.
    last: AtomicU64,
    sent: AtomicU64,
    /// The body's length, when the request says it: the connection stops asking for more at
    /// that length, so the end of the body is never polled.
    length: Option<u64>,
    /// The body is waiting for its own source (the store), not for the connection.
    waiting_on_source: AtomicBool,
    finished: AtomicBool,
}

impl Activity {
    pub(crate) fn new(length: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            length,
            waiting_on_source: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::SeqCst);
    }

    /// When the request counts as stalled unless something moves before.
    pub(crate) fn deadline(&self, stall: Duration) -> Instant {
        if self.waiting_on_source.load(Ordering::SeqCst) {
            return Instant::now() + stall;
        }
        self.base + Duration::from_nanos(self.last.load(Ordering::SeqCst)) + stall
    }

    /// Where a request that made no progress until its deadline stalled.
    pub(crate) fn stall(&self) -> Stall {
        if self.finished.load(Ordering::SeqCst) {
            Stall::Reply
        } else {
            Stall::Upload {
                sent: self.sent.load(Ordering::SeqCst),
            }
        }
    }

    /// Marks the body as wholly sent (an in-memory body, or none).
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// A streamed request body that reports each piece the connection takes.
pub(crate) struct UploadBody {
    pub(crate) inner: reqwest::Body,
    pub(crate) activity: Arc<Activity>,
}

impl http_body::Body for UploadBody {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, reqwest::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let activity = &this.activity;
        activity
            .waiting_on_source
            .store(polled.is_pending(), Ordering::SeqCst);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len) as u64;
                let sent = activity.sent.fetch_add(n, Ordering::SeqCst) + n;
                activity.touch();
                if activity.length.is_some_and(|length| sent >= length) {
                    activity.finish();
                }
            }
            Poll::Ready(None) => {
                activity.touch();
                activity.finish();
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A reply body that fails with [`BodyStalled`] when nothing arrives for `after` while its
/// reader waits. The clock runs only while a read is pending, so a reader that pauses (a full
/// channel to a slow disk) is not taken for a silent registry.
pub(crate) struct ReplyBody {
    pub(crate) inner: reqwest::Body,
    pub(crate) after: Duration,
    pub(crate) sleep: Option<Pin<Box<Sleep>>>,
    pub(crate) received: u64,
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            if let Some(Ok(frame)) = &frame {
                this.received += frame.data_ref().map_or(0, Bytes::len) as u64;
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let after = this.after;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.sleep = None;
            return Poll::Ready(Some(Err(Box::new(BodyStalled {
                after,
                received: this.received,
            }))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Gives a reply a body that fails when it stalls (see [`ReplyBody`]), keeping its status,
/// headers and URL.
pub(crate) fn watch_reply(response: reqwest::Response, after: Duration) -> reqwest::Response {
    use reqwest::ResponseBuilderExt as _;
    let url = response.url().clone();
    let (mut parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    // reqwest keeps a response's URL in an extension of its own type; a builder is the only
    // public way to make one.
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(carrier.into_parts().0.extensions);
    }
    let body = reqwest::Body::wrap(ReplyBody {
        inner: body,
        after,
        sleep: None,
        received: 0,
    });
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(seconds(Duration::from_secs(60)), "60s");
        assert_eq!(seconds(Duration::from_millis(250)), "250ms");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn every_stall_says_what_the_registry_did() {
        let after = Duration::from_secs(2);
        assert_eq!(Stall::Reply.describe(after), "did not answer within 2s");
        assert_eq!(
            Stall::Body { received: 10 }.describe(after),
            "sent nothing for 2s after 10 bytes"
        );
        assert_eq!(
            Stall::Upload { sent: 0 }.describe(after),
            "took no data for 2s after 0 bytes"
        );
        assert_eq!(
            Stall::Connect.describe(after),
            "did not accept a connection within 2s"
        );
    }
}
