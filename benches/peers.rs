//! Side-by-side check of hoist against BuildKit (docker 20.10 with `DOCKER_BUILDKIT=1`) and
//! buildah: the same Dockerfiles and contexts are built by each, pushed to the loopback registry,
//! read back (`skopeo inspect --config --raw` for the config blob as pushed, `skopeo copy` to an
//! OCI layout and `umoci unpack` for the root filesystem), and compared. Prints, per Dockerfile
//! and per pair of builders, "identical" or every difference, then a summary table. Asserts
//! nothing: it is a report.
//!
//! ```text
//! cargo bench -p hoist --bench peers -- [--only basics,users] [--keep]
//! ```
//!
//! Needs root, skopeo, umoci, ssh-agent (for `mounts`), and a registry on 127.0.0.1:5000 holding `library/busybox:latest`
//! and `library/debian:bookworm` (`../shared/peers/setup.sh` starts dockerd and the registry
//! and seeds both). A peer that is not installed or not running is reported as such and left
//! out; the other comparisons still run.
//!
//! The Dockerfiles (all in this file, contexts written to a temporary directory) together use
//! every instruction: `basics` (global and in-stage ARG, --build-arg, ENV with $PATH, LABEL,
//! relative and absolute WORKDIR, COPY with a wildcard, directory contents and --chown by
//! number, ADD of a local .tar.gz, RUN in shell and exec form, USER, EXPOSE, VOLUME,
//! HEALTHCHECK, ENTRYPOINT + CMD, STOPSIGNAL), `chmod` (COPY --chmod), `users` (--chown by name
//! from the image's /etc/passwd and /etc/group, WORKDIR created for USER), `shell-onbuild` and
//! `onbuild-child` (SHELL, ONBUILD fired in a child built FROM the parent each builder pushed,
//! HEALTHCHECK NONE), `multistage` (named and numbered stages, an unreached stage, FROM scratch,
//! COPY --from a stage and an image, .dockerignore with an exception), `config-edge`
//! (MAINTAINER, ENV beating ARG, same-line ENV references, ${X:-y}, legacy ENV form, EXPOSE of a
//! range from an ARG, quoted LABELs, STOPSIGNAL from an ARG), `whiteouts` (deleted files and
//! directories, type changes, opaque directories, hard links, setuid, sticky, fifo),
//! `copy-edge` (destination semantics, context symlinks, symlinked and one-file source
//! directories, ADD --chown of an archive), `symlink-dest` and `symlink-workdir` (destinations
//! through a symlink in the image), `mounts` (every `RUN --mount` type: bind from the context,
//! a stage and an image, rw; cache with id, sharing, mode, uid/gid and seeded from a stage;
//! tmpfs; secret by default path and by target with mode and owner, required and absent; ssh by
//! default and at a target; built with `--secret` and `--ssh` from a test `ssh-agent`),
//! `debian` (bash SHELL, useradd, --chown by name), `add-url` (ADD of URLs: a file into a
//! directory and under a new name, a .tar.gz that must not be extracted, --chown) and `add-git`
//! (ADD of a git repository at a branch, and a subdirectory at a tag). Their URLs are served
//! by this program on loopback ports (an HTTP server thread sending Last-Modified, and
//! `git-daemon`); dockerd's BuildKit fetches in the daemon, on the host's network, so it
//! reaches them too.
//!
//! What is normalized away before comparing, because it differs legitimately:
//! - configs: `created` (hoist writes 1970-01-01 on purpose, for reproducible builds);
//!   `container`, `container_config`, `docker_version`, `parent` (the local image ID of the
//!   previous step, which buildah writes); the docker-inspect-only fields of
//!   `config` (Hostname, Domainname, Attach*, Tty, OpenStdin, StdinOnce, ArgsEscaped, Image);
//!   history `created` and `comment` (only BuildKit writes `buildkit.dockerfile.v0`); buildah's
//!   own `io.buildah.version` label; fields that are null or empty (`"Cmd": null` means the same
//!   as no `Cmd`), and `empty_layer: false`. The diff IDs are compared by number only, since the
//!   layer tars hold mtimes.
//! - file trees: mtimes and atimes (and ctimes). Everything else is compared for every path:
//!   type, permission bits (with setuid/setgid/sticky), uid, gid, size and sha256 of regular
//!   files, symlink targets, device numbers. Directory sizes are the filesystem's, not the
//!   image's, and are left out.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)] // a report, not library code

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const REGISTRY: &str = "127.0.0.1:5000";
const BUSYBOX: &str = "127.0.0.1:5000/library/busybox:latest";
const DEBIAN: &str = "127.0.0.1:5000/library/debian:bookworm";
/// Where every builder pushes: `REPO/<case>:<builder>`.
const REPO: &str = "127.0.0.1:5000/peers-bench";
/// Differences printed per comparison; the full list goes to a file.
const PRINT_LIMIT: usize = 60;

/// The mode that makes a context entry a symlink to its "content".
const SYMLINK: u32 = 0o120_000;

/// One Dockerfile with its context.
struct Case {
    name: &'static str,
    dockerfile: String,
    /// Context files: path, content, mode (`SYMLINK`: a symlink to the content).
    files: Vec<(&'static str, String, u32)>,
    /// Writes `archive.tar.gz` into the context.
    tarball: bool,
    /// `--build-arg`s; `{builder}` is replaced by the builder's name.
    build_args: Vec<String>,
    /// Built with `--secret id=token,src=FILE` and `--ssh default=SOCKET` (a test
    /// `ssh-agent` holding one key), spelled the same for every builder.
    mounts: bool,
}

/// What the `add-url` and `add-git` cases fetch from: an HTTP server thread and a
/// `git-daemon` on loopback ports, stopped when dropped.
struct Remotes {
    /// `http://127.0.0.1:PORT`.
    http: String,
    /// `git://127.0.0.1:PORT`.
    git: String,
    daemon: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Remotes {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A gzip'd tar, which ADD of a URL must copy as it is.
        let src = dir.path().join("tar-src");
        fs_err::create_dir_all(&src).unwrap();
        fs_err::write(src.join("inner.txt"), "inside\n").unwrap();
        let tarball = Command::new("tar")
            .args(["-czf", "-", "-C"])
            .arg(&src)
            .arg("inner.txt")
            .output()
            .unwrap()
            .stdout;
        let files: Vec<(String, Vec<u8>)> = vec![
            ("/files/hello.txt".into(), b"hello over http\n".to_vec()),
            ("/files/app.tar.gz".into(), tarball),
        ];
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let files = files.clone();
                std::thread::spawn(move || serve_file(stream, &files));
            }
        });

        let repo = dir.path().join("repo.git");
        fs_err::create_dir_all(repo.join("docs")).unwrap();
        fs_err::write(repo.join("README"), "a repository\n").unwrap();
        fs_err::write(repo.join("docs/guide.txt"), "the guide\n").unwrap();
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args([
                    "-c",
                    "user.name=peers",
                    "-c",
                    "user.email=peers@example.com",
                ])
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let made = git(&["init", "-q", "-b", "main"])
            && git(&["add", "."])
            && git(&["commit", "-q", "-m", "one"])
            && git(&["tag", "v1"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself: `git daemon` runs it as a child that killing git leaves behind.
        let daemon = Command::new("git")
            .arg("--exec-path")
            .output()
            .ok()
            .filter(|_| made)
            .and_then(|o| {
                let exec = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                Command::new(exec.join("git-daemon"))
                    .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
                    .arg(format!("--port={port}"))
                    .arg(format!("--base-path={}", dir.path().display()))
                    .arg(dir.path())
                    .spawn()
                    .ok()
            });
        if daemon.is_none() {
            println!("peers: git or git-daemon is missing; the add-git case will fail");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while daemon.is_some()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            http,
            git: format!("git://127.0.0.1:{port}"),
            daemon,
            _dir: dir,
        }
    }
}

impl Drop for Remotes {
    fn drop(&mut self) {
        if let Some(d) = &mut self.daemon {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// Answers GETs of `files` over HTTP/1.1, each with a fixed Last-Modified.
fn serve_file(stream: std::net::TcpStream, files: &[(String, Vec<u8>)]) {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        let reply = match files.iter().find(|(p, _)| *p == path) {
            Some((_, body)) => {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\
                     last-modified: Sun, 13 Sep 2020 12:26:40 GMT\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            }
            None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        };
        if writer.write_all(&reply).is_err() {
            return;
        }
    }
}

fn cases(remotes: &Remotes) -> Vec<Case> {
    let common_files = || {
        vec![
            ("files/a.txt", "alpha\n".to_owned(), 0o644),
            ("files/b.txt", "bravo\n".to_owned(), 0o600),
            ("files/c.md", "# not a txt\n".to_owned(), 0o644),
            ("dir/top.conf", "top=1\n".to_owned(), 0o644),
            ("dir/nested/deep.conf", "deep=2\n".to_owned(), 0o640),
            (
                "dir/nested/exec.sh",
                "#!/bin/sh\necho hi\n".to_owned(),
                0o755,
            ),
            (
                "bin/run.sh",
                "#!/bin/sh\necho \"run $*\"\n".to_owned(),
                0o755,
            ),
            (
                "scripts/run.sh",
                "#!/bin/sh\necho \"run $*\"\n".to_owned(),
                0o644,
            ),
        ]
    };
    vec![
        Case {
            name: "basics",
            dockerfile: format!(
                r#"ARG BASE={BUSYBOX}
ARG GREETING=hello
FROM $BASE
ARG GREETING
ARG FLAVOR=plain
ENV PATH=/opt/app/bin:$PATH APP_HOME=/opt/app
ENV GREETING_COPY=$GREETING
LABEL org.example.title="peers $FLAVOR" org.example.multi="a b"
WORKDIR /opt/app
WORKDIR sub
COPY files/*.txt ./txt/
COPY dir/ /opt/app/dir-contents/
COPY --chown=1234:5678 files/a.txt /owned-num/
COPY --chown=1234:5678 files/b.txt /chown-parents/x/y/
COPY bin/ /opt/app/bin/
ADD archive.tar.gz /opt/unpacked/
RUN echo "$GREETING $FLAVOR $APP_HOME" > /greeting && mkdir -p /var/lib/app && chmod 0750 /var/lib/app
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt; echo \"$PATH\" > /path.txt"]
USER nobody
EXPOSE 8080 53/udp
VOLUME /var/lib/app
VOLUME ["/data", "/cache"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=2s --retries=3 CMD wget -q -O- http://localhost:8080/ || exit 1
ENTRYPOINT ["/opt/app/bin/run.sh"]
CMD ["--serve"]
"#
            ),
            files: common_files(),
            tarball: true,
            build_args: vec!["FLAVOR=custom".to_owned()],
            mounts: false,
        },
        Case {
            name: "chmod",
            dockerfile: format!(
                "FROM {BUSYBOX}\nCOPY --chmod=0755 scripts/run.sh /usr/local/bin/run.sh\nCOPY --chmod=600 dir/ /secret/\nCMD [\"run.sh\"]\n"
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "users",
            dockerfile: format!(
                r#"FROM {BUSYBOX}
RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && echo 'staff:x:50:app' >> /etc/group
COPY --chown=app:staff files/ /home/app/
COPY --chown=app files/a.txt /home/app/only-user.txt
COPY --chown=nobody:nogroup files/b.txt /nobody.txt
COPY --chown=1000 dir /home/app/dir
USER app:staff
WORKDIR /home/app/work
RUN id > id.txt && touch made-by-app
USER 1000
WORKDIR /home/app/work2
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "shell-onbuild",
            dockerfile: format!(
                r#"FROM {BUSYBOX}
SHELL ["/bin/sh", "-e", "-c"]
RUN echo shell-form > /shell.txt
ONBUILD RUN echo child > /child.txt
ONBUILD COPY files/ /onbuild/
HEALTHCHECK NONE
STOPSIGNAL 9
ENTRYPOINT echo entry
CMD echo ignored
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "onbuild-child",
            dockerfile: "ARG PARENT\nFROM $PARENT\nRUN ls /onbuild > /listing.txt\nCMD [\"cat\", \"/listing.txt\"]\n".to_owned(),
            files: common_files(),
            tarball: false,
            build_args: vec![format!("PARENT={REPO}/shell-onbuild:{{builder}}")],
            mounts: false,
        },
        Case {
            name: "multistage",
            dockerfile: format!(
                r#"ARG BASE={BUSYBOX}
FROM $BASE AS build
WORKDIR /src
COPY . .
RUN mkdir -p /out && cat files/a.txt files/b.txt > /out/joined.txt && ln -s joined.txt /out/link && chmod 600 /out/joined.txt && ls -a > /out/listing

FROM $BASE AS unused
RUN echo never-built && exit 1

FROM scratch
COPY --from=build /out/ /
COPY --from=build /bin/busybox /bin/busybox
COPY --from=0 /src/dir /dir
COPY --from={BUSYBOX} /etc/passwd /etc/passwd-from-image
CMD ["/bin/busybox", "cat", "/joined.txt"]
"#
            ),
            files: {
                let mut f = common_files();
                f.push((".dockerignore", "*.md\n**/*.md\n!files/c.md\nignored/\n".to_owned(), 0o644));
                f.push(("ignored/secret", "no\n".to_owned(), 0o644));
                f.push(("README.md", "ignored\n".to_owned(), 0o644));
                f
            },
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "config-edge",
            dockerfile: format!(
                r#"FROM {BUSYBOX}
MAINTAINER Jane Doe <jane@example.com>
ARG X=argval
ENV X=envval
ENV A=old
ENV A=new B=$A C=${{UNSET:-fallback}} D=${{A:+set}}
ENV LEGACY value with spaces
ARG PORT=9000
EXPOSE $PORT 7000-7002
LABEL "quoted key"="va\"lue" spaced="a b" empty=""
ARG SIG=SIGUSR1
STOPSIGNAL $SIG
WORKDIR $A/work
RUN echo "X=$X A=$A B=$B C=$C D=$D LEGACY=$LEGACY" > /env.txt
USER 65534:65534
HEALTHCHECK --interval=5m CMD ["/bin/true"]
ENTRYPOINT ["/bin/echo", "$A"]
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec!["PORT=9443".to_owned()],
            mounts: false,
        },
        Case {
            name: "whiteouts",
            dockerfile: format!(
                r#"FROM {BUSYBOX}
RUN mkdir -p /w/keep /w/gone /w/todir && echo 1 > /w/keep/f && echo 2 > /w/gone/f && ln -s keep /w/link && echo file > /w/tofile && echo x > /w/todir/x
RUN rm -rf /w/gone /bin/vi /var/tmp && rm /w/keep/f && echo new > /w/keep/f2 && rm /w/tofile && mkdir /w/tofile && rm -r /w/todir && echo now-a-file > /w/todir
RUN rm -rf /w/keep && mkdir /w/keep && echo replaced > /w/keep/g && ln /w/keep/g /w/hard && chmod 4755 /w/keep/g && mkdir -m 1777 /w/sticky && mkfifo /w/fifo && touch '/w/with space' /w/ünïcödé && : > /w/empty
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "copy-edge",
            dockerfile: format!(
                r#"FROM {BUSYBOX} AS src
RUN mkdir /d /d2 && echo t > /d/t && ln -s /d/t /abs-link && ln -s d /rel-dir && echo 1 > /d2/one && echo 2 > /d2/two && ln -s /d2 /abs-dir-link && ln -s d2 /rel-dir2 && ln -s /d /abs-dir1

FROM {BUSYBOX}
RUN mkdir -p /existing-dir
COPY files/a.txt /existing-dir
COPY files/a.txt /newfile
COPY files/a.txt files/b.txt /multi/
COPY links/ /links/
COPY archive.tar.gz /not-extracted/
ADD files/a.txt /added.txt
ADD --chown=1234:5678 archive.tar.gz /chowned-tar/
COPY --chown=1234:5678 dir /chowned-dir-parent/sub
COPY --from=src /abs-link /from-abs-link
COPY --from=src /rel-dir /from-rel-dir
COPY --from=src /rel-dir/ /from-rel-dir-slash/
COPY --from=src /abs-dir-link /from-abs-dir-link
COPY --from=src /rel-dir2 /from-rel-dir2
COPY --from=src /abs-dir1 /from-abs-dir1
COPY --from=src /d /from-plain-dir1
COPY single /from-ctx-single
COPY links/to-dir /from-ctx-dir-link
"#
            ),
            files: {
                let mut f = common_files();
                f.push(("links/to-a", "../files/a.txt".to_owned(), SYMLINK));
                f.push(("links/dangling", "/nowhere".to_owned(), SYMLINK));
                f.push(("links/to-dir", "../dir".to_owned(), SYMLINK));
                f.push(("single/only.txt", "the only file\n".to_owned(), 0o644));
                f
            },
            tarball: true,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "symlink-dest",
            dockerfile: format!(
                r#"FROM {BUSYBOX}
RUN mkdir -p /target/real && ln -s /target/real /target/link && ln -s real /target/rel-link
COPY files/a.txt /target/link/a.txt
COPY files/b.txt /target/rel-link/
COPY dir /target/link/
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "symlink-workdir",
            dockerfile: format!(
                r#"FROM {BUSYBOX}
RUN mkdir -p /target/real && ln -s /target/real /target/link
WORKDIR /target/link/sub
RUN pwd > /pwd.txt && echo here > here.txt
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            // Every RUN --mount type with the options docker 20.10's built-in frontend knows
            // (it predates `env=` for secrets). The RUN steps record what each mount looked
            // like from inside, in files the tree comparison reads; the last step checks that
            // no mount left anything in the image.
            name: "mounts",
            dockerfile: format!(
                r#"FROM {BUSYBOX} AS seed
RUN mkdir -p /seed/sub && echo seeded > /seed/s.txt && echo deep > /seed/sub/d.txt && chown -R 7:8 /seed
FROM {BUSYBOX}
WORKDIR /out
RUN --mount=source=files,target=/ctx cat /ctx/a.txt > bind-default.txt && ls /ctx > bind-listing.txt && (touch /ctx/new 2>/dev/null && echo writable || echo read-only) > bind-ro.txt
RUN --mount=type=bind,from=seed,source=/seed,target=/s,rw echo scribble > /s/new.txt && cat /s/s.txt > bind-stage.txt && stat -c '%n %u:%g %a' /s/* > bind-stage-listing.txt
RUN --mount=type=bind,from={BUSYBOX},source=/etc,target=/img-etc grep -c . /img-etc/passwd > bind-image.txt
RUN --mount=type=cache,target=/cache,id=peers-c1,sharing=locked,mode=0750,uid=100,gid=101 stat -c '%u:%g %a' /cache > cache-owner.txt && echo x >> /cache/count
RUN --mount=type=cache,target=/var/cache/thing stat -c '%u:%g %a' /var/cache/thing > cache-default.txt
RUN --mount=type=cache,target=/seeded,from=seed,source=/seed,sharing=private find /seeded | sort > cache-seeded.txt && stat -c '%n %u:%g %a' /seeded/s.txt >> cache-seeded.txt
RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/t && stat -c '%a' /scratch > tmpfs-mode.txt && grep ' /scratch ' /proc/mounts | cut -d' ' -f3 > tmpfs-type.txt
RUN --mount=type=secret,id=token,required=true wc -c < /run/secrets/token > secret-len.txt && stat -c '%u:%g %a' /run/secrets/token > secret-default-meta.txt
RUN --mount=type=secret,id=token,target=/etc/tok,mode=0440,uid=100,gid=101 stat -c '%u:%g %a' /etc/tok > secret-meta.txt
RUN --mount=type=secret,id=absent (test -e /run/secrets/absent && echo present || echo absent) > secret-absent.txt
RUN --mount=type=ssh test -S "$SSH_AUTH_SOCK" && echo "$SSH_AUTH_SOCK" > ssh-sock.txt && stat -c '%u:%g %a' "$SSH_AUTH_SOCK" > ssh-meta.txt
RUN --mount=type=ssh,id=default,target=/agent.sock,mode=0666 stat -c '%a' /agent.sock > ssh-target.txt
RUN for p in /ctx /s /img-etc /cache /var/cache/thing /seeded /scratch /run/secrets /etc/tok /agent.sock; do test -e $p && echo "$p left behind"; done > leftovers.txt; true
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: true,
        },
        Case {
            name: "debian",
            dockerfile: format!(
                r#"FROM {DEBIAN}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN useradd -m -u 1500 -s /bin/bash builder && echo "${{BASH_VERSION%%.*}}" | tee /bash-major
COPY --chown=builder:builder files/ /home/builder/files/
USER builder
WORKDIR /home/builder
WORKDIR docs
RUN echo "$(id -un) in $PWD" > where.txt
ENV LANG=C.UTF-8
CMD ls -la
"#
            ),
            files: common_files(),
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "add-url",
            dockerfile: format!(
                "FROM {BUSYBOX}\n\
                 ADD {http}/files/hello.txt /dl/\n\
                 ADD {http}/files/hello.txt /dl/renamed.txt\n\
                 ADD --chown=1000:1000 {http}/files/app.tar.gz /pkg/\n\
                 RUN ls -ln /dl /pkg > /listing.txt\n",
                http = remotes.http
            ),
            files: vec![],
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
        Case {
            name: "add-git",
            dockerfile: format!(
                "FROM {BUSYBOX}\n\
                 ADD {git}/repo.git#main /src/\n\
                 ADD {git}/repo.git#v1:docs /docs\n",
                git = remotes.git
            ),
            files: vec![],
            tarball: false,
            build_args: vec![],
            mounts: false,
        },
    ]
}

fn write(path: &Path, text: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir).unwrap();
    }
    fs_err::write(path, text).unwrap();
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes the case's context under `dir`.
fn make_context(case: &Case, dir: &Path, scratch: &Path) {
    for (path, text, mode) in &case.files {
        if *mode == SYMLINK {
            let link = dir.join(path);
            fs_err::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(text, link).unwrap();
        } else {
            write(&dir.join(path), text, *mode);
        }
    }
    write(&dir.join("Dockerfile"), &case.dockerfile, 0o644);
    if case.tarball {
        // A tree with its own owners, modes, a symlink and a hard link.
        let src = scratch.join(format!("{}-tar", case.name));
        write(&src.join("top.txt"), "from the tarball\n", 0o644);
        write(&src.join("nested/deep.txt"), "deep in the tarball\n", 0o640);
        write(&src.join("bin/tool"), "#!/bin/sh\necho tool\n", 0o755);
        std::os::unix::fs::symlink("deep.txt", src.join("nested/link")).unwrap();
        fs_err::hard_link(src.join("top.txt"), src.join("top-hardlink.txt")).unwrap();
        fs_err::set_permissions(src.join("nested"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let out = Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=2001",
                "--group=2002",
                "--sort=name",
                "-czf",
            ])
            .arg(dir.join("archive.tar.gz"))
            .arg("-C")
            .arg(&src)
            .args(["top.txt", "top-hardlink.txt", "nested", "bin"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The last lines of a failed command's output.
fn tail(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n    ")
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{:?} {:?} failed ({}):\n    {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            tail(&out)
        ))
    }
}

/// A builder under comparison.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Builder {
    Hoist,
    Docker,
    Buildah,
}

impl Builder {
    fn name(self) -> &'static str {
        match self {
            Self::Hoist => "hoist",
            Self::Docker => "docker",
            Self::Buildah => "buildah",
        }
    }

    /// Why this builder cannot run here, if it cannot.
    fn unavailable(self) -> Option<String> {
        match self {
            Self::Hoist => None,
            Self::Docker => {
                if !Path::new("/usr/bin/docker").exists() {
                    return Some(
                        "/usr/bin/docker is not installed (run ../shared/peers/setup.sh)".into(),
                    );
                }
                match Command::new("/usr/bin/docker")
                    .args(["version", "--format", "{{.Server.Version}}"])
                    .output()
                {
                    Ok(o) if o.status.success() => None,
                    Ok(o) => Some(format!(
                        "dockerd is not running or not reachable at /var/run/docker.sock (run ../shared/peers/setup.sh): {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => Some(format!("cannot run /usr/bin/docker: {e}")),
                }
            }
            Self::Buildah => match Command::new("buildah").arg("version").output() {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(format!(
                    "buildah does not work: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Some(format!(
                    "buildah is not installed (apt-get install buildah, or run ../shared/peers/setup.sh): {e}"
                )),
            },
        }
    }

    /// Builds `context` and pushes it as `reference`.
    fn build_and_push(
        self,
        hoist_root: &Path,
        context: &Path,
        build_args: &[String],
        extra: &[String],
        reference: &str,
    ) -> Result<(), String> {
        let mut args: Vec<String> = Vec::new();
        for a in build_args {
            args.push("--build-arg".into());
            args.push(a.replace("{builder}", self.name()));
        }
        args.extend(extra.iter().cloned());
        match self {
            Self::Hoist => {
                run(Command::new(env!("CARGO_BIN_EXE_hoist"))
                    .args(["build", "--progress=plain", "--network=none", "--root"])
                    .arg(hoist_root)
                    .args(&args)
                    .args(["-t", reference, "--push"])
                    .arg(context))?;
            }
            Self::Docker => {
                run(Command::new("/usr/bin/docker")
                    .env("DOCKER_BUILDKIT", "1")
                    .args(["build", "--network", "none", "-q"])
                    .args(&args)
                    .args(["-t", reference])
                    .arg(context))?;
                run(Command::new("/usr/bin/docker").args(["push", "-q", reference]))?;
            }
            Self::Buildah => {
                // Docker format: the OCI format drops HEALTHCHECK, ONBUILD and SHELL.
                run(Command::new("buildah")
                    .args([
                        "bud",
                        "--layers",
                        "--network",
                        "none",
                        "--format",
                        "docker",
                        "-q",
                    ])
                    .args(&args)
                    .args(["-t", reference])
                    .arg(context))?;
                run(Command::new("buildah").args(["push", "-q", reference]))?;
            }
        }
        Ok(())
    }
}

/// What the `mounts` case is built with: a secret file and a running `ssh-agent` that holds one
/// fresh key. The agent is stopped when this is dropped.
struct MountInputs {
    secret: PathBuf,
    socket: PathBuf,
    agent: std::process::Child,
}

impl MountInputs {
    fn new(work: &Path) -> Result<Self, String> {
        let secret = work.join("token.secret");
        fs_err::write(&secret, "peers-bench-token-8c1f\n").unwrap();
        let socket = work.join("agent.sock");
        let key = work.join("agent-key");
        let hint = "apt-get install openssh-client";
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key))
        .map_err(|e| format!("ssh-keygen failed ({hint}): {e}"))?;
        let agent = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start ssh-agent ({hint}): {e}"))?;
        let inputs = Self {
            secret,
            socket,
            agent,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !inputs.socket.exists() {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "ssh-agent made no socket at {} in 10 s",
                    inputs.socket.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run(Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &inputs.socket)
            .arg("-q")
            .arg(&key))?;
        Ok(inputs)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--secret".into(),
            format!("id=token,src={}", self.secret.display()),
            "--ssh".into(),
            format!("default={}", self.socket.display()),
        ]
    }
}

impl Drop for MountInputs {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// One file system entry, without its times.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    target: String,
    sha256: String,
    rdev: u64,
    /// For a file with more than one link: the first path (in sorted order) of its inode.
    hardlink_of: String,
}

impl Entry {
    /// The fields in which `self` and `other` differ, as "field a | b".
    fn differences(&self, other: &Self, a: &str, b: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, x: String, y: String| {
            if x != y {
                out.push(format!("{name} {a} {x} | {b} {y}"));
            }
        };
        field("type", self.kind.into(), other.kind.into());
        field(
            "mode",
            format!("{:04o}", self.mode),
            format!("{:04o}", other.mode),
        );
        field("uid", self.uid.to_string(), other.uid.to_string());
        field("gid", self.gid.to_string(), other.gid.to_string());
        field("size", self.size.to_string(), other.size.to_string());
        field("symlink target", self.target.clone(), other.target.clone());
        field(
            "sha256",
            short(&self.sha256).into(),
            short(&other.sha256).into(),
        );
        field("rdev", self.rdev.to_string(), other.rdev.to_string());
        field(
            "hard link to",
            self.hardlink_of.clone(),
            other.hardlink_of.clone(),
        );
        out
    }

    fn describe(&self) -> String {
        let mut s = format!("{} {:04o} {}:{}", self.kind, self.mode, self.uid, self.gid);
        if self.kind == "file" {
            let _ = write!(s, " {} bytes sha256 {}", self.size, short(&self.sha256));
        }
        if !self.target.is_empty() {
            let _ = write!(s, " -> {}", self.target);
        }
        if !self.hardlink_of.is_empty() {
            let _ = write!(s, " (hard link to {})", self.hardlink_of);
        }
        s
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

type Tree = BTreeMap<String, Entry>;

/// Every path under `root`, keyed as an absolute path inside the image.
fn walk(
    root: &Path,
    dir: &Path,
    tree: &mut Tree,
    inodes: &mut BTreeMap<(u64, u64), String>,
) -> Result<(), String> {
    let mut names: Vec<PathBuf> = fs_err::read_dir(dir)
        .map_err(|e| e.to_string())?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for path in names {
        let meta = fs_err::symlink_metadata(&path).map_err(|e| e.to_string())?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let mut entry = Entry {
            kind,
            mode: if ft.is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            },
            uid: meta.uid(),
            gid: meta.gid(),
            size: 0,
            target: String::new(),
            sha256: String::new(),
            rdev: if ft.is_char_device() || ft.is_block_device() {
                meta.rdev()
            } else {
                0
            },
            hardlink_of: String::new(),
        };
        let key = format!("/{}", path.strip_prefix(root).unwrap().display());
        if ft.is_file() {
            let bytes = fs_err::read(&path).map_err(|e| e.to_string())?;
            entry.size = bytes.len() as u64;
            let digest = hoist_cache::sha256_of(&bytes);
            entry.sha256 = digest.digest().to_owned();
        } else if ft.is_symlink() {
            entry.target = fs_err::read_link(&path)
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
        }
        if !ft.is_dir() && meta.nlink() > 1 {
            let first = inodes
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| key.clone());
            if *first != key {
                entry.hardlink_of.clone_from(first);
            }
        }
        tree.insert(key, entry);
        if ft.is_dir() {
            walk(root, &path, tree, inodes)?;
        }
    }
    Ok(())
}

/// An image as pushed: its config blob and its unpacked root filesystem.
struct Image {
    config: Value,
    tree: Tree,
}

/// Reads `reference` back from the registry.
fn fetch(reference: &str, scratch: &Path, label: &str) -> Result<Image, String> {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--config",
        "--raw",
        &format!("docker://{reference}"),
    ]))?;
    let config: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("config of {reference} is not JSON: {e}"))?;
    let layout = scratch.join(format!("{label}-oci"));
    let bundle = scratch.join(format!("{label}-bundle"));
    let _ = fs_err::remove_dir_all(&layout);
    let _ = fs_err::remove_dir_all(&bundle);
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:img", layout.display()),
    ]))?;
    // As root, without --rootless: owners are kept as they are in the layers.
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:img", layout.display()))
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let mut tree = Tree::new();
    if let Ok(meta) = fs_err::symlink_metadata(&rootfs) {
        tree.insert(
            "/".into(),
            Entry {
                kind: "dir",
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: 0,
                target: String::new(),
                sha256: String::new(),
                rdev: 0,
                hardlink_of: String::new(),
            },
        );
    }
    walk(&rootfs, &rootfs, &mut tree, &mut BTreeMap::new())?;
    let _ = fs_err::remove_dir_all(&layout);
    let _ = fs_err::remove_dir_all(&bundle);
    Ok(Image { config, tree })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The config as comparable fields, and its history as lines.
fn normalize(config: &Value) -> (BTreeMap<String, String>, Vec<String>) {
    let mut c = config.clone();
    let mut history = Vec::new();
    if let Some(top) = c.as_object_mut() {
        for k in [
            "created",
            "container",
            "container_config",
            "docker_version",
            "parent",
        ] {
            top.remove(k);
        }
        if let Some(Value::Array(h)) = top.remove("history") {
            for entry in h {
                let by = entry
                    .get("created_by")
                    .and_then(Value::as_str)
                    .unwrap_or("<no created_by>");
                let empty = entry
                    .get("empty_layer")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let mut line = by.to_owned();
                if empty {
                    line.push_str("   [empty_layer]");
                }
                for (k, v) in entry.as_object().into_iter().flatten() {
                    if !matches!(
                        k.as_str(),
                        "created" | "created_by" | "empty_layer" | "comment"
                    ) {
                        let _ = write!(line, "   [{k}={v}]");
                    }
                }
                history.push(line);
            }
        }
        if let Some(Value::Object(rootfs)) = top.get_mut("rootfs")
            && let Some(Value::Array(ids)) = rootfs.remove("diff_ids")
        {
            rootfs.insert("diff_ids (count)".into(), Value::from(ids.len()));
        }
        if let Some(Value::Object(cfg)) = top.get_mut("config") {
            for k in [
                "Hostname",
                "Domainname",
                "AttachStdin",
                "AttachStdout",
                "AttachStderr",
                "Tty",
                "OpenStdin",
                "StdinOnce",
                "ArgsEscaped",
                "Image",
            ] {
                cfg.remove(k);
            }
            if let Some(Value::Object(labels)) = cfg.get_mut("Labels") {
                labels.remove("io.buildah.version");
            }
            cfg.retain(|_, v| !is_empty(v));
        }
        top.retain(|_, v| !is_empty(v));
    }
    let mut fields = BTreeMap::new();
    flatten("", &c, &mut fields);
    (fields, history)
}

/// Objects become dotted paths; arrays and scalars are leaves in compact JSON.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v.to_string());
        }
    }
}

/// A line diff of two histories (longest common subsequence): `  ` both, `- ` only a, `+ ` only b.
fn diff_lines(a: &[String], b: &[String]) -> Vec<(char, String)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].clone()));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].clone()));
            j += 1;
        } else {
            out.push(('-', a[i].clone()));
            i += 1;
        }
    }
    out
}

/// Every difference between two images, as report lines, and how many there are of each kind.
struct Comparison {
    config: Vec<String>,
    history: Vec<String>,
    history_differs: usize,
    /// History lines that differ only by the docker 20.10 frontend's older format.
    history_explained: usize,
    tree: Vec<String>,
}

fn compare(a: &Image, b: &Image, an: &str, bn: &str) -> Comparison {
    let (fa, ha) = normalize(&a.config);
    let (fb, hb) = normalize(&b.config);
    let mut config = Vec::new();
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    for k in keys {
        match (fa.get(k), fb.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => config.push(format!(
                "{k}: {an} {} | {bn} {}",
                x.map_or("<absent>", String::as_str),
                y.map_or("<absent>", String::as_str)
            )),
        }
    }
    let mut history = Vec::new();
    let mut history_differs = 0;
    let mut history_explained = 0;
    if ha != hb {
        let diff = diff_lines(&ha, &hb);
        let notes = explain_history(&diff, an, bn);
        for ((mark, line), note) in diff.iter().zip(&notes) {
            let who = match mark {
                '-' => format!("only {an:<7}"),
                '+' => format!("only {bn:<7}"),
                _ => "both        ".to_owned(),
            };
            if *mark != ' ' {
                history_differs += 1;
                if note.is_some() {
                    history_explained += 1;
                }
            }
            match note {
                Some(why) => history.push(format!("{who} {line}\n               ^ {why}")),
                None => history.push(format!("{who} {line}")),
            }
        }
    }
    let mut tree = Vec::new();
    let paths: std::collections::BTreeSet<&String> = a.tree.keys().chain(b.tree.keys()).collect();
    for p in paths {
        match (a.tree.get(p), b.tree.get(p)) {
            (Some(x), Some(y)) => {
                let d = x.differences(y, an, bn);
                if !d.is_empty() {
                    tree.push(format!("{p}: {}", d.join("; ")));
                }
            }
            (Some(x), None) => tree.push(format!("{p}: only in {an} ({})", x.describe())),
            (None, Some(y)) => tree.push(format!("{p}: only in {bn} ({})", y.describe())),
            (None, None) => {}
        }
    }
    Comparison {
        config,
        history,
        history_differs,
        history_explained,
        tree,
    }
}

/// Pairs the lines that one side has instead of the other (runs of `-` and `+` of the same
/// length) and, between hoist and docker, names the ones that differ only because docker 20.10
/// ships an older Dockerfile frontend than BuildKit v0.24 (whose format hoist follows).
fn explain_history(diff: &[(char, String)], an: &str, bn: &str) -> Vec<Option<&'static str>> {
    let mut notes = vec![None; diff.len()];
    let docker_first = match (an, bn) {
        ("docker", "hoist") => true,
        ("hoist", "docker") => false,
        _ => return notes,
    };
    let mut i = 0;
    while i < diff.len() {
        if diff[i].0 == ' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < diff.len() && diff[i].0 != ' ' {
            i += 1;
        }
        let minus: Vec<usize> = (start..i).filter(|&k| diff[k].0 == '-').collect();
        let plus: Vec<usize> = (start..i).filter(|&k| diff[k].0 == '+').collect();
        if minus.len() != plus.len() {
            continue;
        }
        for (&m, &p) in minus.iter().zip(&plus) {
            let (d, h) = if docker_first { (m, p) } else { (p, m) };
            if let Some(why) = older_frontend(&diff[d].1, &diff[h].1) {
                notes[m] = Some(why);
                notes[p] = Some(why);
            }
        }
    }
    notes
}

/// Why `docker` (docker 20.10's frontend) and `hoist` (BuildKit's current format) record the
/// same instruction differently, if that is all that differs.
fn older_frontend(docker: &str, hoist: &str) -> Option<&'static str> {
    const EMPTY: &str = "   [empty_layer]";
    if docker.ends_with(EMPTY) != hoist.ends_with(EMPTY) {
        return None;
    }
    let (d, h) = (
        docker.trim_end_matches(EMPTY),
        hoist.trim_end_matches(EMPTY),
    );
    let keys = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .skip(1)
            .map(|w| w.split('=').next().unwrap_or(w).to_owned())
            .collect()
    };
    if d.starts_with("ARG ") && h.starts_with("ARG ") && keys(d) == keys(h) {
        return Some(
            "format: BuildKit v0.24 records each ARG's resolved value (build-arg or imported global), docker 20.10 the text as written",
        );
    }
    if let (Some(dm), Some(hl)) = (d.strip_prefix("EXPOSE map["), h.strip_prefix("EXPOSE [")) {
        let mut dp: Vec<&str> = dm
            .trim_end_matches(']')
            .split_whitespace()
            .map(|w| w.trim_end_matches(":{}"))
            .collect();
        let mut hp: Vec<&str> = hl.trim_end_matches(']').split_whitespace().collect();
        dp.sort_unstable();
        hp.sort_unstable();
        if dp == hp {
            return Some(
                "format: BuildKit (dockerfile 1.19+) records the ports as a list, docker 20.10 as a Go map",
            );
        }
    }
    if d.starts_with("HEALTHCHECK &{") && h.starts_with("HEALTHCHECK {Test:") {
        return Some(
            "format: BuildKit (dockerfile 1.24+) prints the struct with %+v, docker 20.10 with %q (and v0.24 with %q plus StartInterval)",
        );
    }
    if d.starts_with("COPY ") || d.starts_with("ADD ") {
        let stripped: Vec<&str> = h
            .split(' ')
            .filter(|w| !w.starts_with("--chown=") && !w.starts_with("--chmod="))
            .collect();
        if stripped.join(" ") == d {
            return Some(
                "format: BuildKit v0.24 names --chown/--chmod in the history, docker 20.10 leaves them out",
            );
        }
    }
    None
}

struct Args {
    only: Option<Vec<String>>,
}

fn args() -> Args {
    let mut a = Args { only: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--only" {
            a.only = it.next().map(|s| s.split(',').map(str::to_owned).collect());
        } // cargo bench passes --bench
    }
    a
}

/// Fails loudly when a tool that every comparison needs is missing.
fn require(tool: &str, probe: &[&str], hint: &str) {
    match Command::new(tool).args(probe).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "peers: {tool} {probe:?} failed: {}\n{hint}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("peers: {tool} is not installed ({e}); {hint}");
            std::process::exit(2);
        }
    }
}

fn in_registry(reference: &str) -> bool {
    Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{reference}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[allow(clippy::too_many_lines)] // a linear report
fn main() {
    let args = args();
    let hint = "run `bash ../shared/peers/setup.sh` (it installs skopeo, umoci, buildah, docker and starts the registry)";
    require("skopeo", &["--version"], hint);
    require("umoci", &["--version"], hint);
    if !in_registry(BUSYBOX) {
        eprintln!(
            "peers: {BUSYBOX} cannot be read: no registry answers on {REGISTRY}, or it lacks the image; {hint}"
        );
        std::process::exit(2);
    }
    let have_debian = in_registry(DEBIAN);
    if !have_debian {
        println!("peers: {DEBIAN} is not in the registry; the debian case is left out ({hint})");
    }

    let mut builders = vec![Builder::Hoist];
    for peer in [Builder::Docker, Builder::Buildah] {
        match peer.unavailable() {
            None => builders.push(peer),
            Some(why) => println!(
                "peers: PEER {} NOT AVAILABLE, left out of every comparison: {why}",
                peer.name()
            ),
        }
    }
    let pairs: Vec<(Builder, Builder)> = [
        (Builder::Hoist, Builder::Docker),
        (Builder::Hoist, Builder::Buildah),
        (Builder::Buildah, Builder::Docker),
    ]
    .into_iter()
    .filter(|(a, b)| builders.contains(a) && builders.contains(b))
    .collect();
    if pairs.is_empty() {
        println!("peers: no peer builder is available, nothing to compare hoist with");
    }

    let work = tempfile::tempdir().unwrap();
    let hoist_root = work.path().join("hoist-root");
    let report_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peers-report");
    let _ = fs_err::remove_dir_all(&report_dir);
    fs_err::create_dir_all(&report_dir).unwrap();

    let mounts = MountInputs::new(work.path());
    let remotes = Remotes::start();
    // summary[(case, pair)] = cell text
    let mut summary: BTreeMap<(&'static str, String), String> = BTreeMap::new();
    let mut case_names = Vec::new();
    for case in cases(&remotes) {
        if args
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|w| w == case.name))
        {
            continue;
        }
        if case.name == "debian" && !have_debian {
            continue;
        }
        case_names.push(case.name);
        println!("\n=== {} ===", case.name);
        let context = work.path().join(format!("ctx-{}", case.name));
        make_context(&case, &context, work.path());
        for line in case.dockerfile.lines() {
            println!("  | {line}");
        }
        if !case.build_args.is_empty() {
            println!("  build args: {}", case.build_args.join(" "));
        }
        let mut extra = Vec::new();
        if case.mounts {
            match &mounts {
                Ok(m) => {
                    extra = m.args();
                    println!("  flags: {}", extra.join(" "));
                }
                Err(why) => {
                    println!("  NOT BUILT: {why}");
                    for (a, b) in &pairs {
                        let pair = format!("{} vs {}", a.name(), b.name());
                        summary.insert((case.name, pair), "not built (see above)".into());
                    }
                    continue;
                }
            }
        }
        let mut images: BTreeMap<Builder, Result<Image, String>> = BTreeMap::new();
        for &b in &builders {
            let reference = format!("{REPO}/{}:{}", case.name, b.name());
            let start = std::time::Instant::now();
            let result = b
                .build_and_push(&hoist_root, &context, &case.build_args, &extra, &reference)
                .and_then(|()| {
                    fetch(
                        &reference,
                        work.path(),
                        &format!("{}-{}", case.name, b.name()),
                    )
                });
            match &result {
                Ok(img) => println!(
                    "  {:<8} built and read back {reference} in {:.1}s ({} paths)",
                    b.name(),
                    start.elapsed().as_secs_f64(),
                    img.tree.len()
                ),
                Err(e) => println!("  {:<8} FAILED: {e}", b.name()),
            }
            let _ = std::io::stdout().flush();
            images.insert(b, result);
        }
        for &(a, b) in &pairs {
            let pair = format!("{} vs {}", a.name(), b.name());
            let (Some(Ok(ia)), Some(Ok(ib))) = (images.get(&a), images.get(&b)) else {
                let failed: Vec<&str> = [a, b]
                    .into_iter()
                    .filter(|x| images.get(x).is_none_or(Result::is_err))
                    .map(Builder::name)
                    .collect();
                println!("  -- {pair}: not compared, {} failed", failed.join(" and "));
                summary.insert(
                    (case.name, pair),
                    format!("{} build failed", failed.join("+")),
                );
                continue;
            };
            let c = compare(ia, ib, a.name(), b.name());
            let mut full = String::new();
            if c.config.is_empty() && c.history.is_empty() && c.tree.is_empty() {
                println!("  -- {pair}: identical");
                summary.insert((case.name, pair), "identical".into());
                continue;
            }
            println!(
                "  -- {pair}: {} config field(s), {} history line(s) ({} of them only in format), {} path(s) differ",
                c.config.len(),
                c.history_differs,
                c.history_explained,
                c.tree.len()
            );
            let sections = [
                ("config", &c.config),
                ("history (created_by)", &c.history),
                ("file tree", &c.tree),
            ];
            for (title, lines) in sections {
                if lines.is_empty() {
                    continue;
                }
                println!("     {title}:");
                let _ = writeln!(full, "{title}:");
                // buildah writes the classic builder's history (`/bin/sh -c #(nop) …`), so
                // no line of it can match BuildKit's; the alignment goes to the file only.
                let limit = if title.starts_with("history") && [a, b].contains(&Builder::Buildah) {
                    println!(
                        "       (buildah writes the classic builder's `/bin/sh -c #(nop) …` history, never BuildKit's; alignment in the file)"
                    );
                    0
                } else {
                    PRINT_LIMIT
                };
                for (i, line) in lines.iter().enumerate() {
                    let _ = writeln!(full, "  {line}");
                    if i < limit {
                        println!("       {line}");
                    } else if i == limit && limit > 0 {
                        println!("       … and {} more", lines.len() - limit);
                    }
                }
            }
            let file = report_dir.join(format!("{}-{}-vs-{}.txt", case.name, a.name(), b.name()));
            fs_err::write(&file, full).unwrap();
            println!("     (all of it: {})", file.display());
            summary.insert(
                (case.name, pair),
                format!(
                    "config {} / history {} ({} fmt) / paths {}",
                    c.config.len(),
                    c.history_differs,
                    c.history_explained,
                    c.tree.len()
                ),
            );
        }
        let _ = std::io::stdout().flush();
    }

    println!(
        "\nsummary (differences: config fields / history lines (of which only the older frontend's format) / paths):"
    );
    let headers: Vec<String> = pairs
        .iter()
        .map(|(a, b)| format!("{} vs {}", a.name(), b.name()))
        .collect();
    print!("{:<15}", "Dockerfile");
    for h in &headers {
        print!(" {h:<42}");
    }
    println!();
    for name in &case_names {
        print!("{name:<15}");
        for h in &headers {
            let cell = summary.get(&(*name, h.clone())).map_or("-", String::as_str);
            print!(" {cell:<42}");
        }
        println!();
    }
    for b in [Builder::Docker, Builder::Buildah] {
        if !builders.contains(&b) {
            println!("{}: NOT AVAILABLE (see above)", b.name());
        }
    }
}
