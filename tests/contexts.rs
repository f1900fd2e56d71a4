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

/// A directory outside the project, for `--build-context NAME=DIR`.
fn side_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, content) in files {
        let path = dir.path().join(rel);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, content).unwrap();
    }
    dir
}

fn failed(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build passed:\n{stderr}");
    stderr
}

#[test]
fn a_build_context_dir_serves_copy_from_from_and_mounts_with_its_own_dockerignore() {
    let lib = side_dir(&[
        ("a.txt", "from lib"),
        ("sub/b.txt", "b"),
        ("secret.txt", "secret"),
        (".dockerignore", "secret.txt\n"),
    ]);
    let p = project(
        "FROM lib AS base\n\
         FROM scratch AS bb\n\
         ADD rootfs.tar /\n\
         RUN --mount=from=lib,target=/lib2 cat /lib2/a.txt /lib2/sub/b.txt > /mounted\n\
         FROM scratch\n\
         COPY --from=lib a.txt /copied/\n\
         COPY --from=lib --parents sub/b.txt /parents/\n\
         COPY --from=base / /whole/\n\
         COPY --from=bb /mounted /mounted\n",
        // The main context's .dockerignore does not reach a named context.
        &[(".dockerignore", "a.txt\nsub\n")],
    );
    let arg = format!("lib={}", lib.path().display());
    let (_, out) = p.build_to_dir(&["--build-context", &arg]);
    let out = out.path();
    assert_eq!(read(out, "copied/a.txt"), "from lib");
    assert_eq!(read(out, "parents/sub/b.txt"), "b");
    assert_eq!(read(out, "whole/a.txt"), "from lib");
    assert_eq!(read(out, "whole/sub/b.txt"), "b");
    assert!(
        !out.join("whole/secret.txt").exists(),
        "the context's own .dockerignore excludes secret.txt"
    );
    assert_eq!(read(out, "mounted"), "from libb");
}

#[test]
fn a_file_changed_in_a_build_context_dir_changes_the_copy_key() {
    let lib = side_dir(&[("a.txt", "one"), ("other.txt", "x")]);
    let p = project("FROM scratch\nCOPY --from=lib a.txt /a.txt\n", &[]);
    let arg = format!("lib={}", lib.path().display());
    let (first, out) = p.build_to_dir(&["--build-context", &arg]);
    assert_eq!(read(out.path(), "a.txt"), "one");
    assert!(
        support::steps_that_ran(&first)
            .iter()
            .any(|s| s.contains("COPY --from=lib")),
        "{first}"
    );
    let (again, _) = p.build_to_dir(&["--build-context", &arg]);
    assert!(
        !support::steps_that_ran(&again)
            .iter()
            .any(|s| s.contains("COPY --from=lib")),
        "nothing changed, yet the copy ran again:\n{again}"
    );
    fs_err::write(lib.path().join("a.txt"), "two").unwrap();
    let (changed, out) = p.build_to_dir(&["--build-context", &arg]);
    assert_eq!(read(out.path(), "a.txt"), "two");
    assert!(
        support::steps_that_ran(&changed)
            .iter()
            .any(|s| s.contains("COPY --from=lib")),
        "a.txt changed, yet the copy was cached:\n{changed}"
    );
}

/// Builds busybox plus `/marker` holding `text` and returns the project.
fn marked_image(text: &str) -> Project {
    project(
        "FROM scratch\nADD rootfs.tar /\nCOPY marker /marker\n",
        &[("marker", text)],
    )
}

#[test]
fn a_docker_image_build_context_stands_in_for_a_from_name() {
    let registry = support::Registry::start();
    let image = format!("{}/ctx/marked:1", registry.addr);
    let base = marked_image("pushed");
    let out = base.hoist(&["-t", &image, "--push"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the context, `alpine` would be Docker Hub's, which this machine cannot reach.
    let p = project(
        "FROM alpine\n\
         RUN cat /marker > /seen\n\
         COPY --from=docker.io/library/alpine:latest /marker /again\n",
        &[],
    );
    let arg = format!("alpine=docker-image://{image}");
    let (_, out) = p.build_to_dir(&["--build-context", &arg]);
    assert_eq!(read(out.path(), "seen"), "pushed");
    assert_eq!(read(out.path(), "again"), "pushed");
}

#[test]
fn an_oci_layout_build_context_is_read_by_tag_or_digest() {
    let layout = tempfile::tempdir().unwrap();
    let base = marked_image("from the layout");
    let dest = format!("type=oci,dest={},tar=false", layout.path().display());
    let out = base.hoist(&["-o", &dest]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_str(&read(layout.path(), "index.json")).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let p = project(
        "FROM base AS inner\nRUN cat /marker > /seen\nFROM scratch\nCOPY --from=base /marker /copied\n",
        &[],
    );
    for value in [
        format!("base=oci-layout://{}", layout.path().display()),
        format!("base=oci-layout://{}@{digest}", layout.path().display()),
    ] {
        let (_, out) = p.build_to_dir(&["--build-context", &value, "--target", "inner"]);
        assert_eq!(read(out.path(), "seen"), "from the layout", "{value}");
        let (_, out) = p.build_to_dir(&["--build-context", &value]);
        assert_eq!(read(out.path(), "copied"), "from the layout", "{value}");
    }
    let wrong = format!(
        "base=oci-layout://{}@sha256:{}",
        layout.path().display(),
        "0".repeat(64)
    );
    let stderr = failed(&p.hoist(&["--build-context", &wrong]));
    assert!(
        stderr.contains("--build-context base: the OCI layout at")
            && stderr.contains("has no image with the digest sha256:000"),
        "{stderr}"
    );
}

#[test]
fn bad_build_contexts_are_refused_naming_the_flag_before_anything_runs() {
    let p = project("FROM scratch\nCOPY --from=lib a /a\n", &[]);
    let missing = p.path("no-such-dir");
    let arg = format!("lib={}", missing.display());
    let stderr = failed(&p.hoist(&["--build-context", &arg]));
    assert!(
        stderr.contains(&format!("--build-context {arg}: not a directory")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("#0 build"),
        "a build was started:\n{stderr}"
    );
    let stderr = failed(&p.hoist(&["--build-context", "lib=git://example.org/x"]));
    assert!(
        stderr.contains(
            "invalid --build-context \"lib=git://example.org/x\": unsupported source git://"
        ),
        "{stderr}"
    );
    let stderr = failed(&p.hoist(&["--build-context", "lib"]));
    assert!(
        stderr.contains("invalid --build-context \"lib\""),
        "{stderr}"
    );
    // A --from that is neither a stage nor a context is an image, as in BuildKit.
    let other = project("FROM scratch\nCOPY --from=nosuch a /a\n", &[]);
    let dir = side_dir(&[("a", "a")]);
    let arg = format!("lib={}", dir.path().display());
    let stderr = failed(&other.hoist(&["--build-context", &arg]));
    assert!(
        stderr.contains("Dockerfile:2") && stderr.contains("--from=nosuch: no stage of that name"),
        "{stderr}"
    );
    // A remote server cannot read this machine's directories.
    let stderr = failed(&p.hoist(&[
        "--remote",
        "unix:///nonexistent/hoist.sock",
        "--build-context",
        &format!("lib={}", dir.path().display()),
    ]));
    assert!(
        stderr.contains("--build-context lib: a local directory or OCI layout is not supported with --remote yet"),
        "{stderr}"
    );
}

#[test]
fn a_build_context_named_as_a_stage_replaces_that_stage() {
    let lib = side_dir(&[("a.txt", "from lib")]);
    // Built, the stage would fail: the context has no such file.
    let p = project(
        "FROM scratch AS builder\n\
         COPY no-such-file /x\n\
         FROM scratch\n\
         COPY --from=builder a.txt /over\n",
        &[],
    );
    let arg = format!("builder={}", lib.path().display());
    let (_, out) = p.build_to_dir(&["--build-context", &arg]);
    assert_eq!(read(out.path(), "over"), "from lib");
}
