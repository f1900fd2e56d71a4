//! Each check of the frontend against a Dockerfile that breaks it and one that does not, with
//! the lines BuildKit reports; the images come from a resolver that makes them up.

use super::*;

/// Serves every image with a PATH-only config; `armonly` is for linux/s390x.
struct Images;

impl ImageResolver for Images {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, crate::scheduler::BoxError> {
        Ok(ResolvedImage {
            pinned: format!("docker.io/library/{reference}@sha256:{}", "ab".repeat(32)),
            config: ImageConfig {
                env: vec!["PATH=/usr/bin:/bin".into()],
                ..ImageConfig::default()
            },
            history: Vec::new(),
            platform: Some(if reference == "armonly" {
                "linux/s390x".parse().unwrap()
            } else {
                "linux/amd64".parse().unwrap()
            }),
        })
    }
}

fn options(build_args: &[(&str, &str)], ignore: &[&str]) -> BuildOptions {
    BuildOptions {
        build_args: build_args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        target_platform: "linux/amd64".parse().unwrap(),
        ignore_patterns: ignore.iter().map(|s| (*s).to_owned()).collect(),
        ..BuildOptions::default()
    }
}

/// The lines at which `rule` fires when every stage is checked.
fn lines_of(rule: &str, src: &str, opts: &BuildOptions) -> Vec<usize> {
    let file = hoist_parser::parse(src).unwrap();
    let report = check(&file, src, opts, &Images);
    report
        .warnings
        .iter()
        .filter(|w| w.rule == rule)
        .map(|w| w.line)
        .collect()
}

/// Per rule: a file that breaks it with the lines BuildKit reports, one that does not, and the
/// build-args and `.dockerignore` patterns of both.
#[allow(clippy::type_complexity)]
const CASES: &[(&str, &str, &[usize], &str, &[(&str, &str)], &[&str])] = &[
    (
        "UndefinedVar",
        "FROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\nENV PATH=$PAHT:/x\n",
        &[2, 5],
        // An ARG without a value, and one a base stage declared, are defined.
        "FROM scratch\nARG foo\nCOPY Dockerfile${foo} .\nFROM alpine AS base\nARG bar=Dockerfile\n\
         FROM base\nCOPY $bar $PATH .\n",
        &[],
        &[],
    ),
    (
        "UndefinedArgInFrom",
        "ARG tag=latest\nFROM busybox:${tag}${version} AS b\nFROM --platform=$BULIDPLATFORM scratch\n",
        &[2, 3],
        "ARG base=scratch\nARG DEBUG\nFROM ${base}${DEBUG}\nFROM --platform=$BUILDPLATFORM scratch\n",
        &[],
        &[],
    ),
    (
        "InvalidDefaultArgInFrom",
        "ARG VERSION\nFROM busybox:$VERSION\nARG IMAGE\nFROM $IMAGE\n",
        &[2, 4],
        "ARG VERSION=latest\nFROM busybox:${VERSION}\nARG V\nFROM busybox:stable${V}\n",
        &[("VERSION", "1"), ("IMAGE", "busybox"), ("V", "-musl")],
        &[],
    ),
    (
        "RedundantTargetPlatform",
        "FROM --platform=$TARGETPLATFORM scratch\nFROM --platform=${TARGETPLATFORM} scratch\n",
        &[1, 2],
        "FROM --platform=$BUILDPLATFORM scratch\n",
        &[],
        &[],
    ),
    (
        "FromPlatformFlagConstDisallowed",
        "FROM --platform=linux/amd64 scratch\n",
        &[1],
        "FROM --platform=linux/amd64 scratch AS build_amd64\nFROM --platform=linux/amd64 scratch AS linux\n",
        &[],
        &[],
    ),
    (
        "SecretsUsedInArgOrEnv",
        "FROM scratch\nARG SECRET_PASSPHRASE\nENV password=bar secret=baz\nARG auth=1\n",
        &[2, 3, 3, 4],
        // ARGs before the first FROM are not checked, as in BuildKit.
        "ARG PASSWORD\nFROM scratch\nENV PUBLIC_KEY=x sunflower=y\nARG public_token\n",
        &[],
        &[],
    ),
    (
        "LegacyKeyValueFormat",
        "FROM scratch\nENV testkey value\nLABEL key value\n",
        &[2, 3],
        "FROM scratch\nENV testkey=value\nLABEL key=value\n",
        &[],
        &[],
    ),
    (
        "JSONArgsRecommended",
        "FROM scratch\nCMD mycommand\nENTRYPOINT mycommand\n",
        &[2, 3],
        // A SHELL, here or in the base stage, makes the shell form deliberate.
        "FROM scratch AS base\nSHELL [\"/usr/bin/customshell\"]\nFROM base\nCMD mycommand\n\
         ENTRYPOINT [\"/app\"]\n",
        &[],
        &[],
    ),
    (
        "MultipleInstructionsDisallowed",
        "FROM scratch\nENTRYPOINT [\"/a\"]\nCMD [\"/a\"]\nHEALTHCHECK NONE\nCOPY <<EOF /a.txt\nhi\nEOF\n\
         ENTRYPOINT [\"/b\"]\nCMD [\"/b\"]\nHEALTHCHECK NONE\n",
        &[2, 3, 4],
        "FROM scratch AS a\nENTRYPOINT [\"/a\"]\nCMD [\"/a\"]\nFROM a AS b\nENTRYPOINT [\"/b\"]\nCMD [\"/b\"]\n",
        &[],
        &[],
    ),
    (
        "WorkdirRelativePath",
        "FROM scratch\nWORKDIR app/\nWORKDIR sub/\n",
        &[2],
        "FROM scratch AS a\nWORKDIR /app\nFROM a AS b\nWORKDIR subdir/\n",
        &[],
        &[],
    ),
    (
        "ExposeProtoCasing",
        "FROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n",
        &[2, 2],
        "FROM scratch\nEXPOSE 80/tcp 53/udp 8000\n",
        &[],
        &[],
    ),
    (
        "ExposeInvalidFormat",
        "FROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n",
        &[2, 2, 2],
        "FROM scratch\nEXPOSE 8000 9000-9002/udp\n",
        &[],
        &[],
    ),
    (
        "CopyIgnoredFile",
        "# check=experimental=CopyIgnoredFile\nFROM scratch\nCOPY Dockerfile .\nADD ./Dockerfile /windy\n",
        &[3, 4],
        // Off unless experimental= names it; a source from a stage is not the context's.
        "FROM scratch\nCOPY Dockerfile .\n# check=experimental=CopyIgnoredFile\nFROM scratch AS base\n\
         COPY --from=base /Dockerfile /x\n",
        &[],
        &["Dockerfile"],
    ),
    (
        "InvalidBaseImagePlatform",
        "FROM armonly\n",
        &[1],
        "FROM alpine\n",
        &[],
        &[],
    ),
];

#[test]
fn each_frontend_rule_fires_where_buildkit_does_and_not_otherwise() {
    for (rule, bad, lines, good, args, ignore) in CASES {
        assert!(
            hoist_parser::lint::rule(rule).is_some(),
            "{rule} is not a rule"
        );
        let opts = options(args, ignore);
        assert_eq!(&lines_of(rule, bad, &opts), lines, "{rule} on {bad:?}");
        assert_eq!(lines_of(rule, good, &opts), [0; 0], "{rule} on {good:?}");
    }
}

#[test]
fn every_rule_is_tested_here_or_in_the_parser() {
    // The parser's own table covers the other eight.
    assert_eq!(CASES.len() + 8, hoist_parser::lint::RULES.len());
}

#[test]
fn a_build_checks_only_the_stages_it_reaches_and_check_mode_all() {
    let src = "FROM scratch AS unused\nCOPY $nope .\nFROM scratch\nCOPY a /\n";
    let file = hoist_parser::parse(src).unwrap();
    let plan = lower(&file, src, &options(&[], &[]), &Images).unwrap();
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert_eq!(lines_of("UndefinedVar", src, &options(&[], &[])), [2]);
}

#[test]
fn warnings_of_a_build_name_the_rule_line_message_and_page() {
    let src = "FROM scratch as base\nCOPY $foo /\n";
    let file = hoist_parser::parse(src).unwrap();
    let plan = lower(&file, src, &options(&[], &[]), &Images).unwrap();
    let got: Vec<(&str, usize)> = plan.warnings.iter().map(|w| (w.rule, w.line)).collect();
    assert_eq!(got, [("FromAsCasing", 1), ("UndefinedVar", 2)]);
    assert!(plan.warnings[1].message.contains("$foo"));
    assert_eq!(
        plan.warnings[1].url,
        "https://docs.docker.com/go/dockerfile/rule/undefined-var/"
    );
}

#[test]
fn error_true_fails_the_build_naming_each_rule_and_line() {
    let src = "# check=error=true\nFROM scratch as base\nENV a b\n";
    let file = hoist_parser::parse(src).unwrap();
    let err = lower(&file, src, &options(&[], &[]), &Images).unwrap_err();
    let shown = err.render("Dockerfile", src);
    assert!(
        shown.starts_with("Dockerfile:2:"),
        "located at the first warning: {shown}"
    );
    assert!(
        shown.contains("FromAsCasing, LegacyKeyValueFormat")
            && shown.contains("line 2 FromAsCasing")
            && shown.contains("line 3 LegacyKeyValueFormat"),
        "{shown}"
    );
    // Skipped rules do not count; nothing left means the build goes on.
    let src = "# check=error=true;skip=FromAsCasing,LegacyKeyValueFormat\nFROM scratch as base\nENV a b\n";
    let file = hoist_parser::parse(src).unwrap();
    assert!(lower(&file, src, &options(&[], &[]), &Images).is_ok());
}

#[test]
fn the_check_build_arg_overrides_the_directive() {
    let src = "# check=skip=all\nFROM scratch as base\n";
    let file = hoist_parser::parse(src).unwrap();
    let opts = options(
        &[(CHECK_BUILD_ARG, "skip=ConsistentInstructionCasing")],
        &[],
    );
    let plan = lower(&file, src, &opts, &Images).unwrap();
    assert_eq!(plan.warnings.len(), 1);
    assert_eq!(plan.warnings[0].rule, "FromAsCasing");
    assert!(plan.unused_build_args.is_empty());
}

#[test]
fn a_bad_check_directive_is_an_error_at_its_line() {
    let src = "# check=skip=all;fail=true\nFROM scratch\n";
    let file = hoist_parser::parse(src).unwrap();
    let err = lower(&file, src, &options(&[], &[]), &Images).unwrap_err();
    let shown = err.render("Dockerfile", src);
    assert!(shown.starts_with("Dockerfile:1:"), "{shown}");
    assert!(shown.contains("invalid check option \"fail\""), "{shown}");
}

#[test]
fn onbuild_triggers_are_checked_at_the_from_line() {
    let src = "FROM scratch AS base\nONBUILD COPY $missing /\nFROM base\n";
    let file = hoist_parser::parse(src).unwrap();
    // The trigger is recorded in `base` and runs in the stage built FROM it.
    let plan = lower(&file, src, &options(&[], &[]), &Images).unwrap();
    let got: Vec<(&str, usize)> = plan.warnings.iter().map(|w| (w.rule, w.line)).collect();
    assert_eq!(got, [("UndefinedVar", 3)]);
}

#[test]
fn references_are_validated_as_docker_reads_them() {
    for good in [
        "busybox",
        "busybox:stable",
        "docker.io/library/busybox:1.36",
        "localhost:5000/a/b_c:v1",
        "scratch",
        "a@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert!(valid_reference(good), "{good}");
    }
    for bad in [
        "",
        "busybox:",
        "Busybox",
        "busybox:-x",
        "a//b",
        ":tag",
        "a-",
    ] {
        assert!(!valid_reference(bad), "{bad}");
    }
}
