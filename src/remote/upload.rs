//! Context upload: send a server only the part of a context it lacks.
//!
//! The tree is built on the client ([`super::tree`]); the server answers `FindMissingTree`
//! with what it lacks of it, and only that goes, small blobs in batches and big ones in
//! resumable `Write` streams, several at once. A Directory the server lacks hides its
//! children, so the client asks again after sending it, until nothing is missing: an unchanged
//! context costs one question, an edited file that file and the directories above it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use hoist_cache::context::StatCache;
use hoist_proto::v1::cas_client::CasClient;
use hoist_proto::v1::{
    BatchUpdateBlobsRequest, Digest, FindMissingTreeRequest, QueryWriteStatusRequest, WriteRequest,
    batch_update_blobs_request,
};
use tonic::codegen::{Body, Bytes, StdError};

use super::tree::{self, Blob, Tree};

/// A blob bigger than this goes in a `Write` stream of its own, resumable.
const BIG_BLOB: u64 = 1 << 20;
/// One BatchUpdateBlobs request, encoded, well under gRPC's 4 MiB message limit.
const BATCH_BYTES: u64 = 3 << 20;
/// A blob's share of a batch beside its data: its digest (64 hex digits and a size) and the
/// field tags and lengths around it, rounded up.
const PER_BLOB: u64 = 96;
/// One `Write` message's data.
const CHUNK: usize = 1 << 20;
/// Requests in flight at once.
const PARALLEL: usize = 4;
/// gRPC frames each message with a flag byte and a 4-byte length.
const FRAME: u64 = 5;
/// Rounds of FindMissingTree before giving up: one per tree level, and a few more.
const MAX_ROUNDS: usize = 300;

/// What an upload sent.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    /// The root Directory of the context as uploaded.
    pub(crate) root: Digest,
    /// The `.dockerignore` patterns the build applies (the server is to apply them again).
    pub(crate) ignore_patterns: Vec<String>,
    /// Files in the uploaded tree.
    pub(crate) files: u64,
    /// Every request message's encoded size with its gRPC frame, blob data included (HTTP/2
    /// and TLS framing not counted).
    pub(crate) bytes_sent: u64,
    /// File blobs sent.
    pub(crate) blobs_sent: u64,
    /// Directory messages sent.
    pub(crate) dirs_sent: u64,
}

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    blobs: AtomicU64,
    dirs: AtomicU64,
}

impl Counters {
    fn request(&self, message: &impl prost::Message) {
        self.bytes
            .fetch_add(message.encoded_len() as u64 + FRAME, Ordering::Relaxed);
    }
}

/// Uploads the part of the context at `context_dir` that the Dockerfile can read, and returns
/// its root. The stat cache lives in `stat_cache_dir`, one file per context directory.
pub(crate) async fn upload<C>(
    cas: CasClient<C>,
    context_dir: &Path,
    dockerfile_text: &str,
    dockerfile_path: Option<&Path>,
    stat_cache_dir: &Path,
) -> anyhow::Result<Uploaded>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<StdError>,
    C::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let context_dir = context_dir.to_path_buf();
    let dockerfile_text = dockerfile_text.to_owned();
    let dockerfile_path = dockerfile_path.map(Path::to_path_buf);
    let stat_cache_dir = stat_cache_dir.to_path_buf();
    let (tree, ignore_patterns) = tokio::task::spawn_blocking(move || {
        prepare(
            &context_dir,
            &dockerfile_text,
            dockerfile_path.as_deref(),
            &stat_cache_dir,
        )
    })
    .await
    .context("the context hashing task failed")??;
    let tree = Arc::new(tree);
    let counters = Arc::new(Counters::default());
    let mut cas = cas;
    let mut rounds = 0;
    loop {
        let request = FindMissingTreeRequest {
            root: Some(tree.root.clone()),
        };
        counters.request(&request);
        let missing = cas
            .find_missing_tree(request)
            .await
            .context("asking the server which blobs of the context it lacks")?
            .into_inner()
            .missing_blob_digests;
        if missing.is_empty() {
            break;
        }
        rounds += 1;
        if rounds > MAX_ROUNDS {
            bail!(
                "the server still lacks {} blobs of context tree {} after {MAX_ROUNDS} rounds \
                 of uploads",
                missing.len(),
                tree.root.hash
            );
        }
        send(&cas, &tree, &missing, &counters).await?;
    }
    Ok(Uploaded {
        root: tree.root.clone(),
        ignore_patterns,
        files: tree.files,
        bytes_sent: counters.bytes.load(Ordering::Relaxed),
        blobs_sent: counters.blobs.load(Ordering::Relaxed),
        dirs_sent: counters.dirs.load(Ordering::Relaxed),
    })
}

/// Reads the ignore file, selects and hashes the context; saves the stat cache.
fn prepare(
    context_dir: &Path,
    dockerfile_text: &str,
    dockerfile_path: Option<&Path>,
    stat_cache_dir: &Path,
) -> anyhow::Result<(Tree, Vec<String>)> {
    let patterns: Vec<String> =
        hoist_parser::ignore::read_dockerignore_patterns(context_dir, dockerfile_path)?
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.text)
            .collect();
    let ignore = hoist_parser::ignore::Matcher::new(patterns.iter().cloned())
        .context("reading the context's .dockerignore")?;
    let abs = fs_err::canonicalize(context_dir)?;
    // Named as a local build names its context's cache, so the two share it.
    let key = hoist_cache::sha256_of(abs.as_os_str().as_encoded_bytes());
    let cache_path = stat_cache_dir.join(format!("{}.v2", key.digest()));
    let cache = StatCache::load(&cache_path);
    let scope = tree::scope(dockerfile_text);
    let tree = tree::build(&abs, &scope, &ignore, &cache)?;
    // Only a cache: failing to save it costs a rehash next time.
    let _ = cache.save(&cache_path);
    Ok((tree, patterns))
}

/// Sends the blobs the server named: big ones each in a stream, the others in batches.
async fn send<C>(
    cas: &CasClient<C>,
    tree: &Arc<Tree>,
    missing: &[Digest],
    counters: &Arc<Counters>,
) -> anyhow::Result<()>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<StdError>,
    C::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut big = Vec::new();
    let mut batches: Vec<Vec<String>> = vec![Vec::new()];
    let mut batch_bytes = 0;
    for digest in missing {
        let Some((_, blob)) = tree.blobs.get(&digest.hash) else {
            bail!(
                "the server asks for blob sha256:{} which is not in context tree {}",
                digest.hash,
                tree.root.hash
            );
        };
        let size = match blob {
            Blob::File { size, .. } => *size,
            Blob::Directory(bytes) => bytes.len() as u64,
        };
        if size > BIG_BLOB {
            big.push(digest.hash.clone());
            continue;
        }
        // What the blob adds to the encoded request: its data, digest and framing.
        let cost = size + PER_BLOB;
        if batch_bytes + cost > BATCH_BYTES {
            batches.push(Vec::new());
            batch_bytes = 0;
        }
        batch_bytes += cost;
        if let Some(last) = batches.last_mut() {
            last.push(digest.hash.clone());
        }
    }
    // Small blobs go in batches, big ones streamed; at most PARALLEL requests at once.
    enum Upload {
        Batch(Vec<String>),
        Stream(String),
    }
    let uploads = batches
        .into_iter()
        .filter(|b| !b.is_empty())
        .map(Upload::Batch)
        .chain(big.into_iter().map(Upload::Stream));
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for upload in uploads {
        let (cas, tree, counters, limit) = (
            cas.clone(),
            Arc::clone(tree),
            Arc::clone(counters),
            Arc::clone(&limit),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            match upload {
                Upload::Batch(batch) => send_batch(cas, &tree, batch, &counters).await,
                Upload::Stream(hash) => send_stream(cas, &tree, &hash, &counters).await,
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an upload task failed")??;
    }
    Ok(())
}

async fn send_batch<C>(
    mut cas: CasClient<C>,
    tree: &Arc<Tree>,
    hashes: Vec<String>,
    counters: &Counters,
) -> anyhow::Result<()>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
    C::Future: Send,
    C::Error: Into<StdError>,
    C::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let read_tree = Arc::clone(tree);
    let (requests, files, dirs) = tokio::task::spawn_blocking(move || {
        let mut requests = Vec::with_capacity(hashes.len());
        let (mut files, mut dirs) = (0, 0);
        for hash in &hashes {
            let Some((digest, blob)) = read_tree.blobs.get(hash) else {
                continue;
            };
            let data = match blob {
                Blob::File { path, .. } => {
                    files += 1;
                    fs_err::read(path)?
                }
                Blob::Directory(bytes) => {
                    dirs += 1;
                    bytes.clone()
                }
            };
            requests.push(batch_update_blobs_request::Request {
                digest: Some(digest.clone()),
                data,
            });
        }
        anyhow::Ok((requests, files, dirs))
    })
    .await??;
    let request = BatchUpdateBlobsRequest { requests };
    counters.request(&request);
    let responses = cas
        .batch_update_blobs(request)
        .await
        .context("uploading a batch of context files")?
        .into_inner()
        .responses;
    if let Some(response) = responses.iter().find(|r| r.code != 0) {
        let hash = response.digest.as_ref().map_or("", |d| d.hash.as_str());
        let what = match tree.blobs.get(hash) {
            Some((_, Blob::File { path, .. })) => format!("{}", path.display()),
            _ => "a directory of the context".to_owned(),
        };
        bail!(
            "the server refused {what} (sha256:{hash}): {}; if the file changed while it was \
             uploaded, run the build again",
            response.message
        );
    }
    counters.blobs.fetch_add(files, Ordering::Relaxed);
    counters.dirs.fetch_add(dirs, Ordering::Relaxed);
    Ok(())
}

/// Streams one big blob, from where an earlier, interrupted upload of it stopped. Another
/// client's upload of the same blob that stopped short (the server says Aborted) is resumed
/// where it stopped.
async fn send_stream<C>(
    cas: CasClient<C>,
    tree: &Arc<Tree>,
    hash: &str,
    counters: &Arc<Counters>,
) -> anyhow::Result<()>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    C::Future: Send,
    C::Error: Into<StdError>,
    C::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let mut attempt = 1;
    loop {
        match send_stream_once(cas.clone(), tree, hash, counters).await {
            Err(e)
                if attempt < 3
                    && e.chain().any(|c| {
                        c.downcast_ref::<tonic::Status>()
                            .is_some_and(|s| s.code() == tonic::Code::Aborted)
                    }) =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn send_stream_once<C>(
    mut cas: CasClient<C>,
    tree: &Arc<Tree>,
    hash: &str,
    counters: &Arc<Counters>,
) -> anyhow::Result<()>
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
    C::Future: Send,
    C::Error: Into<StdError>,
    C::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    let Some((digest, blob)) = tree.blobs.get(hash).cloned() else {
        bail!("blob sha256:{hash} is not in the context tree");
    };
    let query = QueryWriteStatusRequest {
        digest: Some(digest.clone()),
    };
    counters.request(&query);
    let status = cas
        .query_write_status(query)
        .await
        .context("asking the server how much of a context file it has")?
        .into_inner();
    if status.complete {
        return Ok(());
    }
    let start = u64::try_from(status.committed_size).unwrap_or(0);
    let (sender, receiver) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let reader_counters = Arc::clone(counters);
    let reader_digest = digest.clone();
    let is_dir = matches!(blob, Blob::Directory(_));
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::{Read as _, Seek as _};
        let mut source: Box<dyn std::io::Read> = match &blob {
            Blob::File { path, .. } => {
                let mut file = fs_err::File::open(path)?;
                file.seek(std::io::SeekFrom::Start(start))?;
                Box::new(file)
            }
            Blob::Directory(bytes) => Box::new(std::io::Cursor::new(
                bytes[usize::try_from(start)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len())..]
                    .to_vec(),
            )),
        };
        let size = u64::try_from(reader_digest.size_bytes).unwrap_or(0);
        let mut offset = start;
        let mut first = true;
        loop {
            let mut data = vec![0u8; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                let got = source.read(&mut data[n..])?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            data.truncate(n);
            let finish = offset + n as u64 >= size || n == 0;
            let request = WriteRequest {
                digest: first.then(|| reader_digest.clone()),
                write_offset: i64::try_from(offset).unwrap_or(i64::MAX),
                data,
                finish_write: finish,
            };
            first = false;
            reader_counters.request(&request);
            offset += n as u64;
            if sender.blocking_send(request).is_err() || finish {
                return Ok(());
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let written = cas.write(stream).await;
    reader.await??;
    written.with_context(|| {
        format!(
            "uploading sha256:{} ({} bytes)",
            digest.hash, digest.size_bytes
        )
    })?;
    if is_dir {
        counters.dirs.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.blobs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use hoist_server::cas::{CasLimits, CasStore};
    use hoist_worker::{ContextSource as _, LocalContext};

    use super::*;

    struct Served {
        dir: tempfile::TempDir,
        store: Arc<CasStore>,
        socket: std::path::PathBuf,
    }

    async fn serve() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(CasStore::open(&dir.path().join("cas"), CasLimits::default()).unwrap());
        let socket = dir.path().join("cas.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let service = Arc::clone(&store).service();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        Served { dir, store, socket }
    }

    async fn send(s: &Served, context: &Path, dockerfile: &str) -> Uploaded {
        let channel = crate::cmd::debug::unix_channel(&s.socket).await.unwrap();
        upload(
            CasClient::new(channel),
            context,
            dockerfile,
            None,
            &s.dir.path().join("client-stat"),
        )
        .await
        .unwrap()
    }

    /// A context with what a build can meet: nested directories, an empty one, modes with
    /// setuid and sticky, a symlink, a FIFO, a big file (streamed) and an ignored file.
    fn context() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs_err::create_dir_all(d.join("a/b")).unwrap();
        fs_err::create_dir_all(d.join("empty")).unwrap();
        fs_err::write(d.join("a/x"), "x\n").unwrap();
        fs_err::write(d.join("a/b/y"), "y\n").unwrap();
        fs_err::write(d.join("secret.key"), "no\n").unwrap();
        fs_err::write(d.join(".dockerignore"), "*.key\n").unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        fs_err::write(d.join("a/big"), big).unwrap();
        fs_err::set_permissions(d.join("a/x"), std::fs::Permissions::from_mode(0o4750)).unwrap();
        fs_err::set_permissions(d.join("empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("../a/x", d.join("a/b/link")).unwrap();
        // Hardlinks, within a directory and across two: COPY keeps them.
        fs_err::hard_link(d.join("a/b/y"), d.join("a/b/y2")).unwrap();
        fs_err::hard_link(d.join("a/b/y"), d.join("a/y3")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        dir
    }

    const COPY_ALL: &str = "FROM scratch\nCOPY . /src\n";

    #[tokio::test(flavor = "multi_thread")]
    async fn an_uploaded_context_checks_out_as_the_same_files() {
        let s = serve().await;
        let ctx = context();
        let up = send(&s, ctx.path(), COPY_ALL).await;
        assert_eq!(up.ignore_patterns, ["*.key"]);
        // a/x, a/b/y (and its two hardlinks), a/big, .dockerignore; not secret.key. The links
        // need no blob of their own.
        assert_eq!((up.files, up.blobs_sent), (6, 4));
        let store = Arc::clone(&s.store);
        let root = up.root.clone();
        let lease = tokio::task::spawn_blocking(move || store.checkout(&root))
            .await
            .unwrap()
            .unwrap();
        let tree = lease.path();
        for file in ["a/x", "a/b/y", "a/big", ".dockerignore"] {
            let (sent, got) = (ctx.path().join(file), tree.join(file));
            assert_eq!(
                fs_err::read(&sent).unwrap(),
                fs_err::read(&got).unwrap(),
                "{file}"
            );
            let (sent, got) = (
                fs_err::metadata(&sent).unwrap(),
                fs_err::metadata(&got).unwrap(),
            );
            assert_eq!(sent.mode(), got.mode(), "{file}");
            assert_eq!(
                (sent.mtime(), sent.mtime_nsec()),
                (got.mtime(), got.mtime_nsec()),
                "{file}"
            );
            assert_eq!(
                got.nlink(),
                sent.nlink(),
                "{file}: a checked-out file shares an inode it should not, or misses a link"
            );
        }
        // The hardlinks are links of each other again, and of nothing else.
        let inode = |f: &str| fs_err::metadata(tree.join(f)).unwrap().ino();
        assert_eq!(inode("a/b/y"), inode("a/b/y2"));
        assert_eq!(inode("a/b/y"), inode("a/y3"));
        assert_ne!(inode("a/b/y"), inode("a/x"));
        assert!(
            !tree.join("secret.key").exists(),
            ".dockerignore was not applied"
        );
        assert_eq!(
            fs_err::metadata(tree.join("empty")).unwrap().mode(),
            fs_err::metadata(ctx.path().join("empty")).unwrap().mode()
        );
        assert_eq!(
            fs_err::read_link(tree.join("a/b/link")).unwrap(),
            Path::new("../a/x")
        );
        let fifo = fs_err::symlink_metadata(tree.join("fifo")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        assert_eq!(fifo.mode() & 0o7777, 0o640);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unchanged_context_costs_one_question_and_an_edit_its_file_and_parents() {
        let s = serve().await;
        let ctx = context();
        let first = send(&s, ctx.path(), COPY_ALL).await;
        let again = send(&s, ctx.path(), COPY_ALL).await;
        assert_eq!(again.root, first.root);
        assert_eq!((again.blobs_sent, again.dirs_sent), (0, 0));
        assert!(again.bytes_sent < 200, "{} bytes sent", again.bytes_sent);

        fs_err::write(ctx.path().join("a/b/y"), "edited\n").unwrap();
        let edited = send(&s, ctx.path(), COPY_ALL).await;
        assert_ne!(edited.root, first.root);
        // The file, and the directories a/b, a and the root above it.
        assert_eq!((edited.blobs_sent, edited.dirs_sent), (1, 3));
        assert!(edited.bytes_sent < 4000, "{} bytes sent", edited.bytes_sent);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn only_what_the_dockerfile_can_copy_is_sent() {
        let s = serve().await;
        let ctx = context();
        fs_err::create_dir_all(ctx.path().join("other")).unwrap();
        fs_err::write(ctx.path().join("other/z"), "z\n").unwrap();
        std::os::unix::fs::symlink("other", ctx.path().join("via")).unwrap();
        let up = send(
            &s,
            ctx.path(),
            "FROM scratch\nCOPY a/b /b\nRUN --mount=source=via/z,target=/z true\n",
        )
        .await;
        let store = Arc::clone(&s.store);
        let tree = tokio::task::spawn_blocking(move || store.checkout(&up.root))
            .await
            .unwrap()
            .unwrap();
        let t = tree.path();
        assert!(t.join("a/b/y").exists());
        // The bind mount's source goes through a link: the link and its target are sent.
        assert!(t.join("via").is_symlink() && t.join("other/z").exists());
        assert!(!t.join("a/x").exists() && !t.join("a/big").exists() && !t.join("fifo").exists());
    }

    /// Batches were once sized by their data alone: thousands of small files made a request
    /// past gRPC's 4 MiB message limit, which the server refused.
    #[tokio::test(flavor = "multi_thread")]
    async fn many_small_files_fit_in_batches_the_server_accepts() {
        let s = serve().await;
        let ctx = tempfile::tempdir().unwrap();
        for d in 0..16 {
            let dir = ctx.path().join(format!("d{d:02}"));
            fs_err::create_dir(&dir).unwrap();
            for f in 0..1000u32 {
                let mut body = format!("{d:02}/{f:04}\n").into_bytes();
                body.resize(200, b'.');
                fs_err::write(dir.join(format!("f{f:04}")), body).unwrap();
            }
        }
        let up = send(&s, ctx.path(), COPY_ALL).await;
        assert_eq!((up.files, up.blobs_sent), (16_000, 16_000));
    }

    /// A cache key must not depend on where the build runs: the content key of a selection of
    /// a local context equals that of the same context uploaded and checked out.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_remote_context_has_the_content_keys_of_the_local_one() {
        let s = serve().await;
        let ctx = context();
        let up = send(&s, ctx.path(), COPY_ALL).await;
        let state = tempfile::tempdir().unwrap();
        let store = Arc::clone(&s.store);
        let root = up.root.clone();
        let lease = tokio::task::spawn_blocking(move || store.checkout(&root))
            .await
            .unwrap()
            .unwrap();
        let remote = hoist_server::context::RemoteContext::new(
            lease,
            up.ignore_patterns.clone(),
            state.path(),
        );
        let local = LocalContext::new(ctx.path(), state.path());
        let ignore =
            hoist_parser::ignore::Matcher::new(remote.ignore_patterns(None).unwrap()).unwrap();
        for sources in [vec!["."], vec!["a"], vec!["a/b/*", "fifo"], vec!["empty"]] {
            let sources: Vec<String> = sources.into_iter().map(str::to_owned).collect();
            let key = |c: &dyn hoist_worker::ContextSource| {
                let selection = c.select(&sources, &ignore).unwrap();
                c.content_key(&selection).unwrap().key
            };
            assert_eq!(key(&local), key(&remote), "{sources:?}");
        }
    }
}
