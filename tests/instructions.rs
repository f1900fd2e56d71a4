//! Every Dockerfile instruction, as a Docker user checks it: `hoist build --push` to a real
//! registry, then the image is read back from that registry with real clients (`skopeo
//! inspect --config` for the config, `skopeo copy` + `umoci unpack` and `tar` on the layer
//! blobs for the files). Expected values are what BuildKit produces for the same Dockerfile
//! (`frontend/dockerfile/dockerfile2llb` in moby/buildkit). Needs root, `docker-registry`,
//! `busybox-static`, `skopeo`, `umoci`, and `tar` with `gzip`, `zstd`, `bzip2` and `xz` (to make
//! the archives that ADD extracts).
//!
//! Each test gathers all of its mismatches before failing, so one run lists every difference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::Registry;

/// The PATH BuildKit puts in every Linux image whose base sets none (`system.DefaultPathEnv`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The base every test builds on: busybox from Debian's busybox-static, plus a user `app`
/// (1234:1234) in a supplementary group `staff` (2345), for `--chown` by name.
const BASE_DOCKERFILE: &str = "FROM scratch\n\
    ADD rootfs.tar /\n\
    RUN echo 'app:x:1234:1234:app:/home/app:/bin/sh' >> /etc/passwd \
    && echo 'app:x:1234:' >> /etc/group && echo 'staff:x:2345:app' >> /etc/group\n";

/// A registry holding the busybox base, and a private hoist store to build with.
struct Lab {
    registry: Registry,
    root: tempfile::TempDir,
    /// `127.0.0.1:PORT/base/busybox:1`.
    base: String,
}

impl Lab {
    fn new() -> Self {
        for tool in ["/usr/bin/skopeo", "/usr/bin/umoci"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install skopeo umoci"
            );
        }
        let registry = Registry::start();
        let root = tempfile::tempdir().unwrap();
        let base = format!("{}/base/busybox:1", registry.addr);
        let context = Context::new(BASE_DOCKERFILE);
        let status =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh"))
                .arg(context.path("rootfs.tar"))
                .status()
                .expect("run scripts/busybox-rootfs.sh (needs busybox-static)");
        assert!(status.success(), "making the busybox rootfs failed");
        let lab = Self {
            registry,
            root,
            base,
        };
        lab.hoist_build(&context, &lab.base, &[]);
        lab
    }

    /// A reference in this lab's registry.
    fn reference(&self, name: &str) -> String {
        format!("{}/test/{name}:1", self.registry.addr)
    }

    /// Builds `context` and pushes it as `test/NAME:1`.
    fn build(&self, context: &Context, name: &str, args: &[&str]) -> Pushed {
        let reference = self.reference(name);
        self.hoist_build(context, &reference, args);
        Pushed::fetch(&reference)
    }

    fn hoist_build(&self, context: &Context, tag: &str, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .arg("build")
            .arg("--root")
            .arg(self.root.path())
            .args(["--progress=plain", "--push", "-t", tag])
            .args(args)
            .arg(context.0.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hoist build -t {tag} failed\nDockerfile:\n{}\nstderr:\n{}",
            fs_err::read_to_string(context.path("Dockerfile")).unwrap(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A build context in a temporary directory.
struct Context(tempfile::TempDir);

impl Context {
    fn new(dockerfile: &str) -> Self {
        let context = Self(tempfile::tempdir().unwrap());
        context.write("Dockerfile", dockerfile);
        context
    }

    fn with(self, rel: &str, content: &str) -> Self {
        self.write(rel, content);
        self
    }

    fn mode(self, rel: &str, mode: u32) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        fs_err::set_permissions(self.path(rel), std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, content).unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }

    /// Runs `tar ARGS` in the context directory (to make archives for ADD).
    fn tar(&self, args: &[&str]) {
        let out = Command::new("tar")
            .current_dir(self.0.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An image as read back from the registry: its config, its files and its layer blobs.
struct Pushed {
    reference: String,
    /// The image config, as `skopeo inspect --config --raw` prints it.
    config: Value,
    /// The image copied into an OCI layout by skopeo, unpacked by umoci.
    dir: tempfile::TempDir,
    /// The layer blobs in the layout, bottom first.
    layers: Vec<PathBuf>,
}

impl Pushed {
    fn fetch(reference: &str) -> Self {
        let config = run_ok(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            &format!("docker://{reference}"),
        ]));
        let config: Value = serde_json::from_slice(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        run_ok(
            Command::new("skopeo")
                .args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:image", layout.display())),
        );
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:image", layout.display()))
                .arg(dir.path().join("bundle")),
        );
        let blob = |digest: &str| {
            layout
                .join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap())
        };
        let index: Value =
            serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest: Value = serde_json::from_slice(
            &fs_err::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let layers = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| blob(l["digest"].as_str().unwrap()))
            .collect();
        Self {
            reference: reference.to_owned(),
            config,
            dir,
            layers,
        }
    }

    /// A path in the unpacked root filesystem (`/etc/passwd` or `etc/passwd`).
    fn file(&self, path: &str) -> PathBuf {
        self.dir
            .path()
            .join("bundle/rootfs")
            .join(path.trim_start_matches('/'))
    }

    /// A file's content, or `None` when the image has no such file.
    fn read(&self, path: &str) -> Option<String> {
        fs_err::read_to_string(self.file(path)).ok()
    }

    fn exists(&self, path: &str) -> bool {
        fs_err::symlink_metadata(self.file(path)).is_ok()
    }

    /// `(uid, gid, permission bits)` of a file, or `None` when it is missing.
    fn owner_mode(&self, path: &str) -> Option<(u32, u32, u32)> {
        fs_err::symlink_metadata(self.file(path))
            .ok()
            .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777))
    }

    /// `Config.KEY` of the image config.
    fn cfg(&self, key: &str) -> &Value {
        &self.config["config"][key]
    }

    /// The value of an environment variable in `Config.Env`.
    fn env(&self, key: &str) -> Option<String> {
        strings(self.cfg("Env"))
            .into_iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
    }

    /// `(created_by, empty_layer)` of every history entry.
    fn history(&self) -> Vec<(String, bool)> {
        self.config["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|e| {
                        (
                            e["created_by"].as_str().unwrap_or("").to_owned(),
                            e["empty_layer"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The entries of a layer blob as `tar -tv --numeric-owner` lists them:
    /// `(mode string, "uid/gid", path)`.
    fn layer_entries(&self, index: usize) -> Vec<(String, String, String)> {
        let listing = run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "-tvf"])
                .arg(&self.layers[index]),
        );
        String::from_utf8_lossy(&listing)
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // mode owner size date time path…
                (fields.len() >= 6).then(|| {
                    (
                        fields[0].to_owned(),
                        fields[1].to_owned(),
                        fields[5..].join(" "),
                    )
                })
            })
            .collect()
    }
}

/// A JSON array of strings (or null) as a vector.
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The keys of a JSON object (Docker writes sets such as `ExposedPorts` that way).
fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Mismatches gathered across one test, reported together at the end.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn eq<T: PartialEq + Debug>(&mut self, what: &str, expected: T, held: T) {
        if expected != held {
            self.0.push(format!(
                "{what}: expected {expected:?}, the image held {held:?}"
            ));
        }
    }

    fn that(&mut self, ok: bool, message: impl Into<String>) {
        if !ok {
            self.0.push(message.into());
        }
    }

    fn file(&mut self, image: &Pushed, path: &str, expected: &str) {
        self.eq(
            &format!("content of {path}"),
            Some(expected.to_owned()),
            image.read(path),
        );
    }

    fn absent(&mut self, image: &Pushed, path: &str) {
        self.that(
            !image.exists(path),
            format!("{path}: expected no such file, the image has one"),
        );
    }

    fn owner_mode(&mut self, image: &Pushed, path: &str, expected: (u32, u32, u32)) {
        let held = image.owner_mode(path);
        if held != Some(expected) {
            self.0.push(format!(
                "{path}: expected uid {} gid {} mode {:o}, the image held {}",
                expected.0,
                expected.1,
                expected.2,
                held.map_or("no such file".to_owned(), |(u, g, m)| format!(
                    "uid {u} gid {g} mode {m:o}"
                ))
            ));
        }
    }

    #[track_caller]
    fn finish(self, image: &Pushed) {
        assert!(
            self.0.is_empty(),
            "{} mismatch(es) in {}:\n  - {}\nconfig: {}",
            self.0.len(),
            image.reference,
            self.0.join("\n  - "),
            image.config
        );
    }
}

#[test]
fn config_instructions_are_read_back_from_the_registry() {
    let lab = Lab::new();
    let base = Pushed::fetch(&lab.base);
    let image = lab.build(
        &Context::new(&format!(
            r#"FROM {}
ENV PATH=/opt/bin:$PATH GREETING="hello world"
ENV COPY_OF_GREETING=$GREETING
ENV LEGACY value with spaces
ENV DIR=/from-env
LABEL org.example.title="hoist test" org.example.version=1
LABEL from.env=${{GREETING}}
EXPOSE 80 53/udp 8000-8001
VOLUME /data
VOLUME ["/logs", "/cache"]
STOPSIGNAL SIGINT
MAINTAINER Jane Doe <jane@example.com>
WORKDIR $DIR
WORKDIR /srv
WORKDIR app/sub
USER nobody
WORKDIR /srv/nobody-dir
HEALTHCHECK --interval=5s --timeout=3s --start-period=1s --start-interval=2s --retries=2 CMD wget -q -O /dev/null http://localhost/ || exit 1
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING"]
"#,
            lab.base
        )),
        "config",
        &[],
    );
    let mut c = Checks::default();

    // BuildKit gives every Linux stage a PATH when its base has none, so a base built
    // FROM scratch carries one, and `$PATH` expands to it.
    c.eq(
        "PATH of the base built FROM scratch",
        Some(DEFAULT_PATH.to_owned()),
        base.env("PATH"),
    );
    c.eq(
        "WorkingDir of the base built FROM scratch (BuildKit's empty image has /)",
        Some("/"),
        base.cfg("WorkingDir").as_str(),
    );
    c.eq(
        "PATH after `ENV PATH=/opt/bin:$PATH`",
        Some(format!("/opt/bin:{DEFAULT_PATH}")),
        image.env("PATH"),
    );
    c.eq(
        "GREETING (quotes removed)",
        Some("hello world".to_owned()),
        image.env("GREETING"),
    );
    c.eq(
        "COPY_OF_GREETING (expanded from an earlier ENV)",
        Some("hello world".to_owned()),
        image.env("COPY_OF_GREETING"),
    );
    c.eq(
        "LEGACY (the `ENV KEY value` form)",
        Some("value with spaces".to_owned()),
        image.env("LEGACY"),
    );
    let labels = &image.cfg("Labels");
    c.eq(
        "label org.example.title",
        Some("hoist test"),
        labels["org.example.title"].as_str(),
    );
    c.eq(
        "label org.example.version",
        Some("1"),
        labels["org.example.version"].as_str(),
    );
    c.eq(
        "label from.env (expanded)",
        Some("hello world"),
        labels["from.env"].as_str(),
    );
    c.eq(
        "ExposedPorts",
        set(&["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]),
        keys(image.cfg("ExposedPorts")),
    );
    c.eq(
        "Volumes (shell and JSON forms)",
        set(&["/cache", "/data", "/logs"]),
        keys(image.cfg("Volumes")),
    );
    c.eq(
        "StopSignal",
        Some("SIGINT"),
        image.cfg("StopSignal").as_str(),
    );
    c.eq(
        "author (MAINTAINER)",
        Some("Jane Doe <jane@example.com>"),
        image.config["author"].as_str(),
    );
    c.eq("User", Some("nobody"), image.cfg("User").as_str());
    c.eq(
        "WorkingDir (last WORKDIR)",
        Some("/srv/nobody-dir"),
        image.cfg("WorkingDir").as_str(),
    );
    // WORKDIR creates its directory (relative ones under the previous WORKDIR), owned by
    // root, or by the USER in effect (BuildKit's mkdir WithUser).
    c.owner_mode(&image, "/srv/app/sub", (0, 0, 0o755));
    c.owner_mode(&image, "/from-env", (0, 0, 0o755));
    c.that(
        image.file("/srv/app/sub").is_dir(),
        "/srv/app/sub: expected a directory made by `WORKDIR app/sub` under /srv",
    );
    c.owner_mode(&image, "/srv/nobody-dir", (65534, 65534, 0o755));
    let health = image.cfg("Healthcheck");
    c.eq(
        "Healthcheck.Test",
        owned(&[
            "CMD-SHELL",
            "wget -q -O /dev/null http://localhost/ || exit 1",
        ]),
        strings(&health["Test"]),
    );
    c.eq(
        "Healthcheck.Interval (ns)",
        Some(5_000_000_000),
        health["Interval"].as_u64(),
    );
    c.eq(
        "Healthcheck.Timeout (ns)",
        Some(3_000_000_000),
        health["Timeout"].as_u64(),
    );
    c.eq(
        "Healthcheck.StartPeriod (ns)",
        Some(1_000_000_000),
        health["StartPeriod"].as_u64(),
    );
    c.eq(
        "Healthcheck.StartInterval (ns)",
        Some(2_000_000_000),
        health["StartInterval"].as_u64(),
    );
    c.eq("Healthcheck.Retries", Some(2), health["Retries"].as_u64());
    c.eq(
        "Entrypoint",
        owned(&["/bin/sh", "-c"]),
        strings(image.cfg("Entrypoint")),
    );
    c.eq(
        "Cmd (set after ENTRYPOINT in the same stage, so kept)",
        owned(&["echo $GREETING"]),
        strings(image.cfg("Cmd")),
    );
    c.finish(&image);
}

#[test]
fn cmd_entrypoint_and_shell_in_both_forms() {
    let lab = Lab::new();
    let parent = lab.build(
        &Context::new(&format!("FROM {}\nCMD echo parent\n", lab.base)),
        "parent",
        &[],
    );
    let parent_ref = lab.reference("parent");
    let new_entrypoint = lab.build(
        &Context::new(&format!("FROM {parent_ref}\nENTRYPOINT [\"/bin/echo\"]\n")),
        "new-entrypoint",
        &[],
    );
    let inherits = lab.build(
        &Context::new(&format!("FROM {parent_ref}\nENV X=1\n")),
        "inherits",
        &[],
    );
    let both = lab.build(
        &Context::new(&format!(
            "FROM {parent_ref}\nCMD [\"new\"]\nENTRYPOINT [\"/bin/echo\"]\n"
        )),
        "both",
        &[],
    );
    let shell = lab.build(
        &Context::new(&format!(
            r#"FROM {}
COPY --chmod=755 myshell /bin/myshell
RUN echo default > /default-shell.txt
SHELL ["/bin/myshell", "-c"]
RUN echo custom > /custom-shell.txt
ENV WORD=expanded
ENTRYPOINT echo via entrypoint
CMD echo via cmd $WORD
"#,
            lab.base
        ))
        .with(
            "myshell",
            "#!/bin/sh\necho \"myshell $*\" >> /myshell.log\nexec /bin/sh \"$@\"\n",
        ),
        "shell",
        &[],
    );

    let mut c = Checks::default();
    c.eq(
        "parent Cmd (shell form, default shell)",
        owned(&["/bin/sh", "-c", "echo parent"]),
        strings(parent.cfg("Cmd")),
    );
    c.finish(&parent);

    let mut c = Checks::default();
    c.eq(
        "Entrypoint",
        owned(&["/bin/echo"]),
        strings(new_entrypoint.cfg("Entrypoint")),
    );
    c.that(
        new_entrypoint.cfg("Cmd").is_null(),
        format!(
            "Cmd: expected the parent's CMD reset by a new ENTRYPOINT (null), the image held {}",
            new_entrypoint.cfg("Cmd")
        ),
    );
    c.finish(&new_entrypoint);

    let mut c = Checks::default();
    c.eq(
        "inherited Cmd",
        owned(&["/bin/sh", "-c", "echo parent"]),
        strings(inherits.cfg("Cmd")),
    );
    c.finish(&inherits);

    let mut c = Checks::default();
    c.eq(
        "Cmd set in this stage before ENTRYPOINT",
        owned(&["new"]),
        strings(both.cfg("Cmd")),
    );
    c.eq(
        "Entrypoint",
        owned(&["/bin/echo"]),
        strings(both.cfg("Entrypoint")),
    );
    c.finish(&both);

    let mut c = Checks::default();
    c.eq(
        "Shell",
        owned(&["/bin/myshell", "-c"]),
        strings(shell.cfg("Shell")),
    );
    c.eq(
        "Entrypoint (shell form under SHELL)",
        owned(&["/bin/myshell", "-c", "echo via entrypoint"]),
        strings(shell.cfg("Entrypoint")),
    );
    c.eq(
        "Cmd (shell form under SHELL; its body is never expanded by the builder)",
        owned(&["/bin/myshell", "-c", "echo via cmd $WORD"]),
        strings(shell.cfg("Cmd")),
    );
    c.file(&shell, "/default-shell.txt", "default\n");
    c.file(&shell, "/custom-shell.txt", "custom\n");
    // Only the RUN after SHELL went through /bin/myshell, with the script as one argument.
    c.file(
        &shell,
        "/myshell.log",
        "myshell -c echo custom > /custom-shell.txt\n",
    );
    c.owner_mode(&shell, "/bin/myshell", (0, 0, 0o755));
    c.finish(&shell);
}

#[test]
fn healthcheck_none_and_onbuild_triggers_fire_in_a_child_build() {
    let lab = Lab::new();
    let parent = lab.build(
        &Context::new(&format!(
            "FROM {}\nHEALTHCHECK CMD [\"/bin/true\"]\n\
             ONBUILD RUN echo fired > /onbuild-fired\n\
             ONBUILD COPY trigger.txt /from-trigger.txt\n",
            lab.base
        )),
        "onbuild-parent",
        &[],
    );
    let child = lab.build(
        &Context::new(&format!(
            "FROM {}\nHEALTHCHECK NONE\nRUN test -f /onbuild-fired && test -f /from-trigger.txt\n",
            lab.reference("onbuild-parent")
        ))
        .with("trigger.txt", "from the child's context\n"),
        "onbuild-child",
        &[],
    );

    let mut c = Checks::default();
    c.eq(
        "parent OnBuild",
        owned(&[
            "RUN echo fired > /onbuild-fired",
            "COPY trigger.txt /from-trigger.txt",
        ]),
        strings(parent.cfg("OnBuild")),
    );
    c.eq(
        "parent Healthcheck.Test (exec form)",
        owned(&["CMD", "/bin/true"]),
        strings(&parent.cfg("Healthcheck")["Test"]),
    );
    c.absent(&parent, "/onbuild-fired");
    c.finish(&parent);

    let mut c = Checks::default();
    // The triggers ran before the child's own instructions (its RUN tested for their files).
    c.file(&child, "/onbuild-fired", "fired\n");
    c.file(&child, "/from-trigger.txt", "from the child's context\n");
    c.eq(
        "child OnBuild (triggers are not inherited)",
        Vec::<String>::new(),
        strings(child.cfg("OnBuild")),
    );
    c.eq(
        "child Healthcheck.Test",
        owned(&["NONE"]),
        strings(&child.cfg("Healthcheck")["Test"]),
    );
    c.finish(&child);
}

#[test]
fn arg_scoping_build_args_platform_args_and_proxies() {
    let lab = Lab::new();
    let image = lab.build(
        &Context::new(&format!(
            r#"ARG BASE={}
ARG GLOBAL_ONLY=global-value
FROM ${{BASE}}
RUN echo "[$GLOBAL_ONLY] [$BASE]" > /global-before-import
LABEL before-import="[${{GLOBAL_ONLY}}]"
ARG GLOBAL_ONLY
ARG OVERRIDE=default
ARG SHADOW=from-arg
ENV SHADOW=from-env
ARG HTTPS_PROXY
LABEL after-import=$GLOBAL_ONLY override=$OVERRIDE shadow=$SHADOW
RUN echo "$GLOBAL_ONLY" > /global-after-import && echo "$OVERRIDE" > /override && echo "$SHADOW" > /shadow
RUN echo "[$TARGETARCH]" > /targetarch-undeclared
ARG TARGETOS
ARG TARGETARCH
ARG TARGETPLATFORM
ARG BUILDPLATFORM
RUN echo "$TARGETOS $TARGETARCH $TARGETPLATFORM $BUILDPLATFORM" > /platform
RUN echo "[$HTTP_PROXY] [$HTTPS_PROXY]" > /proxy
"#,
            lab.base
        )),
        "args",
        &[
            "--build-arg",
            "OVERRIDE=from-cli",
            "--build-arg",
            "HTTP_PROXY=http://hidden-proxy.invalid:3128",
            "--build-arg",
            "HTTPS_PROXY=http://declared-proxy.invalid:3128",
        ],
    );
    let mut c = Checks::default();
    c.file(&image, "/global-before-import", "[] []\n");
    c.file(&image, "/global-after-import", "global-value\n");
    c.file(&image, "/override", "from-cli\n");
    c.file(&image, "/shadow", "from-env\n");
    c.file(&image, "/targetarch-undeclared", "[]\n");
    let os = image.config["os"].as_str().unwrap_or("").to_owned();
    let arch = image.config["architecture"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    c.that(
        os == "linux" && !arch.is_empty(),
        format!("os/architecture: expected linux/<host arch>, the image held {os}/{arch}"),
    );
    c.file(
        &image,
        "/platform",
        &format!("{os} {arch} {os}/{arch} {os}/{arch}\n"),
    );
    // Proxy build-args reach RUN whether declared or not.
    c.file(
        &image,
        "/proxy",
        "[http://hidden-proxy.invalid:3128] [http://declared-proxy.invalid:3128]\n",
    );
    // The same scoping holds where the frontend expands words (LABEL here).
    let labels = image.cfg("Labels");
    for (label, expected) in [
        ("before-import", "[]"),
        ("after-import", "global-value"),
        ("override", "from-cli"),
        ("shadow", "from-env"),
    ] {
        c.eq(
            &format!("label {label}"),
            Some(expected),
            labels[label].as_str(),
        );
    }
    // ARGs do not persist into the image; the ENV that beat an ARG does.
    c.eq(
        "SHADOW in Env",
        Some("from-env".to_owned()),
        image.env("SHADOW"),
    );
    for arg in [
        "OVERRIDE",
        "GLOBAL_ONLY",
        "BASE",
        "HTTPS_PROXY",
        "HTTP_PROXY",
    ] {
        c.eq(&format!("{arg} in Env"), None, image.env(arg));
    }
    let config_text = image.config.to_string();
    c.that(
        !config_text.contains("hidden-proxy"),
        "an undeclared HTTP_PROXY build-arg must stay out of the config and history, \
         but the config mentions hidden-proxy",
    );
    let history = image.history();
    let runs: Vec<&String> = history
        .iter()
        .map(|(created_by, _)| created_by)
        .filter(|s| s.starts_with("RUN "))
        .collect();
    // BuildKit's runCommandString: every ARG declared in the stage so far, with the value the
    // RUN sees (an ENV beats the ARG), then the command.
    let expected_runs = [
        "RUN /bin/sh -c echo \"[$GLOBAL_ONLY] [$BASE]\" > /global-before-import # buildkit"
            .to_owned(),
        "RUN |4 GLOBAL_ONLY=global-value OVERRIDE=from-cli SHADOW=from-env \
         HTTPS_PROXY=http://declared-proxy.invalid:3128 /bin/sh -c echo \"$GLOBAL_ONLY\" > \
         /global-after-import && echo \"$OVERRIDE\" > /override && echo \"$SHADOW\" > /shadow \
         # buildkit"
            .to_owned(),
    ];
    for (i, expected) in expected_runs.iter().enumerate() {
        // The base's own RUN comes first.
        c.eq(
            &format!("history of RUN #{} of the stage", i + 1),
            Some(expected),
            runs.get(i + 1).copied(),
        );
    }
    c.that(
        runs.iter()
            .any(|r| r.contains("HTTPS_PROXY=http://declared-proxy.invalid:3128")),
        "a declared HTTPS_PROXY ARG belongs in the RUN history, none has it",
    );
    c.finish(&image);
}

/// BuildKit's rule for an ARG after an ENV of the same name (`dispatchArg` adds a valued ARG
/// to the environment of the steps after it): the ARG's value wins for RUN and for expansion,
/// the image config keeps the ENV's, and an ENV after it wins again.
#[test]
fn a_valued_arg_wins_over_an_earlier_env_and_a_later_env_wins_again() {
    let lab = Lab::new();
    let image = lab.build(
        &Context::new(&format!(
            r#"FROM {}
ENV MODE=from-env LEVEL=from-env KEEP=from-env
ARG MODE=from-arg
ARG LEVEL
ARG KEEP
LABEL mode=$MODE level=$LEVEL keep=$KEEP
RUN echo "$MODE $LEVEL $KEEP" > /seen
ENV MODE=env-again
RUN echo "$MODE" > /seen-after
"#,
            lab.base
        )),
        "arg-over-env",
        &["--build-arg", "LEVEL=from-cli"],
    );
    let mut c = Checks::default();
    // KEEP's ARG has no value: the ENV stays.
    c.file(&image, "/seen", "from-arg from-cli from-env\n");
    c.file(&image, "/seen-after", "env-again\n");
    let labels = image.cfg("Labels");
    for (label, expected) in [
        ("mode", "from-arg"),
        ("level", "from-cli"),
        ("keep", "from-env"),
    ] {
        c.eq(
            &format!("label {label}"),
            Some(expected),
            labels[label].as_str(),
        );
    }
    c.eq(
        "MODE in Env",
        Some("env-again".to_owned()),
        image.env("MODE"),
    );
    c.eq(
        "LEVEL in Env",
        Some("from-env".to_owned()),
        image.env("LEVEL"),
    );
    let history = image.history();
    let runs: Vec<&String> = history
        .iter()
        .map(|(created_by, _)| created_by)
        .filter(|s| s.starts_with("RUN "))
        .collect();
    c.eq(
        "history of the first RUN of the stage",
        Some(
            &"RUN |3 MODE=from-arg LEVEL=from-cli KEEP=from-env /bin/sh -c echo \"$MODE $LEVEL $KEEP\" > /seen # buildkit"
                .to_owned(),
        ),
        runs.get(1).copied(),
    );
    c.finish(&image);
}

#[test]
fn copy_sources_destinations_ownership_and_dockerignore() {
    let lab = Lab::new();
    let image = lab.build(
        &Context::new(&format!(
            r#"FROM {base} AS builder
RUN mkdir -p /out && echo artifact > /out/artifact && echo other > /out/other
FROM {base}
COPY --from=builder /out/artifact /from-stage-name/
COPY --from=0 /out/other /from-stage-index.txt
COPY --from={base} /etc/group /from-image-group
COPY --from=builder /out/* /stage-wildcard/
COPY *.txt /wild/
COPY dir/ /contents/
COPY dir /contents-no-slash
COPY a.txt b.txt /multi/
WORKDIR /work
COPY a.txt rel/
COPY b.txt renamed.txt
COPY notes.md .
COPY run.sh .
COPY --chown=app:staff a.txt /owned-by-names
COPY --chown=app a.txt /owned-by-user-name
COPY --chown=1001:1002 a.txt /owned-by-numbers
COPY --chmod=640 a.txt /mode-640
COPY . /ctx/
"#,
            base = lab.base
        ))
        .with("a.txt", "a\n")
        .with("b.txt", "b\n")
        .with("notes.md", "notes\n")
        .with("ignored.txt", "ignored\n")
        .with("old.bak", "backup\n")
        .with("secret/key", "key\n")
        .with("secret/public", "public\n")
        .with("run.sh", "#!/bin/sh\necho run\n")
        .with("dir/one.txt", "one\n")
        .with("dir/sub/two.txt", "two\n")
        .with(
            ".dockerignore",
            "ignored.txt\nsecret/*\n!secret/public\n*.bak\n",
        )
        .mode("run.sh", 0o755),
        "copy",
        &[],
    );
    let mut c = Checks::default();
    // --from a stage name, a stage index and an image.
    c.file(&image, "/from-stage-name/artifact", "artifact\n");
    c.file(&image, "/from-stage-index.txt", "other\n");
    c.that(
        image
            .read("/from-image-group")
            .is_some_and(|g| g.contains("staff:x:2345:app")),
        format!(
            "/from-image-group: expected the base image's /etc/group (with staff), the image held {:?}",
            image.read("/from-image-group")
        ),
    );
    c.file(&image, "/stage-wildcard/artifact", "artifact\n");
    c.file(&image, "/stage-wildcard/other", "other\n");
    // Wildcards, minus what .dockerignore excludes.
    c.file(&image, "/wild/a.txt", "a\n");
    c.file(&image, "/wild/b.txt", "b\n");
    c.absent(&image, "/wild/ignored.txt");
    // A directory source copies its contents, with or without a trailing slash.
    c.file(&image, "/contents/one.txt", "one\n");
    c.file(&image, "/contents/sub/two.txt", "two\n");
    c.absent(&image, "/contents/dir");
    c.file(&image, "/contents-no-slash/one.txt", "one\n");
    c.file(&image, "/contents-no-slash/sub/two.txt", "two\n");
    c.file(&image, "/multi/a.txt", "a\n");
    c.file(&image, "/multi/b.txt", "b\n");
    // Relative destinations land under WORKDIR; a trailing slash makes a directory.
    c.file(&image, "/work/rel/a.txt", "a\n");
    c.file(&image, "/work/renamed.txt", "b\n");
    c.file(&image, "/work/notes.md", "notes\n");
    // --chown by name resolves in the image's /etc/passwd and /etc/group; a user alone
    // takes the user's primary group. COPY's files belong to root otherwise.
    c.owner_mode(&image, "/owned-by-names", (1234, 2345, 0o644));
    c.owner_mode(&image, "/owned-by-user-name", (1234, 1234, 0o644));
    c.owner_mode(&image, "/owned-by-numbers", (1001, 1002, 0o644));
    c.owner_mode(&image, "/mode-640", (0, 0, 0o640));
    c.owner_mode(&image, "/work/renamed.txt", (0, 0, 0o644));
    // Without --chmod, a file keeps its mode from the context.
    c.owner_mode(&image, "/work/run.sh", (0, 0, 0o755));
    // COPY . takes the context minus .dockerignore.
    c.file(&image, "/ctx/a.txt", "a\n");
    c.file(&image, "/ctx/dir/sub/two.txt", "two\n");
    c.absent(&image, "/ctx/ignored.txt");
    c.absent(&image, "/ctx/old.bak");
    c.absent(&image, "/ctx/secret/key");
    c.file(&image, "/ctx/secret/public", "public\n");
    // BuildKit's COPY history: --chown and --chmod (in that order), then the sources and
    // destination as written after expansion. (Without --from: the history test checks that.)
    let history = image.history();
    for expected in [
        "COPY *.txt /wild/ # buildkit",
        "COPY a.txt rel/ # buildkit",
        "COPY --chown=app:staff a.txt /owned-by-names # buildkit",
        "COPY --chmod=640 a.txt /mode-640 # buildkit",
    ] {
        c.that(
            history.iter().any(|(h, empty)| h == expected && !empty),
            format!(
                "history: expected a layer entry {expected:?}, the image has {:?}",
                history.iter().map(|(h, _)| h).collect::<Vec<_>>()
            ),
        );
    }
    c.finish(&image);
}

/// A context with `payload/` (hello.txt, nested/deep.txt) and `payload.tar` made from it.
fn archive_context(dockerfile: &str) -> Context {
    let context = Context::new(dockerfile)
        .with("payload/hello.txt", "hello\n")
        .with("payload/nested/deep.txt", "deep\n");
    context.tar(&["-C", "payload", "-cf", "payload.tar", "."]);
    context
}

/// The archive `name` was extracted into `dir`, and not copied there as a file.
fn check_unpacked(c: &mut Checks, image: &Pushed, dir: &str, name: &str) {
    c.file(image, &format!("{dir}/hello.txt"), "hello\n");
    c.file(image, &format!("{dir}/nested/deep.txt"), "deep\n");
    c.absent(image, &format!("{dir}/{name}"));
}

#[test]
fn add_extracts_local_tar_gzip_and_zstd_archives() {
    let lab = Lab::new();
    let context = archive_context(&format!(
        "FROM {}\nADD payload.tar /x/tar/\nADD payload.tar.gz /x/gz/\n\
         ADD payload.tar.zst /x/zst/\nCOPY payload.tar.gz /x/copied/\n",
        lab.base
    ));
    context.tar(&["-C", "payload", "-czf", "payload.tar.gz", "."]);
    context.tar(&["-C", "payload", "--zstd", "-cf", "payload.tar.zst", "."]);
    let image = lab.build(&context, "add", &[]);
    let mut c = Checks::default();
    check_unpacked(&mut c, &image, "/x/tar", "payload.tar");
    check_unpacked(&mut c, &image, "/x/gz", "payload.tar.gz");
    check_unpacked(&mut c, &image, "/x/zst", "payload.tar.zst");
    // COPY never extracts.
    c.eq(
        "/x/copied/payload.tar.gz (COPY keeps the archive as is)",
        fs_err::read(context.path("payload.tar.gz")).ok(),
        fs_err::read(image.file("/x/copied/payload.tar.gz")).ok(),
    );
    c.finish(&image);
}

#[test]
fn add_extracts_local_bzip2_and_xz_archives() {
    let lab = Lab::new();
    let context = archive_context(&format!(
        "FROM {}\nADD payload.tar.bz2 /x/bz2/\nADD payload.tar.xz /x/xz/\n",
        lab.base
    ));
    context.tar(&["-C", "payload", "-cjf", "payload.tar.bz2", "."]);
    context.tar(&["-C", "payload", "-cJf", "payload.tar.xz", "."]);
    let image = lab.build(&context, "add-bz2-xz", &[]);
    let mut c = Checks::default();
    check_unpacked(&mut c, &image, "/x/bz2", "payload.tar.bz2");
    check_unpacked(&mut c, &image, "/x/xz", "payload.tar.xz");
    c.finish(&image);
}

#[test]
fn run_in_both_forms_and_its_files_in_the_layer_tar() {
    let lab = Lab::new();
    let image = lab.build(
        &Context::new(&format!(
            r#"FROM {}
ENV X=expanded
RUN ["/bin/busybox", "touch", "/exec-form-$X"]
RUN echo shell > /shell-form-$X && chown 1234:2345 /shell-form-$X && chmod 600 /shell-form-$X
RUN rm /bin/vi
WORKDIR /srv
USER app
RUN pwd > /tmp/run-as && id -u >> /tmp/run-as && id -G >> /tmp/run-as
"#,
            lab.base
        )),
        "run",
        &[],
    );
    let base_layers = Pushed::fetch(&lab.base).layers.len();
    let mut c = Checks::default();
    c.eq(
        "layers: the base's plus one per RUN and one for WORKDIR's new directory",
        base_layers + 5,
        image.layers.len(),
    );
    // Exec form runs without a shell: `$X` stays literal. Shell form expands it.
    c.that(
        image.exists("/exec-form-$X"),
        "/exec-form-$X: expected the exec-form RUN to create it with a literal `$X`",
    );
    c.absent(&image, "/exec-form-expanded");
    c.file(&image, "/shell-form-expanded", "shell\n");
    c.owner_mode(&image, "/shell-form-expanded", (1234, 2345, 0o600));
    // A file the RUN deleted is gone, through a whiteout in that RUN's layer.
    c.absent(&image, "/bin/vi");
    c.that(
        image.exists("/bin/busybox"),
        "/bin/busybox: expected it kept by `RUN rm /bin/vi`, the image has none",
    );
    // RUN runs in WORKDIR as USER, with the user's groups from /etc/group.
    c.file(&image, "/tmp/run-as", "/srv\n1234\n1234 2345\n");
    c.owner_mode(&image, "/tmp/run-as", (1234, 1234, 0o644));
    let history = image.history();
    for expected in [
        "RUN /bin/busybox touch /exec-form-$X # buildkit",
        "RUN /bin/sh -c rm /bin/vi # buildkit",
    ] {
        c.that(
            history.iter().any(|(h, empty)| h == expected && !empty),
            format!(
                "history: expected a layer entry {expected:?}, the image has {:?}",
                history.iter().map(|(h, _)| h).collect::<Vec<_>>()
            ),
        );
    }
    if image.layers.len() >= base_layers + 3 {
        let exec_layer = image.layer_entries(base_layers);
        c.that(
            exec_layer
                .iter()
                .any(|(_, _, p)| p.trim_start_matches("./") == "exec-form-$X"),
            format!("the exec-form RUN's layer: expected exec-form-$X, it held {exec_layer:?}"),
        );
        let shell_layer = image.layer_entries(base_layers + 1);
        let entry = shell_layer
            .iter()
            .find(|(_, _, p)| p.trim_start_matches("./") == "shell-form-expanded");
        c.eq(
            "shell-form-expanded in the shell-form RUN's layer tar (mode, owner)",
            Some(("-rw-------", "1234/2345")),
            entry.map(|(m, o, _)| (m.as_str(), o.as_str())),
        );
        let rm_layer = image.layer_entries(base_layers + 2);
        c.that(
            rm_layer
                .iter()
                .any(|(_, _, p)| p.trim_start_matches("./") == "bin/.wh.vi"),
            format!(
                "the `RUN rm /bin/vi` layer: expected a whiteout bin/.wh.vi, it held {rm_layer:?}"
            ),
        );
    }
    c.finish(&image);
}

#[test]
fn history_has_one_buildkit_entry_per_instruction() {
    let lab = Lab::new();
    let base = Pushed::fetch(&lab.base);
    let image = lab.build(
        &Context::new(&format!(
            r#"FROM {base} AS tools
RUN echo tool > /tool
FROM {base}
ARG V=1
ENV E=x
LABEL l="a b"
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGINT
MAINTAINER someone
WORKDIR /w
USER nobody
RUN echo $V > /tmp/v
COPY a.txt /tmp/
COPY --from=tools /tool /tmp/tool
USER root
SHELL ["/bin/sh", "-ec"]
CMD echo hi
ENTRYPOINT ["/bin/sh"]
HEALTHCHECK NONE
ONBUILD RUN true
"#,
            base = lab.base
        ))
        .with("a.txt", "a\n"),
        "history",
        &[],
    );
    let mut c = Checks::default();

    // What BuildKit writes (commitToHistory in dockerfile2llb): the base image's entries,
    // then one per instruction; config-only ones are empty layers, without the
    // `# buildkit` suffix; ONBUILD writes none.
    let mut expected: Vec<(String, bool)> = vec![
        ("ADD rootfs.tar / # buildkit".into(), false),
        (
            "RUN /bin/sh -c echo 'app:x:1234:1234:app:/home/app:/bin/sh' >> /etc/passwd \
             && echo 'app:x:1234:' >> /etc/group && echo 'staff:x:2345:app' >> /etc/group \
             # buildkit"
                .into(),
            false,
        ),
    ];
    let base_history = base.history();
    c.eq("history of the base image", &expected, &base_history);
    expected.extend(
        [
            ("ARG V=1", true),
            ("ENV E=x", true),
            ("LABEL l=a b", true),
            ("EXPOSE [80/tcp 53/udp]", true),
            ("VOLUME [/data]", true),
            ("STOPSIGNAL SIGINT", true),
            ("MAINTAINER someone", true),
            ("WORKDIR /w", false),
            ("USER nobody", true),
            ("RUN |1 V=1 /bin/sh -c echo $V > /tmp/v # buildkit", false),
            ("COPY a.txt /tmp/ # buildkit", false),
            ("COPY /tool /tmp/tool # buildkit", false),
            ("USER root", true),
            ("SHELL [/bin/sh -ec]", true),
            ("CMD [\"/bin/sh\" \"-ec\" \"echo hi\"]", true),
            ("ENTRYPOINT [\"/bin/sh\"]", true),
            (
                "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s \
                 StartInterval:0s Retries:0}",
                true,
            ),
        ]
        .map(|(s, e)| (s.to_owned(), e)),
    );
    let held = image.history();
    let before = c.0.len();
    // Entry by entry would cascade after one missing entry: list what is missing and what
    // is extra instead, each as (created_by, empty_layer).
    for entry in expected.iter().filter(|e| !held.contains(e)) {
        c.that(
            false,
            format!("history: expected an entry {entry:?}, the image has none"),
        );
    }
    for entry in held.iter().filter(|e| !expected.contains(e)) {
        c.that(
            false,
            format!("history: the image has an entry {entry:?} that BuildKit does not write"),
        );
    }
    if c.0.len() == before {
        c.eq("history order", &expected, &held);
    }
    // The image must be consistent: one non-empty history entry per layer.
    let diff_ids = image.config["rootfs"]["diff_ids"]
        .as_array()
        .map_or(0, Vec::len);
    c.eq(
        "non-empty history entries vs rootfs.diff_ids",
        diff_ids,
        held.iter().filter(|(_, empty)| !empty).count(),
    );
    c.eq(
        "layers in the manifest vs diff_ids",
        diff_ids,
        image.layers.len(),
    );
    let entries = image.config["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, entry) in entries.iter().enumerate() {
        c.eq(
            &format!("history[{i}].comment"),
            Some("buildkit.dockerfile.v0"),
            entry["comment"].as_str(),
        );
    }
    // BuildKit stamps the image and every history entry with the build time. hoist is
    // reproducible by default: the Unix epoch, unless SOURCE_DATE_EPOCH says otherwise (the
    // issue compares configs "apart from timestamps").
    c.eq(
        "config.created",
        Some("1970-01-01T00:00:00Z"),
        image.config["created"].as_str(),
    );
    c.that(
        entries.iter().all(|e| e["created"].is_string()),
        "history[].created: expected a time on every entry, some have none",
    );
    c.finish(&image);
}
