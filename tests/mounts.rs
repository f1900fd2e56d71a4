//! `RUN --mount` end to end, as a user sees it: bind, cache, tmpfs, secret and ssh mounts in
//! the real sandbox (built-in runtime and runc), what lands in layers, keys and logs, and
//! `hoist du` / `hoist prune`. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Project, Registry, contains, files_under, holding, steps_that_ran};

fn runtimes() -> [&'static str; 2] {
    ["builtin", "/usr/sbin/runc"]
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    let text = stderr(out);
    assert!(out.status.success(), "hoist build failed:\n{text}");
    text
}

#[test]
fn bind_mounts_show_the_context_and_a_stage_and_never_reach_the_layer() {
    let p = Project::new(
        "FROM scratch AS base\n\
         ADD rootfs.tar /\n\
         RUN mkdir /data && echo from-base > /data/f\n\
         FROM base\n\
         WORKDIR /w\n\
         RUN --mount=target=ctx,source=src cat ctx/a.txt > /seen-a && ls ctx > /seen-ls\n\
         RUN --mount=type=bind,source=src/a.txt,target=/one.txt cat /one.txt > /seen-one\n\
         RUN --mount=from=base,source=/data,target=/d,rw echo written > /d/f && cat /d/f > /seen-rw\n\
         RUN --mount=from=base,source=/data,target=/d cat /d/f > /seen-after && \
             (touch /d/x 2> /seen-ro-err; true)\n",
    );
    fs_err::create_dir(p.path("src")).unwrap();
    p.write("src/a.txt", "context-a\n");
    p.write("src/b.log", "ignored\n");
    p.write(".dockerignore", "src/*.log\n");
    for runtime in runtimes() {
        let (_, rootfs) = p.build_to_dir(&["--runtime", runtime, "--no-cache"]);
        let read = |f: &str| fs_err::read_to_string(rootfs.path().join(f)).unwrap();
        assert_eq!(read("seen-a"), "context-a\n", "{runtime}");
        // .dockerignore holds for mounts as for COPY.
        assert_eq!(read("seen-ls"), "a.txt\n", "{runtime}");
        assert_eq!(read("seen-one"), "context-a\n", "{runtime}");
        assert_eq!(read("seen-rw"), "written\n", "{runtime}");
        // What the rw step wrote was thrown away; the next mount sees the stage as it is.
        assert_eq!(read("seen-after"), "from-base\n", "{runtime}");
        assert!(read("seen-ro-err").contains("Read-only"), "{runtime}");
        // The mount points are in no layer.
        for gone in ["w/ctx", "one.txt", "d"] {
            assert!(
                !rootfs.path().join(gone).exists(),
                "{runtime}: /{gone} landed in the image"
            );
        }
        assert!(rootfs.path().join("w").is_dir());
    }
}

#[test]
fn a_bound_context_file_is_in_the_steps_key_and_other_files_are_not() {
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=source=in.txt,target=/in.txt cat /in.txt > /copy\n",
    );
    p.write("in.txt", "one\n");
    p.write("other.txt", "x\n");
    ok(&p.hoist(&[]));
    p.write("other.txt", "y\n");
    let text = ok(&p.hoist(&[]));
    let ran = steps_that_ran(&text);
    assert!(
        !ran.iter().any(|s| s.contains("RUN --mount")),
        "a change to an unmounted file re-ran the step:\n{text}"
    );
    p.write("in.txt", "two\n");
    let (_, rootfs) = p.build_to_dir(&[]);
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("copy")).unwrap(),
        "two\n"
    );
}

#[test]
fn cache_mounts_outlive_builds_stay_out_of_layers_and_prune_drops_them() {
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         ARG N\n\
         RUN --mount=type=cache,target=/var/cache/app,id=app \
             echo \"run $N\" >> /var/cache/app/log && cp /var/cache/app/log /seen\n\
         RUN --mount=type=cache,target=/owned,uid=1000,gid=1000,mode=0750 \
             stat -c '%u:%g %a' /owned > /owned-stat\n",
    );
    let (_, first) = p.build_to_dir(&["--build-arg", "N=1"]);
    assert_eq!(
        fs_err::read_to_string(first.path().join("seen")).unwrap(),
        "run 1\n"
    );
    assert_eq!(
        fs_err::read_to_string(first.path().join("owned-stat")).unwrap(),
        "1000:1000 750\n"
    );
    // A new value re-runs the step, which finds what the first build left in the cache.
    let (_, second) = p.build_to_dir(&["--build-arg", "N=2", "--runtime", "/usr/sbin/runc"]);
    assert_eq!(
        fs_err::read_to_string(second.path().join("seen")).unwrap(),
        "run 1\nrun 2\n"
    );
    assert!(!second.path().join("var/cache/app").exists());
    assert!(!second.path().join("owned").exists());

    let du = |p: &Project| {
        let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .arg("du")
            .arg("--root")
            .arg(p.root.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = du(&p);
    assert!(
        listed.contains("app ") && listed.contains("/owned "),
        "{listed}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("prune")
        .arg("--root")
        .arg(p.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 2 cache mount instance(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!du(&p).contains("app "));
    let (_, third) = p.build_to_dir(&["--build-arg", "N=3"]);
    assert_eq!(
        fs_err::read_to_string(third.path().join("seen")).unwrap(),
        "run 3\n"
    );
}

/// Starts `hoist build` of `dir` on the state root `root` with build-args, without waiting.
fn spawn_build(root: &Path, dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(root)
        .arg("--progress=plain")
        .args(args)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn shared_locked_and_private_cache_mounts_under_two_concurrent_builds() {
    // Each build writes its marker into the cache mount, then:
    // - shared: waits (up to 20 s) to see the other build's marker, which only a directory
    //   used by both at once shows;
    // - locked: takes /c/busy for 2 s; finding it taken means the builds overlapped;
    // - private: holds the mount for 2 s, then lists it: each sees only its own marker, and
    //   the two builds needed two directories.
    let script = |sharing: &str| match sharing {
        "shared" => "touch /c/$ME; i=0; while [ ! -e /c/$OTHER ]; do \
                     i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.1; done; echo saw > /r"
            .to_owned(),
        "locked" => "if mkdir /c/busy; then sleep 2; rmdir /c/busy; echo alone > /r; \
                     else echo overlapped > /r; fi"
            .to_owned(),
        _ => "touch /c/$ME; sleep 2; ls /c > /r".to_owned(),
    };
    for sharing in ["shared", "locked", "private"] {
        let p = Project::new(&format!(
            "FROM scratch\nADD rootfs.tar /\nARG ME\nARG OTHER\n\
             RUN --mount=type=cache,target=/c,id=c,sharing={sharing} {}\n",
            script(sharing)
        ));
        let outs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let children: Vec<_> = [("a", "b"), ("b", "a")]
            .iter()
            .zip(&outs)
            .map(|((me, other), out)| {
                spawn_build(
                    p.root.path(),
                    p.dir.path(),
                    &[
                        "--build-arg",
                        &format!("ME={me}"),
                        "--build-arg",
                        &format!("OTHER={other}"),
                        "-o",
                        &format!("type=local,dest={}", out.path().display()),
                    ],
                )
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{sharing}: {}", stderr(&out));
        }
        let read = |i: usize| fs_err::read_to_string(outs[i].path().join("r")).unwrap();
        match sharing {
            "shared" => assert_eq!((read(0), read(1)), ("saw\n".into(), "saw\n".into())),
            "locked" => assert_eq!((read(0), read(1)), ("alone\n".into(), "alone\n".into())),
            _ => assert_eq!((read(0), read(1)), ("a\n".into(), "b\n".into())),
        }
        let listed = String::from_utf8_lossy(
            &Command::new(env!("CARGO_BIN_EXE_hoist"))
                .arg("du")
                .arg("--root")
                .arg(p.root.path())
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let count = listed
            .lines()
            .find(|l| l.starts_with("c "))
            .and_then(|l| l.split_whitespace().nth(1));
        let expected = if sharing == "private" { "2" } else { "1" };
        assert_eq!(count, Some(expected), "{sharing}: {listed}");
    }
}

#[test]
fn tmpfs_mounts_are_empty_sized_and_gone_after_the_step() {
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=tmpfs,target=/scratch,size=2m \
             df -k /scratch | tail -1 | awk '{print $2}' > /size && echo x > /scratch/f\n",
    );
    let (_, rootfs) = p.build_to_dir(&[]);
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("size")).unwrap(),
        "2048\n"
    );
    assert!(!rootfs.path().join("scratch").exists());
}

#[test]
fn secrets_reach_the_run_and_never_a_layer_the_cache_the_history_or_the_logs() {
    let secret = format!("s3cret-{}-{}", std::process::id(), rand_suffix());
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=secret,id=token \
             sha256sum /run/secrets/token | cut -d' ' -f1 > /file-hash && \
             stat -c '%u %a' /run/secrets/token > /file-stat\n\
         RUN --mount=type=secret,id=token,env=TOKEN,target=/s/t,uid=1000,mode=0440 \
             printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1 > /env-hash && \
             stat -c '%u %a' /s/t > /target-stat\n\
         RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && touch /absent-ok\n",
    );
    let file = p.path("../token-file");
    fs_err::write(&file, &secret).unwrap();
    let expected = {
        let out = Command::new("sha256sum").arg(&file).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let secret_flag = format!("id=token,src={}", file.display());
    let registry = Registry::start();
    let tag = format!("{}/secrets:latest", registry.addr);
    let metadata = p.path("../metadata.json");
    let metadata_flag = metadata.display().to_string();
    for runtime in runtimes() {
        let rootfs = tempfile::tempdir().unwrap();
        let local = format!("type=local,dest={}", rootfs.path().display());
        let out = p.hoist(&[
            "-o",
            &local,
            "--secret",
            &secret_flag,
            "--runtime",
            runtime,
            "-t",
            &tag,
            "--push",
            "--metadata-file",
            &metadata_flag,
            "--no-cache",
        ]);
        ok(&out);
        let read = |f: &str| fs_err::read_to_string(rootfs.path().join(f)).unwrap();
        assert_eq!(read("file-hash").trim(), expected, "{runtime}");
        assert_eq!(read("file-stat"), "0 400\n", "{runtime}");
        assert_eq!(read("env-hash").trim(), expected, "{runtime}");
        assert_eq!(read("target-stat"), "1000 440\n", "{runtime}");
        assert!(rootfs.path().join("absent-ok").exists(), "{runtime}");
        for gone in ["run/secrets", "s"] {
            assert!(!rootfs.path().join(gone).exists(), "{runtime}: /{gone}");
        }
        for printed in [&out.stdout, &out.stderr] {
            assert!(!contains(printed, secret.as_bytes()), "{runtime}");
        }
        // Nothing in the state root holds it: snapshots, blobs (decompressed), the image
        // config and history, the cache index, the logs.
        let leaks = holding(p.root.path(), secret.as_bytes());
        assert!(leaks.is_empty(), "{runtime}: the secret is in {leaks:?}");
        assert!(holding(rootfs.path(), secret.as_bytes()).is_empty());
        // Nor what was pushed (every blob, decompressed), nor the metadata file.
        let pushed = files_under(&registry.data_dir());
        assert!(pushed.len() > 3, "nothing was pushed: {pushed:?}");
        let leaks = holding(&registry.data_dir(), secret.as_bytes());
        assert!(
            leaks.is_empty(),
            "{runtime}: the secret was pushed in {leaks:?}"
        );
        let meta = fs_err::read(&metadata).unwrap();
        assert!(!contains(&meta, secret.as_bytes()), "{runtime}");
    }
    // Its content is in no key: a new secret leaves the steps cached, as in BuildKit.
    fs_err::write(&file, "another").unwrap();
    let text = ok(&p.hoist(&["--secret", &secret_flag]));
    let ran = steps_that_ran(&text);
    assert!(
        !ran.iter().any(|s| s.contains("RUN")),
        "a changed secret re-ran {ran:?}:\n{text}"
    );
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_required_secret_or_agent_that_was_not_given_fails_at_its_line() {
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=secret,id=npmrc,required true\n",
    );
    let out = p.hoist(&[]);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("(line 3")
            && text.contains("secret \"npmrc\" is required")
            && text.contains("--secret id=npmrc,src=FILE"),
        "{text}"
    );
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=ssh,id=github,required=true true\n",
    );
    let out = p.hoist(&[]);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("(line 3") && text.contains("--ssh github=SOCKET"),
        "{text}"
    );
    // A --secret that names a missing file fails before anything runs.
    let out = p.hoist(&["--secret", "id=x,src=/nonexistent/secret"]);
    assert!(
        stderr(&out).contains("/nonexistent/secret is not a readable file"),
        "{}",
        stderr(&out)
    );
}

/// Asks the agent at `$SSH_AUTH_SOCK` for its identities and prints how many it holds: the
/// busybox image has no ssh client, so the test brings this, built static.
const AGENT_QUERY: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
int main(void) {
  const char *path = getenv("SSH_AUTH_SOCK");
  if (!path) { fprintf(stderr, "SSH_AUTH_SOCK unset\n"); return 2; }
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 3; }
  unsigned char request[5] = {0, 0, 0, 1, 11}; /* SSH2_AGENTC_REQUEST_IDENTITIES */
  if (write(fd, request, 5) != 5) { perror("write"); return 4; }
  unsigned char reply[9];
  size_t got = 0;
  while (got < 9) {
    ssize_t n = read(fd, reply + got, 9 - got);
    if (n <= 0) { perror("read"); return 5; }
    got += (size_t)n;
  }
  if (reply[4] != 12) { fprintf(stderr, "unexpected reply %d\n", reply[4]); return 6; }
  printf("%u\n", (unsigned)reply[5] << 24 | reply[6] << 16 | reply[7] << 8 | reply[8]);
  return 0;
}
"#;

struct Agent {
    child: std::process::Child,
    socket: PathBuf,
    /// The private key the agent holds.
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// `ssh-agent -D` on a socket of its own, holding one new ed25519 key.
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let key = dir.path().join("key");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success());
        let added = Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(added.status.success(), "{}", stderr(&added));
        Self {
            child,
            socket,
            key,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Compiles the agent query (a static program that prints how many keys `$SSH_AUTH_SOCK`'s
/// agent holds) to `dest`.
fn compile_agent_query(dest: &Path) {
    let built = Command::new("gcc")
        .args(["-static", "-O2", "-x", "c", "-o"])
        .arg(dest)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut gcc| {
            use std::io::Write as _;
            gcc.stdin
                .take()
                .unwrap()
                .write_all(AGENT_QUERY.as_bytes())?;
            gcc.wait()
        })
        .expect("gcc");
    assert!(built.success(), "gcc -static failed (libc6-dev installed?)");
}

/// A build on a server reaches the agent of its client, over the build's stream.
#[test]
fn a_remote_build_reaches_its_clients_ssh_agent() {
    let agent = Agent::start();
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         COPY agentq /usr/bin/agentq\n\
         RUN --mount=type=ssh agentq > /keys && agentq >> /keys\n\
         RUN --mount=type=ssh,id=absent test -z \"$SSH_AUTH_SOCK\" && touch /absent-ok\n",
    );
    compile_agent_query(&p.path("agentq"));
    let dir = tempfile::Builder::new()
        .prefix("hoist-ssh-")
        .tempdir_in("/tmp")
        .unwrap();
    let addr = format!("unix://{}", dir.path().join("s.sock").display());
    let server = support::Server::start(&["--addr", &addr, "--insecure-no-auth"]);
    let default = format!("default={}", agent.socket.display());
    let dest = tempfile::tempdir().unwrap();
    let output = format!("type=local,dest={}", dest.path().display());
    let out = p.hoist(&["--remote", &addr, "--ssh", &default, "-o", &output]);
    assert!(
        out.status.success(),
        "{}\nthe server's log:\n{}",
        stderr(&out),
        server.log()
    );
    // Two connections, one after the other, each to the client's agent and its one key.
    assert_eq!(
        fs_err::read_to_string(dest.path().join("keys")).unwrap(),
        "1\n1\n"
    );
    assert!(dest.path().join("absent-ok").exists());
}

#[test]
fn ssh_mounts_reach_the_agent_with_the_mounts_owner_and_mode() {
    let agent = Agent::start();
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         COPY agentq /usr/bin/agentq\n\
         RUN --mount=type=ssh agentq > /keys && echo \"$SSH_AUTH_SOCK\" > /sock && \
             stat -c '%u %a' \"$SSH_AUTH_SOCK\" > /sock-stat\n\
         RUN --mount=type=ssh,id=other,target=/agent,uid=1000,mode=0660 \
             SSH_AUTH_SOCK=/agent agentq > /keys-other && stat -c '%u %a' /agent > /agent-stat\n\
         RUN --mount=type=ssh,id=absent test -z \"$SSH_AUTH_SOCK\" && touch /absent-ok\n\
         RUN --mount=type=ssh,id=keys agentq > /keys-from-file\n",
    );
    compile_agent_query(&p.path("agentq"));
    let default = format!("default={}", agent.socket.display());
    let other = format!("other={}", agent.socket.display());
    // A key file, as buildx takes it: hoist runs an agent with it for the build.
    let keys = format!("keys={}", agent.key.display());
    for runtime in runtimes() {
        let (_, rootfs) = p.build_to_dir(&[
            "--ssh",
            &default,
            "--ssh",
            &other,
            "--ssh",
            &keys,
            "--runtime",
            runtime,
            "--no-cache",
        ]);
        let read = |f: &str| fs_err::read_to_string(rootfs.path().join(f)).unwrap();
        assert_eq!(read("keys"), "1\n", "{runtime}");
        assert_eq!(read("sock"), "/run/buildkit/ssh_agent.0\n", "{runtime}");
        assert_eq!(read("sock-stat"), "0 600\n", "{runtime}");
        assert_eq!(read("keys-other"), "1\n", "{runtime}");
        assert_eq!(read("agent-stat"), "1000 660\n", "{runtime}");
        assert!(rootfs.path().join("absent-ok").exists(), "{runtime}");
        assert_eq!(read("keys-from-file"), "1\n", "{runtime}");
        assert!(!rootfs.path().join("run/buildkit").exists(), "{runtime}");
        assert!(!rootfs.path().join("agent").exists(), "{runtime}");
    }
}

#[test]
fn bad_mount_input_fails_at_its_line_before_anything_runs() {
    for (line, expect) in [
        (
            "RUN --mount=type=volume,target=/v true",
            "unknown mount type \"volume\": expected bind, cache, tmpfs, secret or ssh",
        ),
        (
            "RUN --mount=type=cache,target=/c,colour=red true",
            "unknown key \"colour\"",
        ),
        (
            "RUN --mount=type=cache,target=/c,from=127.0.0.1:1/nostage true",
            "--from=127.0.0.1:1/nostage: no stage of that name comes before this line",
        ),
    ] {
        let p = Project::new(&format!("FROM scratch\nADD rootfs.tar /\n{line}\n"));
        let out = p.hoist(&[]);
        let text = stderr(&out);
        assert!(!out.status.success(), "{line}");
        assert!(
            text.contains("error: Dockerfile:3:5: ") && text.contains(expect),
            "{line}: {text}"
        );
        assert!(steps_that_ran(&text).is_empty(), "{line}: {text}");
        let snapshots = files_under(&p.root.path().join("snapshots"));
        assert!(snapshots.is_empty(), "{line}: {snapshots:?}");
    }
}

#[test]
fn apt_with_cache_mounts_fetches_no_deb_again_after_the_run_line_changes() {
    let debian = support::debian_rootfs_tar();
    let apt = |extra: &str| {
        format!(
            "FROM scratch\nADD debian.tar /\n\
             RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
                 --mount=type=cache,target=/var/lib/apt,sharing=locked \
                 apt-get update && apt-get install -y --no-install-recommends hello{extra}\n"
        )
    };
    let p = Project::new(&apt(""));
    if fs_err::hard_link(&debian, p.path("debian.tar")).is_err() {
        fs_err::copy(&debian, p.path("debian.tar")).unwrap();
    }
    let (first, rootfs) = p.build_to_dir(&[]);
    assert!(
        first
            .lines()
            .any(|l| l.contains("Get:") && l.contains(" hello ")),
        "the first build did not download hello:\n{first}"
    );
    assert!(rootfs.path().join("usr/bin/hello").is_file());
    // The downloaded .deb stays in the mount, not in the image.
    let debs = |dir: &Path| {
        files_under(dir)
            .into_iter()
            .filter(|f| f.to_string_lossy().ends_with(".deb"))
            .count()
    };
    assert_eq!(debs(&rootfs.path().join("var/cache/apt")), 0);
    assert!(debs(&p.root.path().join("cache-mounts")) >= 1);

    // A changed RUN line runs again: apt finds hello's .deb in the cache mount. apt says
    // "Get:" for each file it downloads and "Need to get 0 B" when every archive is there.
    p.write("Dockerfile", &apt(" && echo second"));
    let (second, rootfs) = p.build_to_dir(&[]);
    assert!(
        steps_that_ran(&second)
            .iter()
            .any(|s| s.contains("echo second")),
        "{second}"
    );
    assert!(
        !second
            .lines()
            .any(|l| l.contains("Get:") && l.contains(" hello ")),
        "the second build downloaded hello again:\n{second}"
    );
    assert!(
        second.contains("Need to get 0 B"),
        "apt did not find the archives in the cache mount:\n{second}"
    );
    assert!(rootfs.path().join("usr/bin/hello").is_file());
}

#[test]
fn a_bind_source_that_is_a_symlink_stays_inside_the_context() {
    // `link -> /etc` and `file -> /etc/hostname` name host paths; as for COPY, they resolve
    // inside the context, where `etc/` holds only the marker.
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=source=link,target=/x ls /x > /seen-dir\n",
    );
    fs_err::create_dir(p.path("etc")).unwrap();
    p.write("etc/marker", "inside\n");
    std::os::unix::fs::symlink("/etc", p.path("link")).unwrap();
    let (_, rootfs) = p.build_to_dir(&[]);
    assert_eq!(
        fs_err::read_to_string(rootfs.path().join("seen-dir")).unwrap(),
        "marker\n"
    );
    p.write(
        "Dockerfile",
        "FROM scratch\nADD rootfs.tar /\nRUN --mount=source=file,target=/y cat /y\n",
    );
    std::os::unix::fs::symlink("/etc/hostname", p.path("file")).unwrap();
    let out = p.hoist(&[]);
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("\"file\": not found in build context"),
        "{text}"
    );
}

#[test]
fn a_mount_inside_another_mounts_target_is_mounted_after_it() {
    // The tmpfs's target lies inside the bind mount's; written first, it must still be
    // mounted on top of the bound directory, not hidden under it.
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=tmpfs,target=/app/tmp \
             --mount=type=bind,source=app,target=/app \
             echo written > /app/tmp/f && cat /app/tmp/f > /seen-tmpfs && \
             cat /app/package.json > /seen-bind\n",
    );
    fs_err::create_dir_all(p.path("app/tmp")).unwrap();
    p.write("app/package.json", "{}\n");
    let (_, rootfs) = p.build_to_dir(&[]);
    let read = |f: &str| fs_err::read_to_string(rootfs.path().join(f)).unwrap();
    // Hidden under the read-only bind, the tmpfs could not be written.
    assert_eq!(read("seen-tmpfs"), "written\n");
    assert_eq!(read("seen-bind"), "{}\n");
}

/// The files under `dir` on the same filesystem as `dir` itself (its disk), holding `needle`;
/// what a tmpfs mounted below holds is in memory and not listed.
fn on_disk_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let disk = fs_err::metadata(dir).unwrap().dev();
    holding(dir, needle)
        .into_iter()
        .filter(|f| fs_err::metadata(f).is_ok_and(|m| m.dev() == disk))
        .collect()
}

#[test]
fn a_secret_variable_touches_no_disk_of_the_state_root_while_its_step_runs() {
    // runc reads the process's environment from the bundle's config.json and keeps it in its
    // state: both must be in memory while the step runs, not on the state root's disk.
    let secret = format!("env-s3cret-{}", rand_suffix());
    let p = Project::new(
        "FROM scratch\n\
         ADD rootfs.tar /\n\
         RUN --mount=type=secret,id=t,env=T,target=/t echo started; sleep 3\n",
    );
    let file = p.path("../t");
    fs_err::write(&file, &secret).unwrap();
    let flag = format!("id=t,src={}", file.display());
    for runtime in runtimes() {
        let (mut running, _lines) = p.start_until(
            "started",
            &["--secret", &flag, "--runtime", runtime, "--no-cache"],
        );
        let leaks = on_disk_holding(p.root.path(), secret.as_bytes());
        assert!(leaks.is_empty(), "{runtime}: while the step ran: {leaks:?}");
        assert!(running.0.wait().unwrap().success(), "{runtime}");
        let leaks = on_disk_holding(p.root.path(), secret.as_bytes());
        assert!(leaks.is_empty(), "{runtime}: after the build: {leaks:?}");
    }
}
