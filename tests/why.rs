//! "Why did this step run?": a rebuild says, at each step that missed the cache, what changed
//! since the last build of that step (a context file, a build-arg, the base image's digest, the
//! step above it, the instruction itself, `--no-cache`), in the progress output and in
//! `--metadata-file`; locally and through `hoist serve`. Needs root (namespaces, overlay,
//! cgroups).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Project, Registry, Server};

const APP: &str = "FROM scratch\n\
                   ADD rootfs.tar /\n\
                   ARG VERSION=1.0\n\
                   COPY . /src\n\
                   RUN echo v=$VERSION > /version\n\
                   RUN cat /version\n";

/// A build of `p` with `args`, its plain progress and its `--metadata-file`.
struct Built {
    stderr: String,
    metadata: serde_json::Value,
}

fn build(p: &Project, args: &[&str]) -> Built {
    let metadata = tempfile::NamedTempFile::new().unwrap();
    let path = metadata.path().to_str().unwrap().to_owned();
    let mut all = vec!["--metadata-file", path.as_str()];
    all.extend_from_slice(args);
    let out = p.hoist(&all);
    built(&out, metadata.path())
}

fn built(out: &Output, metadata: &Path) -> Built {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the build failed:\n{stderr}");
    let metadata = serde_json::from_str(&fs_err::read_to_string(metadata).unwrap())
        .unwrap_or_else(|e| panic!("the metadata file is not JSON: {e}"));
    Built { stderr, metadata }
}

impl Built {
    /// The step number of the step whose instruction is `instruction` (`COPY . /src`).
    fn step(&self, instruction: &str) -> String {
        self.stderr
            .lines()
            .find_map(|line| {
                let (n, text) = line.strip_prefix('#')?.split_once(' ')?;
                let (_, shown) = text.strip_prefix('[')?.split_once("] ")?;
                (shown == instruction).then(|| n.to_owned())
            })
            .unwrap_or_else(|| panic!("no step {instruction:?} in:\n{}", self.stderr))
    }

    /// What the progress says right under the step `instruction` about why it ran.
    fn reason(&self, instruction: &str) -> Option<String> {
        let prefix = format!("#{} miss: ", self.step(instruction));
        self.stderr
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
    }

    /// Every line that gives a reason.
    fn reasons(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| line.contains(" miss: "))
            .collect()
    }

    /// The `hoist.steps` entry of the metadata file for `instruction`.
    fn step_metadata(&self, instruction: &str) -> &serde_json::Value {
        self.steps()
            .iter()
            .find(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("] {instruction}")))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no step {instruction:?} in the metadata file: {:#}",
                    self.metadata
                )
            })
    }

    fn steps(&self) -> &Vec<serde_json::Value> {
        self.metadata["hoist.steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no hoist.steps in the metadata file: {:#}", self.metadata))
    }

    /// The reason at `instruction` is `expected`, in the progress and in the metadata file,
    /// which also has the step's Dockerfile line and `cached: false`.
    fn assert_reason(&self, instruction: &str, expected: &str, line: u64) {
        assert_eq!(
            self.reason(instruction).as_deref(),
            Some(expected),
            "the reason shown at {instruction:?}:\n{}",
            self.stderr
        );
        let meta = self.step_metadata(instruction);
        assert_eq!(meta["reason"], expected, "{meta:#}");
        assert_eq!(meta["cached"], false, "{meta:#}");
        assert_eq!(meta["line"], line, "{meta:#}");
    }
}

#[test]
fn the_first_build_of_a_step_says_it_has_none_earlier_and_a_cached_rebuild_says_nothing() {
    let p = Project::new(APP);
    p.write("a.txt", "a\n");
    let first = build(&p, &[]);
    first.assert_reason("RUN cat /version", "no earlier build of this step", 6);
    first.assert_reason("COPY . /src", "no earlier build of this step", 4);

    let again = build(&p, &[]);
    assert!(
        again.reasons().is_empty(),
        "a fully cached rebuild gave reasons:\n{}",
        again.stderr
    );
    let steps = again.steps();
    assert_eq!(steps.len(), 5, "FROM, ADD, COPY and two RUNs: {steps:#?}");
    for step in steps {
        assert_eq!(step["cached"], true, "{step:#}");
        assert!(step.get("reason").is_none(), "{step:#}");
    }
}

#[test]
fn changed_context_files_are_named_at_the_copy_and_the_steps_after_it_say_the_step_above_ran() {
    let p = Project::new(APP);
    fs_err::create_dir(p.path("src")).unwrap();
    p.write("src/main.rs", "fn main() {}\n");
    p.write("Cargo.lock", "# v1\n");
    p.write("README", "same\n");
    build(&p, &[]);

    p.write("src/main.rs", "fn main() { println!(\"hi\"); }\n");
    p.write("Cargo.lock", "# v2\n");
    let rebuilt = build(&p, &[]);
    rebuilt.assert_reason("COPY . /src", "2 files changed: Cargo.lock, src/main.rs", 4);
    rebuilt.assert_reason("RUN echo v=$VERSION > /version", "the step above it ran", 5);
    assert_eq!(rebuilt.step_metadata("ADD rootfs.tar /")["cached"], true);
    assert_eq!(
        rebuilt.reason("ADD rootfs.tar /"),
        None,
        "{}",
        rebuilt.stderr
    );
}

#[test]
fn a_changed_build_arg_is_named_with_its_old_and_new_values() {
    let p = Project::new(APP);
    build(&p, &["--build-arg", "VERSION=1.2"]);
    let rebuilt = build(&p, &["--build-arg", "VERSION=1.3"]);
    rebuilt.assert_reason(
        "RUN echo v=$VERSION > /version",
        "build-arg VERSION changed (1.2 → 1.3)",
        5,
    );
    assert_eq!(rebuilt.step_metadata("COPY . /src")["cached"], true);
}

#[test]
fn a_changed_instruction_and_no_cache_are_named() {
    let p = Project::new(APP);
    build(&p, &[]);
    fs_err::write(
        p.path("Dockerfile"),
        APP.replace("RUN cat /version", "RUN cat /version /version"),
    )
    .unwrap();
    let edited = build(&p, &[]);
    edited.assert_reason(
        "RUN cat /version /version",
        "the instruction changed (was: RUN cat /version)",
        6,
    );

    let forced = build(&p, &["--no-cache"]);
    forced.assert_reason("COPY . /src", "--no-cache", 4);
    forced.assert_reason("RUN cat /version /version", "--no-cache", 6);
}

#[test]
fn a_new_digest_of_the_base_image_is_named_at_the_from() {
    let registry = Registry::start();
    let base = format!("{}/why/base:1", registry.addr);
    let base_project = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let pushed = base_project.hoist(&["-t", &base, "--push"]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let app = Project::new(&format!("FROM {base}\nRUN echo hi > /hi\n"));
    build(&app, &[]);

    // The same tag, pushed again with another layer: a new digest.
    fs_err::write(
        base_project.path("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\nRUN echo 2 > /v2\n",
    )
    .unwrap();
    let pushed = base_project.hoist(&["-t", &base, "--push"]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let rebuilt = build(&app, &[]);
    let from = rebuilt
        .stderr
        .lines()
        .find_map(|line| {
            let (n, text) = line.strip_prefix('#')?.split_once(' ')?;
            text.contains("] FROM ").then(|| n.to_owned())
        })
        .unwrap_or_else(|| panic!("no FROM step in:\n{}", rebuilt.stderr));
    let reason = rebuilt
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix(&format!("#{from} miss: ")))
        .unwrap_or_else(|| panic!("no reason at the FROM:\n{}", rebuilt.stderr));
    assert!(
        reason.starts_with("base image digest changed (sha256:"),
        "{reason}"
    );
    rebuilt.assert_reason("RUN echo hi > /hi", "the step above it ran", 2);
}

#[test]
fn a_remote_build_shows_why_its_steps_ran() {
    let dir = tempfile::Builder::new()
        .prefix("hoist-why-")
        .tempdir_in("/tmp")
        .unwrap();
    let addr = format!("unix://{}", dir.path().join("hoist.sock").display());
    let server = Server::start(&["--addr", &addr, "--insecure-no-auth"]);
    let p = Project::new(APP);
    p.write("a.txt", "a\n");
    let remote = |args: &[&str]| {
        let metadata = tempfile::NamedTempFile::new().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .arg("build")
            .arg("--root")
            .arg(p.root.path())
            .args(["--progress=plain", "--remote", &addr, "--metadata-file"])
            .arg(metadata.path())
            .args(args)
            .arg(p.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\nthe server's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        built(&out, metadata.path())
    };
    let first = remote(&["--build-arg", "VERSION=1.2"]);
    first.assert_reason("COPY . /src", "no earlier build of this step", 4);

    p.write("a.txt", "b\n");
    let rebuilt = remote(&["--build-arg", "VERSION=1.3"]);
    rebuilt.assert_reason("COPY . /src", "1 file changed: a.txt", 4);
    rebuilt.assert_reason(
        "RUN echo v=$VERSION > /version",
        "build-arg VERSION changed (1.2 → 1.3); the step above it ran",
        5,
    );
}
