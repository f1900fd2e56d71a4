//! What a build context can hold besides plain files and directories: FIFOs, device nodes and
//! sockets, hardlinks, names that are not UTF-8, and sparse files. Each is selected, keyed,
//! copied into a layer directory and carried through a layer as what it is. Needs root
//! (mknod).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use hoist_cache::context::{ContextError, EntryKind, Selection, StatCache, content_key, select};
use hoist_cache::copy::{CopyOptions, copy_selection};
use hoist_cache::{ApplyOptions, Compression, CompressionOptions, DiffOptions};
use hoist_parser::ignore::Matcher;

/// Runs `f` on a thread and fails the test if it has not returned after `secs`: a FIFO opened
/// for reading blocks until a writer comes, which would hang the test binary forever.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not end within {secs} s: it blocked or spun"))
}

fn mknod(path: &Path, kind: rustix::fs::FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
}

fn sel(root: &Path, sources: &[&str]) -> Result<Selection, ContextError> {
    select(
        root,
        &sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        &Matcher::default(),
    )
}

fn key(root: &Path, sources: &[&str]) -> String {
    let s = sel(root, sources).unwrap();
    content_key(root, &s, &StatCache::default()).unwrap().key
}

fn copy_out(root: &Path, sources: &[&str], dest: &str) -> tempfile::TempDir {
    let view = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = sel(root, sources).unwrap();
    copy_selection(
        root,
        &s,
        dest,
        view.path(),
        out.path(),
        CopyOptions::default(),
    )
    .unwrap();
    out
}

/// A context with `dir/` holding a file, a FIFO, `/dev/null`'s and `/dev/zero`'s device
/// numbers, and a block device.
fn special_context() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("dir");
    fs_err::create_dir(&dir).unwrap();
    fs_err::write(dir.join("file"), "data\n").unwrap();
    mknod(&dir.join("fifo"), rustix::fs::FileType::Fifo, 0, 0);
    mknod(
        &dir.join("zero"),
        rustix::fs::FileType::CharacterDevice,
        1,
        5,
    );
    mknod(
        &dir.join("null"),
        rustix::fs::FileType::CharacterDevice,
        1,
        3,
    );
    mknod(&dir.join("loop"), rustix::fs::FileType::BlockDevice, 7, 0);
    d
}

#[test]
fn fifos_and_devices_are_selected_and_keyed_without_being_opened() {
    let d = special_context();
    let root = d.path().to_path_buf();
    let (selection, key) = within(
        60,
        "keying a context with a FIFO and /dev/zero",
        move || {
            let s = sel(&root, &["dir"]).unwrap();
            let k = content_key(&root, &s, &StatCache::default()).unwrap().key;
            (s, k)
        },
    );
    let kinds: Vec<(String, EntryKind)> = selection
        .entries
        .iter()
        .map(|e| (e.dest.to_string_lossy().into_owned(), e.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("fifo".into(), EntryKind::Fifo),
            ("file".into(), EntryKind::File),
            ("loop".into(), EntryKind::BlockDevice { major: 7, minor: 0 }),
            ("null".into(), EntryKind::CharDevice { major: 1, minor: 3 }),
            ("zero".into(), EntryKind::CharDevice { major: 1, minor: 5 }),
        ]
    );
    // The key is stable, and a device's number is part of it.
    assert_eq!(key, self::key(d.path(), &["dir"]));
    let zero = d.path().join("dir/zero");
    fs_err::remove_file(&zero).unwrap();
    mknod(&zero, rustix::fs::FileType::CharacterDevice, 1, 7);
    let renumbered = self::key(d.path(), &["dir"]);
    assert_ne!(renumbered, key, "a new device number keeps the key");
    // A FIFO and an empty file of the same mode are different things.
    let fifo = d.path().join("dir/fifo");
    fs_err::remove_file(&fifo).unwrap();
    fs_err::write(&fifo, "").unwrap();
    fs_err::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    assert_ne!(self::key(d.path(), &["dir"]), renumbered);
}

#[test]
fn fifos_and_devices_are_copied_as_nodes_and_go_through_a_layer() {
    let d = special_context();
    let root = d.path().to_path_buf();
    let out = within(60, "copying a FIFO and /dev/zero", move || {
        copy_out(&root, &["dir"], "/d/")
    });
    let meta = |p: &str| fs_err::symlink_metadata(out.path().join(p)).unwrap();
    assert!(meta("d/fifo").file_type().is_fifo());
    assert!(meta("d/zero").file_type().is_char_device());
    assert_eq!(meta("d/zero").rdev(), rustix::fs::makedev(1, 5));
    assert!(meta("d/loop").file_type().is_block_device());
    assert_eq!(meta("d/loop").rdev(), rustix::fs::makedev(7, 0));
    assert_eq!(meta("d/zero").mode() & 0o7777, 0o640);

    // Through a layer tar and back, as `-o type=local` and every RUN's snapshot see it.
    let layer = out.path().to_path_buf();
    let (blob, _) = within(60, "a layer diff of a FIFO and a device", move || {
        hoist_cache::diff_upperdir(&layer, Vec::new(), &uncompressed()).unwrap()
    });
    let dst = tempfile::tempdir().unwrap();
    hoist_cache::apply_layer(&blob[..], dst.path(), &ApplyOptions::default()).unwrap();
    let back = fs_err::symlink_metadata(dst.path().join("d/zero")).unwrap();
    assert!(back.file_type().is_char_device());
    assert_eq!(back.rdev(), rustix::fs::makedev(1, 5));
    assert!(
        fs_err::symlink_metadata(dst.path().join("d/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn a_file_swapped_for_a_fifo_after_selection_is_an_error_not_a_hang() {
    // Between the walk and the read, a regular file becomes a FIFO: it must not be opened.
    let d = tempfile::tempdir().unwrap();
    fs_err::write(d.path().join("f"), "regular when selected\n").unwrap();
    let s = sel(d.path(), &["f"]).unwrap();
    fs_err::remove_file(d.path().join("f")).unwrap();
    mknod(&d.path().join("f"), rustix::fs::FileType::Fifo, 0, 0);
    let root = d.path().to_path_buf();
    let (keyed, copied) = within(60, "reading a FIFO swapped in after selection", move || {
        let keyed = content_key(&root, &s, &StatCache::default()).map(drop);
        let view = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let copied = copy_selection(
            &root,
            &s,
            "/f",
            view.path(),
            out.path(),
            CopyOptions::default(),
        );
        (
            keyed.map_err(|e| e.to_string()),
            copied.map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e))),
        )
    });
    let keyed = keyed.unwrap_err();
    assert!(keyed.contains("/f"), "the error names no path: {keyed}");
    let copied = copied.unwrap_err();
    assert!(copied.contains("found a FIFO"), "{copied}");
}

#[test]
fn a_socket_is_left_out_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("dir");
    fs_err::create_dir(&dir).unwrap();
    fs_err::write(dir.join("file"), "data\n").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("app.sock")).unwrap();
    let s = sel(d.path(), &["dir"]).unwrap();
    let dests: Vec<&Path> = s.entries.iter().map(|e| e.dest.as_path()).collect();
    assert_eq!(dests, [Path::new("file")]);
    assert_eq!(s.skipped, [PathBuf::from("dir/app.sock")]);
    let out = copy_out(d.path(), &["dir"], "/d/");
    assert!(!out.path().join("d/app.sock").exists());
}

fn uncompressed() -> DiffOptions {
    DiffOptions {
        compression: CompressionOptions::new(Compression::None),
        source_date_epoch: None,
    }
}

/// A context with `dir/a` and `dir/b` the same file, and `dir/c` an equal but separate one.
fn linked_context() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("dir");
    fs_err::create_dir(&dir).unwrap();
    fs_err::write(dir.join("a"), "same inode\n").unwrap();
    fs_err::hard_link(dir.join("a"), dir.join("b")).unwrap();
    fs_err::write(dir.join("c"), "same inode\n").unwrap();
    d
}

#[test]
fn hardlinks_within_a_source_stay_one_file() {
    let d = linked_context();
    let s = sel(d.path(), &["dir"]).unwrap();
    let links: Vec<Option<PathBuf>> = s.entries.iter().map(|e| e.hardlink.clone()).collect();
    assert_eq!(links, [None, Some(PathBuf::from("a")), None]);

    let out = copy_out(d.path(), &["dir"], "/d/");
    let ino = |p: &str| fs_err::metadata(out.path().join(p)).unwrap().ino();
    assert_eq!(ino("d/a"), ino("d/b"), "the hardlink became a second file");
    assert_ne!(ino("d/a"), ino("d/c"));
    assert_eq!(
        fs_err::read_to_string(out.path().join("d/b")).unwrap(),
        "same inode\n"
    );

    // The layer says so: b is a hardlink entry to a, and applying it links them again.
    let (blob, _) = hoist_cache::diff_upperdir(out.path(), Vec::new(), &uncompressed()).unwrap();
    let mut archive = tar::Archive::new(&blob[..]);
    let b = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap() == Path::new("d/b"))
        .unwrap();
    assert_eq!(b.header().entry_type(), tar::EntryType::Link);
    assert_eq!(b.link_name().unwrap().unwrap(), Path::new("d/a"));
    let dst = tempfile::tempdir().unwrap();
    hoist_cache::apply_layer(&blob[..], dst.path(), &ApplyOptions::default()).unwrap();
    let ino = |p: &str| fs_err::metadata(dst.path().join(p)).unwrap().ino();
    assert_eq!(ino("d/a"), ino("d/b"));

    // BuildKit copies each source of a COPY on its own, so a link between two sources is not
    // seen, and neither is it here.
    let s = sel(d.path(), &["dir/a", "dir/b"]).unwrap();
    assert!(s.entries.iter().all(|e| e.hardlink.is_none()));
    let out = copy_out(d.path(), &["dir/a", "dir/b"], "/d/");
    let ino = |p: &str| fs_err::metadata(out.path().join(p)).unwrap().ino();
    assert_ne!(ino("d/a"), ino("d/b"));
}

#[test]
fn a_hardlink_is_part_of_the_key() {
    let d = linked_context();
    let linked = key(d.path(), &["dir"]);
    // Same names, modes and bytes, but b a file of its own: the copy differs, so the key must.
    let b = d.path().join("dir/b");
    fs_err::remove_file(&b).unwrap();
    fs_err::write(&b, "same inode\n").unwrap();
    assert_ne!(key(d.path(), &["dir"]), linked);
}

#[test]
fn a_name_that_is_not_utf8_is_selected_keyed_and_copied_as_its_bytes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("dir");
    fs_err::create_dir(&dir).unwrap();
    // "café" in Latin-1: the é is the single byte 0xe9, which is not UTF-8.
    let name = OsStr::from_bytes(b"caf\xe9");
    fs_err::write(dir.join(name), "latin-1\n").unwrap();
    fs_err::create_dir(dir.join(OsStr::from_bytes(b"sub\xff"))).unwrap();
    fs_err::write(dir.join(OsStr::from_bytes(b"sub\xff/inner")), "inner\n").unwrap();
    std::os::unix::fs::symlink(name, dir.join("link")).unwrap();

    let s = sel(d.path(), &["dir"]).unwrap();
    assert!(s.entries.iter().any(|e| e.dest.as_os_str() == name));
    let k = key(d.path(), &["dir"]);
    assert_eq!(k, key(d.path(), &["dir"]));
    // The name is part of the key: another invalid byte is another name.
    fs_err::rename(dir.join(name), dir.join(OsStr::from_bytes(b"caf\xe8"))).unwrap();
    assert_ne!(key(d.path(), &["dir"]), k);
    fs_err::rename(dir.join(OsStr::from_bytes(b"caf\xe8")), dir.join(name)).unwrap();

    let out = copy_out(d.path(), &["dir"], "/d/");
    let d_out = out.path().join("d");
    assert_eq!(
        fs_err::read_to_string(d_out.join(name)).unwrap(),
        "latin-1\n"
    );
    assert_eq!(
        fs_err::read_to_string(d_out.join(OsStr::from_bytes(b"sub\xff/inner"))).unwrap(),
        "inner\n"
    );
    assert_eq!(
        fs_err::read_link(d_out.join("link")).unwrap().as_os_str(),
        name
    );

    // A wildcard reaches it too, and it lands under its own name.
    let out = copy_out(d.path(), &["dir/caf*"], "/w/");
    assert_eq!(
        fs_err::read_to_string(out.path().join("w").join(name)).unwrap(),
        "latin-1\n"
    );

    // And its name survives a layer tar.
    let (blob, _) = hoist_cache::diff_upperdir(&d_out, Vec::new(), &uncompressed()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    hoist_cache::apply_layer(&blob[..], dst.path(), &ApplyOptions::default()).unwrap();
    assert_eq!(
        fs_err::read_to_string(dst.path().join(name)).unwrap(),
        "latin-1\n"
    );
}

/// Allocated bytes of a file (`st_blocks` is in 512-byte units).
fn allocated(path: &Path) -> u64 {
    fs_err::metadata(path).unwrap().blocks() * 512
}

/// A sparse file of `size` bytes with a little data at its start and in its middle.
fn sparse_file(path: &Path, size: u64) {
    let f = fs_err::File::create(path).unwrap();
    f.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(f.file(), b"head", 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(f.file(), b"middle", size / 2).unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs_err::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(f.file(), &mut buf, offset).unwrap();
    buf
}

#[test]
fn a_sparse_file_is_copied_with_its_holes() {
    const SIZE: u64 = 1 << 30;
    let d = tempfile::tempdir().unwrap();
    sparse_file(&d.path().join("sparse"), SIZE);
    let out = copy_out(d.path(), &["sparse"], "/sparse");
    let copied = out.path().join("sparse");
    assert_eq!(fs_err::metadata(&copied).unwrap().len(), SIZE);
    assert!(
        allocated(&copied) < 1 << 20,
        "the 1 GiB sparse file takes {} bytes on disk after the copy",
        allocated(&copied)
    );
    assert_eq!(read_at(&copied, 0, 4), b"head");
    assert_eq!(read_at(&copied, SIZE / 2, 6), b"middle");
    assert_eq!(
        read_at(&copied, SIZE - 8, 8),
        [0; 8],
        "the trailing hole is kept"
    );

    // Hashing reads holes as the zeros they are: the same bytes written out in full key the
    // same. (Smaller files here: hashing is slow in a debug build.)
    const SMALL: u64 = 8 << 20;
    let sparse = tempfile::tempdir().unwrap();
    sparse_file(&sparse.path().join("f"), SMALL);
    let dense = tempfile::tempdir().unwrap();
    let mut bytes = vec![0u8; usize::try_from(SMALL).unwrap()];
    bytes[..4].copy_from_slice(b"head");
    bytes[4 << 20..(4 << 20) + 6].copy_from_slice(b"middle");
    fs_err::write(dense.path().join("f"), &bytes).unwrap();
    assert!(allocated(&dense.path().join("f")) >= SMALL);
    assert_eq!(key(sparse.path(), &["f"]), key(dense.path(), &["f"]));
}

#[test]
fn a_layer_with_a_sparse_file_unpacks_with_holes() {
    // The layer tar holds the zeros (as every builder writes it); unpacking makes them holes
    // again, so a snapshot or an exported rootfs does not fill the disk.
    const SIZE: u64 = 64 << 20;
    let tree = tempfile::tempdir().unwrap();
    sparse_file(&tree.path().join("sparse"), SIZE);
    let (blob, _) = hoist_cache::diff_upperdir(tree.path(), Vec::new(), &uncompressed()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    hoist_cache::apply_layer(&blob[..], dst.path(), &ApplyOptions::default()).unwrap();
    let file = dst.path().join("sparse");
    assert_eq!(fs_err::metadata(&file).unwrap().len(), SIZE);
    assert!(
        allocated(&file) < 1 << 20,
        "the 64 MiB sparse file takes {} bytes after unpacking",
        allocated(&file)
    );
    assert_eq!(read_at(&file, 0, 4), b"head");
    assert_eq!(read_at(&file, SIZE / 2, 6), b"middle");
}
