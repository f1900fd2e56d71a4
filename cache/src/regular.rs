//! Regular files of a context or a snapshot, opened without ever opening anything else, and
//! read or copied without reading their holes.
//!
//! A path that was a regular file when a tree was walked may be a FIFO or a device by the
//! time it is opened: opening a FIFO blocks until some writer comes, and a device such as
//! `/dev/zero` reads without end (or has side effects merely by being opened). So a file is
//! opened with `O_PATH` first, which opens nothing, checked with `fstat` to be the regular file
//! the walk saw, and only then opened for reading through `/proc/self/fd`, which reaches that
//! very inode.
//!
//! Holes: `SEEK_DATA`/`SEEK_HOLE` say where a sparse file keeps its data, so a copy writes only
//! the data and leaves the holes as holes, and a reader hands out zeros for a hole without a
//! read.

use std::fs::File;
use std::io::{self, Read, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// What a path was found to be instead of the regular file that was expected.
fn not_regular(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("expected a regular file, found {what}: it changed while the build read it"),
    )
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "another file"
    }
}

/// Opens `path` for reading when it is a regular file (not following a symlink at its end),
/// and when `expect` (device, inode) is given, that very file. Anything else is an error of
/// kind `InvalidData`, and is never opened. For trees that others may change meanwhile (a
/// build context); see [`open_owned`] for hoist's own.
pub(crate) fn open_regular(path: &Path, expect: Option<(u64, u64)>) -> io::Result<File> {
    let handle = File::from(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let meta = handle.metadata()?;
    if !meta.file_type().is_file() {
        return Err(not_regular(kind_of(&meta)));
    }
    if expect.is_some_and(|id| id != (meta.dev(), meta.ino())) {
        return Err(not_regular("another file in its place"));
    }
    let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
    match rustix::fs::open(
        reopen.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        // No /proc: open the path itself (which at worst opens what was swapped in).
        Err(Errno::NOENT) => open_owned(path, Some((meta.dev(), meta.ino()))),
        Err(e) => Err(e.into()),
    }
}

/// As [`open_regular`], for a tree that only hoist writes (a snapshot or a finished step's
/// upperdir), where nothing swaps files meanwhile: one `open` that cannot block on a FIFO
/// (`O_NONBLOCK`) and an `fstat` that checks what was opened, two system calls fewer a file.
pub(crate) fn open_owned(path: &Path, expect: Option<(u64, u64)>) -> io::Result<File> {
    let file = File::from(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(not_regular(kind_of(&meta)));
    }
    if expect.is_some_and(|id| id != (meta.dev(), meta.ino())) {
        return Err(not_regular("another file in its place"));
    }
    Ok(file)
}

/// What lies at an offset of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Data up to this offset.
    Data(u64),
    /// A hole (zeros) up to this offset.
    Hole(u64),
    /// The end of the file.
    End,
}

/// The run of data or hole that starts at `pos`. A filesystem without `SEEK_DATA` has data
/// everywhere.
fn run_at(file: &File, pos: u64) -> io::Result<Run> {
    let size = || file.metadata().map(|m| m.len());
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
        Ok(data) if data > pos => Ok(Run::Hole(data)),
        Ok(_) => match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(pos)) {
            Ok(hole) if hole > pos => Ok(Run::Data(hole)),
            Ok(_) | Err(Errno::INVAL) => Ok(Run::Data(size()?.max(pos + 1))),
            Err(Errno::NXIO) => Ok(Run::End),
            Err(e) => Err(e.into()),
        },
        // No data at or after `pos`: a hole up to the end, if the file goes on.
        Err(Errno::NXIO) => {
            let size = size()?;
            Ok(if pos < size {
                Run::Hole(size)
            } else {
                Run::End
            })
        }
        Err(Errno::INVAL) => {
            let size = size()?;
            Ok(if pos < size {
                Run::Data(size)
            } else {
                Run::End
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads a regular file as a stream of its bytes; a hole reads as zeros without touching the
/// disk. It reads to the file's end as it is then, so a file that grows or shrinks meanwhile
/// reads longer or shorter (callers that know the size check it).
#[derive(Debug)]
pub(crate) struct SparseReader {
    file: File,
    pos: u64,
    run: Run,
}

impl SparseReader {
    /// A reader of `file`, whose stat was `meta`.
    pub(crate) fn new(file: File, meta: &std::fs::Metadata) -> Self {
        // A file with as many blocks as bytes has no hole: it is read straight to its end,
        // without asking where its data is.
        let dense = meta.blocks().saturating_mul(512) >= meta.len();
        Self {
            file,
            pos: 0,
            run: if dense {
                Run::Data(u64::MAX)
            } else {
                Run::Data(0)
            },
        }
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.run {
                Run::Data(end) if self.pos < end => {
                    let want =
                        usize::try_from(end - self.pos).map_or(buf.len(), |n| n.min(buf.len()));
                    let n = self.file.read_at(&mut buf[..want], self.pos)?;
                    if n == 0 {
                        // The end (earlier than SEEK_HOLE said if the file shrank).
                        self.run = Run::End;
                    }
                    self.pos += n as u64;
                    return Ok(n);
                }
                Run::Hole(end) if self.pos < end => {
                    let n = usize::try_from(end - self.pos).map_or(buf.len(), |n| n.min(buf.len()));
                    buf[..n].fill(0);
                    self.pos += n as u64;
                    return Ok(n);
                }
                Run::End => return Ok(0),
                _ => self.run = run_at(&self.file, self.pos)?,
            }
        }
    }
}

/// Copies the regular file `src` into the new, empty file `dst`: data runs in the kernel
/// (`copy_file_range`, which may share extents), holes stay holes. Returns the bytes copied
/// (the file's size).
pub(crate) fn copy_sparse(src: &File, dst: &mut File) -> io::Result<u64> {
    let mut pos = 0u64;
    loop {
        match run_at(src, pos)? {
            Run::End => break,
            Run::Hole(end) => pos = end,
            Run::Data(end) => {
                copy_range(src, dst, pos, end)?;
                pos = end;
            }
        }
    }
    // A hole at the end has no data run to reach it: the length makes it.
    dst.set_len(pos)?;
    Ok(pos)
}

/// Copies bytes `from..to` of `src` to the same offsets of `dst`; stops early if `src` shrank.
fn copy_range(src: &File, dst: &mut File, from: u64, to: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (from, from);
    while off_in < to {
        let len = usize::try_from(to - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), &*dst, Some(&mut off_out), len) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // Not between these filesystems (or not at all): copy through a buffer.
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_range_buffered(src, dst, off_in, to);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_buffered(src: &File, dst: &mut File, from: u64, to: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = from;
    dst.seek(io::SeekFrom::Start(from))?;
    while pos < to {
        let want = usize::try_from(to - pos).map_or(buf.len(), |n| n.min(buf.len()));
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

/// Writes `data` at the current offset of `file`, which is `offset`, seeking over file blocks
/// that are all zeros instead of writing them, so that they stay holes. The caller sets the
/// file's final length, which makes a hole at the end.
pub(crate) fn write_sparse(file: &mut File, offset: u64, data: &[u8]) -> io::Result<()> {
    /// The allocation unit of common filesystems: a zero block this size can be a hole.
    const BLOCK: u64 = 4096;
    // The data run not written yet, and the zeros to seek over before it.
    let (mut run, mut skip) = (0..0, 0u64);
    let mut pos = 0;
    while pos < data.len() {
        let here = offset + pos as u64;
        let len = usize::try_from(BLOCK - here % BLOCK)
            .map_or(data.len() - pos, |n| n.min(data.len() - pos));
        if is_zero(&data[pos..pos + len]) {
            if !run.is_empty() {
                file.write_all(&data[run.clone()])?;
                run = 0..0;
            }
            skip += len as u64;
        } else {
            if skip > 0 {
                file.seek(io::SeekFrom::Current(
                    i64::try_from(skip).unwrap_or(i64::MAX),
                ))?;
                skip = 0;
            }
            if run.is_empty() {
                run = pos..pos;
            }
            run.end = pos + len;
        }
        pos += len;
    }
    if !run.is_empty() {
        file.write_all(&data[run])?;
    }
    if skip > 0 {
        file.seek(io::SeekFrom::Current(
            i64::try_from(skip).unwrap_or(i64::MAX),
        ))?;
    }
    Ok(())
}

fn is_zero(block: &[u8]) -> bool {
    // No early exit: this form vectorizes, and a block is small.
    block.iter().fold(0u8, |acc, b| acc | b) == 0
}
