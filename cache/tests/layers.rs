//! Layers end to end: diff a tree, apply it back, stack snapshots under a real overlay mount,
//! and refuse hostile archives. These tests run as root (mknod, chown, trusted xattrs, mount).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly too"
)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::{Overlay, RawTar, fingerprint, rich_tree, run, tar_names, tool, xattrs};
use hoist_cache::{
    ApplyError, ApplyOptions, Change, Compression, CompressionOptions, DiffOptions, WhiteoutMode,
    apply_layer, diff_changes, diff_upperdir,
};

fn opts(c: Compression) -> DiffOptions {
    DiffOptions {
        compression: CompressionOptions::new(c),
        source_date_epoch: None,
    }
}

fn overlay_opts() -> ApplyOptions {
    ApplyOptions::default()
}

#[test]
fn apply_of_diff_preserves_every_attribute_for_each_codec() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let want = fingerprint(src.path());
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let (blob, d) = diff_upperdir(src.path(), Vec::new(), &opts(c)).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let report = apply_layer(&blob[..], dst.path(), &overlay_opts()).unwrap();
        assert_eq!(
            report.diff_id, d.diff_id,
            "{c:?}: apply sees the same diffID"
        );
        assert_eq!(report.compression, c);
        let got = fingerprint(dst.path());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, v) in &want {
            assert_eq!(&got[k], v, "{c:?}: {k}");
        }
    }
    // Spot checks a user would make by hand.
    let (blob, _) = diff_upperdir(src.path(), Vec::new(), &opts(Compression::Gzip)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    apply_layer(&blob[..], dst.path(), &overlay_opts()).unwrap();
    let tool_mode = fs_err::metadata(dst.path().join("usr/bin/tool")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&tool_mode.permissions()) & 0o7777,
        0o4755
    );
    assert_eq!(
        xattrs(&dst.path().join("usr/bin/ping"))["security.capability"],
        common::cap_net_bind_service()
    );
    let getcap = Command::new("stat")
        .arg("-c")
        .arg("%u:%g")
        .arg(dst.path().join("etc/bigid"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&getcap.stdout).trim(),
        "3000000:4000000"
    );
}

#[test]
fn gnu_tar_reads_the_layer_and_gzip_verifies_it() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let (blob, _) = diff_upperdir(src.path(), Vec::new(), &opts(Compression::Gzip)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("layer.tar.gz");
    fs_err::write(&f, &blob).unwrap();
    run(Command::new(tool("gzip")).arg("-t").arg(&f));
    let listing = run(Command::new(tool("tar")).arg("-tvzf").arg(&f));
    assert!(listing.contains("usr/bin/tool"), "{listing}");
    assert!(
        listing.contains(&"n".repeat(120)),
        "long name via PAX: {listing}"
    );
    let (zblob, _) = diff_upperdir(src.path(), Vec::new(), &opts(Compression::Zstd)).unwrap();
    let z = dir.path().join("layer.tar.zst");
    fs_err::write(&z, &zblob).unwrap();
    run(Command::new(tool("zstd")).arg("-t").arg(&z));
}

/// Archives made by GNU tar (GNU long-name headers, a "./" root entry, its xattr records) apply
/// to the same tree: what `ADD rootfs.tar /` and hand-made base layers look like.
#[test]
fn gnu_tar_archives_apply_to_the_same_tree() {
    let src = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let dir = tempfile::tempdir().unwrap();
    for (format, flag) in [("gnu", "z"), ("posix", "")] {
        let archive = dir.path().join(format!("rootfs-{format}.tar"));
        run(Command::new(tool("tar"))
            .arg(format!("--format={format}"))
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner"])
            .arg(format!("-c{flag}f"))
            .arg(&archive)
            .arg("-C")
            .arg(src.path())
            .arg("."));
        let dst = tempfile::tempdir().unwrap();
        let f = fs_err::File::open(&archive).unwrap();
        apply_layer(f, dst.path(), &overlay_opts()).unwrap();
        let want = fingerprint(src.path());
        let got = fingerprint(dst.path());
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{format}"
        );
        for (k, v) in &want {
            let mut g = got[k].clone();
            let mut w = v.clone();
            if format == "gnu" {
                // The GNU format has no place for xattrs; GNU tar drops them there.
                g.xattrs.clear();
                w.xattrs.clear();
            }
            assert_eq!(g, w, "{format}: {k}");
        }
    }
}

#[test]
fn the_same_tree_twice_gives_the_same_digests() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    rich_tree(a.path());
    // Build b in another order, so inode numbers and directory order on disk differ.
    fs_err::create_dir_all(b.path().join("zz-first")).unwrap();
    rich_tree(b.path());
    fs_err::remove_dir(b.path().join("zz-first")).unwrap();
    common::set_mtime(b.path(), 1);
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let (_, da) = diff_upperdir(a.path(), Vec::new(), &opts(c)).unwrap();
        let (_, db) = diff_upperdir(b.path(), Vec::new(), &opts(c)).unwrap();
        assert_eq!(da.diff_id, db.diff_id, "{c:?}");
        assert_eq!(da.digest, db.digest, "{c:?}");
    }
    // Thread count must not change the blob either.
    let one = DiffOptions {
        compression: CompressionOptions {
            compression: Compression::Gzip,
            level: Some(6),
            threads: 1,
        },
        source_date_epoch: None,
    };
    let four = DiffOptions {
        compression: CompressionOptions {
            compression: Compression::Gzip,
            level: Some(6),
            threads: 4,
        },
        source_date_epoch: None,
    };
    let (_, d1) = diff_upperdir(a.path(), Vec::new(), &one).unwrap();
    let (_, d4) = diff_upperdir(a.path(), Vec::new(), &four).unwrap();
    assert_eq!(d1.digest, d4.digest);
    let zstd = |threads| DiffOptions {
        compression: CompressionOptions {
            compression: Compression::Zstd,
            level: None,
            threads,
        },
        source_date_epoch: None,
    };
    let (_, z1) = diff_upperdir(a.path(), Vec::new(), &zstd(1)).unwrap();
    let (_, z3) = diff_upperdir(a.path(), Vec::new(), &zstd(3)).unwrap();
    assert_eq!(
        z1.digest, z3.digest,
        "zstd blob independent of worker count"
    );
}

#[test]
fn clamping_on_disk_sets_later_times_to_the_epoch_without_following_symlinks() {
    use std::os::unix::fs::MetadataExt;
    let a = tempfile::tempdir().unwrap();
    let dir = a.path().join("d");
    fs_err::create_dir(&dir).unwrap();
    fs_err::write(dir.join("new"), b"x").unwrap();
    fs_err::write(a.path().join("old"), b"y").unwrap();
    // A symlink to a file outside whose own time must stay as it is.
    let outside = tempfile::NamedTempFile::new().unwrap();
    common::set_mtime(outside.path(), 2_000_000_000);
    std::os::unix::fs::symlink(outside.path(), dir.join("link")).unwrap();
    common::set_mtime(&dir.join("new"), 2_000_000_000);
    common::set_mtime(&a.path().join("old"), 1_000);
    hoist_cache::clamp_mtimes(a.path(), 1_700_000_000).unwrap();
    let mtime = |p: &Path| fs_err::symlink_metadata(p).unwrap().mtime();
    assert_eq!(mtime(&dir.join("new")), 1_700_000_000);
    assert_eq!(mtime(&dir), 1_700_000_000);
    assert_eq!(mtime(&dir.join("link")), 1_700_000_000);
    assert_eq!(mtime(&a.path().join("old")), 1_000);
    assert_eq!(mtime(outside.path()), 2_000_000_000);
    // The tar of the clamped tree needs no epoch to be the same.
    let plain = diff_upperdir(a.path(), Vec::new(), &opts(Compression::None)).unwrap();
    let o = DiffOptions {
        source_date_epoch: Some(1_700_000_000),
        ..opts(Compression::None)
    };
    let clamped = diff_upperdir(a.path(), Vec::new(), &o).unwrap();
    assert_eq!(plain.0, clamped.0);
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let a = tempfile::tempdir().unwrap();
    fs_err::write(a.path().join("new"), b"x").unwrap();
    fs_err::write(a.path().join("old"), b"y").unwrap();
    common::set_mtime(&a.path().join("new"), 2_000_000_000);
    common::set_mtime(&a.path().join("old"), 1_000);
    let o = DiffOptions {
        source_date_epoch: Some(1_700_000_000),
        ..opts(Compression::None)
    };
    let (blob, _) = diff_upperdir(a.path(), Vec::new(), &o).unwrap();
    let mut ar = tar::Archive::new(&blob[..]);
    let times: Vec<(String, u64)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        times,
        vec![
            ("new".to_string(), 1_700_000_000),
            ("old".to_string(), 1_000)
        ]
    );
    // Headers are normalized: no user or group names.
    let mut ar = tar::Archive::new(&blob[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().username_bytes(), Some(&b""[..]));
        assert_eq!(e.header().groupname_bytes(), Some(&b""[..]));
    }
}

#[test]
fn overlay_whiteouts_become_oci_whiteouts_and_back() {
    let upper = tempfile::tempdir().unwrap();
    let u = upper.path();
    fs_err::create_dir_all(u.join("etc/opaque")).unwrap();
    fs_err::write(u.join("etc/opaque/kept"), b"new").unwrap();
    rustix::fs::setxattr(
        u.join("etc/opaque"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        u.join("etc/gone"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    let (blob, _) = diff_upperdir(u, Vec::new(), &opts(Compression::Gzip)).unwrap();
    assert_eq!(
        tar_names(&blob),
        vec![
            "etc/",
            "etc/.wh.gone",
            "etc/opaque/",
            "etc/opaque/.wh..wh..opq",
            "etc/opaque/kept"
        ]
    );
    // The overlay xattr itself is bookkeeping, not image content.
    let mut ar = tar::Archive::new(hoist_cache::decompress(&blob[..]).unwrap().1);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for r in pax {
                assert!(!r.unwrap().key().unwrap().contains("overlay"));
            }
        }
    }
    let snap = tempfile::tempdir().unwrap();
    apply_layer(&blob[..], snap.path(), &overlay_opts()).unwrap();
    let gone = fs_err::symlink_metadata(snap.path().join("etc/gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    assert_eq!(std::os::unix::fs::MetadataExt::rdev(&gone), 0);
    assert_eq!(
        xattrs(&snap.path().join("etc/opaque"))["trusted.overlay.opaque"],
        b"y"
    );
    assert!(!snap.path().join("etc/opaque/.wh..wh..opq").exists());
}

/// The real test of overlay form: two snapshots stacked as lowerdirs by the kernel.
#[test]
fn snapshots_stack_as_overlay_lowerdirs() {
    let base = tempfile::tempdir().unwrap();
    let b = base.path();
    fs_err::create_dir_all(b.join("etc/conf.d")).unwrap();
    fs_err::write(b.join("etc/passwd"), b"root").unwrap();
    fs_err::write(b.join("etc/shadow"), b"secret").unwrap();
    fs_err::write(b.join("etc/conf.d/old"), b"old").unwrap();
    let l1 = RawTar::default()
        .dir("etc/")
        .file("etc/passwd", b"root")
        .file("etc/shadow", b"secret")
        .dir("etc/conf.d/")
        .file("etc/conf.d/old", b"old")
        .finish();
    let l2 = RawTar::default()
        .dir("etc/")
        .file("etc/.wh.shadow", b"")
        .dir("etc/conf.d/")
        .file("etc/conf.d/.wh..wh..opq", b"")
        .file("etc/conf.d/new", b"new")
        .finish();
    let s1 = tempfile::tempdir().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    apply_layer(&l1[..], s1.path(), &overlay_opts()).unwrap();
    apply_layer(&l2[..], s2.path(), &overlay_opts()).unwrap();
    let merged = tempfile::tempdir().unwrap();
    {
        let m = Overlay::mount(&[s2.path(), s1.path()], None, merged.path());
        let root = &m.merged;
        assert_eq!(fs_err::read(root.join("etc/passwd")).unwrap(), b"root");
        assert!(
            !root.join("etc/shadow").exists(),
            "whiteout hides the lower file"
        );
        let listing: Vec<String> = fs_err::read_dir(root.join("etc/conf.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            listing,
            vec!["new".to_string()],
            "opaque dir hides lower contents"
        );
    }
    // The flattened form applies the same layers by deletion.
    let flat = tempfile::tempdir().unwrap();
    let remove = ApplyOptions {
        whiteouts: WhiteoutMode::Remove,
        expected_diff_id: None,
        ..ApplyOptions::default()
    };
    apply_layer(&l1[..], flat.path(), &remove).unwrap();
    apply_layer(&l2[..], flat.path(), &remove).unwrap();
    assert!(!flat.path().join("etc/shadow").exists());
    assert!(!flat.path().join("etc/conf.d/old").exists());
    assert_eq!(
        fs_err::read(flat.path().join("etc/conf.d/new")).unwrap(),
        b"new"
    );
}

/// Changes made through a real overlay mount, diffed from its upperdir and applied to a copy of
/// the lower tree, reproduce the merged view exactly.
#[test]
fn upperdir_of_a_real_overlay_diffs_to_the_merged_view() {
    let lower = tempfile::tempdir().unwrap();
    rich_tree(lower.path());
    let upper = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let merged_fp;
    {
        let m = Overlay::mount(
            &[lower.path()],
            Some((upper.path(), work.path())),
            mnt.path(),
        );
        let r = &m.merged;
        fs_err::remove_file(r.join("etc/owned")).unwrap();
        fs_err::remove_dir_all(r.join("etc/deep")).unwrap();
        fs_err::create_dir(r.join("etc/deep")).unwrap(); // becomes opaque
        fs_err::write(r.join("etc/deep/fresh"), b"fresh").unwrap();
        fs_err::write(r.join("usr/bin/tool"), b"rewritten").unwrap();
        fs_err::write(r.join("new-top"), b"top").unwrap();
        let mut all = Vec::new();
        for p in [
            "etc/deep/fresh",
            "usr/bin/tool",
            "new-top",
            "etc/deep",
            "usr/bin",
            "usr",
            "etc",
            "",
        ] {
            all.push(r.join(p));
        }
        for (i, p) in all.iter().enumerate() {
            common::set_mtime(p, 1_600_000_000 + i as i64);
        }
        merged_fp = fingerprint(r);
    }
    assert_eq!(
        xattrs(&upper.path().join("etc/deep"))["trusted.overlay.opaque"],
        b"y"
    );
    let (blob, _) = diff_upperdir(upper.path(), Vec::new(), &opts(Compression::Zstd)).unwrap();
    let names = tar_names(&blob);
    assert!(names.contains(&"etc/.wh.owned".to_string()), "{names:?}");
    assert!(
        names.contains(&"etc/deep/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    // Apply onto a copy of lower in remove mode: the result is the merged view.
    let flat = tempfile::tempdir().unwrap();
    let (lblob, _) = diff_upperdir(lower.path(), Vec::new(), &opts(Compression::None)).unwrap();
    let remove = ApplyOptions {
        whiteouts: WhiteoutMode::Remove,
        expected_diff_id: None,
        ..ApplyOptions::default()
    };
    apply_layer(&lblob[..], flat.path(), &remove).unwrap();
    apply_layer(&blob[..], flat.path(), &remove).unwrap();
    let mut got = fingerprint(flat.path());
    let mut want = merged_fp;
    // overlayfs reports the root's mtime from the upper dir we did not diff; compare contents.
    got.remove("");
    want.remove("");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        let mut g = got[k].clone();
        let mut w = v.clone();
        // Hardlink groups broken by copy-up are expected; content and metadata must match.
        g.link_group = None;
        w.link_group = None;
        g.xattrs.remove("trusted.overlay.opaque");
        w.xattrs.remove("trusted.overlay.opaque");
        assert_eq!(g, w, "{k}");
    }
}

#[test]
fn upperdirs_with_redirects_are_refused_not_silently_diffed() {
    let upper = tempfile::tempdir().unwrap();
    fs_err::create_dir(upper.path().join("moved")).unwrap();
    rustix::fs::setxattr(
        upper.path().join("moved"),
        "trusted.overlay.redirect",
        b"/orig",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let err = diff_upperdir(upper.path(), Vec::new(), &opts(Compression::None)).unwrap_err();
    assert!(
        matches!(err, hoist_cache::DiffError::OverlayFeature { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("redirect_dir=off"));
}

#[test]
fn change_lists_write_sorted_entries_and_whiteouts() {
    let root = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(root.path().join("app/src")).unwrap();
    fs_err::write(root.path().join("app/src/main.rs"), b"fn main() {}").unwrap();
    fs_err::write(root.path().join("app/Cargo.toml"), b"[package]").unwrap();
    let changes = vec![
        Change::Upsert("app/src/main.rs".into()),
        Change::Delete("app/old.txt".into()),
        Change::Upsert("app".into()),
        Change::Upsert("app/Cargo.toml".into()),
        Change::Upsert("app/src".into()),
        Change::Upsert("./app/src/main.rs".into()),
    ];
    let (blob, d) =
        diff_changes(root.path(), &changes, Vec::new(), &opts(Compression::Gzip)).unwrap();
    assert_eq!(
        tar_names(&blob),
        vec![
            "app/",
            "app/.wh.old.txt",
            "app/Cargo.toml",
            "app/src/",
            "app/src/main.rs"
        ]
    );
    let mut reversed = changes.clone();
    reversed.reverse();
    let (_, d2) =
        diff_changes(root.path(), &reversed, Vec::new(), &opts(Compression::Gzip)).unwrap();
    assert_eq!(
        d.digest, d2.digest,
        "order of the change list does not matter"
    );
    let bad = diff_changes(
        root.path(),
        &[Change::Upsert("../etc".into())],
        Vec::new(),
        &opts(Compression::None),
    );
    assert!(matches!(
        bad,
        Err(hoist_cache::DiffError::InvalidPath { .. })
    ));
}

#[test]
fn expected_diff_id_is_checked() {
    let src = tempfile::tempdir().unwrap();
    fs_err::write(src.path().join("f"), b"x").unwrap();
    let (blob, d) = diff_upperdir(src.path(), Vec::new(), &opts(Compression::Gzip)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let ok = ApplyOptions {
        expected_diff_id: Some(d.diff_id.clone()),
        ..ApplyOptions::default()
    };
    apply_layer(&blob[..], dst.path(), &ok).unwrap();
    let wrong = ApplyOptions {
        expected_diff_id: Some(d.digest.clone()),
        ..ApplyOptions::default()
    };
    let err = apply_layer(&blob[..], tempfile::tempdir().unwrap().path(), &wrong).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&d.digest.to_string()) && msg.contains(&d.diff_id.to_string()),
        "{msg}"
    );
}

#[test]
fn a_hardlink_to_a_lower_layer_file_becomes_a_copy_in_the_snapshot() {
    let l1 = RawTar::default()
        .dir("etc/")
        .entry("etc/data", b'0', "", b"shared bytes", 0o640)
        .finish();
    let l2 = RawTar::default()
        .dir("bin/")
        .hardlink("bin/link", "etc/data")
        .finish();
    let s1 = tempfile::tempdir().unwrap();
    let s2 = tempfile::tempdir().unwrap();
    apply_layer(&l1[..], s1.path(), &overlay_opts()).unwrap();
    let alone = tempfile::tempdir().unwrap();
    let err = apply_layer(&l2[..], alone.path(), &overlay_opts()).unwrap_err();
    assert!(err.to_string().contains("bin/link"), "{err}");
    let with_lowers = ApplyOptions {
        lower_dirs: vec![s1.path().to_path_buf()],
        ..ApplyOptions::default()
    };
    apply_layer(&l2[..], s2.path(), &with_lowers).unwrap();
    let got = fingerprint(s2.path());
    let want = fingerprint(s1.path());
    let (mut g, w) = (got["bin/link"].clone(), want["etc/data"].clone());
    g.link_group = None;
    assert_eq!(g, w, "content, owner, mode and mtime copied");
    let mnt = tempfile::tempdir().unwrap();
    let m = Overlay::mount(&[s2.path(), s1.path()], None, mnt.path());
    assert_eq!(
        fs_err::read(m.merged.join("bin/link")).unwrap(),
        b"shared bytes"
    );
}

#[test]
fn flattening_a_whiteout_in_a_missing_directory_creates_nothing() {
    let tar = RawTar::default()
        .file("gone/.wh.x", b"")
        .file("gone2/.wh..wh..opq", b"")
        .finish();
    let dst = tempfile::tempdir().unwrap();
    let remove = ApplyOptions {
        whiteouts: WhiteoutMode::Remove,
        expected_diff_id: None,
        ..ApplyOptions::default()
    };
    apply_layer(&tar[..], dst.path(), &remove).unwrap();
    assert_eq!(fs_err::read_dir(dst.path()).unwrap().count(), 0);
}

mod hostile {
    use super::*;

    /// Applies `tar` into a fresh root inside a sandbox dir and returns the error; asserts that
    /// nothing appeared next to the root.
    fn refuse(tar: &[u8]) -> ApplyError {
        let sandbox = tempfile::tempdir().unwrap();
        let root = sandbox.path().join("root");
        let outside = sandbox.path().join("outside");
        fs_err::create_dir_all(&outside).unwrap();
        fs_err::write(outside.join("victim"), b"untouched").unwrap();
        let err = apply_layer(tar, &root, &overlay_opts()).unwrap_err();
        let mut names: Vec<_> = fs_err::read_dir(sandbox.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["outside", "root"],
            "nothing written beside the root"
        );
        let outside_names: Vec<_> = fs_err::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside_names.len(), 1, "nothing written outside");
        assert_eq!(fs_err::read(outside.join("victim")).unwrap(), b"untouched");
        err
    }

    fn assert_names(err: &ApplyError, entry: &str) {
        let msg = err.to_string();
        assert!(
            msg.contains(entry),
            "error {msg:?} should name entry {entry:?}"
        );
    }

    #[test]
    fn dotdot_is_refused() {
        let err = refuse(&RawTar::default().file("../outside/evil", b"x").finish());
        assert!(matches!(err, ApplyError::UnsafePath { .. }), "{err}");
        assert_names(&err, "../outside/evil");
        let err = refuse(
            &RawTar::default()
                .file("a/../../outside/evil", b"x")
                .finish(),
        );
        assert_names(&err, "a/../../outside/evil");
    }

    #[test]
    fn absolute_paths_are_refused() {
        let err = refuse(&RawTar::default().file("/tmp/evil", b"x").finish());
        assert!(matches!(err, ApplyError::UnsafePath { .. }), "{err}");
        assert_names(&err, "/tmp/evil");
    }

    #[test]
    fn writing_through_an_absolute_symlink_is_refused() {
        let sandbox_probe = tempfile::tempdir().unwrap();
        let target = sandbox_probe.path().display().to_string();
        let tar = RawTar::default()
            .symlink("esc", &target)
            .file("esc/evil", b"x")
            .finish();
        let err = refuse(&tar);
        assert!(matches!(err, ApplyError::Escapes { .. }), "{err}");
        assert_names(&err, "esc/evil");
        assert!(!sandbox_probe.path().join("evil").exists());
    }

    #[test]
    fn writing_through_a_relative_symlink_that_climbs_out_is_refused() {
        let tar = RawTar::default()
            .dir("d/")
            .symlink("d/up", "../../outside")
            .file("d/up/victim", b"overwritten")
            .finish();
        let err = refuse(&tar);
        assert!(matches!(err, ApplyError::Escapes { .. }), "{err}");
        assert_names(&err, "d/up/victim");
    }

    #[test]
    fn symlink_chains_that_end_outside_are_refused() {
        let tar = RawTar::default()
            .symlink("a", "b")
            .symlink("b", "c/..")
            .dir("c/")
            .symlink("c/x", "../..")
            .file("a/c/x/outside/victim", b"overwritten")
            .finish();
        let err = refuse(&tar);
        assert_names(&err, "a/c/x/outside/victim");
    }

    #[test]
    fn hardlinks_out_of_the_root_are_refused() {
        let err = refuse(
            &RawTar::default()
                .hardlink("hl", "../outside/victim")
                .finish(),
        );
        assert_names(&err, "hl");
        let err = refuse(&RawTar::default().hardlink("hl", "/etc/passwd").finish());
        assert_names(&err, "hl");
        let tar = RawTar::default()
            .symlink("s", "../outside")
            .hardlink("hl", "s/victim")
            .finish();
        let err = refuse(&tar);
        assert!(matches!(err, ApplyError::Escapes { .. }), "{err}");
        assert_names(&err, "hl");
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let sandbox = tempfile::tempdir().unwrap();
        let victim = sandbox.path().join("victim");
        fs_err::write(&victim, b"untouched").unwrap();
        let tar = RawTar::default()
            .symlink("s", &victim.display().to_string())
            .file("s", b"replaced")
            .finish();
        let root = sandbox.path().join("root");
        apply_layer(&tar[..], &root, &overlay_opts()).unwrap();
        assert_eq!(fs_err::read(&victim).unwrap(), b"untouched");
        assert_eq!(fs_err::read(root.join("s")).unwrap(), b"replaced");
        assert!(
            !fs_err::symlink_metadata(root.join("s"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_hardlink_to_a_symlink_links_the_symlink_itself() {
        let sandbox = tempfile::tempdir().unwrap();
        let tar = RawTar::default()
            .symlink("s", "/etc/shadow")
            .hardlink("h", "s")
            .finish();
        let root = sandbox.path().join("root");
        apply_layer(&tar[..], &root, &overlay_opts()).unwrap();
        assert_eq!(
            fs_err::read_link(root.join("h")).unwrap(),
            Path::new("/etc/shadow")
        );
    }

    #[test]
    fn symlinks_that_stay_inside_are_followed_for_parents() {
        let sandbox = tempfile::tempdir().unwrap();
        let tar = RawTar::default()
            .dir("real/")
            .symlink("alias", "real")
            .file("alias/f", b"in")
            .finish();
        let root = sandbox.path().join("root");
        apply_layer(&tar[..], &root, &overlay_opts()).unwrap();
        assert_eq!(fs_err::read(root.join("real/f")).unwrap(), b"in");
    }

    #[test]
    fn a_whiteout_cannot_delete_outside() {
        let tar = RawTar::default()
            .symlink("s", "../outside")
            .file("s/.wh.victim", b"")
            .finish();
        let sandbox = tempfile::tempdir().unwrap();
        let root = sandbox.path().join("root");
        let outside = sandbox.path().join("outside");
        fs_err::create_dir_all(&outside).unwrap();
        fs_err::write(outside.join("victim"), b"untouched").unwrap();
        let remove = ApplyOptions {
            whiteouts: WhiteoutMode::Remove,
            expected_diff_id: None,
            ..ApplyOptions::default()
        };
        let err = apply_layer(&tar[..], &root, &remove).unwrap_err();
        assert_names(&err, "s/.wh.victim");
        assert_eq!(fs_err::read(outside.join("victim")).unwrap(), b"untouched");
    }

    #[test]
    fn truncated_and_garbage_streams_are_errors_not_panics() {
        let src = tempfile::tempdir().unwrap();
        fs_err::write(src.path().join("f"), vec![7u8; 100_000]).unwrap();
        let (blob, _) = diff_upperdir(src.path(), Vec::new(), &opts(Compression::Gzip)).unwrap();
        let cut = &blob[..blob.len() / 2];
        assert!(apply_layer(cut, tempfile::tempdir().unwrap().path(), &overlay_opts()).is_err());
        let mut garbage = vec![0x1f, 0x8b];
        garbage.extend(std::iter::repeat_n(0xAAu8, 4096));
        assert!(
            apply_layer(
                &garbage[..],
                tempfile::tempdir().unwrap().path(),
                &overlay_opts()
            )
            .is_err()
        );
        let mut r = &b"not a tar at all, just some text that is shorter than a block"[..];
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert!(apply_layer(&v[..], tempfile::tempdir().unwrap().path(), &overlay_opts()).is_err());
    }

    /// Thousands of corrupted variants of a real layer: every one must end in `Ok` or an error,
    /// never a panic, and never write beside the root.
    #[test]
    fn corrupted_layers_never_panic_or_escape() {
        let src = tempfile::tempdir().unwrap();
        rich_tree(src.path());
        fs_err::remove_file(src.path().join("usr/big.bin")).unwrap();
        let (plain, _) = diff_upperdir(src.path(), Vec::new(), &opts(Compression::None)).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let sandbox = tempfile::tempdir().unwrap();
        for i in 0..300 {
            let mut bytes = plain.clone();
            // Corrupt header areas mostly: that is where the parser makes decisions.
            for _ in 0..(1 + next() % 8) {
                let block = (next() as usize % (bytes.len() / 512)) * 512;
                let off = block + (next() as usize % 512);
                bytes[off] = next() as u8;
            }
            let root = sandbox.path().join(format!("root{i}"));
            let result = std::panic::catch_unwind(|| {
                let _ = apply_layer(&bytes[..], &root, &overlay_opts());
            });
            assert!(result.is_ok(), "variant {i} panicked");
            let _ = fs_err::remove_dir_all(&root);
        }
        assert_eq!(
            fs_err::read_dir(sandbox.path()).unwrap().count(),
            0,
            "nothing beside the roots"
        );
    }
}
