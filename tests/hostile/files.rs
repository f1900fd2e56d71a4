//! Special files, hardlinks, names that are not UTF-8 and sparse files in the build context,
//! and a COPY --from whose source is missing. What lands in the image is checked in the rootfs
//! that `-o type=local` exports, as a user would look at it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Project, Registry, steps_that_ran};

/// How long a build of a few small steps may take before it counts as hung. A FIFO opened for
/// reading waits for a writer forever; `/dev/zero` reads forever.
const HANG: Duration = Duration::from_secs(120);

/// `hoist build -o type=local,dest=…` that must end within [`HANG`]: a build still running then
/// is killed (by its PID) and the test fails, instead of hanging the suite. Returns whether it
/// succeeded, its stderr, and the exported rootfs.
fn build_within(p: &Project, args: &[&str]) -> (bool, String, tempfile::TempDir) {
    let dest = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(p.root.path())
        .arg("--progress=plain")
        .arg("-o")
        .arg(format!("type=local,dest={}", dest.path().display()))
        .args(args)
        .arg(p.dir.path())
        .stdout(Stdio::null())
        // A file, not a pipe: a pipe nobody reads could fill and stall the build.
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the build did not end within {HANG:?} (killed):\n{}",
                fs_err::read_to_string(log.path()).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = fs_err::read_to_string(log.path()).unwrap();
    (status.success(), stderr, dest)
}

/// As [`build_within`], and the build must succeed.
fn build_ok(p: &Project, args: &[&str]) -> (String, tempfile::TempDir) {
    let (ok, stderr, dest) = build_within(p, args);
    assert!(ok, "hoist build failed:\n{stderr}");
    (stderr, dest)
}

fn mknod(path: &Path, args: &[&str]) {
    let status = Command::new("mknod").arg(path).args(args).status().unwrap();
    assert!(status.success(), "mknod {} {args:?}", path.display());
}

const COPY_DIR: &str = "FROM scratch\nADD rootfs.tar /\nCOPY dir /d/\n";

#[test]
fn a_fifo_in_the_context_is_copied_as_a_fifo_instead_of_hanging_the_build() {
    let p = Project::new(COPY_DIR);
    fs_err::create_dir(p.path("dir")).unwrap();
    p.write("dir/file", "beside the fifo\n");
    mknod(&p.path("dir/pipe"), &["p"]);
    let (_, rootfs) = build_ok(&p, &[]);
    let pipe = fs_err::symlink_metadata(rootfs.path().join("d/pipe")).unwrap();
    assert!(
        pipe.file_type().is_fifo(),
        "/d/pipe is not a FIFO in the image"
    );
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("d/file")).unwrap(),
        "beside the fifo\n"
    );
}

#[test]
fn a_character_device_in_the_context_is_copied_as_a_node_instead_of_read_forever() {
    let p = Project::new(COPY_DIR);
    fs_err::create_dir(p.path("dir")).unwrap();
    // /dev/zero's numbers: reading it never ends.
    mknod(&p.path("dir/zero"), &["c", "1", "5"]);
    let (_, rootfs) = build_ok(&p, &[]);
    let zero = fs_err::symlink_metadata(rootfs.path().join("d/zero")).unwrap();
    assert!(zero.file_type().is_char_device(), "/d/zero is not a device");
    assert_eq!(
        (zero.rdev() >> 8, zero.rdev() & 0xff),
        (1, 5),
        "device numbers"
    );

    // Another device number is another image: the COPY runs again.
    fs_err::remove_file(p.path("dir/zero")).unwrap();
    mknod(&p.path("dir/zero"), &["c", "1", "3"]);
    let (log, rootfs) = build_ok(&p, &[]);
    assert!(
        steps_that_ran(&log).iter().any(|s| s.contains("COPY dir")),
        "the COPY was taken from the cache after the device changed:\n{log}"
    );
    let null = fs_err::symlink_metadata(rootfs.path().join("d/zero")).unwrap();
    assert_eq!((null.rdev() >> 8, null.rdev() & 0xff), (1, 3));
}

#[test]
fn a_socket_in_the_context_is_left_out_with_a_warning() {
    let p = Project::new(COPY_DIR);
    fs_err::create_dir(p.path("dir")).unwrap();
    p.write("dir/file", "kept\n");
    // The socket file stays on disk after the listener is gone.
    drop(std::os::unix::net::UnixListener::bind(p.path("dir/app.sock")).unwrap());
    let (log, rootfs) = build_ok(&p, &[]);
    assert!(
        log.contains("warning: \"dir/app.sock\" is a socket, left out"),
        "no warning names the socket:\n{log}"
    );
    assert!(!rootfs.path().join("d/app.sock").exists());
    assert!(rootfs.path().join("d/file").is_file());
}

#[test]
fn hardlinked_files_in_the_context_stay_linked_in_the_image() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nCOPY dir /d/\n\
         RUN if [ \"$(stat -c %i /d/a)\" = \"$(stat -c %i /d/b)\" ]; then echo linked; \
         else echo separate; fi > /seen-by-run\n",
    );
    fs_err::create_dir(p.path("dir")).unwrap();
    p.write("dir/a", "one file, two names\n");
    fs_err::hard_link(p.path("dir/a"), p.path("dir/b")).unwrap();
    let (log, rootfs) = build_ok(&p, &[]);
    let ino = |name: &str| fs_err::metadata(rootfs.path().join(name)).unwrap().ino();
    assert_eq!(
        ino("d/a"),
        ino("d/b"),
        "/d/a and /d/b are separate files in the image"
    );
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("seen-by-run")).unwrap(),
        "linked\n",
        "a RUN after the COPY does not see one file:\n{log}"
    );
}

#[test]
fn a_file_name_that_is_not_utf8_is_copied_as_its_bytes() {
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nCOPY dir /d/\nRUN cat /d/caf* > /read-by-run\n",
    );
    fs_err::create_dir(p.path("dir")).unwrap();
    // "café" in Latin-1: the é is the byte 0xe9, which is not UTF-8.
    let name = OsStr::from_bytes(b"caf\xe9");
    fs_err::write(p.path("dir").join(name), "latin-1\n").unwrap();
    let (log, rootfs) = build_ok(&p, &[]);
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("d").join(name)).unwrap(),
        "latin-1\n",
        "{log}"
    );
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("read-by-run")).unwrap(),
        "latin-1\n"
    );
}

/// Bytes that a tree takes on disk (`st_blocks`), directories and all.
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs_err::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs_err::symlink_metadata(entry.path()).unwrap();
        total += meta.blocks() * 512;
        if meta.is_dir() {
            total += allocated(&entry.path());
        }
    }
    total
}

#[test]
fn a_sparse_file_is_copied_with_its_holes() {
    const SIZE: u64 = 64 << 20;
    let p = Project::new("FROM scratch\nCOPY sparse /sparse\n");
    let file = fs_err::File::create(p.path("sparse")).unwrap();
    file.set_len(SIZE).unwrap();
    std::os::unix::fs::FileExt::write_all_at(file.file(), b"middle", SIZE / 2).unwrap();
    drop(file);
    let (_, rootfs) = build_ok(&p, &[]);
    let copied = rootfs.path().join("sparse");
    assert_eq!(fs_err::metadata(&copied).unwrap().len(), SIZE);
    let mut middle = [0u8; 6];
    let f = fs_err::File::open(&copied).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(f.file(), &mut middle, SIZE / 2).unwrap();
    assert_eq!(&middle, b"middle");
    assert!(
        allocated(rootfs.path()) < 1 << 20,
        "the exported 64 MiB sparse file takes {} bytes on disk",
        allocated(rootfs.path())
    );
    // The state root holds the COPY's snapshot: the holes stay holes there too.
    assert!(
        allocated(p.root.path()) < 16 << 20,
        "the state root takes {} bytes for a 64 MiB sparse file",
        allocated(p.root.path())
    );
}

/// Seconds in a `… 1.234s` text ending.
fn seconds_at_end(text: &str) -> f64 {
    text.trim_end()
        .strip_suffix('s')
        .and_then(|t| t.rsplit([' ', ';']).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no seconds at the end of {text:?}"))
}

#[test]
fn the_time_spent_hashing_the_context_is_shown_on_its_step() {
    // The context is hashed for the cache key before any step runs; the step that loads it
    // must not claim it took no time while the build waited for the hashing.
    let p = Project::new("FROM scratch\nCOPY big /big\n");
    fs_err::write(p.path("big"), vec![7u8; 32 << 20]).unwrap();
    let (log, _) = build_ok(&p, &[]);
    let (step, hashing) = log
        .lines()
        .find_map(|l| {
            let (n, rest) = l.strip_prefix('#')?.split_once(' ')?;
            let (_, text) = rest.split_once(' ')?;
            text.contains("read and hashed")
                .then(|| (n.to_owned(), seconds_at_end(text)))
        })
        .unwrap_or_else(|| panic!("no context load line:\n{log}"));
    let done = log
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#{step} DONE ")))
        .map(seconds_at_end)
        .unwrap_or_else(|| panic!("step #{step} never says DONE:\n{log}"));
    assert!(
        done >= hashing,
        "step #{step} says DONE {done}s, but hashing its files took {hashing}s:\n{log}"
    );
}

/// The "not found" lines of a failed build name no internal path and no build context.
fn assert_error_is_not_internal(p: &Project, log: &str) {
    let root = p.root.path().display().to_string();
    for line in log.lines().filter(|l| l.contains("not found")) {
        assert!(
            !line.contains(&root) && !line.contains("build context"),
            "the error shows an internal path or blames the build context: {line}"
        );
    }
}

#[test]
fn copy_from_a_stage_names_the_stage_when_a_source_is_missing() {
    let p = Project::new(
        "FROM scratch AS a\nADD rootfs.tar /\nFROM scratch\nCOPY --from=a /missing /x\n",
    );
    let (ok, log, _) = build_within(&p, &[]);
    assert!(!ok, "the build succeeded:\n{log}");
    assert!(
        log.contains("\"/missing\": not found in stage \"a\""),
        "the error does not say the stage lacks the file:\n{log}"
    );
    assert_error_is_not_internal(&p, &log);
}

#[test]
fn copy_from_an_image_names_the_image_when_a_source_is_missing() {
    let registry = Registry::start();
    let base = format!("{}/files/base:1", registry.addr);
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let out = p.hoist(&["--push", "-t", &base]);
    assert!(
        out.status.success(),
        "pushing the base failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.write(
        "Dockerfile",
        &format!("FROM scratch\nCOPY --from={base} /missing /x\n"),
    );
    let (ok, log, _) = build_within(&p, &[]);
    assert!(!ok, "the build succeeded:\n{log}");
    assert!(
        log.contains(&format!("\"/missing\": not found in image \"{base}\"")),
        "the error does not say the image lacks the file:\n{log}"
    );
    assert_error_is_not_internal(&p, &log);
}
