//! The image commands as a user chains them: build a base image from a busybox rootfs tar,
//! push it, pull it back into a fresh store, run it with `hoist run`, and export it for
//! skopeo and umoci. Needs root and a real registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::Registry;

fn hoist(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .env("HOIST_ROOT", root)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_busybox_base_image_round_trips_and_runs() {
    let registry = Registry::start();
    let context = tempfile::tempdir().unwrap();
    let status =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh"))
            .arg(context.path().join("rootfs.tar"))
            .status()
            .unwrap();
    assert!(status.success());
    fs_err::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\nENV GREETING=hi\nWORKDIR /home\nENTRYPOINT [\"sh\", \"-c\"]\nCMD [\"echo $GREETING from $(pwd)\"]\n",
    )
    .unwrap();
    let image = format!("{}/base/busybox:1", registry.addr);

    // Build and push from one store…
    let first = tempfile::tempdir().unwrap();
    ok(&hoist(
        first.path(),
        &[
            "build",
            "--progress=plain",
            "-t",
            &image,
            "--push",
            context.path().to_str().unwrap(),
        ],
    ));

    // …pull into a fresh one, and find it listed.
    let second = tempfile::tempdir().unwrap();
    let pinned = ok(&hoist(second.path(), &["pull", &image]));
    assert!(
        pinned.trim().starts_with(&format!("{image}@sha256:")),
        "{pinned}"
    );
    let listed = ok(&hoist(second.path(), &["images"]));
    assert!(listed.contains(&image), "{listed}");

    // Run it: ENTRYPOINT + CMD + ENV + WORKDIR from the image; a command replaces CMD; the
    // exit code passes through; -e, -u and -w override.
    assert_eq!(
        ok(&hoist(second.path(), &["run", "--rm", &image])),
        "hi from /home\n"
    );
    let out = hoist(second.path(), &["run", &image, "exit 42"]);
    assert_eq!(
        out.status.code(),
        Some(42),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ok(&hoist(
        second.path(),
        &[
            "run",
            "-e",
            "GREETING=bye",
            "-u",
            "nobody",
            "-w",
            "/tmp",
            &image,
            "echo $GREETING $(id -un) $(pwd)",
        ],
    ));
    assert_eq!(out, "bye nobody /tmp\n");

    // Export: skopeo reads the OCI layout and the docker tar; umoci unpacks the layout.
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("layout");
    let docker_tar = out_dir.path().join("image.tar");
    ok(&hoist(
        second.path(),
        &[
            "save",
            "-o",
            &format!("type=oci,dest={}", layout.display()),
            &image,
        ],
    ));
    ok(&hoist(
        second.path(),
        &[
            "save",
            "-o",
            &format!("type=docker,dest={}", docker_tar.display()),
            &image,
        ],
    ));
    for target in [
        format!("oci:{}:{image}", layout.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ] {
        let inspect = Command::new("skopeo")
            .args(["inspect", &target])
            .output()
            .expect("skopeo (apt-get install skopeo)");
        assert!(
            inspect.status.success(),
            "skopeo inspect {target}: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
    }
    let bundle = out_dir.path().join("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{image}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci (apt-get install umoci)");
    assert!(
        unpack.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    // Push from the local store under another name: the blobs are already there.
    let copy = format!("{}/base/copy:2", registry.addr);
    let pushed = ok(&hoist(second.path(), &["push", &image, &copy]));
    assert!(
        pushed.trim().starts_with(&format!("{copy}@sha256:")),
        "{pushed}"
    );
}

/// `hoist` with `args`, in a mount namespace of its own where `/sys/fs/cgroup` is an empty
/// tmpfs: a machine without cgroup controllers, or a container that does not expose them.
fn hoist_without_cgroups(root: &Path, args: &[&str]) -> Output {
    let script = format!(
        "mount -t tmpfs none /sys/fs/cgroup && exec {} \"$@\"",
        env!("CARGO_BIN_EXE_hoist")
    );
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "hoist",
        ])
        .args(args)
        .env("HOIST_ROOT", root)
        .output()
        .unwrap()
}

#[test]
fn pull_and_push_need_no_sandbox_and_no_build_index() {
    let registry = Registry::start();
    let p = support::Project::new("FROM scratch\nADD rootfs.tar /\nCMD [\"true\"]\n");
    let image = format!("{}/plain/base:1", registry.addr);
    ok(&hoist(
        p.root.path(),
        &[
            "build",
            "--progress=plain",
            "-t",
            &image,
            "--push",
            p.dir.path().to_str().unwrap(),
        ],
    ));
    // The namespace really has no cgroups: a build there cannot set up its sandbox.
    let fresh = tempfile::tempdir().unwrap();
    let build = hoist_without_cgroups(
        fresh.path(),
        &["build", "--progress=plain", p.dir.path().to_str().unwrap()],
    );
    assert!(!build.status.success(), "a build ran without cgroups");
    let fresh = tempfile::tempdir().unwrap();
    let pulled = ok(&hoist_without_cgroups(fresh.path(), &["pull", &image]));
    assert!(pulled.contains("@sha256:"), "{pulled}");
    let copy = format!("{}/plain/copy:1", registry.addr);
    let pushed = ok(&hoist_without_cgroups(
        fresh.path(),
        &["push", &image, &copy],
    ));
    assert!(pushed.starts_with(&format!("{copy}@sha256:")), "{pushed}");
    assert!(
        !fresh.path().join("cache.redb").exists(),
        "pull or push opened the build index"
    );
}

/// The media types of an image's layers in the registry, bottom first, as skopeo reads them.
fn layer_media_types(image: &str) -> Vec<String> {
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    let manifest: serde_json::Value = serde_json::from_slice(&ok(&raw).into_bytes()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_owned())
        .collect()
}

/// buildx's `-o` names the image, pushes it and picks zstd; a base image pulled as gzip keeps
/// its layer under the new zstd one, and podman pulls and runs the mixed image.
#[test]
fn zstd_layers_pushed_with_buildx_output_syntax_run_under_podman() {
    let registry = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let base_ctx = tempfile::tempdir().unwrap();
    let status =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/busybox-rootfs.sh"))
            .arg(base_ctx.path().join("rootfs.tar"))
            .status()
            .unwrap();
    assert!(status.success());
    fs_err::write(
        base_ctx.path().join("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\n",
    )
    .unwrap();
    let base = format!("{}/zstd/base:1", registry.addr);
    ok(&hoist(
        root.path(),
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!("type=image,name={base},push=true"),
            base_ctx.path().to_str().unwrap(),
        ],
    ));
    assert_eq!(
        layer_media_types(&base),
        ["application/vnd.oci.image.layer.v1.tar+gzip"]
    );

    let app_ctx = tempfile::tempdir().unwrap();
    fs_err::write(
        app_ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo zstd-layer > /made\nCMD [\"cat\", \"/made\"]\n"),
    )
    .unwrap();
    let (one, two) = (
        format!("{}/zstd/app:1", registry.addr),
        format!("{}/zstd/app:2", registry.addr),
    );
    // A fresh store: the base comes back from the registry as its gzip blob.
    let app_root = tempfile::tempdir().unwrap();
    ok(&hoist(
        app_root.path(),
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!("type=registry,\"name={one},{two}\",compression=zstd,compression-level=19"),
            app_ctx.path().to_str().unwrap(),
        ],
    ));
    for image in [&one, &two] {
        assert_eq!(
            layer_media_types(image),
            [
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar+zstd"
            ],
            "{image}"
        );
    }

    // force-compression=true compresses the base layer again too; annotations reach the
    // manifest.
    let three = format!("{}/zstd/app:3", registry.addr);
    ok(&hoist(
        app_root.path(),
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!(
                "type=registry,name={three},compression=zstd,force-compression=true,\
                 annotation.org.opencontainers.image.title=zapp"
            ),
            app_ctx.path().to_str().unwrap(),
        ],
    ));
    assert_eq!(
        layer_media_types(&three),
        [
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{three}"))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"], "zapp",
        "{manifest}"
    );
    // The recompressed base is the same filesystem: podman runs it.
    let forced = Command::new("podman")
        .args(["run", "--rm", "--tls-verify=false", "--pull=always", &three])
        .output()
        .expect("podman (apt-get install podman)");
    assert_eq!(String::from_utf8_lossy(&forced.stdout), "zstd-layer\n");

    let run = Command::new("podman")
        .args(["run", "--rm", "--tls-verify=false", "--pull=always", &two])
        .output()
        .expect("podman (apt-get install podman)");
    assert!(
        run.status.success(),
        "podman run {two}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "zstd-layer\n");
}
