//! Registries that stop answering: a pull or push against one ends, within a bounded number of
//! stall timeouts, with an error that names the registry and what was awaited; one that is
//! slow but keeps moving is never cut off. Each test runs under a watchdog, so a hang is a
//! failure rather than a stuck test run.

// Helpers outside #[test] fns: a panic in them is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use hoist_cache::content::BlobStore;
use hoist_registry::{
    Awaited, Client, ClientConfig, DockerConfig, Event, Platform, PullError, PushError,
    PushOptions, Reference, RequestError, RetryPolicy, Stall, Stalled,
};
use support::*;

/// Short timeouts, so that a stalled request is given up in seconds.
fn client(events: &Events) -> Client {
    client_with(events, Duration::from_secs(1), Duration::from_secs(1))
}

fn client_with(events: &Events, connect_timeout: Duration, stall_timeout: Duration) -> Client {
    let config = ClientConfig {
        retry: RetryPolicy {
            attempts: 5,
            stalled_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
        connect_timeout,
        stall_timeout,
        ..ClientConfig::default()
    };
    Client::new(config, DockerConfig::default())
        .unwrap()
        .with_observer(events.observer())
}

fn store() -> (tempfile::TempDir, Arc<BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::new(dir.path()));
    (dir, store)
}

/// Awaits `work`, failing the test if it has not ended after a minute: without the stall
/// timeouts these hang for many minutes.
async fn watchdog<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .unwrap_or_else(|_| panic!("{what} still runs after 60s: it hangs on a stalled registry"))
}

fn stalled(err: &PullError) -> &Stalled {
    match err {
        PullError::Request(RequestError::Stalled(s)) => s,
        other => panic!("expected a stall, got: {other}"),
    }
}

fn retries(events: &Events) -> Vec<String> {
    events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::Retrying { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_a_registry_that_never_answers_names_it_and_the_manifest() {
    let silent = SilentRegistry::start().await;
    let events = Events::default();
    let c = client(&events);
    let reference = Reference::parse(&format!("{}/hoist/silent:v1", silent.host())).unwrap();
    let (_d, dst) = store();
    let err = watchdog(
        "the pull",
        c.pull(&reference, &Platform::host(), dst.clone()),
    )
    .await
    .unwrap_err();
    let s = stalled(&err);
    assert_eq!(s.registry, silent.host());
    assert_eq!(
        s.awaited,
        Awaited::Manifest {
            reference: reference.to_string()
        }
    );
    assert_eq!(s.stall, Stall::Reply);
    assert_eq!(s.attempts, 3);
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} did not answer within 1s while waiting for the manifest of {reference} \
             (3 attempts); check that the registry is up, or raise --registry-timeout",
            silent.host()
        )
    );
    assert_eq!(
        silent.connections.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "each attempt is a new connection, and there are three"
    );
    let reasons = retries(&events);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("did not answer within 1s while waiting for the manifest"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_registry_that_never_answers_names_it_and_a_blob() {
    let silent = SilentRegistry::start().await;
    let (_d, src) = store();
    let image = make_image(&src, 31, &[10_000], "amd64", false);
    let events = Events::default();
    let c = client(&events);
    let target = Reference::parse(&format!("{}/hoist/silent:v1", silent.host())).unwrap();
    let err = watchdog(
        "the push",
        c.push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        ),
    )
    .await
    .unwrap_err();
    let PushError::Request(RequestError::Stalled(s)) = &err else {
        panic!("expected a stall, got: {err}");
    };
    let Awaited::BlobPush { digest, reference } = &s.awaited else {
        panic!("expected a blob's push to stall, got: {err}");
    };
    assert_eq!(s.registry, silent.host());
    assert_eq!(s.attempts, 3);
    assert_eq!(reference, &target.to_string());
    assert!(image.blobs.iter().any(|b| b.digest() == digest));
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "did not answer within 1s while waiting for the push of blob {digest} to {target} (3 attempts)"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_body_stops_midway_fails_naming_it_after_three_tries() {
    let (_d, src) = store();
    let image = make_image(&src, 32, &[200_000], "amd64", false);
    let layer = image.blobs[1].digest().clone();
    let registry = ScriptedRegistry::start(
        src.clone(),
        image.manifest.clone(),
        vec![(layer.clone(), Serve::StallAfter(1000))],
    )
    .await;
    let events = Events::default();
    let c = client(&events);
    let reference = Reference::parse(&format!("{}/hoist/stall:v1", registry.host())).unwrap();
    let (_d2, dst) = store();
    let err = watchdog(
        "the pull",
        c.pull(&reference, &Platform::host(), dst.clone()),
    )
    .await
    .unwrap_err();
    let s = stalled(&err);
    assert!(
        matches!(&s.awaited, Awaited::Blob { digest, .. } if *digest == layer),
        "{err}"
    );
    assert_eq!(s.stall, Stall::Body { received: 1000 });
    assert_eq!(s.attempts, 3);
    assert!(
        err.to_string().contains(&format!(
            "sent nothing for 1s after 1000 bytes while waiting for blob {layer} of {}",
            reference.with_digest(image.manifest.digest().clone())
        )),
        "{err}"
    );
    assert_eq!(registry.count("GET", &format!("/blobs/{layer}")), 3);
    assert!(
        !dst.has(&layer),
        "nothing is stored of a blob that never came whole"
    );
    let pending = events
        .take()
        .into_iter()
        .any(|e| matches!(e, Event::BlobStarted { digest, size: 200_000 } if digest == layer));
    assert!(pending, "the layer's download was announced with its size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_blob_is_not_cut_off() {
    let (_d, src) = store();
    let image = make_image(&src, 33, &[3000], "amd64", false);
    let layer = image.blobs[1].digest().clone();
    // 100 bytes every 100 ms: three seconds in all, three times the stall timeout, but never
    // a second without progress.
    let registry = ScriptedRegistry::start(
        src.clone(),
        image.manifest.clone(),
        vec![(
            layer.clone(),
            Serve::Dribble {
                piece: 100,
                every: Duration::from_millis(100),
            },
        )],
    )
    .await;
    let events = Events::default();
    let c = client(&events);
    let reference = Reference::parse(&format!("{}/hoist/slow:v1", registry.host())).unwrap();
    let (_d2, dst) = store();
    let started = std::time::Instant::now();
    watchdog(
        "the pull",
        c.pull(&reference, &Platform::host(), dst.clone()),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the blob was not served slowly; the test proves nothing"
    );
    assert_eq!(read_blob(&dst, &layer), read_blob(&src, &layer));
    assert_eq!(registry.count("GET", &format!("/blobs/{layer}")), 1);
    assert_eq!(retries(&events), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_upload_is_not_cut_off() {
    let (_d, src) = store();
    let image = make_image(&src, 34, &[16 << 20], "amd64", false);
    let layer = image.blobs[1].digest().clone();
    // 512 KiB every 100 ms: over three seconds of upload against a 2 s stall timeout. The
    // registry's small receive buffer keeps the blob in the sender's hands until it is read,
    // but for the sender's own socket buffer (up to 4 MiB, under a second at this pace), which
    // the last piece taken leaves to drain while the reply is awaited.
    let registry = ScriptedRegistry::start(
        src.clone(),
        image.manifest.clone(),
        vec![(
            layer.clone(),
            Serve::Dribble {
                piece: 512 << 10,
                every: Duration::from_millis(100),
            },
        )],
    )
    .await;
    let events = Events::default();
    let c = client_with(&events, Duration::from_secs(2), Duration::from_secs(2));
    let target = Reference::parse(&format!("{}/hoist/slow:v1", registry.host())).unwrap();
    let started = std::time::Instant::now();
    watchdog(
        "the push",
        c.push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        ),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the upload was not read slowly; the test proves nothing"
    );
    assert_eq!(registry.count("PUT", &format!("digest={layer}")), 1);
    assert_eq!(retries(&events), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_registry_stops_taking_fails_naming_the_blob() {
    let (_d, src) = store();
    let image = make_image(&src, 35, &[16 << 20], "amd64", false);
    let layer = image.blobs[1].digest().clone();
    let registry = ScriptedRegistry::start(
        src.clone(),
        image.manifest.clone(),
        vec![(layer.clone(), Serve::StallAfter(1 << 20))],
    )
    .await;
    let events = Events::default();
    let c = client(&events);
    let target = Reference::parse(&format!("{}/hoist/stuck:v1", registry.host())).unwrap();
    let err = watchdog(
        "the push",
        c.push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        ),
    )
    .await
    .unwrap_err();
    let PushError::Request(RequestError::Stalled(s)) = &err else {
        panic!("expected a stall, got: {err}");
    };
    assert!(
        matches!(&s.awaited, Awaited::BlobPush { digest, .. } if *digest == layer),
        "{err}"
    );
    assert_eq!(s.attempts, 3);
    let Stall::Upload { sent } = s.stall else {
        panic!("expected the upload to stall while sending, got: {err}");
    };
    assert!((1 << 20..16 << 20).contains(&sent), "{sent} bytes went out");
    assert!(
        err.to_string().contains(&format!(
            "took no data for 1s after {sent} bytes while waiting for the push of blob {layer}"
        )),
        "{err}"
    );
    assert_eq!(registry.count("PUT", &format!("digest={layer}")), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_accepts_no_connection_is_given_up_after_the_connect_timeout() {
    // A listener whose accept queue is full: the kernel drops further connection attempts
    // unanswered, as a host behind a black-holing firewall does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let mut queued = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(&host),
        )
        .await
        {
            Ok(Ok(s)) => queued.push(s),
            _ => break,
        }
    }
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(&host)
        )
        .await
        .is_err(),
        "the kernel still completes connections to a full listener; the test proves nothing"
    );
    let events = Events::default();
    // Shorter than the stall timeout, so that it is the one that runs out.
    let c = client_with(&events, Duration::from_millis(500), Duration::from_secs(1));
    let reference = Reference::parse(&format!("{host}/hoist/unreachable:v1")).unwrap();
    let (_d, dst) = store();
    let err = watchdog(
        "the pull",
        c.pull(&reference, &Platform::host(), dst.clone()),
    )
    .await
    .unwrap_err();
    let s = stalled(&err);
    assert_eq!((s.stall, s.attempts), (Stall::Connect, 3), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "registry {host} did not accept a connection within 500ms while waiting for the manifest of {reference}"
        )),
        "{err}"
    );
    drop(listener);
}
