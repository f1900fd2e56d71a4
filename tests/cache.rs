//! `--cache-to` and `--cache-from` end to end: a real registry (open and htpasswd-protected),
//! local cache directories, fresh state roots standing in for CI runners, and a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Project, Registry, Server, files_under};

/// The steps that ran, leaving out hoist's own (`[internal] importing cache …`).
fn steps_that_ran(stderr: &str) -> Vec<String> {
    support::steps_that_ran(stderr)
        .into_iter()
        .filter(|s| !s.starts_with("[internal]"))
        .collect()
}

/// Two stages: `builder` writes random bytes (so a step that ran again is told apart from one
/// that came from a cache); the final stage takes a build-arg before copying them.
const DOCKERFILE: &str = "\
FROM scratch AS base
ADD rootfs.tar /
FROM base AS builder
RUN head -c 8 /dev/urandom | od -An -tx1 > /built
FROM base
ARG V=1
RUN echo $V > /v
COPY --from=builder /built /built
RUN cat /built
";

const BUILDER_RUN: &str = "[builder 1/1] RUN head -c 8 /dev/urandom | od -An -tx1 > /built";

fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the build failed:\n{stderr}");
    stderr
}

fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the build succeeded:\n{stderr}");
    stderr
}

/// `hoist build` of `p`'s context on another, fresh state root: another CI runner.
fn on_fresh_root(p: &Project, args: &[&str]) -> (Output, tempfile::TempDir) {
    on_fresh_root_env(p, args, &[])
}

fn on_fresh_root_env(
    p: &Project,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(root.path())
        .arg("--progress=plain")
        .args(args)
        .arg(p.dir.path())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out, root)
}

/// The bytes the builder stage wrote, from a filesystem exported with `-o type=local`.
fn built(dir: &Path) -> String {
    fs_err::read_to_string(dir.join("built")).unwrap()
}

fn pushed_digest(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("pushed "))
        .unwrap_or_else(|| panic!("no pushed line:\n{stderr}"));
    line.rsplit_once('@').unwrap().1.to_owned()
}

/// The layer digests of a pushed image, read back with skopeo.
fn layers_of(image: &str) -> Vec<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

fn has_blob(root: &Path, digest: &str) -> bool {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

#[test]
fn a_cache_exported_by_one_runner_builds_another_without_running_or_pulling_anything() {
    let registry = Registry::start();
    let p = Project::new(DOCKERFILE);
    let cache = format!("{}/cache:main", registry.addr);
    let to = format!("type=registry,ref={cache},mode=max");
    let app1 = format!("{}/app:1", registry.addr);
    let first = succeeded(&p.hoist(&["--cache-to", &to, "-t", &app1, "--push"]));
    assert!(
        steps_that_ran(&first).iter().any(|s| s == BUILDER_RUN),
        "{first}"
    );

    // Runner B: an empty root; the same commit; pushed to another repository.
    let app2 = format!("{}/app:2", registry.addr);
    let (out, root_b) = on_fresh_root(&p, &["--cache-from", &cache, "-t", &app2, "--push"]);
    let second = succeeded(&out);
    assert_eq!(steps_that_ran(&second), Vec::<String>::new(), "{second}");
    assert_eq!(pushed_digest(&first), pushed_digest(&second), "{second}");
    // Lazy: B pushed by mounting, and no layer's bytes ever came to it.
    for layer in layers_of(&app2) {
        assert!(!has_blob(root_b.path(), &layer), "layer {layer} was pulled");
    }
    // A build with no output pulls nothing either.
    let (out, root_nothing) = on_fresh_root(&p, &["--cache-from", &cache]);
    succeeded(&out);
    for layer in layers_of(&app2) {
        assert!(
            !has_blob(root_nothing.path(), &layer),
            "layer {layer} was pulled"
        );
    }
    let copied = tempfile::tempdir().unwrap();
    let status = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--quiet"])
        .arg(format!("docker://{app2}"))
        .arg(format!("oci:{}:app", copied.path().display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo could not copy the pushed image");

    // Runner C writes files: then the layers are pulled, and they hold what A built.
    let dest_a = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", dest_a.path().display());
    succeeded(&p.hoist(&["-o", &dest]));
    let dest_c = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", dest_c.path().display());
    let (out, _root_c) = on_fresh_root(&p, &["--cache-from", &cache, "-o", &dest]);
    let third = succeeded(&out);
    assert_eq!(steps_that_ran(&third), Vec::<String>::new(), "{third}");
    assert_eq!(built(dest_c.path()), built(dest_a.path()));

    // A build that has nothing new exports without sending a blob.
    let again = succeeded(&p.hoist(&["--cache-to", &to]));
    assert!(
        again.contains("0 blobs sent (0 bytes)"),
        "an unchanged export sent blobs:\n{again}"
    );
}

#[test]
fn mode_min_exports_the_final_image_steps_and_mode_max_every_stage() {
    let p = Project::new(DOCKERFILE);
    let min = tempfile::tempdir().unwrap();
    let max = tempfile::tempdir().unwrap();
    let original = tempfile::tempdir().unwrap();
    let to_min = format!("type=local,dest={}", min.path().display());
    let to_max = format!("type=local,dest={},mode=max", max.path().display());
    let out = format!("type=local,dest={}", original.path().display());
    succeeded(&p.hoist(&["--cache-to", &to_min, "--cache-to", &to_max, "-o", &out]));

    // A changed build-arg before the COPY: the COPY misses and needs the builder stage.
    for (cache, builder_cached) in [(&min, false), (&max, true)] {
        let from = format!("type=local,src={}", cache.path().display());
        let dest = tempfile::tempdir().unwrap();
        let out = format!("type=local,dest={}", dest.path().display());
        let (o, _root) = on_fresh_root(
            &p,
            &["--cache-from", &from, "--build-arg", "V=2", "-o", &out],
        );
        let stderr = succeeded(&o);
        let ran = steps_that_ran(&stderr);
        assert_eq!(
            !ran.iter().any(|s| s == BUILDER_RUN),
            builder_cached,
            "{stderr}"
        );
        assert!(ran.iter().any(|s| s.contains("RUN echo $V")), "{stderr}");
        assert!(
            !ran.iter().any(|s| s.contains("ADD rootfs.tar")),
            "{stderr}"
        );
        assert_eq!(built(dest.path()) == built(original.path()), builder_cached);
        assert_eq!(
            fs_err::read_to_string(dest.path().join("v")).unwrap(),
            "2\n"
        );
    }
}

#[test]
fn caches_are_read_in_order_and_one_that_is_missing_or_not_a_cache_is_a_warning() {
    let registry = Registry::start();
    let p = Project::new(DOCKERFILE);
    let image = format!("{}/app:1", registry.addr);
    let cache = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", cache.path().display());
    succeeded(&p.hoist(&["--cache-to", &to, "-t", &image, "--push"]));

    let missing = format!("{}/cache:no-such-branch", registry.addr);
    let from = format!("type=local,src={}", cache.path().display());
    let (out, _root) = on_fresh_root(
        &p,
        &[
            "--cache-from",
            &missing,
            "--cache-from",
            &image,
            "--cache-from",
            &from,
        ],
    );
    let stderr = succeeded(&out);
    assert_eq!(steps_that_ran(&stderr), Vec::<String>::new(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("warning: cache"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings[0].contains("cache:no-such-branch"), "{stderr}");
    assert!(warnings[1].contains("not a hoist cache"), "{stderr}");
}

/// Rewrites a local cache's document through `edit`, with its digests made right again, so
/// that only the edit is wrong.
fn edit_document(cache: &Path, edit: impl Fn(&mut serde_json::Value)) {
    use sha2::Digest as _;
    let blob = |d: &str| {
        cache
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| {
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        fs_err::write(blob(&digest), bytes).unwrap();
        (digest, bytes.len())
    };
    let index_path = cache.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&index_path).unwrap()).unwrap();
    let m_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs_err::read(blob(&m_digest)).unwrap()).unwrap();
    let d_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs_err::read(blob(&d_digest)).unwrap()).unwrap();
    edit(&mut doc);
    let (digest, size) = put(&serde_json::to_vec(&doc).unwrap());
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = put(&serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    fs_err::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_cache_of_another_format_version_is_a_warning_and_the_build_goes_on() {
    let p = Project::new(DOCKERFILE);
    let cache = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", cache.path().display());
    succeeded(&p.hoist(&["--cache-to", &to]));
    edit_document(cache.path(), |doc| doc["version"] = 99.into());
    let from = format!("type=local,src={}", cache.path().display());
    let (out, _root) = on_fresh_root(&p, &["--cache-from", &from]);
    let stderr = succeeded(&out);
    assert!(stderr.contains("format version 99"), "{stderr}");
    assert!(
        steps_that_ran(&stderr).iter().any(|s| s == BUILDER_RUN),
        "{stderr}"
    );
}

#[test]
fn layer_blobs_that_do_not_match_are_refused_and_their_steps_rebuilt() {
    let p = Project::new(DOCKERFILE);
    let cache = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", cache.path().display());
    let original = tempfile::tempdir().unwrap();
    let out = format!("type=local,dest={}", original.path().display());
    succeeded(&p.hoist(&["--cache-to", &to, "-o", &out]));
    // Every layer blob is replaced by other bytes under the same name.
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(cache.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        cache
            .path()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs_err::read(blob(manifest_digest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for layer in layers {
        fs_err::write(blob(layer["digest"].as_str().unwrap()), b"not the layer").unwrap();
    }

    let from = format!("type=local,src={}", cache.path().display());
    let dest = tempfile::tempdir().unwrap();
    let out = format!("type=local,dest={}", dest.path().display());
    let (o, root) = on_fresh_root(&p, &["--cache-from", &from, "-o", &out]);
    let stderr = succeeded(&o);
    assert!(stderr.contains("imported cache refused"), "{stderr}");
    // The warning names the blob's file in the cache.
    let named = format!("{}/blobs/sha256/", cache.path().display());
    assert!(stderr.contains(&named), "{stderr}");
    assert!(
        steps_that_ran(&stderr).iter().any(|s| s == BUILDER_RUN),
        "{stderr}"
    );
    assert_eq!(
        fs_err::read_to_string(dest.path().join("v")).unwrap(),
        "1\n"
    );
    assert!(!built(dest.path()).is_empty());
    // Nothing of the bad bytes was kept.
    for file in files_under(&root.path().join("blobs")) {
        assert_ne!(
            fs_err::read(&file).unwrap(),
            b"not the layer",
            "{}",
            file.display()
        );
    }
}

#[test]
fn an_export_that_fails_fails_the_build_unless_ignore_error_is_set() {
    let p = Project::new(DOCKERFILE);
    // A port nothing listens on.
    let nowhere = format!("127.0.0.1:{}/cache:main", support::free_port());
    let to = format!("type=registry,ref={nowhere}");
    let stderr = failed(&p.hoist(&["--cache-to", &to]));
    assert!(
        stderr.contains(&format!("exporting the cache to {nowhere}")),
        "{stderr}"
    );
    let to = format!("type=registry,ref={nowhere},ignore-error=true");
    let stderr = succeeded(&p.hoist(&["--cache-to", &to]));
    assert!(
        stderr.contains("warning:") && stderr.contains("ignore-error=true"),
        "{stderr}"
    );
}

#[test]
fn bad_cache_flags_are_refused_before_anything_runs() {
    let p = Project::new(DOCKERFILE);
    for (flag, spec, says) in [
        ("--cache-to", "type=gha", "expected registry or local"),
        (
            "--cache-to",
            "type=registry,ref=r/a,mode=all",
            "mode=all: expected min or max",
        ),
        ("--cache-to", "type=local,src=/x", "the keys it takes are"),
        ("--cache-from", "type=local", "needs src=DIR"),
    ] {
        let stderr = failed(&p.hoist(&[flag, spec]));
        assert!(stderr.contains(says), "{flag} {spec}: {stderr}");
        assert!(steps_that_ran(&stderr).is_empty(), "{stderr}");
    }
}

#[test]
fn a_protected_registry_takes_the_cache_with_credentials_and_without_them_it_is_a_warning() {
    let (registry, _auth) = support::htpasswd_registry("ci", "pa55word");
    let with = support::docker_config(&registry, "ci", "pa55word");
    let without = tempfile::tempdir().unwrap();
    let creds = [("DOCKER_CONFIG", with.path().to_str().unwrap())];
    let none = [("DOCKER_CONFIG", without.path().to_str().unwrap())];
    let p = Project::new(DOCKERFILE);
    let cache = format!("{}/cache:main", registry.addr);
    let to = format!("type=registry,ref={cache},mode=max");

    let (out, _a) = on_fresh_root_env(&p, &["--cache-to", &to], &none);
    let stderr = failed(&out);
    assert!(
        stderr.contains(&format!("exporting the cache to {cache}")),
        "{stderr}"
    );
    let (out, _a) = on_fresh_root_env(&p, &["--cache-to", &to], &creds);
    succeeded(&out);

    let (out, _b) = on_fresh_root_env(&p, &["--cache-from", &cache], &none);
    let stderr = succeeded(&out);
    assert!(
        stderr.contains(&format!("warning: cache {cache} not used")),
        "{stderr}"
    );
    assert!(
        steps_that_ran(&stderr).iter().any(|s| s == BUILDER_RUN),
        "{stderr}"
    );
    let (out, _b) = on_fresh_root_env(&p, &["--cache-from", &cache], &creds);
    let stderr = succeeded(&out);
    assert_eq!(steps_that_ran(&stderr), Vec::<String>::new(), "{stderr}");
}

#[test]
fn a_remote_build_exports_and_imports_through_the_server() {
    let registry = Registry::start();
    let dir = tempfile::Builder::new()
        .prefix("hoist-cache-")
        .tempdir_in("/tmp")
        .unwrap();
    let addr = format!("unix://{}", dir.path().join("hoist.sock").display());
    let p = Project::new(DOCKERFILE);
    let cache = format!("{}/cache:remote", registry.addr);
    let to = format!("type=registry,ref={cache},mode=max");
    {
        let server = Server::start(&["--addr", &addr]);
        let out = remote(&p, &addr, &["--cache-to", &to]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}\n{}", server.log());
        let local_dir = format!("type=local,dest={}", dir.path().join("c").display());
        let out = remote(&p, &addr, &["--cache-to", &local_dir]);
        let stderr = failed(&out);
        assert!(
            stderr.contains("type=local is not available for a remote build"),
            "{stderr}"
        );
    }
    // Another server on a fresh root.
    let server = Server::start(&["--addr", &addr]);
    let out = remote(&p, &addr, &["--cache-from", &cache]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}\n{}", server.log());
    assert_eq!(steps_that_ran(&stderr), Vec::<String>::new(), "{stderr}");
    // And a local build reads what the server wrote.
    let (out, _root) = on_fresh_root(&p, &["--cache-from", &cache]);
    let stderr = succeeded(&out);
    assert_eq!(steps_that_ran(&stderr), Vec::<String>::new(), "{stderr}");
}

fn remote(p: &Project, addr: &str, args: &[&str]) -> Output {
    let root = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .arg("build")
        .arg("--root")
        .arg(root.path())
        .args(["--progress=plain", "--remote", addr])
        .args(args)
        .arg(p.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn an_inline_cache_rides_in_the_pushed_image_and_serves_the_next_runner() {
    let registry = Registry::start();
    let p = Project::new(DOCKERFILE);
    let app1 = format!("{}/app:1", registry.addr);
    let first = succeeded(&p.hoist(&["--cache-to", "type=inline", "-t", &app1, "--push"]));
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config", "--raw"])
        .arg(format!("docker://{app1}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = config["io.hoist.cache.v1"]["records"].as_object().unwrap();
    assert!(!records.is_empty(), "{config}");

    // Another runner names the image itself as its cache; the final stage's steps hit.
    let app2 = format!("{}/app:2", registry.addr);
    // It writes the inline cache too, as a CI job does: the same one, so the same image.
    let (out, root_b) = on_fresh_root(
        &p,
        &[
            "--cache-from",
            &app1,
            "--cache-to",
            "type=inline",
            "-t",
            &app2,
            "--push",
        ],
    );
    let second = succeeded(&out);
    assert_eq!(steps_that_ran(&second), Vec::<String>::new(), "{second}");
    assert_eq!(pushed_digest(&first), pushed_digest(&second));
    for layer in layers_of(&app2) {
        assert!(!has_blob(root_b.path(), &layer), "layer {layer} was pulled");
    }
}

/// A RUN that keeps a file in a cache mount and says what it found there.
const MOUNT_DOCKERFILE: &str = "\
FROM scratch
ADD rootfs.tar /
ARG V=1
RUN --mount=type=cache,id=pkgs,target=/var/cache/pkgs \
    if [ -f /var/cache/pkgs/token ]; then echo \"found $(cat /var/cache/pkgs/token)\"; \
    else head -c 6 /dev/urandom | od -An -tx1 | tr -d ' ' > /var/cache/pkgs/token; \
    echo \"made $(cat /var/cache/pkgs/token)\"; fi; echo $V > /v
";

/// The token the cache-mount RUN printed (`made X` or `found X`).
fn token(stderr: &str, verb: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        l.split_once(&format!(" {verb} "))
            .map(|(_, t)| t.trim().to_owned())
    })
}

#[test]
fn cache_mounts_travel_with_mounts_true_and_stay_home_without_it() {
    let registry = Registry::start();
    let p = Project::new(MOUNT_DOCKERFILE);
    let cache = format!("{}/cache:mounts", registry.addr);
    let to = format!("type=registry,ref={cache},mode=max,mounts=true");
    let first = succeeded(&p.hoist(&["--cache-to", &to]));
    let made = token(&first, "made").unwrap_or_else(|| panic!("{first}"));
    assert!(first.contains("1 cache mounts"), "{first}");

    // Runner B: a changed build-arg reruns the step; its mount starts from A's.
    let (out, _b) = on_fresh_root(&p, &["--cache-from", &cache, "--build-arg", "V=2"]);
    let second = succeeded(&out);
    assert!(
        second.contains("restored from the imported cache"),
        "{second}"
    );
    assert_eq!(
        token(&second, "found").as_deref(),
        Some(made.as_str()),
        "{second}"
    );

    // Without mounts=true the mount is not exported: a fresh runner starts it empty.
    let plain = tempfile::tempdir().unwrap();
    let to = format!("type=local,dest={},mode=max", plain.path().display());
    succeeded(&p.hoist(&["--cache-to", &to]));
    let from = format!("type=local,src={}", plain.path().display());
    let (out, _c) = on_fresh_root(&p, &["--cache-from", &from, "--build-arg", "V=3"]);
    let third = succeeded(&out);
    assert!(token(&third, "made").is_some(), "{third}");

    // A mount over the size cap is left out with a warning.
    let capped = tempfile::tempdir().unwrap();
    let to = format!(
        "type=local,dest={},mounts=true,mounts-max=1",
        capped.path().display()
    );
    let capped_out = succeeded(&p.hoist(&["--cache-to", &to]));
    assert!(
        capped_out.contains("warning: cache mount \"pkgs\" left out"),
        "{capped_out}"
    );
}

#[test]
fn a_step_that_misses_an_imported_cache_says_what_changed_since_the_exporting_build() {
    let registry = Registry::start();
    let p = Project::new(DOCKERFILE);
    let cache = format!("{}/cache:why", registry.addr);
    let to = format!("type=registry,ref={cache},mode=max");
    succeeded(&p.hoist(&["--cache-to", &to, "--build-arg", "V=1.2"]));
    // Another runner, which never built this Dockerfile, with the build-arg changed.
    let (out, _b) = on_fresh_root(&p, &["--cache-from", &cache, "--build-arg", "V=1.3"]);
    let stderr = succeeded(&out);
    assert!(
        stderr.contains("miss: build-arg V changed (1.2 → 1.3)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("no earlier build of this step"),
        "{stderr}"
    );
}
