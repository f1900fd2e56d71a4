//! The registry client against the real CNCF distribution registry (`docker-registry`), each
//! test with its own registry on a free loopback port.

// Helpers outside #[test] fns: a panic in them is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use hoist_cache::content::{BlobStore, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST};
use hoist_registry::oci_spec::image::{
    Arch, Descriptor, DescriptorBuilder, ImageIndexBuilder, MediaType, Os, PlatformBuilder,
};
use hoist_registry::{
    BlobPush, Client, ClientConfig, Credential, DockerConfig, Event, Platform, PullError,
    PushError, PushOptions, Reference, RequestError, RetryPolicy,
};
use support::*;

fn client(events: &Events, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
    client_with(events, DockerConfig::default(), tweak)
}

fn client_with(
    events: &Events,
    docker: DockerConfig,
    tweak: impl FnOnce(&mut ClientConfig),
) -> Client {
    let mut config = ClientConfig {
        retry: RetryPolicy {
            attempts: 4,
            stalled_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        },
        ..ClientConfig::default()
    };
    tweak(&mut config);
    Client::new(config, docker)
        .unwrap()
        .with_observer(events.observer())
}

fn store() -> (tempfile::TempDir, Arc<BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BlobStore::new(dir.path()));
    (dir, store)
}

fn skopeo_inspect(reference: &str, raw: bool) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pushed(report: &hoist_registry::PushReport, what: fn(&BlobPush) -> bool) -> usize {
    report.blobs.iter().filter(|(_, b)| what(b)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_roundtrip_is_byte_identical_and_skopeo_accepts_it() {
    let Some(registry) = Registry::start() else {
        return;
    };
    if !require_tool("/usr/bin/skopeo", "skopeo") {
        return;
    }
    let (_d, src) = store();
    let image = make_image(&src, 1, &[300_000, 1_200_000, 10], "amd64", false);
    let events = Events::default();
    let c = client(&events, |_| {});
    let target = Reference::parse(&format!("{}/hoist/roundtrip:v1", registry.host())).unwrap();
    let report = c
        .push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(&report.manifest_digest, image.manifest.digest());
    assert_eq!(
        pushed(&report, |b| matches!(b, BlobPush::Uploaded { .. })),
        4
    );

    let (_d2, dst) = store();
    let resolved = c
        .pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap();
    assert_eq!(&resolved.manifest.digest, image.manifest.digest());
    assert_eq!(resolved.reference.digest(), Some(image.manifest.digest()));
    for blob in image.blobs.iter().chain([&image.manifest]) {
        assert_eq!(
            read_blob(&dst, blob.digest()),
            read_blob(&src, blob.digest()),
            "blob {} differs after the round trip",
            blob.digest()
        );
    }
    // By digest too, and a second pull finds everything present.
    let by_digest = target.with_digest(image.manifest.digest().clone());
    let again = c
        .pull(&by_digest, &Platform::host(), dst.clone())
        .await
        .unwrap();
    assert_eq!(&again.manifest.digest, image.manifest.digest());
    let present = events
        .take()
        .iter()
        .filter(|e| matches!(e, Event::BlobPresent { .. }))
        .count();
    assert_eq!(present, 4);

    let inspected = skopeo_inspect(&format!("{}/hoist/roundtrip:v1", registry.host()), false);
    assert_eq!(inspected["Digest"], image.manifest.digest().to_string());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(inspected["Architecture"], "amd64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_push_skips_every_blob_the_registry_has() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let (_d, src) = store();
    let image = make_image(&src, 2, &[500_000, 700_000], "amd64", false);
    let events = Events::default();
    let c = client(&events, |_| {});
    let target = Reference::parse(&format!("{}/hoist/again:v1", registry.host())).unwrap();
    let first = c
        .push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(first.bytes_sent(), 1_200_000 + image.blobs[0].size());
    let second = c
        .push(
            &target.with_tag("v2"),
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(pushed(&second, |b| *b == BlobPush::Exists), 3);
    assert_eq!(second.bytes_sent(), 0);
    // The new tag points at the same manifest.
    let m = c.fetch_manifest(&target.with_tag("v2")).await.unwrap();
    assert_eq!(&m.digest, image.manifest.digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_mount_across_repositories_instead_of_uploading() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let (_d, src) = store();
    let image = make_image(&src, 3, &[400_000, 50_000], "amd64", false);
    let events = Events::default();
    let c = client(&events, |_| {});
    let base = Reference::parse(&format!("{}/hoist/base:v1", registry.host())).unwrap();
    c.push(&base, &image.manifest, src.clone(), &PushOptions::default())
        .await
        .unwrap();
    let app = Reference::parse(&format!("{}/hoist/app:v1", registry.host())).unwrap();
    let options = PushOptions {
        mount_from: vec!["hoist/missing".into(), "hoist/base".into()],
    };
    let report = c
        .push(&app, &image.manifest, src.clone(), &options)
        .await
        .unwrap();
    assert_eq!(
        pushed(
            &report,
            |b| matches!(b, BlobPush::Mounted { from } if from == "hoist/base")
        ),
        3,
        "{:?}",
        report.blobs
    );
    assert_eq!(report.bytes_sent(), 0);
    let (_d2, dst) = store();
    c.pull(&app, &Platform::host(), dst.clone()).await.unwrap();
    assert_eq!(
        read_blob(&dst, image.blobs[1].digest()),
        read_blob(&src, image.blobs[1].digest())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_go_up_in_chunks_and_come_back_whole() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let (_d, src) = store();
    let size = 5 * (1 << 20) + 12_345;
    let image = make_image(&src, 4, &[size], "amd64", false);
    let events = Events::default();
    let c = client(&events, |cfg| {
        cfg.chunk_size = 1 << 20;
        cfg.monolithic_threshold = 256 << 10;
    });
    let target = Reference::parse(&format!("{}/hoist/chunked:v1", registry.host())).unwrap();
    c.push(
        &target,
        &image.manifest,
        src.clone(),
        &PushOptions::default(),
    )
    .await
    .unwrap();
    let layer = image.blobs[1].digest().clone();
    let offsets: Vec<u64> = events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::UploadProgress { digest, offset, .. } if digest == layer => Some(offset),
            _ => None,
        })
        .collect();
    let expected: Vec<u64> = (1..=5).map(|i| i << 20).chain([size as u64]).collect();
    assert_eq!(offsets, expected, "one PATCH per MiB, each acknowledged");
    let (_d2, dst) = store();
    c.pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap();
    assert_eq!(read_blob(&dst, &layer), read_blob(&src, &layer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_list_of_docker_manifests_selects_the_platform() {
    let Some(registry) = Registry::start() else {
        return;
    };
    if !require_tool("/usr/bin/skopeo", "skopeo") {
        return;
    }
    let (_d, src) = store();
    let amd = make_image(&src, 5, &[1000], "amd64", true);
    let arm = make_image(&src, 6, &[2000], "arm64", true);
    let entry = |img: &TestImage, arch: Arch, variant: Option<&str>| -> Descriptor {
        let mut platform = PlatformBuilder::default()
            .os(Os::Linux)
            .architecture(arch)
            .build()
            .unwrap();
        platform.set_variant(variant.map(str::to_owned));
        let mut d = img.manifest.clone();
        d.set_platform(Some(platform));
        d
    };
    let list = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::Other(DOCKER_MANIFEST_LIST.into()))
        .manifests(vec![
            entry(&amd, Arch::Amd64, None),
            entry(&arm, Arch::ARM64, Some("v8")),
        ])
        .build()
        .unwrap();
    let list = put_blob(
        &src,
        MediaType::Other(DOCKER_MANIFEST_LIST.into()),
        serde_json::to_string(&list).unwrap().as_bytes(),
    );
    let events = Events::default();
    let c = client(&events, |_| {});
    let target = Reference::parse(&format!("{}/hoist/multi:v1", registry.host())).unwrap();
    let report = c
        .push(&target, &list, src.clone(), &PushOptions::default())
        .await
        .unwrap();
    assert_eq!(&report.manifest_digest, list.digest());

    let arm64 = Platform::new("linux", "arm64", None);
    let resolved = c.resolve(&target, &arm64).await.unwrap();
    assert_eq!(&resolved.manifest.digest, arm.manifest.digest());
    assert_eq!(resolved.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(resolved.index.as_ref().unwrap().digest, *list.digest());
    assert_eq!(resolved.reference.digest(), Some(list.digest()));
    let amd64 = Platform::new("linux", "amd64", None);
    let (_d2, dst) = store();
    let pulled = c.pull(&target, &amd64, dst.clone()).await.unwrap();
    assert_eq!(&pulled.manifest.digest, amd.manifest.digest());
    assert_eq!(dst.stat(list.digest()).unwrap(), Some(list.size()));
    assert_eq!(
        dst.stat(arm.blobs[1].digest()).unwrap(),
        None,
        "other platform not pulled"
    );
    if Platform::host().architecture == "amd64" {
        let host = c.resolve(&target, &Platform::host()).await.unwrap();
        assert_eq!(&host.manifest.digest, amd.manifest.digest());
    }
    let err = c
        .resolve(&target, &Platform::new("linux", "s390x", None))
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");

    let raw = skopeo_inspect(&format!("{}/hoist/multi:v1", registry.host()), true);
    assert_eq!(raw["mediaType"], DOCKER_MANIFEST_LIST);
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth_uses_docker_config_and_credential_helpers() {
    if !require_tool("/usr/bin/htpasswd", "apache2-utils") {
        return;
    }
    let auth_dir = tempfile::tempdir().unwrap();
    let htpasswd = auth_dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "alice", "wonderland"])
        .output()
        .unwrap();
    assert!(out.status.success());
    fs_err::write(&htpasswd, &out.stdout).unwrap();
    let Some(registry) = Registry::start_with(RegistryAuth::Htpasswd(htpasswd)) else {
        return;
    };
    let (_d, src) = store();
    let image = make_image(&src, 7, &[100_000], "amd64", false);
    let target = Reference::parse(&format!("{}/hoist/private:v1", registry.host())).unwrap();
    let events = Events::default();

    let anonymous = client(&events, |_| {});
    let err = anonymous
        .push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PushError::Request(RequestError::Unauthorized { .. })),
        "{err}"
    );

    // Credentials from `auths` in config.json.
    let docker_dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    fs_err::write(
        docker_dir.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let c = client_with(
        &events,
        DockerConfig::load_dir(docker_dir.path()).unwrap(),
        |_| {},
    );
    c.push(
        &target,
        &image.manifest,
        src.clone(),
        &PushOptions::default(),
    )
    .await
    .unwrap();

    // Credentials from a `credsStore` helper.
    let helper_dir = tempfile::tempdir().unwrap();
    fs_err::write(
        helper_dir.path().join("config.json"),
        r#"{"credsStore": "hoisttest"}"#,
    )
    .unwrap();
    let helper = helper_dir.path().join("docker-credential-hoisttest");
    fs_err::write(
        &helper,
        "#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"wonderland\"}' \"$server\"\n",
    )
    .unwrap();
    assert!(
        Command::new("chmod")
            .arg("755")
            .arg(&helper)
            .status()
            .unwrap()
            .success()
    );
    let docker = DockerConfig::load_dir(helper_dir.path())
        .unwrap()
        .with_helper_dir(helper_dir.path());
    let c = client_with(&events, docker, |_| {});
    let (_d2, dst) = store();
    let pulled = c
        .pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap();
    assert_eq!(&pulled.manifest.digest, image.manifest.digest());

    // A wrong password is refused, not retried forever.
    let wrong = client(&events, |_| {});
    wrong.set_credential(
        registry.registry_name(),
        Credential::Basic {
            username: "alice".into(),
            password: "guess".into(),
        },
    );
    let err = wrong.fetch_manifest(&target).await.unwrap_err();
    assert!(
        matches!(err, PullError::Request(RequestError::Unauthorized { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_trades_credentials_for_scoped_bearer_tokens() {
    let Some(tokens) = TokenServer::start("bob", "builder").await else {
        return;
    };
    let Some(registry) = Registry::start_with(RegistryAuth::Token {
        realm: tokens.realm(),
        cert: tokens.cert.clone(),
    }) else {
        return;
    };
    let (_d, src) = store();
    let image = make_image(&src, 8, &[200_000, 3000], "amd64", false);
    let docker_dir = tempfile::tempdir().unwrap();
    fs_err::write(
        docker_dir.path().join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"username": "bob", "password": "builder"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let events = Events::default();
    let c = client_with(
        &events,
        DockerConfig::load_dir(docker_dir.path()).unwrap(),
        |_| {},
    );
    let base = Reference::parse(&format!("{}/hoist/tbase:v1", registry.host())).unwrap();
    c.push(&base, &image.manifest, src.clone(), &PushOptions::default())
        .await
        .unwrap();
    assert!(tokens.issued.load(Ordering::SeqCst) >= 1);
    // A mount needs pull on the source as well as push on the target, in one token.
    let app = Reference::parse(&format!("{}/hoist/tapp:v1", registry.host())).unwrap();
    let report = c
        .push(
            &app,
            &image.manifest,
            src.clone(),
            &PushOptions {
                mount_from: vec!["hoist/tbase".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        pushed(&report, |b| matches!(b, BlobPush::Mounted { .. })),
        3
    );
    let (_d2, dst) = store();
    let pulled = c.pull(&app, &Platform::host(), dst.clone()).await.unwrap();
    assert_eq!(&pulled.manifest.digest, image.manifest.digest());

    // An identity token (docker's `identitytoken`) is traded by the OAuth2 refresh-token grant.
    let issued = tokens.issued.load(Ordering::SeqCst);
    let oauth = client(&events, |_| {});
    oauth.set_credential(
        &registry.host(),
        Credential::IdentityToken("refresh-builder".into()),
    );
    let m = oauth.fetch_manifest(&app).await.unwrap();
    assert_eq!(&m.digest, image.manifest.digest());
    assert!(tokens.issued.load(Ordering::SeqCst) > issued);

    let anonymous = client(&events, |_| {});
    let err = anonymous.fetch_manifest(&app).await.unwrap_err();
    assert!(
        matches!(err, PullError::Request(RequestError::Token { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_move_concurrently_but_never_beyond_the_bound() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let (_d, src) = store();
    let image = make_image(&src, 13, &[1 << 20; 6], "amd64", false);
    let events = Events::default();
    let c = client(&events, |cfg| cfg.max_concurrent_transfers = 2);
    let target = Reference::parse(&format!("{}/hoist/parallel:v1", registry.host())).unwrap();
    c.push(
        &target,
        &image.manifest,
        src.clone(),
        &PushOptions::default(),
    )
    .await
    .unwrap();
    let mut in_flight = 0i32;
    let mut peak = 0;
    for e in events.take() {
        match e {
            Event::UploadStarted { .. } => in_flight += 1,
            Event::BlobUploaded { .. } => in_flight -= 1,
            _ => {}
        }
        peak = peak.max(in_flight);
    }
    assert_eq!(peak, 2, "two uploads overlap, never three");

    let c = client(&events, |cfg| cfg.max_concurrent_transfers = 3);
    let (_d2, dst) = store();
    c.pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap();
    for blob in &image.blobs {
        assert_eq!(
            read_blob(&dst, blob.digest()),
            read_blob(&src, blob.digest())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_interrupted_by_registry_restart_resumes_without_resending() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let host = registry.lock().unwrap().host();
    let (_d, src) = store();
    let big = 6 * (1 << 20) + 777;
    let image = make_image(&src, 9, &[150_000, big], "amd64", false);
    let layer = image.blobs[2].digest().clone();
    let resume_dir = tempfile::tempdir().unwrap();
    let tweak = |cfg: &mut ClientConfig| {
        cfg.chunk_size = 1 << 20;
        cfg.monolithic_threshold = 256 << 10;
        cfg.max_concurrent_transfers = 1;
        cfg.resume_dir = Some(resume_dir.path().to_path_buf());
        cfg.retry.attempts = 2;
    };
    let target = Reference::parse(&format!("{host}/hoist/resume:v1")).unwrap();

    // Kill the registry as soon as three MiB of the big layer have been acknowledged.
    let killed = Arc::new(AtomicBool::new(false));
    let observer: hoist_registry::Observer = {
        let registry = registry.clone();
        let killed = killed.clone();
        let layer = layer.clone();
        Arc::new(move |e: &Event| {
            if let Event::UploadProgress { digest, offset, .. } = e
                && *digest == layer
                && *offset >= 3 << 20
                && !killed.swap(true, Ordering::SeqCst)
            {
                registry.lock().unwrap().kill();
            }
        })
    };
    let mut config = ClientConfig::default();
    tweak(&mut config);
    config.retry.initial_backoff = Duration::from_millis(20);
    let first = Client::new(config, DockerConfig::default())
        .unwrap()
        .with_observer(observer);
    let err = first
        .push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(killed.load(Ordering::SeqCst));
    assert!(
        matches!(err, PushError::UploadFailed { .. } | PushError::Request(_)),
        "{err}"
    );

    registry.lock().unwrap().restart();
    let events = Events::default();
    let second = client(&events, tweak);
    let report = second
        .push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    let outcome = |d: &hoist_registry::oci_spec::image::Digest| {
        report.blobs.iter().find(|(x, _)| x == d).unwrap().1.clone()
    };
    assert_eq!(outcome(image.blobs[0].digest()), BlobPush::Exists);
    assert_eq!(outcome(image.blobs[1].digest()), BlobPush::Exists);
    let BlobPush::Uploaded { resumed_from, sent } = outcome(&layer) else {
        panic!("big layer not uploaded: {:?}", report.blobs);
    };
    assert_eq!(
        resumed_from,
        3 << 20,
        "resumed where the registry acknowledged"
    );
    assert_eq!(
        sent,
        big as u64 - resumed_from,
        "only the rest went out again"
    );
    assert_eq!(
        fs_err::read_dir(resume_dir.path()).unwrap().count(),
        0,
        "journal cleared after the push"
    );

    let (_d2, dst) = store();
    second
        .pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap();
    assert_eq!(read_blob(&dst, &layer), read_blob(&src, &layer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_bytes_that_do_not_match_their_digest_are_rejected_both_ways() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let events = Events::default();
    let c = client(&events, |_| {});

    // Push: the store's bytes for a layer were corrupted; the registry refuses them.
    let (_d, src) = store();
    let image = make_image(&src, 10, &[64_000], "amd64", false);
    let layer = image.blobs[1].clone();
    let mut bytes = read_blob(&src, layer.digest());
    bytes[100] ^= 0xff;
    fs_err::write(src.blob_path(layer.digest()).unwrap(), &bytes).unwrap();
    let target = Reference::parse(&format!("{}/hoist/corrupt:v1", registry.host())).unwrap();
    let err = c
        .push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PushError::DigestRejected { digest } if digest == layer.digest()),
        "{err}"
    );
    assert!(!c.blob_exists(&target, layer.digest()).await.unwrap());

    // Pull: the registry's stored bytes were corrupted; nothing reaches the store.
    let (_d2, good) = store();
    let image = make_image(&good, 11, &[64_000], "amd64", false);
    let layer = image.blobs[1].clone();
    let target = Reference::parse(&format!("{}/hoist/rotten:v1", registry.host())).unwrap();
    c.push(
        &target,
        &image.manifest,
        good.clone(),
        &PushOptions::default(),
    )
    .await
    .unwrap();
    let hex = layer.digest().digest();
    let data = registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut stored = fs_err::read(&data).unwrap();
    stored[5] ^= 0x55;
    fs_err::write(&data, &stored).unwrap();
    let (dst_dir, dst) = store();
    let err = c
        .pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap_err();
    // The content store's own verdict, with the digest of the bytes that came.
    let rotten = hoist_cache::content::sha256_of(&stored);
    assert!(
        matches!(&err, PullError::BlobDigestMismatch { digest, actual, .. }
            if digest == layer.digest() && *actual == rotten),
        "{err}"
    );
    assert_eq!(dst.stat(layer.digest()).unwrap(), None);
    assert_eq!(
        fs_err::read_dir(dst_dir.path().join("ingest"))
            .unwrap()
            .count(),
        0,
        "no partial file left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_lands_in_the_state_roots_content_store_where_the_image_store_reads_it() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let events = Events::default();
    let c = client(&events, |_| {});
    let (_d, src) = store();
    let image = make_image(&src, 13, &[30_000, 40_000], "amd64", false);
    let target = Reference::parse(&format!("{}/hoist/shared:v1", registry.host())).unwrap();
    c.push(
        &target,
        &image.manifest,
        src.clone(),
        &PushOptions::default(),
    )
    .await
    .unwrap();

    // The state root's own content store, passed to the client as it is: no adapter between.
    let root = tempfile::tempdir().unwrap();
    let images = hoist_cache::ImageStore::open(root.path()).unwrap();
    let blobs = Arc::new(images.blobs().clone());
    let resolved = c
        .pull(&target, &Platform::host(), blobs.clone())
        .await
        .unwrap();
    let manifest = resolved.manifest.descriptor();
    assert_eq!(manifest.digest(), image.manifest.digest());
    images.tag("shared", &manifest).unwrap();
    let loaded =
        hoist_cache::Image::load(images.blobs(), &images.resolve("shared").unwrap()).unwrap();
    assert_eq!(loaded.manifest.layers(), &image.blobs[1..]);
    assert_eq!(loaded.config.architecture().to_string(), "amd64");
    for blob in &image.blobs {
        assert_eq!(
            fs_err::read(blobs.blob_path(blob.digest()).unwrap()).unwrap(),
            read_blob(&src, blob.digest()),
            "blob {} under the state root",
            blob.digest()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_503_are_retried() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let (_d, src) = store();
    let image = make_image(&src, 12, &[80_000, 90_000], "amd64", false);
    for (fault, name) in [
        (Fault::Drop, "dropped"),
        (Fault::Unavailable, "unavailable"),
    ] {
        let proxy = FaultyProxy::start(registry.port, fault, 2).await;
        let events = Events::default();
        let c = client(&events, |_| {});
        let target =
            Reference::parse(&format!("127.0.0.1:{}/hoist/{name}:v1", proxy.port)).unwrap();
        c.push(
            &target,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap();
        let (_d2, dst) = store();
        c.pull(&target, &Platform::host(), dst.clone())
            .await
            .unwrap();
        assert_eq!(
            read_blob(&dst, image.blobs[2].digest()),
            read_blob(&src, image.blobs[2].digest())
        );
        assert_eq!(proxy.faulted.load(Ordering::SeqCst), 2);
        let retries = events
            .take()
            .iter()
            .filter(|e| matches!(e, Event::Retrying { .. }))
            .count();
        assert!(retries >= 2, "{name}: {retries} retries");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_resumes_a_blob_whose_connection_was_cut_midway() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let (_d, src) = store();
    let size = 3 << 20;
    let image = make_image(&src, 14, &[size], "amd64", false);
    let events = Events::default();
    let direct = Reference::parse(&format!("{}/hoist/cut:v1", registry.host())).unwrap();
    client(&events, |_| {})
        .push(
            &direct,
            &image.manifest,
            src.clone(),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    events.take();

    let proxy = FaultyProxy::start(registry.port, Fault::CutAfter(1 << 20), 1).await;
    let c = client(&events, |cfg| cfg.max_concurrent_transfers = 1);
    let target = Reference::parse(&format!("127.0.0.1:{}/hoist/cut:v1", proxy.port)).unwrap();
    let (_d2, dst) = store();
    c.pull(&target, &Platform::host(), dst.clone())
        .await
        .unwrap();
    let layer = image.blobs[1].digest();
    assert_eq!(read_blob(&dst, layer), read_blob(&src, layer));
    assert_eq!(proxy.faulted.load(Ordering::SeqCst), 1);
    let resumed = events.take().into_iter().any(|e| {
        matches!(e, Event::Retrying { reason, .. }
            if reason.contains("resuming at byte") && !reason.ends_with("at byte 0"))
    });
    assert!(
        resumed,
        "the cut transfer was retried with a range, mid-blob"
    );
    let down = proxy.downstream.load(Ordering::SeqCst);
    assert!(
        down < size + (256 << 10),
        "{down} bytes came down for a {size}-byte layer: the blob was fetched twice"
    );
}

#[test]
fn docker_hub_references_resolve_to_the_hub_api_host() {
    let r = Reference::parse("busybox").unwrap();
    assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
    assert_eq!(r.api_host(), "registry-1.docker.io");
    let _ = DescriptorBuilder::default();
}
