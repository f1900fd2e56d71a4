//! Command-line input that must be refused, or read as docker reads it.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::support::Project;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn output_keys_and_values_that_hoist_would_ignore_are_refused() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    for (spec, expect) in [
        (
            "type=local,dest=/tmp/hoist-never,foo=bar",
            "hoist does not know foo= for type=local; the keys it takes here are type, dest",
        ),
        (
            "type=image,dest=/tmp/hoist-never",
            "hoist does not know dest= for type=image; the keys it takes here are type, name, push",
        ),
        (
            "type=image,compression=brotli",
            "compression=brotli: expected gzip, zstd or uncompressed",
        ),
        (
            "type=image,compression=zstd,compression-level=23",
            "compression-level=23: expected 1 to 22 for zstd",
        ),
        (
            "type=image,compression-level=10",
            "compression-level=10: expected 0 to 9 for gzip",
        ),
        (
            "type=image,push=maybe",
            "push=maybe: expected true or false",
        ),
        (
            "type=image,compression=zstd,oci-mediatypes=false",
            "compression=zstd needs OCI media types",
        ),
        (
            "type=image,force-compression=maybe",
            "force-compression=maybe: expected true or false",
        ),
        (
            "type=image,annotation-index.org.example=1",
            "annotation-index.org.example= is not one hoist takes",
        ),
        (
            "type=image,annotation[linux/amd64].org.example=1",
            "is not one hoist takes",
        ),
        ("type=image,\"name=a,b", "a quote is not closed"),
    ] {
        let out = p.hoist(&["-o", spec]);
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "-o {spec} was accepted:\n{stderr}");
        assert!(stderr.contains(expect), "-o {spec}: {stderr}");
        assert!(
            crate::support::steps_that_ran(&stderr).is_empty(),
            "-o {spec} ran steps: {stderr}"
        );
    }
    let out = p.hoist(&["-o", "type=local,dest"]);
    assert!(
        stderr_of(&out).contains("is not KEY=VALUE"),
        "{}",
        stderr_of(&out)
    );
    // Two outputs of one build must agree on the one image it makes.
    let out = p.hoist(&[
        "-o",
        "type=image,compression=zstd",
        "-o",
        "type=oci,dest=/tmp/hoist-never.tar,compression=gzip",
    ]);
    assert!(
        stderr_of(&out).contains("the outputs ask for different compressions"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_platform_variant_that_does_not_exist_is_refused() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\n");
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let platform = format!("linux/{host_arch}/v99");
    let out = p.hoist(&["--platform", &platform]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "--platform {platform} was accepted");
    assert!(stderr.contains("\"v99\" is not a variant of"), "{stderr}");
}

#[test]
fn dash_f_is_relative_to_the_working_directory() {
    let p = Project::new("FROM scratch\nADD rootfs.tar /\nRUN echo from-context > /which\n");
    let cwd = tempfile::tempdir().unwrap();
    fs_err::write(
        cwd.path().join("alt.Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\nRUN echo from-cwd > /which\n",
    )
    .unwrap();
    let dest = tempfile::tempdir().unwrap();
    let run = |file: &str| {
        Command::new(env!("CARGO_BIN_EXE_hoist"))
            .current_dir(cwd.path())
            .args(["build", "--progress=plain", "--root"])
            .arg(p.root.path())
            .args(["-f", file, "-o"])
            .arg(format!("type=local,dest={}", dest.path().display()))
            .arg(p.dir.path())
            .output()
            .unwrap()
    };
    let out = run("alt.Dockerfile");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        fs_err::read_to_string(dest.path().join("which")).unwrap(),
        "from-cwd\n"
    );
    // A file that is only in the context is not found, and the error says where to look.
    let out = run("Dockerfile");
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("relative to the working directory")
            && stderr.contains(&format!("-f {}", p.path("Dockerfile").display())),
        "{stderr}"
    );
}

#[test]
fn dash_f_dash_reads_the_dockerfile_from_standard_input() {
    let p = Project::new("FROM scratch\nRUN this file is not the one\n");
    let dest = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["build", "--progress=plain", "--root"])
        .arg(p.root.path())
        .args(["-f", "-", "-o"])
        .arg(format!("type=local,dest={}", dest.path().display()))
        .arg(p.dir.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM scratch\nADD rootfs.tar /\nRUN echo from-stdin > /which\nRUN false\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Errors name it Dockerfile, as BuildKit does for standard input.
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("RUN false (line 4:1)"), "{stderr}");
    assert!(stderr.contains("echo from-stdin"), "{stderr}");
}

#[test]
fn a_run_line_over_the_kernels_argument_limit_says_so() {
    // 5 MB of script: more than the kernel passes in one argument, and more than the
    // sandbox's request size, which used to fail with "Message too long".
    let script = format!("echo {}", "x".repeat(5 << 20));
    let p = Project::new(&format!("FROM scratch\nADD rootfs.tar /\nRUN {script}\n"));
    let out = p.hoist(&[]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    let first = stderr.lines().rev().take(6).collect::<Vec<_>>().join("\n");
    assert!(stderr.contains("(line 3:1)"), "{first}");
    assert!(
        stderr
            .contains("over the kernel's limit of 131072 bytes for one argument (MAX_ARG_STRLEN)"),
        "{first}"
    );
    assert!(!stderr.contains("Message too long"), "{first}");
}
