//! Images end to end: layers written into the local store, named in `index.json`, read back by
//! independent tools (umoci, skopeo), exported as OCI dir/tar, docker tar and rootfs, and
//! unpacked into snapshots that a real overlay mount stacks.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly too"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Overlay, fingerprint, run, tool};
use hoist_cache::oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    Os, RootFsBuilder,
};
use hoist_cache::{
    Compression, CompressionOptions, DiffOptions, DockerConfigExtras, Healthcheck, Image,
    ImageError, ImageStore, MediaTypes, SnapshotStore, append_layer, layer_descriptor,
    store_upperdir_layer, write_image,
};

/// A busybox root filesystem from the host's static busybox.
fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    fs_err::create_dir_all(&bin).unwrap();
    fs_err::copy(tool("busybox"), bin.join("busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    fs_err::create_dir_all(dir.join("etc")).unwrap();
    fs_err::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs_err::write(dir.join("etc/motd"), "base layer\n").unwrap();
    fs_err::create_dir_all(dir.join("tmp")).unwrap();
}

fn base_config() -> ImageConfiguration {
    ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .cmd(vec!["/bin/sh".to_string()])
                .env(vec!["PATH=/bin".to_string()])
                .build()
                .unwrap(),
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(Vec::<String>::new())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

struct Built {
    _dirs: Vec<tempfile::TempDir>,
    store: ImageStore,
    root: std::path::PathBuf,
    manifest: Descriptor,
}

/// Two layers: a busybox base, then an upperdir that adds a file, deletes `/etc/motd` (overlay
/// whiteout) and replaces `/tmp` (opaque).
fn build(compression: Compression, media: MediaTypes) -> Built {
    let state = tempfile::tempdir().unwrap();
    let store = ImageStore::open(state.path()).unwrap();
    let base = tempfile::tempdir().unwrap();
    busybox_rootfs(base.path());
    fs_err::write(base.path().join("tmp/lower-only"), "x").unwrap();
    let upper = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(upper.path().join("etc")).unwrap();
    fs_err::write(upper.path().join("etc/added"), "from layer two\n").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        upper.path().join("etc/motd"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs_err::create_dir_all(upper.path().join("tmp")).unwrap();
    rustix::fs::setxattr(
        upper.path().join("tmp"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs_err::write(upper.path().join("tmp/fresh"), "fresh").unwrap();

    let opts = DiffOptions {
        compression: CompressionOptions::new(compression),
        source_date_epoch: Some(1_700_000_000),
    };
    let mut config = base_config();
    let mut layers = Vec::new();
    for (dir, step) in [
        (base.path(), "ADD rootfs /"),
        (upper.path(), "RUN change things"),
    ] {
        let d = store_upperdir_layer(store.blobs(), dir, &opts).unwrap();
        append_layer(
            &mut config,
            &d.diff_id,
            HistoryBuilder::default().created_by(step).build().unwrap(),
        );
        layers.push(layer_descriptor(&d, media).unwrap());
    }
    let extras = DockerConfigExtras {
        healthcheck: Some(Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            retries: Some(3),
            ..Healthcheck::default()
        }),
        on_build: vec!["RUN echo child".into()],
        shell: vec!["/bin/sh".into(), "-c".into()],
        inline_cache: None,
    };
    let manifest = write_image(store.blobs(), &config, &extras, &layers, media, None).unwrap();
    let root = state.path().to_path_buf();
    Built {
        _dirs: vec![state, base, upper],
        store,
        root,
        manifest,
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn names_live_in_index_json_and_resolve() {
    let b = build(Compression::Gzip, MediaTypes::Oci);
    b.store.tag("example.com/app:v1", &b.manifest).unwrap();
    b.store.tag("latest", &b.manifest).unwrap();
    let index = json(&fs_err::read_to_string(b.root.join("index.json")).unwrap());
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, vec!["example.com/app:v1", "latest"]);
    assert_eq!(
        b.store.resolve("latest").unwrap().digest(),
        b.manifest.digest()
    );
    assert!(b.store.untag("latest").unwrap());
    assert!(b.store.resolve("latest").is_err());
    let image = Image::load(b.store.blobs(), &b.manifest).unwrap();
    assert_eq!(image.diff_ids().len(), 2);
    assert_eq!(image.config.history().as_ref().unwrap().len(), 2);
    assert_eq!(image.extras.shell, vec!["/bin/sh", "-c"]);
    assert_eq!(image.extras.on_build, vec!["RUN echo child"]);
    assert_eq!(image.extras.healthcheck.as_ref().unwrap().retries, Some(3));
}

#[test]
fn concurrent_taggers_lose_no_name() {
    let b = build(Compression::None, MediaTypes::Oci);
    let root = b.root.clone();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let root = root.clone();
            let manifest = b.manifest.clone();
            std::thread::spawn(move || {
                let store = ImageStore::open(&root).unwrap();
                store.tag(&format!("name{i}"), &manifest).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(b.store.list().unwrap().len(), 8);
}

#[test]
fn the_same_inputs_give_the_same_manifest_digest() {
    let a = build(Compression::Gzip, MediaTypes::Oci);
    let b = build(Compression::Gzip, MediaTypes::Oci);
    assert_eq!(a.manifest.digest(), b.manifest.digest());
}

#[test]
fn skopeo_inspects_the_store_and_both_archives() {
    let b = build(Compression::Gzip, MediaTypes::Oci);
    b.store.tag("v1", &b.manifest).unwrap();
    let skopeo = tool("skopeo");
    let layout = format!("oci:{}:v1", b.root.display());
    let out = json(&run(Command::new(&skopeo).args(["inspect", &layout])));
    let image = Image::load(b.store.blobs(), &b.manifest).unwrap();
    let want: Vec<String> = image
        .manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let got: Vec<String> = out["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        out["Digest"].as_str().unwrap(),
        b.manifest.digest().to_string()
    );
    let cfg = json(&run(
        Command::new(&skopeo).args(["inspect", "--config", "--raw", &layout])
    ));
    assert_eq!(cfg["config"]["Shell"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let oci_tar = dir.path().join("image.oci.tar");
    let f = fs_err::File::create(&oci_tar).unwrap();
    b.store
        .export_oci_tar(&[("v1".to_string(), b.manifest.clone())], f)
        .unwrap();
    let out = json(&run(Command::new(&skopeo)
        .arg("inspect")
        .arg(format!("oci-archive:{}:v1", oci_tar.display()))));
    assert_eq!(
        out["Digest"].as_str().unwrap(),
        b.manifest.digest().to_string()
    );

    let docker_tar = dir.path().join("image.docker.tar");
    let f = fs_err::File::create(&docker_tar).unwrap();
    b.store
        .export_docker_tar(&b.manifest, &["example.com/app:v1".to_string()], f)
        .unwrap();
    let out = json(&run(Command::new(&skopeo)
        .arg("inspect")
        .arg(format!("docker-archive:{}", docker_tar.display()))));
    let layers = out["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let cfg = json(&run(Command::new(&skopeo)
        .args(["inspect", "--config", "--raw"])
        .arg(format!("docker-archive:{}", docker_tar.display()))));
    assert_eq!(
        cfg["rootfs"]["diff_ids"],
        serde_json::json!(image.diff_ids())
    );

    // skopeo copies out of the OCI dir export into a fresh layout: a full read of every blob.
    let exported = dir.path().join("export");
    b.store
        .export_oci_dir(&[("v1".to_string(), b.manifest.clone())], &exported)
        .unwrap();
    let copy = dir.path().join("copy");
    run(Command::new(&skopeo)
        .arg("copy")
        .arg(format!("oci:{}:v1", exported.display()))
        .arg(format!("oci:{}:v1", copy.display())));
    assert!(copy.join("index.json").exists());
}

#[test]
fn umoci_unpacks_the_store_and_sees_whiteouts_applied() {
    let b = build(Compression::Gzip, MediaTypes::Oci);
    b.store.tag("v1", &b.manifest).unwrap();
    let bundle_parent = tempfile::tempdir().unwrap();
    let bundle = bundle_parent.path().join("bundle");
    run(Command::new(tool("umoci"))
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", b.root.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs_err::read_to_string(rootfs.join("etc/added")).unwrap(),
        "from layer two\n"
    );
    assert!(
        !rootfs.join("etc/motd").exists(),
        "whiteout applied by umoci"
    );
    assert!(
        !rootfs.join("tmp/lower-only").exists(),
        "opaque dir applied by umoci"
    );
    assert!(rootfs.join("tmp/fresh").exists());
    let cfg = json(&fs_err::read_to_string(bundle.join("config.json")).unwrap());
    assert_eq!(cfg["process"]["args"], serde_json::json!(["/bin/sh"]));

    // Our own flattened export must match what umoci produced.
    let ours = tempfile::tempdir().unwrap();
    b.store.export_rootfs(&b.manifest, ours.path()).unwrap();
    let mut a = fingerprint(ours.path());
    let mut u = fingerprint(&rootfs);
    for m in [&mut a, &mut u] {
        for n in m.values_mut() {
            // umoci stamps directories it creates implicitly with its own times.
            if n.kind == "dir" {
                n.mtime = 0;
            }
        }
    }
    assert_eq!(a, u);
}

#[test]
fn docker_media_types_are_available_and_zstd_needs_oci() {
    let b = build(Compression::Gzip, MediaTypes::Docker);
    b.store.tag("v1", &b.manifest).unwrap();
    // containers/image reads only OCI-typed manifests from an OCI layout, so the manifest is
    // read from the store here, and the docker tar export is what a Docker client consumes.
    let raw = b.store.blobs().read(b.manifest.digest()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let dir = tempfile::tempdir().unwrap();
    let docker_tar = dir.path().join("image.docker.tar");
    let f = fs_err::File::create(&docker_tar).unwrap();
    b.store
        .export_docker_tar(&b.manifest, &["app:v1".to_string()], f)
        .unwrap();
    let out = json(&run(Command::new(tool("skopeo"))
        .arg("inspect")
        .arg(format!("docker-archive:{}", docker_tar.display()))));
    assert_eq!(out["Layers"].as_array().unwrap().len(), 2);
    let fake = hoist_cache::LayerDigests {
        diff_id: hoist_cache::sha256_of(b"a"),
        digest: hoist_cache::sha256_of(b"b"),
        size: 1,
        uncompressed_size: 1,
        compression: Compression::Zstd,
    };
    assert!(matches!(
        layer_descriptor(&fake, MediaTypes::Docker),
        Err(ImageError::ZstdNeedsOci)
    ));
}

#[test]
fn zstd_images_inspect_and_flatten() {
    let b = build(Compression::Zstd, MediaTypes::Oci);
    b.store.tag("z", &b.manifest).unwrap();
    let raw = run(Command::new(tool("skopeo"))
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:z", b.root.display())));
    assert_eq!(
        json(&raw)["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let out = tempfile::tempdir().unwrap();
    b.store.export_rootfs(&b.manifest, out.path()).unwrap();
    assert!(out.path().join("etc/added").exists());
    assert!(!out.path().join("etc/motd").exists());
}

#[test]
fn snapshots_unpack_once_and_stack_to_the_flattened_rootfs() {
    let b = build(Compression::Gzip, MediaTypes::Oci);
    let snaps = SnapshotStore::new(&b.root);
    let image = Image::load(b.store.blobs(), &b.manifest).unwrap();
    let dirs = snaps.unpack_image(b.store.blobs(), &image).unwrap();
    assert_eq!(dirs.len(), 2);
    // A second unpack is a lookup: the directory (and its inode) stay as they were.
    let marker = dirs[0].join("etc/passwd");
    let ino = std::os::unix::fs::MetadataExt::ino(&fs_err::metadata(&marker).unwrap());
    let again = snaps.unpack_image(b.store.blobs(), &image).unwrap();
    assert_eq!(again, dirs);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs_err::metadata(&marker).unwrap()),
        ino
    );

    let flat = tempfile::tempdir().unwrap();
    b.store.export_rootfs(&b.manifest, flat.path()).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let lowers: Vec<&Path> = dirs.iter().rev().map(std::path::PathBuf::as_path).collect();
    let m = Overlay::mount(&lowers, None, mnt.path());
    let mut merged = fingerprint(&m.merged);
    let mut flat_fp = fingerprint(flat.path());
    for fp in [&mut merged, &mut flat_fp] {
        for n in fp.values_mut() {
            n.xattrs.remove("trusted.overlay.opaque");
        }
    }
    assert_eq!(merged, flat_fp);
}

#[test]
fn a_layer_whose_diff_id_lies_is_not_snapshotted() {
    let b = build(Compression::Gzip, MediaTypes::Oci);
    let image = Image::load(b.store.blobs(), &b.manifest).unwrap();
    let layer = &image.manifest.layers()[0];
    let wrong = hoist_cache::sha256_of(b"not the diff id");
    let snaps = SnapshotStore::new(&b.root);
    let err = snaps.unpack(b.store.blobs(), layer, &wrong).unwrap_err();
    assert!(err.to_string().contains(&wrong.to_string()), "{err}");
    assert!(snaps.get(&wrong).is_none());
    let leftovers: Vec<_> = fs_err::read_dir(b.root.join("snapshots/sha256"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "temp dir cleaned up");
}
