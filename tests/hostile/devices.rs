//! Device nodes: a RUN may make them (it holds CAP_MKNOD, as under Docker) but may open only
//! Docker's short list of harmless devices. A loop device stands in for the host's disk; each
//! case runs under the built-in runtime and under runc.

use std::path::Path;
use std::process::Command;

use crate::runtimes;
use crate::support::{LoopDevice, Project, Registry};

/// A shell script that tries to read the first bytes of `node` and to overwrite them, and
/// records both outcomes in /probe (the RUN itself succeeds either way).
fn probe(node: &str) -> String {
    format!(
        "(head -c 33 {node} > /probe.read) 2> /probe.read-err; \
         (echo OVERWRITTEN-BY-A-RUN | dd of={node} conv=notrunc) 2> /probe.write-err; true"
    )
}

/// Checks what [`probe`] recorded in an exported rootfs: both opens refused, nothing read,
/// and the disk as it was.
fn assert_refused(rootfs: &Path, disk: &LoopDevice, case: &str) {
    let read = fs_err::read(rootfs.join("probe.read")).unwrap();
    assert!(
        read.is_empty(),
        "{case}: a RUN read the host's disk: {:?}",
        String::from_utf8_lossy(&read)
    );
    for file in ["probe.read-err", "probe.write-err"] {
        let err = fs_err::read_to_string(rootfs.join(file)).unwrap();
        assert!(
            err.contains("Operation not permitted"),
            "{case}: {file} says {err:?}, expected EPERM"
        );
    }
    assert!(disk.untouched(), "{case}: a RUN wrote to the host's disk");
}

/// A tar holding one block device node, `disk`, for the loop device.
fn tar_with_node(p: &Project, disk: &LoopDevice) {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("disk");
    let status = Command::new("mknod")
        .arg(&node)
        .args(["b", "7", &disk.minor.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("tar")
        .arg("-cf")
        .arg(p.path("dev.tar"))
        .arg("-C")
        .arg(dir.path())
        .arg("disk")
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_run_cannot_open_a_disk_it_made_with_mknod() {
    let disk = LoopDevice::attach();
    for runtime in runtimes() {
        let p = Project::new(&format!(
            "FROM scratch\nADD rootfs.tar /\nRUN mknod /tmp/disk b 7 {minor} && {probe}\n",
            minor = disk.minor,
            probe = probe("/tmp/disk")
        ));
        let (_, rootfs) = p.build_to_dir(&["--runtime", runtime]);
        assert_refused(rootfs.path(), &disk, runtime);
    }
}

#[test]
fn a_run_cannot_open_a_disk_node_that_came_by_add() {
    let disk = LoopDevice::attach();
    for runtime in runtimes() {
        let p = Project::new(&format!(
            "FROM scratch\nADD rootfs.tar /\nADD dev.tar /nodes/\nRUN test -b /nodes/disk && {}\n",
            probe("/nodes/disk")
        ));
        tar_with_node(&p, &disk);
        let (_, rootfs) = p.build_to_dir(&["--runtime", runtime]);
        assert_refused(rootfs.path(), &disk, runtime);
    }
}

#[test]
fn a_disk_node_in_a_base_image_cannot_be_opened_by_a_build_or_by_hoist_run() {
    let disk = LoopDevice::attach();
    let registry = Registry::start();
    let base = format!("{}/hostile/disk-node:1", registry.addr);
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nADD dev.tar /nodes/\n");
    tar_with_node(&p, &disk);
    let out = p.hoist(&["-t", &base, "--push"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for runtime in runtimes() {
        // A fresh state root: the base is pulled from the registry.
        let child = Project::new(&format!(
            "FROM {base}\nRUN test -b /nodes/disk && {}\n",
            probe("/nodes/disk")
        ));
        let (_, rootfs) = child.build_to_dir(&["--runtime", runtime]);
        assert_refused(rootfs.path(), &disk, runtime);

        let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
            .arg("run")
            .arg("--root")
            .arg(child.root.path())
            .args(["--runtime", runtime, "--rm", &base])
            .args([
                "sh",
                "-c",
                "head -c 33 /nodes/disk; echo OVERWRITTEN > /nodes/disk",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stdout.contains("HOST-DISK"),
            "{runtime}: hoist run read the host's disk: {stdout}"
        );
        assert_eq!(
            stderr.matches("Operation not permitted").count(),
            2,
            "{runtime}: {stderr}"
        );
        assert!(disk.untouched(), "{runtime}: hoist run wrote to the disk");
    }
}

#[test]
fn the_allowed_devices_still_work_in_a_run() {
    for runtime in runtimes() {
        let p = Project::new(
            "FROM scratch\nADD rootfs.tar /\n\
             RUN (head -c 8 /dev/urandom | wc -c; head -c 4 /dev/zero | wc -c; \
                  echo x > /dev/null && echo null; \
                  (echo x > /dev/full) 2>&1 | grep -o 'No space left on device'; \
                  mknod /tmp/zero2 c 1 5 && head -c 2 /tmp/zero2 | wc -c) > /probe\n",
        );
        let (_, rootfs) = p.build_to_dir(&["--runtime", runtime]);
        let probe = fs_err::read_to_string(rootfs.path().join("probe")).unwrap();
        let words: Vec<&str> = probe.split_whitespace().collect();
        assert_eq!(
            words,
            ["8", "4", "null", "No", "space", "left", "on", "device", "2"],
            "{runtime}: {probe}"
        );
    }
}
