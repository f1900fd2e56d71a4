//! The Cas service against a hostile client: every bad tree, blob or stream gets an error
//! naming what was wrong, and the server keeps serving. A real tonic server on a unix socket in
//! a tempdir, spoken to by the generated client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hoist_proto::v1::cas_client::CasClient;
use hoist_proto::v1::{
    BatchUpdateBlobsRequest, Digest, Directory, FileNode, FindMissingBlobsRequest,
    FindMissingTreeRequest, NodeMeta, QueryWriteStatusRequest, SymlinkNode, WriteRequest,
    batch_update_blobs_request,
};
use hoist_server::cas::{CasLimits, CasStore, canonical_directory, directory_digest};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::Code;
use tonic::transport::Channel;

struct Served {
    _dir: tempfile::TempDir,
    store: Arc<CasStore>,
    client: CasClient<Channel>,
    _server: tokio::task::JoinHandle<()>,
}

async fn serve(limits: CasLimits) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CasStore::open(&dir.path().join("cas"), limits).unwrap());
    let socket = dir.path().join("cas.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let service = Arc::clone(&store).service();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
    let client = CasClient::new(connect(&socket).await);
    Served {
        _dir: dir,
        store,
        client,
        _server: server,
    }
}

async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:0")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
    }
}

fn meta() -> Option<NodeMeta> {
    Some(NodeMeta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        xattrs: Vec::new(),
    })
}

fn file(name: &[u8], content: &[u8]) -> FileNode {
    FileNode {
        name: name.to_vec(),
        digest: Some(digest_of(content)),
        meta: meta(),
        hardlink: Vec::new(),
    }
}

/// A file that says it is a hardlink of `of`.
fn link(name: &[u8], content: &[u8], of: &[u8]) -> FileNode {
    FileNode {
        hardlink: of.to_vec(),
        ..file(name, content)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hardlinks_reach_only_files_the_checkout_made_before_them() {
    let mut s = serve(CasLimits::default()).await;
    let (x, y) = (b"x".to_vec(), b"y".to_vec());
    put(&mut s.client, &[(digest_of(&x), x), (digest_of(&y), y)]).await;
    // A path that could leave the tree is refused as soon as the Directory is read.
    let escaping = put_dir(
        &mut s.client,
        &Directory {
            files: vec![file(b"a", b"x"), link(b"b", b"x", b"../a")],
            ..Directory::default()
        },
    )
    .await;
    let err = missing_tree(&mut s.client, &escaping).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hardlink"), "{}", err.message());
    // Links to what is not a file made before, or to other content, fail the checkout.
    let sub = put_dir(
        &mut s.client,
        &Directory {
            files: vec![file(b"z", b"x")],
            ..Directory::default()
        },
    )
    .await;
    for (what, dir) in [
        (
            "not a file made before it",
            Directory {
                files: vec![link(b"a", b"x", b"sub/z")],
                directories: vec![hoist_proto::v1::DirectoryNode {
                    name: b"sub".to_vec(),
                    digest: Some(sub.clone()),
                    meta: meta(),
                }],
                ..Directory::default()
            },
        ),
        (
            "other content",
            Directory {
                files: vec![file(b"a", b"x"), link(b"b", b"y", b"a")],
                ..Directory::default()
            },
        ),
        (
            "not a file made before it",
            Directory {
                files: vec![link(b"b", b"x", b"l")],
                symlinks: vec![SymlinkNode {
                    name: b"l".to_vec(),
                    target: b"/etc/passwd".to_vec(),
                    meta: meta(),
                }],
                ..Directory::default()
            },
        ),
    ] {
        let root = put_dir(&mut s.client, &dir).await;
        let store = Arc::clone(&s.store);
        let err = tokio::task::spawn_blocking(move || store.checkout(&root))
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
    // And a good one is a link again.
    let good = put_dir(
        &mut s.client,
        &Directory {
            files: vec![file(b"a", b"x"), link(b"b", b"x", b"a")],
            ..Directory::default()
        },
    )
    .await;
    let store = Arc::clone(&s.store);
    let lease = tokio::task::spawn_blocking(move || store.checkout(&good))
        .await
        .unwrap()
        .unwrap();
    let ino = |f: &str| {
        std::os::unix::fs::MetadataExt::ino(&fs_err::metadata(lease.path().join(f)).unwrap())
    };
    assert_eq!(ino("a"), ino("b"));
}

/// Stores blobs through BatchUpdateBlobs, returning each one's (code, message).
async fn put(client: &mut CasClient<Channel>, blobs: &[(Digest, Vec<u8>)]) -> Vec<(i32, String)> {
    let requests = blobs
        .iter()
        .map(|(digest, data)| batch_update_blobs_request::Request {
            digest: Some(digest.clone()),
            data: data.clone(),
        })
        .collect();
    client
        .batch_update_blobs(BatchUpdateBlobsRequest { requests })
        .await
        .unwrap()
        .into_inner()
        .responses
        .into_iter()
        .map(|r| (r.code, r.message))
        .collect()
}

async fn put_dir(client: &mut CasClient<Channel>, dir: &Directory) -> Digest {
    let digest = directory_digest(dir);
    let codes = put(client, &[(digest.clone(), dir.encode_to_vec())]).await;
    assert_eq!(codes[0].0, 0, "storing a directory: {}", codes[0].1);
    digest
}

async fn missing_tree(
    client: &mut CasClient<Channel>,
    root: &Digest,
) -> Result<Vec<Digest>, tonic::Status> {
    client
        .find_missing_tree(FindMissingTreeRequest {
            root: Some(root.clone()),
        })
        .await
        .map(|r| r.into_inner().missing_blob_digests)
}

#[tokio::test]
async fn tree_names_that_could_escape_or_clash_are_refused() {
    let mut s = serve(CasLimits::default()).await;
    let cases: Vec<(&str, Directory)> = vec![
        (
            "\"..\"",
            Directory {
                files: vec![file(b"..", b"x")],
                ..Directory::default()
            },
        ),
        (
            "'/'",
            Directory {
                files: vec![file(b"a/b", b"x")],
                ..Directory::default()
            },
        ),
        (
            "NUL",
            Directory {
                files: vec![file(b"a\0b", b"x")],
                ..Directory::default()
            },
        ),
        (
            "empty",
            Directory {
                files: vec![file(b"", b"x")],
                ..Directory::default()
            },
        ),
        (
            "not sorted",
            Directory {
                files: vec![file(b"b", b"x"), file(b"a", b"x")],
                ..Directory::default()
            },
        ),
        (
            "appears twice",
            Directory {
                files: vec![file(b"a", b"x")],
                symlinks: vec![SymlinkNode {
                    name: b"a".to_vec(),
                    target: b"b".to_vec(),
                    meta: meta(),
                }],
                ..Directory::default()
            },
        ),
    ];
    let blob = b"x".to_vec();
    assert_eq!(
        put(&mut s.client, &[(digest_of(&blob), blob)]).await[0].0,
        0
    );
    for (what, dir) in cases {
        let root = put_dir(&mut s.client, &dir).await;
        let err = missing_tree(&mut s.client, &root).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(&root.hash) && err.message().contains(what),
            "{what}: the message names neither the directory nor the fault: {}",
            err.message()
        );
        let store = Arc::clone(&s.store);
        let checkout = tokio::task::spawn_blocking(move || store.checkout(&root))
            .await
            .unwrap();
        assert!(checkout.is_err(), "{what}: the tree was checked out");
    }
    // Still serving.
    assert!(
        missing_tree(&mut s.client, &digest_of(b"none"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn malformed_directory_bytes_are_an_error_naming_the_digest() {
    let mut s = serve(CasLimits::default()).await;
    let garbage = vec![0xff, 0xff, 0xff, 0x0f, 0x12];
    let digest = digest_of(&garbage);
    assert_eq!(
        put(&mut s.client, &[(digest.clone(), garbage)]).await[0].0,
        0
    );
    let err = missing_tree(&mut s.client, &digest).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not a Directory"),
        "{}",
        err.message()
    );
    assert!(err.message().contains(&digest.hash), "{}", err.message());
    // A digest that is not one is refused before anything is looked up.
    let bad = Digest {
        hash: "../../etc/passwd".to_owned(),
        size_bytes: 1,
    };
    let err = missing_tree(&mut s.client, &bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn a_blob_whose_bytes_do_not_match_its_digest_is_not_stored() {
    let mut s = serve(CasLimits::default()).await;
    let digest = digest_of(b"the real bytes");
    let answer = put(&mut s.client, &[(digest.clone(), b"other bytes".to_vec())]).await;
    assert_eq!(answer[0].0, Code::InvalidArgument as i32, "{}", answer[0].1);
    assert!(answer[0].1.contains(&digest.hash), "{}", answer[0].1);
    let missing = s
        .client
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![digest.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![digest]);
}

#[tokio::test]
async fn blobs_and_directories_past_the_limits_are_refused() {
    let limits = CasLimits {
        max_blob: 1000,
        max_directory: 200,
        max_entries: 3,
        ..CasLimits::default()
    };
    let mut s = serve(limits).await;
    let big = vec![7u8; 2000];
    let answer = put(&mut s.client, &[(digest_of(&big), big.clone())]).await;
    assert_eq!(
        answer[0].0,
        Code::ResourceExhausted as i32,
        "{}",
        answer[0].1
    );
    assert!(answer[0].1.contains("limit of 1000"), "{}", answer[0].1);

    let write = s
        .client
        .write(tokio_stream::iter(vec![WriteRequest {
            digest: Some(digest_of(&big)),
            write_offset: 0,
            data: big[..100].to_vec(),
            finish_write: false,
        }]))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::ResourceExhausted, "{write:?}");

    // Four entries where three are allowed; then a directory bigger than 200 bytes. Both are
    // stored in their canonical form, as a client sends a directory too big for a batch: their
    // bytes are a plain blob's, within the blob limit, but too much for a directory.
    let four = Directory {
        symlinks: [b"a", b"b", b"c", b"d"]
            .iter()
            .map(|n| SymlinkNode {
                name: n.to_vec(),
                target: b"x".to_vec(),
                meta: meta(),
            })
            .collect(),
        ..Directory::default()
    };
    let canonical = canonical_directory(&four);
    let root = digest_of(&canonical);
    assert_eq!(
        put(&mut s.client, &[(root.clone(), canonical)]).await[0].0,
        0
    );
    let err = missing_tree(&mut s.client, &root).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("past the limit of 3"),
        "{}",
        err.message()
    );
    let long = Directory {
        files: vec![file(&[b'n'; 250], b"x")],
        ..Directory::default()
    };
    let canonical = canonical_directory(&long);
    let root = digest_of(&canonical);
    assert_eq!(
        put(&mut s.client, &[(root.clone(), canonical)]).await[0].0,
        0
    );
    let err = missing_tree(&mut s.client, &root).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit of 200"), "{}", err.message());
}

#[tokio::test]
async fn a_write_that_stops_sending_times_out_and_resumes_at_the_committed_size() {
    let limits = CasLimits {
        idle: Duration::from_millis(300),
        ..CasLimits::default()
    };
    let mut s = serve(limits).await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = digest_of(&blob);
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(WriteRequest {
            digest: Some(digest.clone()),
            write_offset: 0,
            data: blob[..100_000].to_vec(),
            finish_write: false,
        })
        .await
        .unwrap();
    // The sender stays open and silent: a client that hangs.
    let stalled = tokio::time::timeout(
        Duration::from_secs(60),
        s.client
            .write(tokio_stream::wrappers::ReceiverStream::new(receiver)),
    )
    .await
    .expect("the server never ended a stream that stopped sending");
    let err = stalled.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("100000 bytes are kept"),
        "{}",
        err.message()
    );
    drop(sender);

    let status = s
        .client
        .query_write_status(QueryWriteStatusRequest {
            digest: Some(digest.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.committed_size, status.complete), (100_000, false));

    // Resuming anywhere else than the committed size is refused.
    let wrong = s
        .client
        .write(tokio_stream::iter(vec![WriteRequest {
            digest: Some(digest.clone()),
            write_offset: 50_000,
            data: blob[50_000..].to_vec(),
            finish_write: true,
        }]))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::OutOfRange, "{wrong:?}");

    let done = s
        .client
        .write(tokio_stream::iter(vec![
            WriteRequest {
                digest: Some(digest.clone()),
                write_offset: 100_000,
                data: blob[100_000..200_000].to_vec(),
                finish_write: false,
            },
            WriteRequest {
                digest: None,
                write_offset: 200_000,
                data: blob[200_000..].to_vec(),
                finish_write: true,
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.committed_size, 300_000);
    let status = s
        .client
        .query_write_status(QueryWriteStatusRequest {
            digest: Some(digest.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.complete);
    assert!(s.store.bytes_received() >= 300_000);
}

#[tokio::test]
async fn a_streamed_blob_with_wrong_bytes_is_dropped_whole() {
    let mut s = serve(CasLimits::default()).await;
    let blob = vec![1u8; 5000];
    let digest = digest_of(&blob);
    let err = s
        .client
        .write(tokio_stream::iter(vec![WriteRequest {
            digest: Some(digest.clone()),
            write_offset: 0,
            data: vec![2u8; 5000],
            finish_write: true,
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let status = s
        .client
        .query_write_status(QueryWriteStatusRequest {
            digest: Some(digest),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.committed_size, status.complete), (0, false));
}

#[tokio::test]
async fn symlinks_out_of_the_context_are_made_as_links_and_never_followed() {
    let mut s = serve(CasLimits::default()).await;
    let content = b"inside\n".to_vec();
    assert_eq!(
        put(&mut s.client, &[(digest_of(&content), content.clone())]).await[0].0,
        0
    );
    let link = |name: &[u8], target: &[u8]| SymlinkNode {
        name: name.to_vec(),
        target: target.to_vec(),
        meta: meta(),
    };
    // "out/x" would land outside the tree were "out" followed while the tree is made.
    let root = Directory {
        files: vec![file(b"f", &content)],
        symlinks: vec![link(b"abs", b"/etc"), link(b"up", b"../../../../../../tmp")],
        ..Directory::default()
    };
    let root = put_dir(&mut s.client, &root).await;
    assert_eq!(missing_tree(&mut s.client, &root).await.unwrap(), vec![]);
    let store = Arc::clone(&s.store);
    let lease = tokio::task::spawn_blocking(move || store.checkout(&root))
        .await
        .unwrap()
        .unwrap();
    let tree = lease.path();
    assert_eq!(
        fs_err::read_link(tree.join("up")).unwrap(),
        Path::new("../../../../../../tmp")
    );
    assert_eq!(
        fs_err::read_link(tree.join("abs")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(fs_err::read(tree.join("f")).unwrap(), content);

    // A COPY through the link resolves inside the tree: /etc/passwd is not reached.
    let context = hoist_server::context::RemoteContext::new(
        lease,
        Vec::new(),
        &tempfile::tempdir().unwrap().path().join("state"),
    );
    use hoist_worker::ContextSource as _;
    let err = context
        .select(
            &["abs/passwd".to_owned()],
            &hoist_parser::ignore::Matcher::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test]
async fn a_leased_tree_and_its_blobs_survive_prune_all() {
    let mut s = serve(CasLimits::default()).await;
    let content = b"kept\n".to_vec();
    put(&mut s.client, &[(digest_of(&content), content.clone())]).await;
    let loose = b"loose\n".to_vec();
    put(&mut s.client, &[(digest_of(&loose), loose.clone())]).await;
    let root = put_dir(
        &mut s.client,
        &Directory {
            files: vec![file(b"f", &content)],
            ..Directory::default()
        },
    )
    .await;
    let store = Arc::clone(&s.store);
    let r = root.clone();
    let lease = tokio::task::spawn_blocking(move || store.checkout(&r))
        .await
        .unwrap()
        .unwrap();
    let pruned = s.store.prune(true).unwrap();
    assert_eq!((pruned.trees, pruned.blobs), (0, 1), "{pruned:?}");
    assert!(lease.path().join("f").exists());
    assert_eq!(missing_tree(&mut s.client, &root).await.unwrap(), vec![]);
    drop(lease);
    let pruned = s.store.prune(true).unwrap();
    assert_eq!((pruned.trees, pruned.blobs), (1, 2), "{pruned:?}");
    assert_eq!(
        missing_tree(&mut s.client, &root).await.unwrap(),
        vec![root]
    );
}

#[tokio::test]
async fn a_tree_that_repeats_a_directory_cannot_blow_up_the_checkout() {
    let limits = CasLimits {
        max_tree_entries: 10_000,
        ..CasLimits::default()
    };
    let mut s = serve(limits).await;
    // Forty levels, each holding the one below twice: 41 small messages describe 2^40 entries.
    let content = b"x".to_vec();
    put(&mut s.client, &[(digest_of(&content), content.clone())]).await;
    let mut below = put_dir(
        &mut s.client,
        &Directory {
            files: vec![file(b"f", &content)],
            ..Directory::default()
        },
    )
    .await;
    for _ in 0..40 {
        let node = |name: &[u8]| hoist_proto::v1::DirectoryNode {
            name: name.to_vec(),
            digest: Some(below.clone()),
            meta: Some(NodeMeta {
                mode: 0o755,
                ..NodeMeta::default()
            }),
        };
        below = put_dir(
            &mut s.client,
            &Directory {
                directories: vec![node(b"a"), node(b"b")],
                ..Directory::default()
            },
        )
        .await;
    }
    assert_eq!(missing_tree(&mut s.client, &below).await.unwrap(), vec![]);
    let store = Arc::clone(&s.store);
    let err = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || store.checkout(&below)),
    )
    .await
    .expect("the checkout did not end")
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("limit of 10000 entries"), "{err}");
}

#[tokio::test]
async fn the_store_is_reachable_by_its_owner_only() {
    // Checked-out trees hold setuid files and device nodes that clients sent.
    let s = serve(CasLimits::default()).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs_err::metadata(s._dir.path().join("cas"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
}
