//! Build checks end to end: `hoist build --check`, warnings after a build and in
//! `--metadata-file`, `error=true` and `skip=`; and the checker over BuildKit's parser
//! conformance Dockerfiles, against the rule names and lines BuildKit's rules give them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

mod support;

use std::path::{Path, PathBuf};

use hoist_solver::Platform;
use hoist_solver::frontend::{
    BuildOptions, ImageConfig, ImageResolver, ResolvedImage, check as run_checks,
};
use support::Project;

/// Serves every base image with the config a typical distribution image has: PATH only, for
/// the build's platform.
struct TypicalImages;

impl ImageResolver for TypicalImages {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, hoist_solver::scheduler::BoxError> {
        Ok(ResolvedImage {
            pinned: format!("docker.io/library/{reference}@sha256:{}", "ab".repeat(32)),
            config: ImageConfig {
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                ..ImageConfig::default()
            },
            history: Vec::new(),
            platform: Some(platform.clone()),
        })
    }
}

/// `rule@line` for every warning of one Dockerfile, in line order, or `error` if the checks
/// stopped.
fn checked(path: &Path) -> Vec<String> {
    let source = fs_err::read_to_string(path).unwrap();
    let file = hoist_parser::parse(&source).unwrap();
    let opts = BuildOptions {
        target_platform: "linux/amd64".parse().unwrap(),
        build_platform: "linux/amd64".parse().unwrap(),
        ..BuildOptions::default()
    };
    let report = run_checks(&file, &source, &opts, &TypicalImages);
    let mut out: Vec<String> = report
        .warnings
        .iter()
        .map(|w| format!("{}@{}", w.rule, w.line))
        .collect();
    if let Some(error) = report.error {
        out.push(format!("error: {}", error.render("Dockerfile", &source)));
    }
    out
}

/// What BuildKit v0.24's rules give each conformance Dockerfile, derived by reading the rules
/// (no BuildKit was run): `Rule@line`, and whether the checks stop at an error. Assumed: every
/// base image resolves, for linux/amd64 (the images named are old amd64-only ones), with a
/// config whose only variable is PATH. Unsure: `image` and `foo` (escape*, multiple-volumes)
/// are not on Docker Hub, so a real BuildKit would stop resolving them and report only the
/// file-level warnings (none there); with resolvable images it reports what is listed.
const BUILDKIT: &[(&str, &[&str], bool)] = &[
    ("ADD-COPY-with-JSON", &["LegacyKeyValueFormat@2"], false),
    ("args", &[], false),
    (
        "brimstone-consuldock",
        &[
            "LegacyKeyValueFormat@4",
            "LegacyKeyValueFormat@8",
            "NoEmptyContinuation@26",
        ],
        false,
    ),
    (
        "brimstone-docker-consul",
        &[
            "NoEmptyContinuation@36",
            "LegacyKeyValueFormat@38",
            "NoEmptyContinuation@52",
        ],
        false,
    ),
    ("continue-at-eof", &[], false),
    ("continueIndent", &["NoEmptyContinuation@36"], false),
    (
        "cpuguy83-nagios",
        &[
            "LegacyKeyValueFormat@2",
            "LegacyKeyValueFormat@3",
            "LegacyKeyValueFormat@4",
            "LegacyKeyValueFormat@5",
            "LegacyKeyValueFormat@6",
            "LegacyKeyValueFormat@7",
            "LegacyKeyValueFormat@8",
            "LegacyKeyValueFormat@9",
            "LegacyKeyValueFormat@10",
            "LegacyKeyValueFormat@11",
            "LegacyKeyValueFormat@47",
            "LegacyKeyValueFormat@48",
        ],
        false,
    ),
    (
        "docker",
        &[
            "LegacyKeyValueFormat@19",
            "LegacyKeyValueFormat@54",
            "LegacyKeyValueFormat@55",
            "LegacyKeyValueFormat@59",
            "LegacyKeyValueFormat@64",
            "LegacyKeyValueFormat@88",
        ],
        false,
    ),
    // ENV name='a\'b' (line 12) leaves a single quote open: expanding it fails in BuildKit too.
    ("env", &["LegacyKeyValueFormat@2"], true),
    (
        "escape",
        &["LegacyKeyValueFormat@4", "LegacyKeyValueFormat@5"],
        false,
    ),
    (
        "escape-after-comment",
        &["LegacyKeyValueFormat@7", "LegacyKeyValueFormat@8"],
        false,
    ),
    (
        "escape-nonewline",
        &["LegacyKeyValueFormat@5", "LegacyKeyValueFormat@6"],
        false,
    ),
    ("escape-with-syntax", &[], false),
    // ADD \conf\\" (line 6) leaves a double quote open; the empty continuation lines are
    // found by the parser, before.
    (
        "escapes",
        &["LegacyKeyValueFormat@2", "NoEmptyContinuation@12"],
        true,
    ),
    // `COPY --user` is an unknown flag: BuildKit stops while reading the instructions.
    ("flags", &[], true),
    // A bare HEALTHCHECK (line 4) stops BuildKit while reading the instructions, before any
    // instruction is dispatched, so CMD's JSONArgsRecommended (line 3) is never reached.
    ("health", &[], true),
    ("influxdb", &["JSONArgsRecommended@10"], false),
    // CMD before any FROM: no stage to put it in.
    ("jeztah-invalid-json-json-inside-string", &[], true),
    ("jeztah-invalid-json-json-inside-string-double", &[], true),
    ("jeztah-invalid-json-single-quotes", &[], true),
    ("jeztah-invalid-json-unterminated-bracket", &[], true),
    ("jeztah-invalid-json-unterminated-string", &[], true),
    ("json", &[], true),
    (
        "kartar-entrypoint-oddities",
        &["LegacyKeyValueFormat@2", "LegacyKeyValueFormat@3"],
        false,
    ),
    // Five CMDs: each but the last is reported at its own line, the shell forms too.
    (
        "lk4d4-the-edge-case-generator",
        &[
            "LegacyKeyValueFormat@3",
            "LegacyKeyValueFormat@24",
            "LegacyKeyValueFormat@25",
            "MultipleInstructionsDisallowed@28",
            "JSONArgsRecommended@29",
            "MultipleInstructionsDisallowed@29",
            "JSONArgsRecommended@30",
            "MultipleInstructionsDisallowed@30",
            "JSONArgsRecommended@31",
            "MultipleInstructionsDisallowed@31",
            "JSONArgsRecommended@32",
        ],
        false,
    ),
    ("mail", &["JSONArgsRecommended@16"], false),
    ("multiple-volumes", &[], false),
    ("mumble", &["JSONArgsRecommended@7"], false),
    ("nginx", &["LegacyKeyValueFormat@2"], false),
    ("tf2", &["JSONArgsRecommended@23"], false),
    (
        "trailing-backslash",
        &[
            "LegacyKeyValueFormat@5",
            "LegacyKeyValueFormat@6",
            "LegacyKeyValueFormat@7",
            "LegacyKeyValueFormat@8",
            "LegacyKeyValueFormat@9",
            "LegacyKeyValueFormat@12",
            "LegacyKeyValueFormat@15",
        ],
        false,
    ),
    ("weechat", &["JSONArgsRecommended@9"], false),
    ("znc", &["LegacyKeyValueFormat@2"], false),
];

/// Where hoist's checks knowingly differ from BuildKit's, with what hoist gives and why.
const HOIST_DIFFERS: &[(&str, &[&str], bool, &str)] = &[(
    "health",
    &["JSONArgsRecommended@3"],
    true,
    "hoist refuses a bare HEALTHCHECK when it lowers the instruction, not while parsing, \
         so CMD on line 3 is checked first",
)];

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs_err::read_dir(support::conformance_dir().join("testfiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn conformance_dockerfiles_get_buildkit_rule_names_on_the_same_lines() {
    let cases = cases();
    assert_eq!(cases.len(), 33, "conformance case count changed");
    assert_eq!(BUILDKIT.len(), cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let got = checked(&case.join("Dockerfile"));
        let errored = got.last().is_some_and(|l| l.starts_with("error: "));
        let warnings: Vec<&str> = got
            .iter()
            .map(String::as_str)
            .filter(|l| !l.starts_with("error: "))
            .collect();
        let (expected, errors) = match HOIST_DIFFERS.iter().find(|d| d.0 == name) {
            Some((_, hoist, errors, _)) => (*hoist, *errors),
            None => {
                let (_, buildkit, errors) = BUILDKIT
                    .iter()
                    .find(|b| b.0 == name)
                    .unwrap_or_else(|| panic!("no expectation for {name}"));
                (*buildkit, *errors)
            }
        };
        if warnings != expected || errored != errors {
            failures.push(format!(
                "{name}: expected {expected:?} (error: {errors}), got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A context whose Dockerfile breaks two checks and whose RUN leaves a mark if it runs.
fn project(dockerfile: &str) -> Project {
    Project::new(dockerfile)
}

const TWO_WARNINGS: &str =
    "FROM scratch as base\nADD rootfs.tar /\nENV mode quiet\nRUN touch /ran\n";

fn snapshots(root: &Path) -> usize {
    fs_err::read_dir(root.join("snapshots/sha256")).map_or(0, Iterator::count)
}

#[test]
fn check_reports_by_line_and_builds_nothing() {
    let project = project(TWO_WARNINGS);
    let out = project.hoist(&["--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("Dockerfile:1 FromAsCasing: "), "{stdout}");
    assert!(
        stdout.contains("Dockerfile:3 LegacyKeyValueFormat: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("check complete, 2 build check warnings found"),
        "{stdout}"
    );
    assert!(support::steps_that_ran(&stderr).is_empty(), "{stderr}");
    assert_eq!(snapshots(project.root.path()), 0, "a step ran: {stderr}");

    // A clean file passes.
    project.write(
        "Dockerfile",
        "FROM scratch AS base\nADD rootfs.tar /\nENV mode=quiet\n",
    );
    let out = project.hoist(&["--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("check complete, no warnings found"),
        "{stdout}"
    );
    assert_eq!(snapshots(project.root.path()), 0);
}

#[test]
fn warnings_are_printed_after_a_build_and_kept_in_the_metadata_file() {
    let project = project(TWO_WARNINGS);
    let metadata = project.root.path().join("metadata.json");
    let out = project.hoist(&["--metadata-file", metadata.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let after = stderr
        .split_once("2 build check warnings found:")
        .unwrap_or_else(|| panic!("no warnings after the build: {stderr}"))
        .1;
    assert!(after.contains("Dockerfile:1 FromAsCasing: "), "{stderr}");
    assert!(
        after.contains("Dockerfile:3 LegacyKeyValueFormat: "),
        "{stderr}"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&metadata).unwrap()).unwrap();
    let warnings = metadata["buildx.build.warnings"].as_array().unwrap();
    let found: Vec<(&str, u64)> = warnings
        .iter()
        .map(|w| {
            (
                w["rule"].as_str().unwrap(),
                w["range"][0]["start"]["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(found, [("FromAsCasing", 1), ("LegacyKeyValueFormat", 3)]);
}

#[test]
fn error_true_fails_the_build_naming_the_rule_and_line_before_any_step() {
    let project = project(&format!("# check=error=true\n{TWO_WARNINGS}"));
    let out = project.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lint violation found for rules: FromAsCasing, LegacyKeyValueFormat"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Dockerfile:2:"),
        "located at the first warning: {stderr}"
    );
    assert!(stderr.contains("line 4 LegacyKeyValueFormat"), "{stderr}");
    assert!(support::steps_that_ran(&stderr).is_empty(), "{stderr}");
    assert_eq!(snapshots(project.root.path()), 0);
}

#[test]
fn skip_silences_the_named_rules() {
    let project = project(&format!(
        "# check=skip=FromAsCasing,LegacyKeyValueFormat;error=true\n{TWO_WARNINGS}"
    ));
    let out = project.hoist(&["--check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("no warnings found"), "{stdout}");
    let out = project.hoist(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("build check warning"), "{stderr}");
}
