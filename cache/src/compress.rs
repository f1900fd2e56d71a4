//! Compression: detection by magic bytes, decompressing readers, and the streaming layer writer
//! that compresses (gzip in parallel pigz-style, or multithreaded zstd) while it hashes.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

use crate::digest::sha256_digest;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (RFC 1952), the default for layers.
    #[default]
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
}

impl Compression {
    /// Detects the compression of a blob from its first bytes; anything that is neither gzip
    /// nor zstd is taken as a plain tar (the tar reader then judges it).
    #[must_use]
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// The default level for this compression (gzip 6 as `gzip` and Go use, zstd 3).
    #[must_use]
    pub fn default_level(self) -> i32 {
        match self {
            Self::None => 0,
            Self::Gzip => 6,
            Self::Zstd => 3,
        }
    }
}

/// Compression choice, level and worker threads for writing a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionOptions {
    /// The codec.
    pub compression: Compression,
    /// The level; `None` means the codec's default. gzip takes 0..=9, zstd 1..=22.
    pub level: Option<i32>,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for CompressionOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
            threads: 0,
        }
    }
}

impl CompressionOptions {
    /// Options for `compression` at its default level on every core.
    #[must_use]
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            ..Self::default()
        }
    }

    fn thread_count(&self) -> usize {
        if self.threads == 0 {
            thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            self.threads
        }
    }
}

/// Wraps `reader` in the decompressor its magic bytes call for (gzip, zstd or none).
///
/// gzip streams with several members (as pigz and this crate's writer may produce) are read
/// whole.
///
/// # Errors
/// Reading the magic bytes or setting up the zstd decoder fails.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let magic = buffered.fill_buf()?;
    let compression = Compression::detect(magic);
    let out: Box<dyn Read + 'a> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Compression::None => Box::new(buffered),
    };
    Ok((compression, out))
}

/// A `Write` sink that counts and hashes what passes through it.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            sha256_digest(&self.hasher.finalize().into()),
            self.size,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `Read` wrapper that hashes and counts what is read through it.
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    pub(crate) fn finish(self) -> (Digest, u64) {
        (sha256_digest(&self.hasher.finalize().into()), self.size)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// The identities of a layer written in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: Digest,
    /// sha256 of the compressed blob: the manifest's layer digest.
    pub digest: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
    /// The codec the blob was written with.
    pub compression: Compression,
}

enum Encoder<W: Write> {
    Plain(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(buf),
            Self::Gzip(g) => g.write_all(buf),
            Self::Zstd(z) => z.write_all(buf),
        }
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Self::Plain(w) => Ok(w),
            Self::Gzip(g) => g.finish(),
            Self::Zstd(z) => z.finish(),
        }
    }
}

/// Bytes per zstd worker job.
const ZSTD_JOB: u32 = 2 * 1024 * 1024;

/// Bytes per hand-off between the pipeline's threads.
const CHUNK: usize = 1024 * 1024;
/// Chunks queued between two stages; with `CHUNK` this bounds memory per stage.
const QUEUE: usize = 4;

type StageResult<W> = io::Result<(W, Digest, u64, Digest, u64)>;

/// Compresses a tar stream into `W` while computing the diffID (uncompressed sha256), the
/// compressed digest and size, all in one pass with bounded memory.
///
/// The work runs as a pipeline so the cores overlap: the caller's thread produces the tar;
/// a stage thread hashes the uncompressed bytes and feeds the compressor (whose own workers
/// compress in parallel); an output thread hashes the compressed bytes and writes them to `W`.
/// Chunks of 1 MiB move through bounded queues, so memory does not grow with the layer.
pub struct LayerWriter<W: Write + Send + 'static> {
    buf: Vec<u8>,
    to_stage: Option<mpsc::SyncSender<Vec<u8>>>,
    recycled: mpsc::Receiver<Vec<u8>>,
    stage: Option<thread::JoinHandle<StageResult<W>>>,
    compression: Compression,
}

impl<W: Write + Send + 'static> std::fmt::Debug for LayerWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWriter")
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// Collects compressed output into chunks for the output thread.
struct ChunkSender {
    buf: Vec<u8>,
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx
                .send(chunk)
                .map_err(|_| io::Error::other("layer output thread stopped"))?;
        }
        Ok(())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> LayerWriter<W> {
    /// Starts a layer writer into `out`.
    ///
    /// # Errors
    /// The zstd encoder rejects the level or thread count, or a thread cannot be spawned.
    pub fn new(out: W, options: &CompressionOptions) -> io::Result<Self> {
        let level = options.level.unwrap_or(options.compression.default_level());
        let threads = options.thread_count();
        let compression = options.compression;

        let (out_tx, out_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let output = thread::Builder::new()
            .name("layer-output".into())
            .spawn(move || {
                // An uncompressed blob is the tar itself: its digest is the diffID, which the
                // stage thread computes, so it is not hashed twice.
                let hash = compression != Compression::None;
                let mut sink = HashingWriter::new(out);
                let mut size = 0u64;
                for chunk in out_rx {
                    if hash {
                        sink.write_all(&chunk)?;
                    } else {
                        sink.inner.write_all(&chunk)?;
                        size += chunk.len() as u64;
                    }
                }
                sink.flush()?;
                let (w, digest, hashed_size) = sink.finish();
                Ok::<_, io::Error>((
                    w,
                    hash.then_some(digest),
                    if hash { hashed_size } else { size },
                ))
            })?;

        let sender = ChunkSender {
            buf: Vec::with_capacity(CHUNK),
            tx: out_tx,
        };
        let mut encoder = match compression {
            Compression::None => Encoder::Plain(sender),
            Compression::Gzip => {
                let level = u32::try_from(level.clamp(0, 9)).unwrap_or(6);
                Encoder::Gzip(ParallelGzip::new(sender, level, threads))
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(sender, level)?;
                // Always the multithreaded engine, even with one worker: zstd's output is the
                // same for every worker count >= 1 but differs from single-threaded mode, and a
                // layer digest must not depend on the machine's core count.
                {
                    enc.multithread(u32::try_from(threads.max(1)).unwrap_or(1))?;
                    // Jobs default to several windows each (8+ MiB at level 3); 2 MiB jobs keep
                    // both workers busy on smaller layers and cut peak memory, at a ratio cost
                    // well under 1%.
                    enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                }
                Encoder::Zstd(enc)
            }
        };

        let (to_stage, stage_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (recycle_tx, recycled) = mpsc::sync_channel::<Vec<u8>>(QUEUE + 2);
        let stage = thread::Builder::new()
            .name("layer-compress".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                let run = (|| {
                    for chunk in stage_rx {
                        hasher.update(&chunk);
                        size += chunk.len() as u64;
                        encoder.write_all(&chunk)?;
                        // The writer may be gone or its pool full; then the buffer is just freed.
                        let _ = recycle_tx.try_send(chunk);
                    }
                    let mut sender = encoder.finish()?;
                    sender.send()?;
                    Ok::<_, io::Error>(())
                })();
                // `encoder` (and with it the output queue) is dropped by now on both paths, so the
                // output thread sees the end of its input and finishes.
                let joined = output
                    .join()
                    .map_err(|_| io::Error::other("layer output thread panicked"))?;
                // When writing the blob failed (a full disk), compressing stopped only because
                // the output did: the output's error is the cause the user must see.
                let (w, digest, blob_size) = joined?;
                run?;
                let diff_id = sha256_digest(&hasher.finalize().into());
                let digest = digest.unwrap_or_else(|| diff_id.clone());
                Ok((w, diff_id, size, digest, blob_size))
            })?;

        Ok(Self {
            buf: Vec::with_capacity(CHUNK),
            to_stage: Some(to_stage),
            recycled,
            stage: Some(stage),
            compression,
        })
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let fresh = self.recycled.try_recv().map_or_else(
            |_| Vec::with_capacity(CHUNK),
            |mut v| {
                v.clear();
                v
            },
        );
        let chunk = std::mem::replace(&mut self.buf, fresh);
        let sent = self.to_stage.as_ref().map(|tx| tx.send(chunk));
        if matches!(sent, Some(Ok(()))) {
            return Ok(());
        }
        // The stage stopped early: its result holds the real error.
        Err(self
            .join_stage()
            .err()
            .unwrap_or_else(|| io::Error::other("layer pipeline stopped")))
    }

    fn join_stage(&mut self) -> StageResult<W> {
        self.to_stage = None;
        let handle = self
            .stage
            .take()
            .ok_or_else(|| io::Error::other("layer writer finished"))?;
        handle
            .join()
            .map_err(|_| io::Error::other("layer compress thread panicked"))?
    }

    /// Flushes the pipeline and returns the sink with the layer's digests.
    ///
    /// # Errors
    /// Compressing or writing failed anywhere in the pipeline.
    pub fn finish(mut self) -> io::Result<(W, LayerDigests)> {
        self.send_chunk()?;
        let (out, diff_id, uncompressed_size, digest, size) = self.join_stage()?;
        let digests = LayerDigests {
            diff_id,
            digest,
            size,
            uncompressed_size,
            compression: self.compression,
        };
        Ok((out, digests))
    }
}

impl<W: Write + Send + 'static> Drop for LayerWriter<W> {
    fn drop(&mut self) {
        if self.stage.is_some() {
            // Abandoned without `finish`: let the threads drain and stop.
            let _ = self.join_stage();
        }
    }
}

impl<W: Write + Send + 'static> Write for LayerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunk boundaries never change the output, but flushing mid-layer gains nothing; the
        // pipeline is flushed as a whole by `finish`.
        Ok(())
    }
}

/// Uncompressed bytes per gzip block handed to one worker.
const GZIP_BLOCK: usize = 1024 * 1024;
/// Deflate's window: each block is primed with this much of the previous one, as pigz does,
/// so splitting costs almost no ratio.
const DICT: usize = 32 * 1024;

struct GzJob {
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
    reply: mpsc::SyncSender<io::Result<GzBlock>>,
}

struct GzBlock {
    deflated: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// The worker threads of a `ParallelGzip`; dropping the pool closes the job queue and joins
/// the workers, on success and on error alike.
struct GzPool {
    jobs: Option<mpsc::Sender<GzJob>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl GzPool {
    fn new(threads: usize, level: u32) -> Self {
        let (tx, rx) = mpsc::channel::<GzJob>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                thread::spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let result = deflate_block(&job.data, &job.dict, job.last, level);
                        // The writer may have given up after an error elsewhere; then nobody
                        // waits for this block.
                        let _ = job.reply.send(result);
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(tx),
            workers,
        }
    }
}

impl Drop for GzPool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// gzip compressed in parallel: the input is cut into blocks, each deflated by a worker with
/// the previous block's last 32 KiB as its dictionary and ended with a sync flush, so the
/// concatenated blocks form one ordinary deflate stream in a single gzip member (the layout
/// pigz uses). CRCs are combined in order. At most `2 × threads` blocks are in flight, so
/// memory stays bounded whatever the layer size.
struct ParallelGzip<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    dict: Vec<u8>,
    crc: crc32fast::Hasher,
    isize: u64,
    header_written: bool,
    pending: VecDeque<mpsc::Receiver<io::Result<GzBlock>>>,
    pool: Option<GzPool>,
    max_pending: usize,
}

impl<W: Write> ParallelGzip<W> {
    fn new(out: W, level: u32, threads: usize) -> Self {
        let threads = threads.max(1);
        Self {
            out,
            level,
            buf: Vec::with_capacity(GZIP_BLOCK),
            dict: Vec::new(),
            crc: crc32fast::Hasher::new(),
            isize: 0,
            header_written: false,
            pending: VecDeque::new(),
            // One core: compress inline, no thread hand-off.
            pool: (threads > 1).then(|| GzPool::new(threads, level)),
            max_pending: 2 * threads,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // A fixed header: no name, no mtime, OS "unknown", so bytes depend on content only.
            self.out
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        self.write_header()?;
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_BLOCK));
        let next_dict = data[data.len().saturating_sub(DICT)..].to_vec();
        let dict = std::mem::replace(&mut self.dict, next_dict);
        let (reply, rx) = mpsc::sync_channel(1);
        match self.pool.as_ref().and_then(|p| p.jobs.as_ref()) {
            Some(jobs) => jobs
                .send(GzJob {
                    data,
                    dict,
                    last,
                    reply,
                })
                .map_err(|_| io::Error::other("gzip workers stopped"))?,
            None => reply
                .send(deflate_block(&data, &dict, last, self.level))
                .map_err(|_| io::Error::other("gzip block lost"))?,
        }
        self.pending.push_back(rx);
        while self.pending.len() >= self.max_pending {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let block = rx
            .recv()
            .map_err(|_| io::Error::other("gzip worker died"))??;
        self.out.write_all(&block.deflated)?;
        self.crc.combine(&block.crc);
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        let crc = self.crc.clone().finalize();
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.to_le_bytes());
        // ISIZE is the input size modulo 2^32 (RFC 1952 section 2.3.1).
        trailer[4..].copy_from_slice(&((self.isize & 0xffff_ffff) as u32).to_le_bytes());
        self.out.write_all(&trailer)?;
        drop(self.pool.take());
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_BLOCK - self.buf.len();
        let n = buf.len().min(room);
        self.buf.extend_from_slice(&buf[..n]);
        self.isize += n as u64;
        if self.buf.len() == GZIP_BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes per classification unit inside a gzip block.
const SEGMENT: usize = 64 * 1024;
/// Byte entropy (bits per byte) above which a segment is stored rather than deflated.
/// Random or already-compressed data sits at 7.99+; Huffman coding cannot gain 0.3% there and
/// LZ matches in such data are rare, while deflate's match search on it is at its slowest.
/// zstd and Go's klauspost deflate skip incompressible input the same way.
const STORE_ENTROPY: f64 = 7.975;

fn incompressible(segment: &[u8]) -> bool {
    if segment.len() < 4096 {
        return false;
    }
    let mut counts = [0u32; 256];
    for b in segment {
        counts[usize::from(*b)] += 1;
    }
    let n = segment.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > STORE_ENTROPY
}

/// Appends `data` as raw deflate stored blocks (RFC 1951 section 3.2.4); the stream must be
/// byte-aligned, which a sync flush guarantees. `final_block` sets BFINAL on the last one.
fn stored_blocks(out: &mut Vec<u8>, data: &[u8], final_block: bool) {
    let mut pieces = data.chunks(65_535).peekable();
    if data.is_empty() {
        out.extend_from_slice(&[u8::from(final_block), 0, 0, 0xff, 0xff]);
        return;
    }
    while let Some(piece) = pieces.next() {
        let last = final_block && pieces.peek().is_none();
        let len = u16::try_from(piece.len()).unwrap_or(u16::MAX);
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
}

/// Deflates one block as raw deflate, primed with `dict`; a non-final block ends byte-aligned
/// and not final (a sync flush) so the next block's output can follow it directly. Runs of
/// incompressible segments are written as stored blocks instead of being searched for matches.
fn deflate_block(data: &[u8], dict: &[u8], last: bool, level: u32) -> io::Result<GzBlock> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    // Consecutive segments of the same class form one run.
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, seg) in data.chunks(SEGMENT).enumerate() {
        let start = i * SEGMENT;
        let store = level > 0 && incompressible(seg);
        match runs.last_mut() {
            Some((_, end, s)) if *s == store => *end = start + seg.len(),
            _ => runs.push((start, start + seg.len(), store)),
        }
    }
    if runs.is_empty() {
        runs.push((0, 0, false));
    }
    let count = runs.len();
    for (i, (start, end, store)) in runs.into_iter().enumerate() {
        let final_run = last && i + 1 == count;
        if store {
            stored_blocks(&mut out, &data[start..end], final_run);
        } else {
            // The window before this run: the previous block's tail, then this block's bytes.
            let mut window = Vec::with_capacity(DICT);
            let from_data = &data[start.saturating_sub(DICT)..start];
            if from_data.len() < DICT {
                window
                    .extend_from_slice(&dict[dict.len().saturating_sub(DICT - from_data.len())..]);
            }
            window.extend_from_slice(from_data);
            deflate_run(&mut out, &data[start..end], &window, final_run, level)?;
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    Ok(GzBlock { deflated: out, crc })
}

fn deflate_run(
    out: &mut Vec<u8>,
    data: &[u8],
    dict: &[u8],
    last: bool,
    level: u32,
) -> io::Result<()> {
    use flate2::{Compress, FlushCompress, Status};
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    out.reserve(data.len() + data.len() / 8 + 1024);
    loop {
        let consumed = usize::try_from(c.total_in())
            .unwrap_or(usize::MAX)
            .min(data.len());
        let status = c
            .compress_vec(&data[consumed..], out, flush)
            .map_err(io::Error::other)?;
        let consumed = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once all input is taken and output space is left over.
            Status::Ok | Status::BufError => {
                !last && consumed >= data.len() && out.len() < out.capacity()
            }
        };
        if done {
            return Ok(());
        }
        out.reserve(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 3 == 0 {
                    (x >> 24) as u8
                } else {
                    b"layer"[i % 5]
                }
            })
            .collect()
    }

    fn roundtrip(opts: CompressionOptions, input: &[u8]) -> (LayerDigests, Vec<u8>) {
        let mut w = LayerWriter::new(Vec::new(), &opts).unwrap();
        for chunk in input.chunks(70_001) {
            w.write_all(chunk).unwrap();
        }
        let (blob, d) = w.finish().unwrap();
        let mut back = Vec::new();
        {
            let (c, mut r) = decompress(&blob[..]).unwrap();
            assert_eq!(c, opts.compression);
            r.read_to_end(&mut back).unwrap();
        }
        assert_eq!(back, input);
        (d, blob)
    }

    #[test]
    fn parallel_gzip_is_one_valid_member_and_digests_match() {
        for threads in [1, 2, 3] {
            for len in [0, 1, GZIP_BLOCK, 3 * GZIP_BLOCK + 17] {
                let input = sample(len);
                let (d, blob) = roundtrip(
                    CompressionOptions {
                        compression: Compression::Gzip,
                        level: None,
                        threads,
                    },
                    &input,
                );
                // A plain single-member decoder must read all of it, as Go's would.
                let mut single = Vec::new();
                flate2::read::GzDecoder::new(&blob[..])
                    .read_to_end(&mut single)
                    .unwrap();
                assert_eq!(single, input);
                assert_eq!(d.diff_id, sha256_digest(&Sha256::digest(&input).into()));
                assert_eq!(d.digest, sha256_digest(&Sha256::digest(&blob).into()));
                assert_eq!(d.size, blob.len() as u64);
                assert_eq!(d.uncompressed_size, len as u64);
            }
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn incompressible_runs_are_stored_and_mixed_input_still_roundtrips() {
        let mut input = random(GZIP_BLOCK + GZIP_BLOCK / 2, 7);
        input.extend(sample(GZIP_BLOCK));
        input.extend(random(100_000, 9));
        input.extend(sample(SEGMENT + 1));
        for threads in [1, 2] {
            let opts = CompressionOptions {
                compression: Compression::Gzip,
                level: None,
                threads,
            };
            let (d, blob) = roundtrip(opts, &input);
            let mut single = Vec::new();
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut single)
                .unwrap();
            assert_eq!(single, input);
            assert_eq!(d.diff_id, sha256_digest(&Sha256::digest(&input).into()));
        }
        let noise = random(3 * GZIP_BLOCK, 3);
        let (d, _) = roundtrip(CompressionOptions::new(Compression::Gzip), &noise);
        assert!(
            d.size < noise.len() as u64 + 1024,
            "stored blocks cost 5 bytes per 64 KiB"
        );
        assert!(incompressible(&noise[..SEGMENT]));
        assert!(!incompressible(&sample(SEGMENT)));
    }

    #[test]
    fn gzip_output_does_not_depend_on_thread_count() {
        let input = sample(5 * GZIP_BLOCK / 2);
        let opts = |threads| CompressionOptions {
            compression: Compression::Gzip,
            level: None,
            threads,
        };
        let (a, _) = roundtrip(opts(1), &input);
        let (b, _) = roundtrip(opts(2), &input);
        assert_eq!(a.digest, b.digest);
    }

    #[test]
    fn zstd_and_plain_roundtrip() {
        let input = sample(2 * GZIP_BLOCK + 5);
        for compression in [Compression::Zstd, Compression::None] {
            let (d, blob) = roundtrip(CompressionOptions::new(compression), &input);
            assert_eq!(d.diff_id, sha256_digest(&Sha256::digest(&input).into()));
            if compression == Compression::None {
                assert_eq!(blob, input);
            }
        }
    }
}
