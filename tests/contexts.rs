//! What COPY can take and from where: `COPY --parents` (each source keeps its directories below
//! the context, or below a `/./` pivot) and `--build-context NAME=…` (a second local directory,
//! an image that stands in for a name, an image of an OCI layout). Each build runs the real
//! binary and exports its filesystem with `-o type=local`; expected results are BuildKit's
//! (`frontend/dockerfile/dockerfile_parents_test.go`, buildx's `--build-context`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use support::Project;

/// A project whose context holds `files` (parents made as needed) besides the Dockerfile.
fn project(dockerfile: &str, files: &[(&str, &str)]) -> Project {
    let p = Project::new(dockerfile);
    for (rel, content) in files {
        let path = p.path(rel);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, content).unwrap();
    }
    p
}

fn read(dir: &Path, rel: &str) -> String {
    fs_err::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every path under `dir`, relative and sorted, directories with a trailing `/`.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in fs_err::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                pending.push(e.path());
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn copy_parents_keeps_each_sources_directories_below_the_context_or_its_pivot() {
    let p = project(
        "FROM scratch\n\
         COPY --parents foo1/foo2/bar /\n\
         WORKDIR /test\n\
         COPY --parents foo1/foo2/ba* .\n\
         COPY --parents ./x/./y/*.txt /pivot/\n\
         COPY --parents ./src/**/*.txt /deep/\n\
         COPY --parents nothing*/here /empty/\n\
         COPY --parents=false foo1/foo2/bar /flat/\n",
        &[
            ("foo1/foo2/bar", "testing"),
            ("foo1/foo2/baz", "testing2"),
            ("x/y/a.txt", "a"),
            ("x/y/b.txt", "b"),
            ("x/y/c.md", "c"),
            ("src/a.txt", "1"),
            ("src/x/b.txt", "2"),
            ("src/x/y/c.txt", "3"),
            ("src/x/d.md", "4"),
        ],
    );
    fs_err::set_permissions(p.path("foo1"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (_, out) = p.build_to_dir(&[]);
    let out = out.path();
    assert_eq!(read(out, "foo1/foo2/bar"), "testing");
    assert_eq!(read(out, "test/foo1/foo2/bar"), "testing");
    assert_eq!(read(out, "test/foo1/foo2/baz"), "testing2");
    // A directory on the way comes with its own mode, as BuildKit sends it.
    let mode = fs_err::metadata(out.join("foo1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700, "mode of /foo1");
    assert_eq!(
        tree(&out.join("pivot")),
        ["y/", "y/a.txt", "y/b.txt"],
        "only what is below the /./ pivot is kept"
    );
    assert_eq!(
        tree(&out.join("deep")),
        [
            "src/",
            "src/a.txt",
            "src/x/",
            "src/x/b.txt",
            "src/x/y/",
            "src/x/y/c.txt"
        ],
        "** matches any number of directories, none included"
    );
    assert!(
        tree(&out.join("empty")).is_empty(),
        "a wildcard that matches nothing makes the destination only"
    );
    assert_eq!(tree(&out.join("flat")), ["bar"]);
}

#[test]
fn copy_parents_from_a_stage_with_pivots_wildcards_and_excludes() {
    let p = project(
        "FROM scratch AS base\n\
         COPY tree/ /test/\n\
         FROM scratch\n\
         COPY --from=base --parents /test/a/b/./c/d /out/\n\
         COPY --from=base --parents /test/a/./*/c /wild/\n\
         COPY --from=base --parents /test/a/b/c/d/. /whole/\n\
         COPY --from=base --parents --exclude=c/d/e /test/a/b/./c /ex/\n\
         COPY --parents --exclude=y/b.txt ./x/./y /ctx/\n",
        &[
            ("tree/a/b/c/d/foo", "foo"),
            ("tree/a/b/c/d/e/bay", "bay"),
            ("tree/a/b2/c/d/e/bar", "bar"),
            ("x/y/a.txt", "a"),
            ("x/y/b.txt", "b"),
        ],
    );
    let (_, out) = p.build_to_dir(&[]);
    let out = out.path();
    assert_eq!(
        tree(&out.join("out")),
        ["c/", "c/d/", "c/d/e/", "c/d/e/bay", "c/d/foo"]
    );
    assert_eq!(
        tree(&out.join("wild")),
        [
            "b/",
            "b/c/",
            "b/c/d/",
            "b/c/d/e/",
            "b/c/d/e/bay",
            "b/c/d/foo",
            "b2/",
            "b2/c/",
            "b2/c/d/",
            "b2/c/d/e/",
            "b2/c/d/e/bar"
        ]
    );
    // `/.` at the end is no pivot: the whole path is kept.
    assert_eq!(read(out, "whole/test/a/b/c/d/foo"), "foo");
    assert_eq!(read(out, "whole/test/a/b/c/d/e/bay"), "bay");
    // --exclude matches the paths kept below the pivot, where they land.
    assert_eq!(tree(&out.join("ex")), ["c/", "c/d/", "c/d/foo"]);
    assert_eq!(tree(&out.join("ctx")), ["y/", "y/a.txt"]);
}

#[test]
fn copy_parents_of_a_missing_plain_path_names_it() {
    let p = project(
        "FROM scratch\nCOPY --parents a/missing.txt /x/\n",
        &[("a/b", "b")],
    );
    let out = p.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build passed:\n{stderr}");
    assert!(
        stderr.contains("\"a/missing.txt\": not found in build context"),
        "{stderr}"
    );
}
