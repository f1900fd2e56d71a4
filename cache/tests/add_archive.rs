//! Dockerfile `ADD` of a local archive, as a user of `docker build` sees it: archives made by
//! the real `tar`, `gzip`, `bzip2`, `xz` and `zstd` are unpacked into the destination with
//! every attribute; files that are not tars are left to be copied; corrupt archives fail
//! naming the file; hostile entries are refused without a byte written outside the
//! destination. These tests run as root (chown, device nodes, trusted xattrs).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly too"
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{RawTar, fingerprint, rich_tree, run, tool, xattrs};
use hoist_cache::archive::{
    ArchiveCompression, ArchiveError, ExtractOptions, detect_archive, extract_archive,
};

/// Every codec ADD knows, with the command that makes `<file><suffix>` from `<file>`.
const CODECS: [(ArchiveCompression, &str, &str); 4] = [
    (ArchiveCompression::Gzip, "gzip", ".gz"),
    (ArchiveCompression::Bzip2, "bzip2", ".bz2"),
    (ArchiveCompression::Xz, "xz", ".xz"),
    (ArchiveCompression::Zstd, "zstd", ".zst"),
];

/// Compresses `file` with the real tool, keeping the original; returns the new file.
fn compress(tool_name: &str, suffix: &str, file: &Path) -> PathBuf {
    let mut cmd = Command::new(tool(tool_name));
    cmd.args(["-k", "-f"]);
    if tool_name == "zstd" {
        cmd.arg("-q");
    }
    run(cmd.arg(file));
    let mut out = file.as_os_str().to_owned();
    out.push(suffix);
    PathBuf::from(out)
}

/// `tar -cf out -C dir .` with xattrs and numeric owners, as someone preparing a rootfs would.
fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new(tool("tar"))
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg("."));
}

fn extract(
    archive: &Path,
    dest: &Path,
) -> Result<hoist_cache::archive::ExtractReport, ArchiveError> {
    extract_archive(archive, dest, &ExtractOptions::default())
}

#[test]
fn each_compression_extracts_the_same_tree_tar_recorded() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir(&src).unwrap();
    rich_tree(&src);
    let want = fingerprint(&src);
    let plain = work.path().join("rootfs.tar");
    tar_dir(&src, &plain);

    let mut archives = vec![(ArchiveCompression::Uncompressed, plain.clone())];
    for (codec, name, suffix) in CODECS {
        archives.push((codec, compress(name, suffix, &plain)));
    }
    for (codec, archive) in archives {
        assert_eq!(
            detect_archive(&archive).unwrap(),
            Some(codec),
            "{}",
            archive.display()
        );
        let dest = work.path().join(format!("dest-{}", codec.name()));
        let report = extract(&archive, &dest).unwrap();
        assert_eq!(report.compression, codec);
        assert!(report.entries > 20, "{codec:?}: {} entries", report.entries);
        let got = fingerprint(&dest);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{codec:?}: same names"
        );
        for (k, v) in &want {
            assert_eq!(&got[k], v, "{codec:?}: {k}");
        }
    }
}

#[test]
fn concatenated_streams_are_read_whole() {
    // pigz, pbzip2 and `cat a.gz b.gz` make archives of several compressed streams; gzip -d,
    // bzip2 -d, xz -d and zstd -d read them all, and so must ADD.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    incompressible_tree(&src);
    let want = fingerprint(&src);
    let plain = work.path().join("whole.tar");
    tar_dir(&src, &plain);
    let bytes = fs_err::read(&plain).unwrap();
    let cut = bytes.len() / 512 / 2 * 512;
    let halves = [work.path().join("half1"), work.path().join("half2")];
    fs_err::write(&halves[0], &bytes[..cut]).unwrap();
    fs_err::write(&halves[1], &bytes[cut..]).unwrap();
    for (codec, name, suffix) in CODECS {
        let mut joined = Vec::new();
        for half in &halves {
            joined.extend(fs_err::read(compress(name, suffix, half)).unwrap());
        }
        let archive = work.path().join(format!("joined-{}", codec.name()));
        fs_err::write(&archive, joined).unwrap();
        let dest = work.path().join(format!("dest-{}", codec.name()));
        let report = extract(&archive, &dest).unwrap();
        assert_eq!(report.compression, codec);
        assert_eq!(fingerprint(&dest), want, "{codec:?}");
    }
}

#[test]
fn zstd_long_window_archives_are_archives() {
    // From a pipe zstd cannot shrink the window to the input, so `--long=30` declares 1 GiB:
    // beyond the 128 MiB a default decoder accepts. Such a file must still be extracted,
    // not copied as an opaque file.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    incompressible_tree(&src);
    let plain = work.path().join("long.tar");
    tar_dir(&src, &plain);
    let out = Command::new(tool("zstd"))
        .args(["-q", "--long=30", "-c"])
        .stdin(fs_err::File::open(&plain).unwrap().into_parts().0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let archive = work.path().join("long.tar.zst");
    fs_err::write(&archive, &out.stdout).unwrap();
    let refused = Command::new(tool("zstd"))
        .args(["-q", "-d", "-c"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "the test archive really needs a window over the default"
    );
    assert_eq!(
        detect_archive(&archive).unwrap(),
        Some(ArchiveCompression::Zstd)
    );
    let dest = work.path().join("dest");
    extract(&archive, &dest).unwrap();
    assert_eq!(fingerprint(&dest), fingerprint(&src));
}

#[test]
fn sparse_files_from_tar_dash_s_are_extracted_whole() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir(&src).unwrap();
    let sparse = src.join("disk.img");
    let file = fs_err::File::create(&sparse).unwrap();
    file.set_len(8 << 20).unwrap();
    drop(file);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .open(&sparse)
            .unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"data in the middle").unwrap();
    }
    let tarball = work.path().join("sparse.tar");
    run(Command::new(tool("tar"))
        .args(["-S", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("."));
    assert!(
        fs_err::metadata(&tarball).unwrap().len() < 1 << 20,
        "tar -S stored the file sparse"
    );
    let dest = work.path().join("dest");
    extract(&compress("xz", ".xz", &tarball), &dest).unwrap();
    assert_eq!(
        fs_err::read(dest.join("disk.img")).unwrap(),
        fs_err::read(&sparse).unwrap()
    );
}

#[test]
fn what_a_user_checks_by_hand_after_add() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir(&src).unwrap();
    rich_tree(&src);
    let tarball = work.path().join("rootfs.tar");
    tar_dir(&src, &tarball);
    let gz = compress("gzip", ".gz", &tarball);
    let dest = work.path().join("dest");
    extract(&gz, &dest).unwrap();

    let tool_meta = fs_err::metadata(dest.join("usr/bin/tool")).unwrap();
    assert_eq!(tool_meta.mode() & 0o7777, 0o4755, "setuid survives");
    let owned = fs_err::metadata(dest.join("etc/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    let big = fs_err::metadata(dest.join("etc/bigid")).unwrap();
    assert_eq!((big.uid(), big.gid()), (3_000_000, 4_000_000), "PAX ids");
    assert_eq!(
        fs_err::read(dest.join("etc/deep/hard2")).unwrap(),
        b"linked"
    );
    assert_eq!(
        fs_err::metadata(dest.join("etc/hard1")).unwrap().ino(),
        fs_err::metadata(dest.join("usr/hard3")).unwrap().ino(),
        "hardlinks stay one inode"
    );
    assert_eq!(
        fs_err::read_link(dest.join("etc/abs-link")).unwrap(),
        Path::new("/etc/passwd"),
        "a symlink target is text for the container, never resolved on the host"
    );
    assert_eq!(
        xattrs(&dest.join("etc/owned"))
            .get("user.note")
            .map(Vec::as_slice),
        Some(&b"hello\0binary"[..])
    );
    assert_eq!(
        fs_err::metadata(dest.join("usr/big.bin")).unwrap().len(),
        3_000_000
    );
    assert_eq!(
        fs_err::metadata(dest.join("etc/deep")).unwrap().mtime(),
        fs_err::metadata(src.join("etc/deep")).unwrap().mtime(),
        "directory mtimes are set after their children"
    );
}

#[test]
fn add_into_an_existing_directory_keeps_its_metadata_and_other_files() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir_all(src.join("sub")).unwrap();
    fs_err::write(src.join("sub/new"), b"new").unwrap();
    fs_err::write(src.join("replaced"), b"from the archive").unwrap();
    let tarball = work.path().join("a.tar");
    tar_dir(&src, &tarball);

    // `ADD a.tar /tmp/`: /tmp is 1777 and holds files the archive does not know.
    let dest = work.path().join("tmp");
    fs_err::create_dir_all(dest.join("sub")).unwrap();
    fs_err::write(dest.join("sub/old"), b"old").unwrap();
    fs_err::write(dest.join("untouched"), b"untouched").unwrap();
    std::os::unix::fs::symlink("/nonexistent", dest.join("replaced")).unwrap();
    fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(0o1777)).unwrap();

    extract(&tarball, &dest).unwrap();
    assert_eq!(
        fs_err::metadata(&dest).unwrap().mode() & 0o7777,
        0o1777,
        "the archive's ./ entry does not change the destination"
    );
    assert_eq!(fs_err::read(dest.join("sub/old")).unwrap(), b"old");
    assert_eq!(fs_err::read(dest.join("sub/new")).unwrap(), b"new");
    assert_eq!(fs_err::read(dest.join("untouched")).unwrap(), b"untouched");
    let replaced = fs_err::symlink_metadata(dest.join("replaced")).unwrap();
    assert!(
        replaced.is_file(),
        "a symlink in the way is replaced, not followed"
    );
    assert_eq!(
        fs_err::read(dest.join("replaced")).unwrap(),
        b"from the archive"
    );
}

#[test]
fn a_missing_destination_is_created() {
    let work = tempfile::tempdir().unwrap();
    let tarball = work.path().join("a.tar");
    fs_err::write(&tarball, RawTar::default().file("f", b"x").finish()).unwrap();
    let dest = work.path().join("deep/new/dir");
    extract(&tarball, &dest).unwrap();
    assert_eq!(fs_err::read(dest.join("f")).unwrap(), b"x");
    assert_eq!(fs_err::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
}

#[test]
fn chown_overrides_the_archive_owners() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir_all(src.join("d")).unwrap();
    fs_err::write(src.join("d/f"), b"f").unwrap();
    rustix::fs::chown(
        src.join("d/f"),
        Some(rustix::fs::Uid::from_raw(7)),
        Some(rustix::fs::Gid::from_raw(8)),
    )
    .unwrap();
    std::os::unix::fs::symlink("f", src.join("d/l")).unwrap();
    let tarball = work.path().join("a.tar");
    tar_dir(&src, &tarball);
    let dest = work.path().join("dest");
    extract_archive(
        &tarball,
        &dest,
        &ExtractOptions {
            chown: Some((1000, 1001)),
        },
    )
    .unwrap();
    for rel in ["d", "d/f", "d/l"] {
        let m = fs_err::symlink_metadata(dest.join(rel)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1001), "{rel}");
    }
}

#[test]
fn whiteout_names_are_ordinary_files_in_add() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir_all(src.join("dir")).unwrap();
    fs_err::write(src.join(".wh.foo"), b"not a whiteout").unwrap();
    fs_err::write(src.join("dir/.wh..wh..opq"), b"not opaque").unwrap();
    fs_err::write(src.join("dir/keep"), b"keep").unwrap();
    let tarball = work.path().join("wh.tar");
    tar_dir(&src, &tarball);
    let gz = compress("gzip", ".gz", &tarball);

    let dest = work.path().join("dest");
    fs_err::create_dir_all(dest.join("dir")).unwrap();
    fs_err::write(dest.join("foo"), b"foo stays").unwrap();
    fs_err::write(dest.join("dir/other"), b"other stays").unwrap();
    extract(&gz, &dest).unwrap();

    assert_eq!(
        fs_err::read(dest.join(".wh.foo")).unwrap(),
        b"not a whiteout"
    );
    assert_eq!(
        fs_err::read(dest.join("dir/.wh..wh..opq")).unwrap(),
        b"not opaque"
    );
    assert_eq!(fs_err::read(dest.join("foo")).unwrap(), b"foo stays");
    assert_eq!(
        fs_err::read(dest.join("dir/other")).unwrap(),
        b"other stays"
    );
    assert_eq!(fs_err::read(dest.join("dir/keep")).unwrap(), b"keep");
}

#[test]
fn an_archive_cannot_make_overlay_metadata() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs_err::create_dir_all(src.join("opaque")).unwrap();
    fs_err::write(src.join("opaque/f"), b"f").unwrap();
    for (name, value) in [
        ("trusted.overlay.opaque", &b"y"[..]),
        ("trusted.other", &b"kept"[..]),
    ] {
        rustix::fs::setxattr(
            src.join("opaque"),
            name,
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    let tarball = work.path().join("x.tar");
    tar_dir(&src, &tarball);
    let dest = work.path().join("dest");
    extract(&tarball, &dest).unwrap();
    let got = xattrs(&dest.join("opaque"));
    assert_eq!(
        got.get("trusted.other").map(Vec::as_slice),
        Some(&b"kept"[..])
    );
    assert!(!got.contains_key("trusted.overlay.opaque"), "{got:?}");
}

/// One PAX record, `"<len> <key>=<value>\n"` where `len` counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 2;
    while format!("{len} ").len() + body.len() != len {
        len += 1;
    }
    [format!("{len} ").into_bytes(), body].concat()
}

#[test]
fn xattrs_the_kernel_refuses_are_skipped_as_docker_does() {
    // BuildKit extracts ADD archives with best-effort xattrs: a name outside the namespaces
    // Linux knows (here "vendor.") is refused by the kernel with EOPNOTSUPP and skipped.
    let work = tempfile::tempdir().unwrap();
    let records = [
        pax_record("SCHILY.xattr.vendor.tag", b"x"),
        pax_record("SCHILY.xattr.user.kept", b"kept"),
    ]
    .concat();
    let archive = work.path().join("x.tar");
    fs_err::write(
        &archive,
        RawTar::default()
            .entry("PaxHeaders/f", b'x', "", &records, 0o644)
            .file("f", b"content")
            .finish(),
    )
    .unwrap();
    let dest = work.path().join("dest");
    extract(&archive, &dest).unwrap();
    assert_eq!(fs_err::read(dest.join("f")).unwrap(), b"content");
    let got = xattrs(&dest.join("f"));
    assert_eq!(got.get("user.kept").map(Vec::as_slice), Some(&b"kept"[..]));
    assert_eq!(got.len(), 1, "{got:?}");
}

#[test]
fn tar_dash_p_absolute_names_land_under_the_destination() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("abs-src");
    fs_err::create_dir_all(src.join("etc")).unwrap();
    fs_err::write(src.join("etc/conf"), b"conf").unwrap();
    fs_err::hard_link(src.join("etc/conf"), src.join("etc/conf-link")).unwrap();
    let tarball = work.path().join("abs.tar");
    run(Command::new(tool("tar"))
        .args(["-P", "-cf"])
        .arg(&tarball)
        .arg(&src));
    let names = run(Command::new(tool("tar")).args(["-P", "-tvf"]).arg(&tarball));
    assert!(
        names.contains(&format!("{}/etc/conf-link link to /", src.display())),
        "tar -P stores absolute names and link targets: {names}"
    );

    let dest = work.path().join("dest");
    extract(&tarball, &dest).unwrap();
    let landed = dest.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs_err::read(landed.join("etc/conf")).unwrap(), b"conf");
    assert_eq!(
        fs_err::metadata(landed.join("etc/conf")).unwrap().ino(),
        fs_err::metadata(landed.join("etc/conf-link"))
            .unwrap()
            .ino(),
        "the absolute hardlink target is taken under the destination too"
    );
    assert_eq!(
        fs_err::metadata(src.join("etc/conf")).unwrap().nlink(),
        2,
        "nothing linked to the host's copy"
    );
}

#[test]
fn files_that_are_not_tars_are_left_to_be_copied() {
    let work = tempfile::tempdir().unwrap();
    let p = |n: &str| work.path().join(n);
    fs_err::write(p("notes.txt"), "just text\n".repeat(200)).unwrap();
    let gz_text = compress("gzip", ".gz", &p("notes.txt"));
    let xz_text = compress("xz", ".xz", &p("notes.txt"));
    fs_err::write(p("tiny"), b"hi").unwrap();
    fs_err::write(p("empty"), b"").unwrap();
    // gzip's magic and then garbage: Docker copies such a file rather than failing.
    let mut fake = vec![0x1f, 0x8b, 0x08, 0x00];
    fake.extend_from_slice(&[0x55; 4000]);
    fs_err::write(p("fake.tar.gz"), &fake).unwrap();
    // An archive with no entries is only its end marker: nothing to extract, so a file.
    run(Command::new(tool("tar"))
        .arg("-cf")
        .arg(p("empty.tar"))
        .args(["-T", "/dev/null"]));
    let empty_gz = compress("gzip", ".gz", &p("empty.tar"));
    // A symlink to a real archive is not followed.
    fs_err::write(p("real.tar"), RawTar::default().file("f", b"x").finish()).unwrap();
    std::os::unix::fs::symlink(p("real.tar"), p("link.tar")).unwrap();
    fs_err::create_dir(p("a-dir.tar")).unwrap();

    for file in [
        gz_text,
        xz_text,
        p("notes.txt"),
        p("tiny"),
        p("empty"),
        p("fake.tar.gz"),
        p("empty.tar"),
        empty_gz,
        p("link.tar"),
        p("a-dir.tar"),
    ] {
        assert_eq!(detect_archive(&file).unwrap(), None, "{}", file.display());
        if fs_err::symlink_metadata(&file).unwrap().is_file() {
            let err = extract(&file, &p("dest")).unwrap_err();
            assert!(
                matches!(&err, ArchiveError::NotAnArchive { path } if *path == file),
                "{err}"
            );
            assert_eq!(
                err.to_string(),
                format!("{} is not a tar archive", file.display())
            );
        }
    }
    assert!(!p("dest").exists(), "a refused file creates no destination");
    assert_eq!(
        detect_archive(&p("real.tar")).unwrap(),
        Some(ArchiveCompression::Uncompressed)
    );
    let err = detect_archive(&p("missing.tar")).unwrap_err();
    assert!(matches!(err, ArchiveError::Open { .. }), "{err}");
}

#[test]
fn a_huge_non_archive_is_judged_by_its_head() {
    // 64 GiB (sparse) that starts with text: reading it all would take minutes, the first
    // tar block takes nothing.
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("disk.img");
    fs_err::write(&big, b"not a tar header").unwrap();
    fs_err::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let start = std::time::Instant::now();
    assert_eq!(detect_archive(&big).unwrap(), None);
    let err = extract(&big, &work.path().join("dest")).unwrap_err();
    assert!(matches!(err, ArchiveError::NotAnArchive { .. }), "{err}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// A tree whose tar is large enough that a cut or a flipped byte lands past the first header.
fn incompressible_tree(root: &Path) {
    fs_err::create_dir_all(root.join("data")).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    // 3.2 MB: past bzip2's 900 kB blocks, whose first one must be whole to yield any byte.
    for i in 0..8 {
        let bytes: Vec<u8> = (0..400_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        fs_err::write(root.join(format!("data/blob{i}")), bytes).unwrap();
    }
}

#[test]
fn a_truncated_archive_fails_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    incompressible_tree(&src);
    let plain = work.path().join("cut.tar");
    tar_dir(&src, &plain);
    let mut archives = vec![(ArchiveCompression::Uncompressed, plain.clone())];
    for (codec, name, suffix) in CODECS {
        archives.push((codec, compress(name, suffix, &plain)));
    }
    for (codec, archive) in archives {
        let bytes = fs_err::read(&archive).unwrap();
        let cut = work.path().join(format!("cut-{}", codec.name()));
        fs_err::write(&cut, &bytes[..bytes.len() * 6 / 10]).unwrap();
        assert_eq!(
            detect_archive(&cut).unwrap(),
            Some(codec),
            "the first header is intact, so it is an archive"
        );
        let dest = work.path().join(format!("dest-{}", codec.name()));
        let err = extract(&cut, &dest).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Read { path, .. } if *path == cut),
            "{codec:?}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("read archive {}", cut.display())),
            "{err}"
        );
    }
}

#[test]
fn a_cut_inside_a_file_names_that_entry() {
    let work = tempfile::tempdir().unwrap();
    let tarball = work.path().join("cut.tar");
    let mut bytes = RawTar::default()
        .file("first", b"whole")
        .file("second", &[7u8; 5000])
        .finish();
    bytes.truncate(512 * 2 + 512 + 2048);
    fs_err::write(&tarball, &bytes).unwrap();
    let err = extract(&tarball, &work.path().join("dest")).unwrap_err();
    assert_eq!(err.entry(), Some("second"), "{err}");
    assert!(err.to_string().contains("entry \"second\""), "{err}");
}

#[test]
fn corrupt_compressed_data_after_a_good_header_fails_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    incompressible_tree(&src);
    let plain = work.path().join("bad.tar");
    tar_dir(&src, &plain);
    for (codec, name, suffix) in CODECS {
        let archive = compress(name, suffix, &plain);
        let mut bytes = fs_err::read(&archive).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let bad = work.path().join(format!("bad-{}", codec.name()));
        fs_err::write(&bad, &bytes).unwrap();
        assert_eq!(detect_archive(&bad).unwrap(), Some(codec));
        let err = extract(&bad, &work.path().join(format!("dest-{}", codec.name()))).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Read { path, .. } if *path == bad),
            "{codec:?}: {err}"
        );
    }
}

/// A directory to extract into, inside a parent the test watches for escapes.
struct Jail {
    _tmp: tempfile::TempDir,
    outside: PathBuf,
    dest: PathBuf,
}

impl Jail {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().to_path_buf();
        let dest = outside.join("dest");
        fs_err::create_dir(&dest).unwrap();
        fs_err::write(outside.join("secret"), b"host secret").unwrap();
        Jail {
            _tmp: tmp,
            outside,
            dest,
        }
    }

    /// Extracts `tar` and returns the error, which must name `entry`.
    fn refuse(&self, tar: &[u8], entry: &str) -> ArchiveError {
        let archive = self.outside.join("hostile.tar");
        fs_err::write(&archive, tar).unwrap();
        let err = extract(&archive, &self.dest).unwrap_err();
        assert_eq!(err.entry(), Some(entry), "{err}");
        assert!(err.to_string().contains(&format!("{entry:?}")), "{err}");
        assert!(
            err.to_string().contains(&archive.display().to_string()),
            "{err}"
        );
        self.assert_outside_untouched();
        err
    }

    fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = fs_err::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["dest", "hostile.tar", "secret"]);
        assert_eq!(
            fs_err::read(self.outside.join("secret")).unwrap(),
            b"host secret"
        );
        assert_eq!(
            fs_err::metadata(self.outside.join("secret"))
                .unwrap()
                .nlink(),
            1
        );
    }
}

#[test]
fn dot_dot_that_climbs_out_is_refused() {
    for name in ["../evil", "a/../../evil", "./../evil", "/../evil"] {
        let jail = Jail::new();
        let err = jail.refuse(&RawTar::default().file(name, b"evil").finish(), name);
        assert!(matches!(err, ArchiveError::Unsafe { .. }), "{err}");
    }
}

#[test]
fn dot_dot_that_stays_inside_is_cleaned_as_docker_does() {
    let jail = Jail::new();
    let archive = jail.outside.join("hostile.tar");
    fs_err::write(
        &archive,
        RawTar::default()
            .file("a/../b", b"b")
            .file("/abs/c", b"c")
            .finish(),
    )
    .unwrap();
    extract(&archive, &jail.dest).unwrap();
    assert_eq!(fs_err::read(jail.dest.join("b")).unwrap(), b"b");
    assert_eq!(fs_err::read(jail.dest.join("abs/c")).unwrap(), b"c");
    jail.assert_outside_untouched();
}

#[test]
fn writing_through_a_symlink_that_leaves_is_refused() {
    type Target = fn(&Jail) -> String;
    let targets: [(&str, Target); 3] = [
        ("up", |_| "..".to_string()),
        ("abs", |jail| jail.outside.to_string_lossy().into_owned()),
        ("root", |_| "/".to_string()),
    ];
    for (link, target) in targets {
        let jail = Jail::new();
        let target = target(&jail);
        let entry = format!("{link}/secret");
        let err = jail.refuse(
            &RawTar::default()
                .symlink(link, &target)
                .file(&entry, b"overwritten")
                .finish(),
            &entry,
        );
        assert!(matches!(err, ArchiveError::Unsafe { .. }), "{err}");
        // The symlink itself is fine: it is resolved inside the container, later.
        assert_eq!(
            fs_err::read_link(jail.dest.join(link)).unwrap(),
            Path::new(&target)
        );
    }
    // Deeper: a directory entry under an escaping link in a subdirectory.
    let jail = Jail::new();
    let err = jail.refuse(
        &RawTar::default()
            .dir("d")
            .symlink("d/up", "../..")
            .dir("d/up/newdir")
            .finish(),
        "d/up/newdir",
    );
    assert!(matches!(err, ArchiveError::Unsafe { .. }), "{err}");
}

#[test]
fn hardlinks_to_outside_are_refused() {
    for (target, through_symlink) in [("../secret", false), ("up/secret", true)] {
        let jail = Jail::new();
        let mut tar = RawTar::default();
        if through_symlink {
            tar.symlink("up", "..");
        }
        tar.hardlink("stolen", target);
        let err = jail.refuse(&tar.finish(), "stolen");
        assert!(
            matches!(err, ArchiveError::Unsafe { .. }),
            "{target}: {err}"
        );
        assert!(!jail.dest.join("stolen").exists());
    }
    // An absolute target names a file under the destination, not the host's: here there is
    // none, so the link fails rather than linking the host's file.
    let jail = Jail::new();
    let secret = jail.outside.join("secret").to_string_lossy().into_owned();
    let err = jail.refuse(
        &RawTar::default().hardlink("stolen", &secret).finish(),
        "stolen",
    );
    assert!(matches!(err, ArchiveError::Extract { .. }), "{err}");
}

#[test]
fn a_regular_file_over_a_planted_symlink_does_not_write_through_it() {
    let jail = Jail::new();
    let archive = jail.outside.join("hostile.tar");
    fs_err::write(
        &archive,
        RawTar::default()
            .symlink("f", "../secret")
            .file("f", b"replaced")
            .finish(),
    )
    .unwrap();
    extract(&archive, &jail.dest).unwrap();
    assert!(
        fs_err::symlink_metadata(jail.dest.join("f"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs_err::read(jail.dest.join("f")).unwrap(), b"replaced");
    jail.assert_outside_untouched();
}
