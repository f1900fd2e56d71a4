//! A state root on a full disk: every failure names the cause and the path.

use std::process::Command;

use crate::support::Project;

/// A small tmpfs, unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs failed");
        Self(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_while_compressing_a_layer_names_the_cause_and_the_file() {
    // Room for the RUN's 35 MB of random bytes, not for its compressed copy as well.
    let fs = SmallFs::mount("60m");
    let p = Project::new(
        "FROM scratch\nADD rootfs.tar /\nRUN dd if=/dev/urandom of=/big bs=1M count=35\n",
    );
    let root = fs.0.path().join("root");
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["build", "--progress=plain", "-t", "full:1", "--root"])
        .arg(&root)
        .arg(p.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("thread stopped"), "{stderr}");
    let cause = stderr
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap_or_else(|| panic!("ENOSPC is not named:\n{stderr}"));
    assert!(
        cause.contains(&root.join("tmp").display().to_string()),
        "the failing file is not named: {cause}"
    );
}
