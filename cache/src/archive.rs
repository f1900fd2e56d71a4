//! Archives for the Dockerfile `ADD` instruction: a local tar, plain or compressed with gzip,
//! bzip2, xz or zstd, is extracted into the destination directory; any other file is copied
//! as it is.
//!
//! The decision follows Docker (`pkg/archive.IsArchivePath`, BuildKit's file op with
//! `AttemptUnpack`): the compression comes from the magic bytes, never from the file name, and
//! a file is an archive only if what it decompresses to starts with a valid tar header. A
//! gzipped text file, or a file that merely starts with gzip's magic and then breaks, is "not
//! an archive" and is copied, not an error. [`detect_archive`] decides this from the first
//! tar block alone, so a large non-archive costs a few kilobytes of reading.
//!
//! [`extract_archive`] then streams the archive through the same confined extraction as layer
//! apply (every path resolved beneath the destination by the kernel, see the `apply` module),
//! with `ADD`'s rules rather than a layer's: `.wh.*` names are ordinary files, absolute names
//! (`tar -P`) land under the destination, and an entry that would leave the destination (by
//! `..`, through a symlink, or a hardlink to something outside) is refused with an error that
//! names the archive and the entry.

use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use crate::apply::{AddRules, ApplyError, extract_add};

/// The size of one tar block, and so of the header that decides whether a file is a tar.
const BLOCK: usize = 512;

/// How an `ADD` source file is compressed, as told by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveCompression {
    /// No compression: the file itself may be a tar.
    Uncompressed,
    /// gzip (RFC 1952), deflate method.
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz (the `.xz` container around LZMA2).
    Xz,
    /// zstd (RFC 8878), including streams that open with a skippable frame.
    Zstd,
}

impl ArchiveCompression {
    /// Detects the compression from a file's first bytes (six are enough). Anything
    /// unrecognised is [`ArchiveCompression::Uncompressed`]; whether it is a tar is decided after.
    #[must_use]
    pub fn detect(magic: &[u8]) -> Self {
        // The same signatures Docker's DetectCompression checks; gzip includes the method byte
        // (8, deflate), the only one gzip defines.
        if magic.starts_with(&[0x1f, 0x8b, 0x08]) {
            Self::Gzip
        } else if magic.starts_with(b"BZh") {
            Self::Bzip2
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Xz
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
            || (magic.len() >= 4 && magic[0] & 0xf0 == 0x50 && magic[1..4] == [0x2a, 0x4d, 0x18])
        {
            Self::Zstd
        } else {
            Self::Uncompressed
        }
    }

    /// The conventional name of the codec, as `file` or `tar` would say it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Uncompressed => "uncompressed",
            Self::Gzip => "gzip",
            Self::Bzip2 => "bzip2",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
        }
    }
}

/// Options for [`extract_archive`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    /// `ADD --chown`: every extracted entry is owned by this `(uid, gid)` instead of the
    /// owner recorded in the archive (as BuildKit does). `None` keeps the archive's owners.
    pub chown: Option<(u32, u32)>,
}

/// What [`extract_archive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractReport {
    /// The compression the archive was read with.
    pub compression: ArchiveCompression,
    /// Number of tar entries extracted (PAX and GNU extension headers not counted; the
    /// destination's own `./` entry counted though it changes nothing).
    pub entries: u64,
}

/// Errors of detecting or extracting an `ADD` archive. Each names the archive file; those
/// about one entry name the entry as the archive spells it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive file could not be opened or inspected.
    #[error("open archive {path}")]
    Open {
        /// The archive file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file does not decompress to a tar; `ADD` copies such a file instead.
    #[error("{path} is not a tar archive")]
    NotAnArchive {
        /// The file.
        path: PathBuf,
    },
    /// The destination directory could not be created.
    #[error("create destination directory {path}")]
    Destination {
        /// The destination directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The archive is corrupt or truncated: decompression or tar parsing failed.
    #[error("read archive {path}{}", at_entry(.entry.as_deref()))]
    Read {
        /// The archive file.
        path: PathBuf,
        /// The entry being read when it broke; `None` between entries.
        entry: Option<String>,
        /// The cause.
        source: io::Error,
    },
    /// An entry would land outside the destination (or has an unusable name).
    #[error("refusing entry {entry:?} of archive {path}: {reason}")]
    Unsafe {
        /// The archive file.
        path: PathBuf,
        /// The entry name.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// Creating an entry on disk failed.
    #[error("extract archive {path}{}", at_entry(.entry.as_deref()))]
    Extract {
        /// The archive file.
        path: PathBuf,
        /// The entry that failed, if the failure belongs to one.
        entry: Option<String>,
        /// The cause (its message names the operation).
        source: Box<ApplyError>,
    },
}

fn at_entry(entry: Option<&str>) -> String {
    entry.map(|e| format!(": entry {e:?}")).unwrap_or_default()
}

impl ArchiveError {
    /// The archive entry this error is about, if any.
    #[must_use]
    pub fn entry(&self) -> Option<&str> {
        match self {
            Self::Unsafe { entry, .. } => Some(entry),
            Self::Read { entry, .. } | Self::Extract { entry, .. } => entry.as_deref(),
            Self::Open { .. } | Self::NotAnArchive { .. } | Self::Destination { .. } => None,
        }
    }
}

/// Decides whether `path` is an archive `ADD` extracts, and how it is compressed.
///
/// `Ok(None)` means "copy it as a plain file": it is not a regular file (a symlink is not
/// followed), or it does not decompress, or what it decompresses to does not start with a
/// valid tar header (a non-zero block with a correct checksum, the test Go's `tar.Reader.Next`
/// applies to the first header). Only the first tar block is decompressed.
///
/// # Errors
/// [`ArchiveError::Open`] when the file cannot be inspected or opened, or its raw bytes cannot
/// be read; decompression failures are not errors.
pub fn detect_archive(path: &Path) -> Result<Option<ArchiveCompression>, ArchiveError> {
    let open_err = |source| ArchiveError::Open {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs_err::symlink_metadata(path).map_err(open_err)?;
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    let file = fs_err::File::open(path).map_err(open_err)?;
    let mut raw = BufReader::with_capacity(64 * 1024, file);
    let compression = ArchiveCompression::detect(raw.fill_buf().map_err(open_err)?);
    let Ok(mut stream) = decoder(compression, raw) else {
        return Ok(None);
    };
    Ok(read_first_block(&mut stream)
        .ok()
        .filter(|block| is_tar_header(block))
        .map(|_| compression))
}

/// Extracts the archive at `path` (compression detected by magic bytes) into `dest`, creating
/// `dest` (mode 0755) if it is missing, with `ADD`'s semantics:
///
/// - regular files, directories, symlinks, hardlinks, device nodes and fifos are created with
///   the archive's mode, owner (or `opts.chown`), mtime and xattrs (best effort, as Docker);
/// - names are taken relative to `dest`: a leading `/` is dropped, so a `tar -P` archive lands
///   under `dest`; `a/../b` is `b`;
/// - `.wh.*` names are ordinary files (whiteouts exist only in layers);
/// - the archive's `./` entry leaves `dest`'s own metadata alone;
/// - an existing file in the way of an entry is replaced, an existing directory is merged.
///
/// A caller may skip [`detect_archive`] and call this on every `ADD` source, copying the file
/// when the answer is [`ArchiveError::NotAnArchive`]: the same test is made on the same first
/// block, and nothing is created before it passes. Unlike [`detect_archive`] it opens what
/// `path` names (a symlink is followed, a fifo would block): pass only regular files.
///
/// `dest` is trusted (the caller resolved it); only what lies beneath it is confined.
///
/// # Errors
/// [`ArchiveError::NotAnArchive`] when [`detect_archive`] would have said `None`;
/// [`ArchiveError::Unsafe`] for an entry that would land outside `dest`;
/// [`ArchiveError::Read`] for a corrupt or truncated archive (a compressed stream is read to
/// its end, so its checksum is verified); [`ArchiveError::Extract`] when creating an entry
/// fails. On error `dest` may hold part of the archive, but nothing was written outside it.
pub fn extract_archive(
    path: &Path,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ArchiveError> {
    let file = fs_err::File::open(path).map_err(|source| ArchiveError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    extract_archive_from(file, path, dest, opts)
}

/// [`extract_archive`] for an archive already open as `reader` (for example a download);
/// `path` only names it in errors.
///
/// # Errors
/// As [`extract_archive`].
pub fn extract_archive_from(
    reader: impl Read,
    path: &Path,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ArchiveError> {
    let read_err = |entry: Option<String>| {
        move |source| ArchiveError::Read {
            path: path.to_path_buf(),
            entry,
            source,
        }
    };
    let mut raw = BufReader::with_capacity(256 * 1024, reader);
    let compression = ArchiveCompression::detect(raw.fill_buf().map_err(read_err(None))?);
    let not_archive = || ArchiveError::NotAnArchive {
        path: path.to_path_buf(),
    };
    let mut stream = decoder(compression, raw).map_err(|_| not_archive())?;
    let head = read_first_block(&mut stream).map_err(|_| not_archive())?;
    if !is_tar_header(&head) {
        return Err(not_archive());
    }

    if !dest.is_dir() {
        fs_err::create_dir_all(dest).map_err(|source| ArchiveError::Destination {
            path: dest.to_path_buf(),
            source,
        })?;
    }
    let mut tar = Cursor::new(head).chain(stream);
    let rules = AddRules { chown: opts.chown };
    let entries = extract_add(&mut tar, dest, rules).map_err(|failure| {
        let entry = failure.entry;
        match failure.error {
            ApplyError::ReadArchive { source } => read_err(entry)(source),
            ApplyError::UnsafePath { entry, reason } => ArchiveError::Unsafe {
                path: path.to_path_buf(),
                entry,
                reason: reason.to_string(),
            },
            ApplyError::Escapes { entry, path: via } => ArchiveError::Unsafe {
                path: path.to_path_buf(),
                entry,
                reason: format!("{via:?} resolves outside the destination"),
            },
            error => ArchiveError::Extract {
                path: path.to_path_buf(),
                entry,
                source: Box::new(error),
            },
        }
    })?;
    if compression != ArchiveCompression::Uncompressed {
        // The tar reader stops at the end-of-archive blocks; the compressed stream's trailer
        // (gzip CRC, xz check, zstd checksum) comes after, and a truncated file only shows
        // there. A plain tar's trailing padding is not worth reading.
        io::copy(&mut tar, &mut io::sink()).map_err(read_err(None))?;
    }
    Ok(ExtractReport {
        compression,
        entries,
    })
}

/// The decompressing reader for `compression` over `raw`.
fn decoder<'a, R: BufRead + 'a>(
    compression: ArchiveCompression,
    raw: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        ArchiveCompression::Uncompressed => Box::new(raw),
        // Multi-member gzip (pigz, `cat a.gz b.gz`), bzip2 (pbzip2) and xz streams are
        // read whole, as gzip -d, bzip2 -d and xz -d do.
        ArchiveCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        ArchiveCompression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(raw)),
        ArchiveCompression::Xz => Box::new(lzma_rust2::XzReader::new(raw, true)),
        ArchiveCompression::Zstd => {
            let mut zstd = zstd::stream::read::Decoder::with_buffer(raw)?;
            // `zstd --long=N` archives declare windows beyond the library's 128 MiB default;
            // the CLI reads them only when told `--long=N`, which ADD cannot be. The window is
            // allocated as the frame declares it, so ordinary archives cost no more.
            zstd.window_log_max(31)?;
            Box::new(zstd)
        }
    })
}

/// Reads the first tar block; a stream shorter than one block is an error.
fn read_first_block(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut block = vec![0u8; BLOCK];
    stream.read_exact(&mut block)?;
    Ok(block)
}

/// Whether `block` is a tar header: not all zeros (an archive that opens with its end marker
/// has nothing to extract, and Go's reader calls it empty) and with a checksum that matches,
/// summed as unsigned or, as some old tars did, signed bytes. Every tar dialect (v7, ustar,
/// GNU, PAX) passes; random data passes with odds of about one in 2^17 per sum, then fails in
/// the tar reader and is reported as a corrupt archive.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < BLOCK || block.iter().all(|b| *b == 0) {
        return false;
    }
    let Some(recorded) = parse_octal(&block[148..156]) else {
        return false;
    };
    let field = 148..156;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, b) in block[..BLOCK].iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { *b };
        unsigned += i64::from(b);
        signed += i64::from(b.cast_signed());
    }
    recorded == unsigned || recorded == signed
}

/// Parses a tar octal field: optional leading spaces, octal digits, then NULs or spaces.
fn parse_octal(field: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return None;
    }
    i64::from_str_radix(text, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_pick_the_codec() {
        use ArchiveCompression as C;
        assert_eq!(C::detect(&[0x1f, 0x8b, 0x08, 0]), C::Gzip);
        // gzip magic with a method other than deflate is not gzip (Docker checks the byte too).
        assert_eq!(C::detect(&[0x1f, 0x8b, 0x07, 0]), C::Uncompressed);
        assert_eq!(C::detect(b"BZh91AY&SY"), C::Bzip2);
        assert_eq!(C::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), C::Xz);
        assert_eq!(C::detect(&[0xfd, b'7', b'z', b'X', b'Z']), C::Uncompressed);
        assert_eq!(C::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), C::Zstd);
        assert_eq!(C::detect(&[0x5e, 0x2a, 0x4d, 0x18, 0]), C::Zstd);
        assert_eq!(C::detect(b"ustar"), C::Uncompressed);
        assert_eq!(C::detect(b""), C::Uncompressed);
    }

    #[test]
    fn header_check_takes_real_headers_only() {
        let mut h = [0u8; BLOCK];
        h[..5].copy_from_slice(b"hello");
        h[100..107].copy_from_slice(b"0000644");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(is_tar_header(&h), "a v7 header with a good checksum");
        h[0] = b'j';
        assert!(!is_tar_header(&h), "one changed byte breaks the checksum");
        assert!(!is_tar_header(&[0u8; BLOCK]), "the end marker is no header");
        assert!(!is_tar_header(&[b' '; BLOCK]));
        assert!(!is_tar_header(&h[..100]));
    }
}
