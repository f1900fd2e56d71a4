//! BuildKit's parser conformance cases, run through `hoist parse --dump`.
//!
//! The cases live outside the project, in `../shared/conformance/buildkit-parser` beside the
//! checkout (or the folder named by `HOIST_CONFORMANCE_DIR`). They are never copied in. A missing
//! folder is a failure, not a skip: a suite that ran nothing must not pass.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::conformance_dir;

/// The counts in the conformance folder; pinned so that no case goes missing silently.
const POSITIVE_CASES: usize = 33;
const NEGATIVE_CASES: usize = 4;

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    cases
}

fn hoist_parse(dockerfile: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["parse", "--dump"])
        .arg(dockerfile)
        .output()
        .unwrap()
}

#[test]
fn positive_cases_dump_byte_for_byte() {
    let cases = cases(&conformance_dir().join("testfiles"));
    assert_eq!(cases.len(), POSITIVE_CASES, "positive case count changed");
    let mut failures = Vec::new();
    for case in &cases {
        let expected = fs_err::read_to_string(case.join("result")).unwrap();
        let out = hoist_parse(&case.join("Dockerfile"));
        let got = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || got != expected {
            failures.push(format!(
                "{}: exit {:?}\n--- expected\n{expected}--- got\n{got}--- stderr\n{}",
                case.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    println!(
        "conformance: {} passed, {} failed",
        cases.len() - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn negative_cases_fail_with_a_located_error() {
    let cases = cases(&conformance_dir().join("testfiles-negative"));
    assert_eq!(cases.len(), NEGATIVE_CASES, "negative case count changed");
    for case in &cases {
        let dockerfile = case.join("Dockerfile");
        let out = hoist_parse(&dockerfile);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.display());
        assert!(out.stdout.is_empty(), "{}: printed a dump", case.display());
        // The error names the file and a line:column in it.
        let prefix = format!("error: {}:", dockerfile.display());
        let location = stderr.strip_prefix(&prefix).unwrap_or_else(|| {
            panic!("{}: error does not name the file: {stderr}", case.display())
        });
        let mut parts = location.splitn(3, ':');
        let line: usize = parts.next().unwrap().parse().expect("a line number");
        let col: usize = parts.next().unwrap().parse().expect("a column number");
        assert!(line >= 1 && col >= 1, "{stderr}");
    }
}
