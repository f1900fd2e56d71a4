//! A deterministic tar writer: ustar headers with PAX extensions, every field normalized.
//!
//! The `tar` crate reads archives well, but its builder fills headers from `stat` and leaves
//! fields such as uname/gname and device numbers to the platform. Layer digests must depend on
//! content only, so the header is written here field by field, the way Go's `archive/tar` does
//! for BuildKit and containerd: ustar when everything fits, PAX records when a name is longer
//! than 100 bytes, an id or size is too big for its octal field, or xattrs are present.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// What kind of tar entry to write, with the data that only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TarKind {
    File { size: u64 },
    Dir,
    Symlink { target: Vec<u8> },
    Hardlink { target: Vec<u8> },
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

/// One entry's header fields, already normalized by the caller (relative path, no `./`).
#[derive(Debug, Clone)]
pub(crate) struct TarHeader {
    /// Relative path without a trailing slash; directories get one added.
    pub(crate) path: Vec<u8>,
    pub(crate) kind: TarKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    /// Seconds since the epoch; sub-second precision is dropped for determinism.
    pub(crate) mtime: i64,
    /// Extended attributes, written as `SCHILY.xattr.*` PAX records in name order.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes entries to `W`; `finish` appends the two zero blocks that end an archive.
#[derive(Debug)]
pub(crate) struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

const OCTAL8_MAX: u64 = 0o7_777_777;
const OCTAL12_MAX: u64 = 0o77_777_777_777;

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            buf: vec![0; 256 * 1024],
        }
    }

    /// Writes one header, its PAX extension if needed, and `size` bytes from `data` for files.
    /// A file that yields fewer or more bytes than its header promised is an error: the file
    /// changed while it was being archived.
    pub(crate) fn append(&mut self, h: &TarHeader, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut path = h.path.clone();
        if h.kind == TarKind::Dir && !path.ends_with(b"/") {
            path.push(b'/');
        }
        let (typeflag, size, link, devs) = match &h.kind {
            TarKind::File { size } => (b'0', *size, &[][..], None),
            TarKind::Dir => (b'5', 0, &[][..], None),
            TarKind::Symlink { target } => (b'2', 0, target.as_slice(), None),
            TarKind::Hardlink { target } => (b'1', 0, target.as_slice(), None),
            TarKind::Char { major, minor } => (b'3', 0, &[][..], Some((*major, *minor))),
            TarKind::Block { major, minor } => (b'4', 0, &[][..], Some((*major, *minor))),
            TarKind::Fifo => (b'6', 0, &[][..], None),
        };

        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if path.len() > 100 {
            pax.push((b"path".to_vec(), path.clone()));
        }
        if link.len() > 100 {
            pax.push((b"linkpath".to_vec(), link.to_vec()));
        }
        if h.uid > OCTAL8_MAX {
            pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
        }
        if h.gid > OCTAL8_MAX {
            pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
        }
        if size > OCTAL12_MAX {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        let mtime_fits = u64::try_from(h.mtime).is_ok_and(|m| m <= OCTAL12_MAX);
        if !mtime_fits {
            pax.push((b"mtime".to_vec(), h.mtime.to_string().into_bytes()));
        }
        if let Some((major, minor)) = devs
            && (u64::from(major) > OCTAL8_MAX || u64::from(minor) > OCTAL8_MAX)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("device number {major}:{minor} does not fit a tar header"),
            ));
        }
        let mut xattrs = h.xattrs.clone();
        xattrs.sort();
        for (name, value) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(&name);
            pax.push((key, value));
        }

        if !pax.is_empty() {
            pax.sort();
            let mut body = Vec::new();
            for (k, v) in &pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            let base = path
                .rsplit(|b| *b == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b"x");
            let mut pax_name = b"PaxHeaders/".to_vec();
            pax_name.extend_from_slice(base);
            pax_name.truncate(100);
            let hdr = ustar_header(&Ustar {
                name: &pax_name,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: body.len() as u64,
                mtime: 0,
                typeflag: b'x',
                link: b"",
                devs: None,
            });
            self.out.write_all(&hdr)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }

        let mut short_name = path.clone();
        short_name.truncate(100);
        let hdr = ustar_header(&Ustar {
            name: &short_name,
            mode: h.mode & 0o7777,
            uid: if h.uid > OCTAL8_MAX { 0 } else { h.uid },
            gid: if h.gid > OCTAL8_MAX { 0 } else { h.gid },
            size: if size > OCTAL12_MAX { 0 } else { size },
            mtime: if mtime_fits {
                h.mtime.unsigned_abs()
            } else {
                0
            },
            typeflag,
            link: &link[..link.len().min(100)],
            devs,
        });
        self.out.write_all(&hdr)?;

        if let TarKind::File { size } = h.kind {
            let Some(data) = data else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "regular file entry without data",
                ));
            };
            let mut left = size;
            while left > 0 {
                let want = usize::try_from(left.min(self.buf.len() as u64)).unwrap_or(BLOCK);
                let n = data.read(&mut self.buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file shrank while archiving: {left} of {size} bytes missing"),
                    ));
                }
                self.out.write_all(&self.buf[..n])?;
                left -= n as u64;
            }
            if data.read(&mut self.buf[..1])? != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file grew while archiving past its size of {size} bytes"),
                ));
            }
            self.pad(size)?;
        }
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Ends the archive with two zero blocks and hands back the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

struct Ustar<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    devs: Option<(u32, u32)>,
}

fn ustar_header(u: &Ustar<'_>) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..u.name.len()].copy_from_slice(u.name);
    octal(&mut h[100..108], u64::from(u.mode));
    octal(&mut h[108..116], u.uid);
    octal(&mut h[116..124], u.gid);
    octal(&mut h[124..136], u.size);
    octal(&mut h[136..148], u.mtime);
    h[156] = u.typeflag;
    h[157..157 + u.link.len()].copy_from_slice(u.link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname and gname stay empty: ids are the truth inside a container, names are host noise.
    let (major, minor) = u.devs.unwrap_or((0, 0));
    octal(&mut h[329..337], u64::from(major));
    octal(&mut h[337..345], u64::from(minor));
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    // The checksum field is six octal digits, a NUL and a space, as GNU tar and Go write it.
    let digits = format!("{sum:06o}");
    h[148..154].copy_from_slice(&digits.as_bytes()[digits.len() - 6..]);
    h[154] = 0;
    h[155] = b' ';
    h
}

/// Zero-padded octal with a trailing NUL, filling the field; callers keep values in range.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    let bytes = s.as_bytes();
    let start = bytes.len().saturating_sub(width);
    field[..width].copy_from_slice(&bytes[start..]);
    field[width] = 0;
}

/// One PAX record, `"<len> <key>=<value>\n"`, where `len` counts the whole record itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    loop {
        let total = rest + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    let mut rec = len.to_string().into_bytes();
    rec.push(b' ');
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record(b"path", b"abc"), b"12 path=abc\n");
        let long = vec![b'a'; 95];
        let rec = pax_record(b"path", &long);
        let len: usize = std::str::from_utf8(&rec[..3]).unwrap().parse().unwrap();
        assert_eq!(len, rec.len());
    }

    #[test]
    fn long_names_and_big_ids_read_back_through_the_tar_crate() {
        let long_path = format!("{}/file", "d".repeat(150));
        let mut w = TarWriter::new(Vec::new());
        let content = b"hello";
        w.append(
            &TarHeader {
                path: long_path.clone().into_bytes(),
                kind: TarKind::File { size: 5 },
                mode: 0o4755,
                uid: 5_000_000,
                gid: 7,
                mtime: 1_700_000_000,
                xattrs: vec![(b"user.k".to_vec(), b"v\0bin".to_vec())],
            },
            Some(&mut &content[..]),
        )
        .unwrap();
        let bytes = w.finish().unwrap();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str().unwrap(), long_path);
        assert_eq!(e.header().mode().unwrap(), 0o4755);
        assert_eq!(
            e.header().uid().unwrap(),
            5_000_000,
            "the reader takes the id from PAX"
        );
        let pax: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.key().unwrap().to_string(), r.value_bytes().to_vec())
            })
            .collect();
        assert!(pax.contains(&("uid".to_string(), b"5000000".to_vec())));
        assert!(pax.contains(&("SCHILY.xattr.user.k".to_string(), b"v\0bin".to_vec())));
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn a_file_that_changes_size_is_an_error() {
        let mut w = TarWriter::new(Vec::new());
        let h = TarHeader {
            path: b"f".to_vec(),
            kind: TarKind::File { size: 10 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![],
        };
        assert!(w.append(&h, Some(&mut &b"short"[..])).is_err());
        let mut w = TarWriter::new(Vec::new());
        assert!(
            w.append(&h, Some(&mut &b"this is far too long"[..]))
                .is_err()
        );
    }
}
