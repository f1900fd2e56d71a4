//! Build contexts (selection, content keys, the stat cache), COPY into layer directories, and
//! the cache index, against real files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

use hoist_cache::context::*;
use hoist_parser::ignore::Matcher;
use std::os::unix::fs::{PermissionsExt, symlink};

fn ctx() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs_err::create_dir_all(r.join("src/sub")).unwrap();
    fs_err::write(r.join("go.mod"), "module x\n").unwrap();
    fs_err::write(r.join("go.sum"), "sum\n").unwrap();
    fs_err::write(r.join("src/a.go"), "package a\n").unwrap();
    fs_err::write(r.join("src/sub/b.go"), "package b\n").unwrap();
    fs_err::write(r.join("README.md"), "readme\n").unwrap();
    symlink("a.go", r.join("src/link.go")).unwrap();
    d
}

fn none() -> Matcher {
    Matcher::default()
}

fn dests(s: &Selection) -> Vec<String> {
    s.entries
        .iter()
        .map(|e| e.dest.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_file_lands_under_its_name_and_a_dir_brings_its_contents() {
    let d = ctx();
    let s = select(d.path(), &["go.mod".into()], &none()).unwrap();
    assert_eq!(dests(&s), ["go.mod"]);
    let s = select(d.path(), &["src".into()], &none()).unwrap();
    assert_eq!(dests(&s), ["a.go", "link.go", "sub", "sub/b.go"]);
    assert!(matches!(&s.entries[1].kind, EntryKind::Symlink { target } if target == "a.go"));
}

#[test]
fn wildcards_match_per_component() {
    let d = ctx();
    let s = select(d.path(), &["go.*".into()], &none()).unwrap();
    assert_eq!(dests(&s), ["go.mod", "go.sum"]);
    let s = select(d.path(), &["src/*.go".into()], &none()).unwrap();
    assert_eq!(dests(&s), ["a.go", "link.go"]);
    assert!(matches!(
        select(d.path(), &["*.rs".into()], &none()),
        Err(ContextError::NoMatch { .. })
    ));
}

#[test]
fn dockerignore_excludes_and_missing_sources_are_errors() {
    let d = ctx();
    let m = Matcher::new(["src/sub", "README.md"]).unwrap();
    let s = select(d.path(), &[".".into()], &m).unwrap();
    assert_eq!(
        dests(&s),
        ["go.mod", "go.sum", "src", "src/a.go", "src/link.go"]
    );
    let e = select(d.path(), &["README.md".into()], &m).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"README.md\": not found in build context"),
        "{e}"
    );
    let e = select(d.path(), &["nope".into()], &none()).unwrap_err();
    assert!(matches!(e, ContextError::NotFound { .. }));
}

#[test]
fn paths_cannot_leave_the_context() {
    let d = ctx();
    let outside = tempfile::tempdir().unwrap();
    fs_err::write(outside.path().join("secret"), "s").unwrap();
    symlink(outside.path(), d.path().join("escape")).unwrap();
    symlink("/etc", d.path().join("abs")).unwrap();
    let s = select(d.path(), &["../../go.mod".into()], &none()).unwrap();
    assert_eq!(s.entries[0].path, std::path::Path::new("go.mod"));
    assert!(select(d.path(), &["escape/secret".into()], &none()).is_err());
    // An absolute link is read inside the root: /etc here is <context>/etc, which does not exist.
    assert!(select(d.path(), &["abs/passwd".into()], &none()).is_err());
}

#[test]
fn content_key_depends_on_content_and_mode_not_mtime() {
    let d = ctx();
    let cache_path = d.path().join("stat-cache.json");
    let key = |cache: &StatCache| {
        let s = select(d.path(), &["src".into()], &none()).unwrap();
        content_key(d.path(), &s, cache).unwrap().key
    };
    let cache = StatCache::default();
    let k1 = key(&cache);
    // touch: same content, new mtime
    let f = d.path().join("src/a.go");
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    fs_err::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(key(&cache), k1, "a touch keeps the key");
    // same size edit with the old mtime put back: still detected (ctime and content)
    let old = fs_err::metadata(&f).unwrap().modified().unwrap();
    fs_err::write(&f, "package A\n").unwrap();
    fs_err::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let k2 = key(&cache);
    assert_ne!(k2, k1, "an edit with the mtime put back changes the key");
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(key(&cache), k2, "a mode change changes the key");
    cache.save(&cache_path).unwrap();
    let loaded = StatCache::load(&cache_path);
    assert_eq!(key(&loaded), key(&cache));
}

#[test]
fn a_saved_stat_cache_spares_the_next_build_every_read() {
    let d = ctx();
    fs_err::write(d.path().join("src/with space.go"), "package s\n").unwrap();
    // Past the racy window (files changed within 2 s of hashing are always read again).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s = select(d.path(), &["src".into()], &none()).unwrap();
    let files = s
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .count() as u64;
    let first = StatCache::default();
    let k1 = content_key(d.path(), &s, &first).unwrap();
    assert_eq!(k1.files_read, files);
    let k1 = k1.key;
    let path = d.path().join("stat-cache");
    first.save(&path).unwrap();

    let loaded = StatCache::load(&path);
    let k = content_key(d.path(), &s, &loaded).unwrap();
    assert_eq!(k.key, k1);
    assert_eq!(k.files_read, 0, "the loaded cache read files again");

    // A touched file is read again once; the save appends its new stat, and the next load
    // knows it (the appended line wins over the old one).
    let a = d.path().join("src/a.go");
    let later = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    fs_err::File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let size_before = fs_err::metadata(&path).unwrap().len();
    let s = select(d.path(), &["src".into()], &none()).unwrap();
    let k = content_key(d.path(), &s, &loaded).unwrap();
    assert_eq!(k.key, k1);
    assert_eq!(k.files_read, 1);
    loaded.save(&path).unwrap();
    let grown = fs_err::metadata(&path).unwrap().len() - size_before;
    assert!(
        grown < 200,
        "a one-entry save rewrote the file ({grown} bytes more)"
    );
    let again = StatCache::load(&path);
    let k = content_key(d.path(), &s, &again).unwrap();
    assert_eq!(k.key, k1);
    assert_eq!(k.files_read, 0, "the appended entry was not used");

    // A damaged line costs only its own entry; a file of another format is an empty cache.
    // (The damaged line is chosen by name: the file's order is a hash map's, and an entry
    // appended later would stand in for an older line of the same name.)
    let text = fs_err::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.ends_with(" src/with space.go") {
                "12 not-a-number 3 4 5 6 abc src/with space.go"
            } else {
                l
            }
        })
        .collect();
    assert!(lines.contains(&"12 not-a-number 3 4 5 6 abc src/with space.go"));
    fs_err::write(&path, lines.join("\n")).unwrap();
    let damaged = StatCache::load(&path);
    let k = content_key(d.path(), &s, &damaged).unwrap();
    assert_eq!(k.key, k1);
    assert_eq!(k.files_read, 1);
    fs_err::write(&path, "{\"entries\":{}}").unwrap();
    let other = StatCache::load(&path);
    let k = content_key(d.path(), &s, &other).unwrap();
    assert_eq!(k.key, k1);
    assert_eq!(k.files_read, files);
}

/// Two hoist processes that share a state root save the stat cache of one context to one
/// path, at the end of their builds, maybe at the same moment: both saves must succeed and
/// leave a whole file, never one's half-written text or a missing temporary file.
#[test]
fn two_stat_caches_saved_to_one_path_at_once_both_succeed_and_leave_a_whole_file() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..200 {
        fs_err::write(d.path().join(format!("f{i:03}")), format!("{i}\n")).unwrap();
    }
    // Past the racy window, so that a loaded cache vouches for every file.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let s = select(d.path(), &[".".into()], &none()).unwrap();
    let caches = [StatCache::default(), StatCache::default()];
    for cache in &caches {
        assert_eq!(content_key(d.path(), &s, cache).unwrap().files_read, 200);
    }
    let path = d.path().join("state/context-stat/cache.v2");
    let start = std::sync::Barrier::new(2);
    for round in 0..300 {
        std::thread::scope(|scope| {
            for cache in &caches {
                let (start, path) = (&start, &path);
                scope.spawn(move || {
                    start.wait();
                    cache.save(path).unwrap_or_else(|e| {
                        panic!("round {round}: a save beside another failed: {e:?}")
                    });
                });
            }
        });
        let k = content_key(d.path(), &s, &StatCache::load(&path)).unwrap();
        assert_eq!(
            k.files_read,
            0,
            "round {round}: the saved cache lost entries: {}",
            fs_err::read_to_string(&path).unwrap().lines().count()
        );
    }
    let left: Vec<_> = fs_err::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["cache.v2"], "temporary files were left behind");
}

/// A context of every kind of entry, with fixed names, bytes and modes.
fn fixed_context() -> tempfile::TempDir {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs_err::create_dir_all(r.join("dir/sub")).unwrap();
    fs_err::write(r.join("dir/a.txt"), "alpha\n").unwrap();
    fs_err::write(r.join("dir/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs_err::write(r.join("dir/sub/empty"), "").unwrap();
    fs_err::write(r.join("dir/sub/b.txt"), "beta\n").unwrap();
    let latin1 = r.join("dir").join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs_err::write(&latin1, "bytes\n").unwrap();
    fs_err::hard_link(r.join("dir/a.txt"), r.join("dir/z-link.txt")).unwrap();
    symlink("a.txt", r.join("dir/to-a")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("dir/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Modes set outright, whatever the umask.
    for (path, mode) in [
        ("dir", 0o755),
        ("dir/sub", 0o750),
        ("dir/a.txt", 0o644),
        ("dir/run.sh", 0o755),
        ("dir/sub/empty", 0o600),
        ("dir/sub/b.txt", 0o644),
        ("dir/pipe", 0o600),
    ] {
        fs_err::set_permissions(r.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    fs_err::set_permissions(&latin1, std::fs::Permissions::from_mode(0o640)).unwrap();
    d
}

/// The key's bytes are a format: the same files must give the same key from one version of
/// hoist to the next, or every cached step misses after an upgrade. This selection holds a
/// directory, files (an empty one, an executable, a name that is not UTF-8), a hardlink, a
/// symlink, a FIFO, and a file that two sources select.
#[test]
fn the_content_key_of_a_fixed_selection_is_pinned() {
    let d = fixed_context();
    let s = select(d.path(), &["dir".into(), "dir/sub".into()], &none()).unwrap();
    assert_eq!(
        dests(&s),
        [
            "a.txt",
            "b.txt",
            "caf\u{fffd}",
            "empty",
            "pipe",
            "run.sh",
            "sub",
            "sub/b.txt",
            "sub/empty",
            "to-a",
            "z-link.txt"
        ]
    );
    let key = content_key(d.path(), &s, &StatCache::default()).unwrap();
    assert_eq!(
        key.key,
        "sha256:7ad8a6c524200491f8bba54e4b26ec4d62c9e43d9009db5b44d60a0fe7ddb2e8"
    );
    // Known by their stats or read again, the files give the same key.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let cache = StatCache::default();
    let first = content_key(d.path(), &s, &cache).unwrap();
    let again = content_key(d.path(), &s, &cache).unwrap();
    assert_eq!(
        (first.key.as_str(), again.key.as_str()),
        (key.key.as_str(), key.key.as_str())
    );
    // Five files are read once each (the two that both sources select, once; the hardlink
    // not at all); then only the name that is not UTF-8, which has no line in the cache.
    assert_eq!((first.files_read, again.files_read), (5, 1));
}

/// Wildcard sources match each path component with Go's `filepath.Match` (the parser's
/// `pathmatch`), as BuildKit's COPY does.
#[test]
fn wildcard_sources_follow_filepath_match_per_component() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs_err::create_dir_all(r.join("dir/sub")).unwrap();
    for name in [
        "a.go",
        "b.go",
        "c.rs",
        "*",
        "x]",
        "v1",
        "v2",
        "v9",
        ".hidden",
        "dir/a.go",
        "dir/sub/b.go",
    ] {
        fs_err::write(r.join(name), name).unwrap();
    }
    let names = |pattern: &str| {
        let s = select(r, &[pattern.into()], &none())
            .unwrap_or_else(|e| panic!("source {pattern:?}: {e}"));
        (pattern.to_owned(), dests(&s))
    };
    let rows: &[(&str, &[&str])] = &[
        // `*` and `?` never cross a `/`.
        ("*.go", &["a.go", "b.go"]),
        ("?.go", &["a.go", "b.go"]),
        ("*/*.go", &["a.go"]),
        ("*/*/*.go", &["b.go"]),
        // Classes, ranges, negation.
        ("v[12]", &["v1", "v2"]),
        ("v[1-2]", &["v1", "v2"]),
        ("v[^1-2]", &["v9"]),
        ("[.]*", &[".hidden"]),
        // Escapes, and a class, name a wildcard character itself; `]` is literal.
        ("\\*", &["*"]),
        ("[*]", &["*"]),
        ("x]*", &["x]"]),
    ];
    for (pattern, expected) in rows {
        let expected: Vec<String> = expected.iter().map(|e| (*e).to_owned()).collect();
        assert_eq!(names(pattern), ((*pattern).to_owned(), expected));
    }
    assert!(matches!(
        select(r, &["v[3-8]".into()], &none()),
        Err(ContextError::NoMatch { .. })
    ));
}

/// A malformed wildcard is an error that names the source, wherever it is: also in a
/// directory that does not exist, where no name was there to match it against.
#[test]
fn a_malformed_wildcard_source_is_an_error_naming_it() {
    let d = ctx();
    for source in ["v[", "src/[]", "[z-a]*", "*\\", "nowhere/[", "nowhere/*/a["] {
        let e = select(d.path(), &[source.into()], &none()).unwrap_err();
        assert!(
            matches!(&e, ContextError::Pattern { pattern, .. } if pattern == source),
            "source {source:?}: {e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("invalid source pattern {source:?}: ")),
            "{e}"
        );
    }
}

mod copying {
    use super::*;
    use hoist_cache::copy::*;
    use std::os::unix::fs::MetadataExt;

    fn run(
        src: &std::path::Path,
        sources: &[&str],
        dest: &str,
        view: &std::path::Path,
        opts: CopyOptions,
    ) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        let sel = select(
            src,
            &sources.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &Matcher::default(),
        )
        .unwrap();
        copy_selection(src, &sel, dest, view, out.path(), opts).unwrap();
        out
    }

    fn tree(root: &std::path::Path) -> Vec<String> {
        let mut v = Vec::new();
        fn walk(base: &std::path::Path, rel: &str, v: &mut Vec<String>) {
            let mut es: Vec<_> = fs_err::read_dir(base.join(rel))
                .unwrap()
                .map(|e| e.unwrap())
                .collect();
            es.sort_by_key(|e| e.file_name());
            for e in es {
                let r = if rel.is_empty() {
                    e.file_name().to_string_lossy().into_owned()
                } else {
                    format!("{rel}/{}", e.file_name().to_string_lossy())
                };
                let m = fs_err::symlink_metadata(base.join(&r)).unwrap();
                v.push(format!(
                    "{r} {:o} {}:{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ));
                if m.is_dir() {
                    walk(base, &r, v);
                }
            }
        }
        walk(root, "", &mut v);
        v
    }

    #[test]
    fn file_to_a_path_and_into_a_directory() {
        let d = ctx();
        let view = tempfile::tempdir().unwrap();
        let out = run(
            d.path(),
            &["go.mod"],
            "/etc/app.mod",
            view.path(),
            CopyOptions::default(),
        );
        assert_eq!(
            fs_err::read_to_string(out.path().join("etc/app.mod")).unwrap(),
            "module x\n"
        );
        let out = run(
            d.path(),
            &["go.mod"],
            "/etc/",
            view.path(),
            CopyOptions::default(),
        );
        assert!(out.path().join("etc/go.mod").is_file());
        // An existing directory in the image takes the file inside it.
        fs_err::create_dir_all(view.path().join("opt/app")).unwrap();
        let out = run(
            d.path(),
            &["go.mod"],
            "/opt/app",
            view.path(),
            CopyOptions::default(),
        );
        assert!(out.path().join("opt/app/go.mod").is_file());
    }

    #[test]
    fn directory_contents_chown_chmod_and_parent_attributes() {
        let d = ctx();
        let view = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(view.path().join("usr")).unwrap();
        fs_err::set_permissions(
            view.path().join("usr"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::chown(view.path().join("usr"), Some(7), Some(8)).unwrap();
        let out = run(
            d.path(),
            &["src"],
            "/usr/src/app/",
            view.path(),
            CopyOptions {
                chown: Some((1000, 1000)),
                chmod: Some(0o640),
            },
        );
        assert_eq!(
            tree(out.path()),
            [
                // An existing parent keeps its attributes; the ones the copy creates belong
                // to --chown's owner, as in BuildKit.
                "usr 750 7:8",
                "usr/src 755 1000:1000",
                "usr/src/app 755 1000:1000",
                "usr/src/app/a.go 640 1000:1000",
                "usr/src/app/link.go 777 1000:1000",
                "usr/src/app/sub 640 1000:1000",
                "usr/src/app/sub/b.go 640 1000:1000",
            ]
        );
        assert_eq!(
            fs_err::read_link(out.path().join("usr/src/app/link.go"))
                .unwrap()
                .to_str(),
            Some("a.go")
        );
    }

    #[test]
    fn a_symlinked_source_copies_its_target_but_never_outside() {
        let d = ctx();
        let view = tempfile::tempdir().unwrap();
        let out = run(
            d.path(),
            &["src/link.go"],
            "/x",
            view.path(),
            CopyOptions::default(),
        );
        assert_eq!(
            fs_err::read_to_string(out.path().join("x")).unwrap(),
            "package a\n"
        );
        symlink("/etc/passwd", d.path().join("pw")).unwrap();
        let sel = select(d.path(), &["pw".into()], &Matcher::default());
        assert!(
            sel.is_err(),
            "an absolute link resolves inside the context, where there is no etc/passwd"
        );
    }

    #[test]
    fn a_symlink_in_the_image_is_followed_inside_the_root_only() {
        let d = ctx();
        let view = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        // An absolute link to a directory of the host: inside the image it means the image's
        // own directory of that name, so the copy lands there, never on the host.
        symlink(host.path(), view.path().join("escape")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let sel = select(d.path(), &["go.mod".into()], &Matcher::default()).unwrap();
        copy_selection(
            d.path(),
            &sel,
            "/escape/x",
            view.path(),
            out.path(),
            CopyOptions::default(),
        )
        .unwrap();
        let inside = host.path().strip_prefix("/").unwrap().join("x");
        assert!(
            out.path().join(&inside).is_file(),
            "not written inside the root"
        );
        assert!(!host.path().join("x").exists(), "written on the host");
    }

    #[test]
    fn mkdir_and_mkfile() {
        let view = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        mkdir(view.path(), out.path(), "/app/data", 0o755, Some((5, 5))).unwrap();
        mkfile(
            view.path(),
            out.path(),
            "/app/hello.txt",
            b"hi\n",
            0o644,
            None,
        )
        .unwrap();
        assert_eq!(
            tree(out.path()),
            ["app 755 5:5", "app/data 755 5:5", "app/hello.txt 644 0:0"]
        );
    }
}

mod index {
    use hoist_cache::index::*;

    fn rec(n: u64) -> CacheRecord {
        CacheRecord {
            layers: vec![LayerRecord {
                diff_id: format!("sha256:{n:064x}").parse().unwrap(),
                blob: None,
            }],
            took_ms: n,
        }
    }

    #[test]
    fn put_get_remove_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state/cache.redb");
        {
            let idx = CacheIndex::open(&path).unwrap();
            assert_eq!(
                idx.get("k").unwrap(),
                None,
                "an empty index is a miss, not an error"
            );
            idx.put("k", &rec(1)).unwrap();
            idx.put("j", &rec(2)).unwrap();
            assert_eq!(idx.get("k").unwrap(), Some(rec(1)));
            idx.remove("j").unwrap();
        }
        let idx = CacheIndex::open(&path).unwrap();
        assert_eq!(idx.entries().unwrap(), vec![("k".to_owned(), rec(1))]);
    }

    #[test]
    fn a_writer_killed_mid_write_leaves_a_consistent_index() {
        // A child process commits records k0, k1, … as fast as it can and is killed with
        // SIGKILL mid-stream; the index still opens and holds a gap-free prefix of them.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cache.redb");
        let idx = CacheIndex::open(&path).unwrap();
        idx.put("committed", &rec(1)).unwrap();
        drop(idx);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &child_test_name(),
                "--include-ignored",
                "--quiet",
            ])
            .env("HOIST_INDEX_CHILD_PATH", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        let idx = CacheIndex::open(&path).unwrap();
        assert_eq!(idx.get("committed").unwrap(), Some(rec(1)));
        let n = idx.entries().unwrap().len() - 1;
        assert!(n > 0, "the child wrote nothing before it was killed");
        for i in 0..n as u64 {
            assert_eq!(
                idx.get(&format!("k{i}")).unwrap(),
                Some(rec(i)),
                "k{i} of {n}"
            );
        }
    }

    /// The libtest name of `child_writer`: this module's path without the crate name.
    fn child_test_name() -> String {
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        format!("{module}::child_writer")
    }

    #[test]
    #[ignore = "run only as the child of a_writer_killed_mid_write_leaves_a_consistent_index"]
    fn child_writer() {
        let path = std::env::var_os("HOIST_INDEX_CHILD_PATH").expect("run by the parent test");
        let idx = CacheIndex::open(std::path::Path::new(&path)).unwrap();
        for i in 0.. {
            idx.put(&format!("k{i}"), &rec(i)).unwrap();
        }
    }
}
