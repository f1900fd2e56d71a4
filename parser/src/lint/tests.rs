use super::*;

/// The (rule, line) pairs the file-level checks report for `source`.
fn lint(source: &str) -> Vec<(&'static str, usize)> {
    let file = crate::parse(source).unwrap();
    let config = CheckConfig::parse(file.check().unwrap_or("")).unwrap();
    let mut linter = Linter::new(source, config);
    check_file(&file, &mut linter);
    linter
        .take_warnings()
        .into_iter()
        .map(|w| (w.rule, w.line))
        .collect()
}

/// Per rule: a file that breaks it (with the lines BuildKit reports) and one that does not.
const CASES: &[(&str, &str, &[usize], &str)] = &[
    (
        "StageNameCasing",
        "FROM scratch AS Build\n",
        &[1],
        "FROM scratch AS build\n",
    ),
    (
        "FromAsCasing",
        "FROM scratch as a\nfrom scratch AS b\n",
        &[1, 2],
        "FROM scratch AS a\nfrom scratch as b\n",
    ),
    (
        "NoEmptyContinuation",
        "FROM scratch\nCOPY a \\\n\nb /\n",
        &[4],
        "FROM scratch\nCOPY a \\\n# a comment\nb /\n",
    ),
    (
        "ConsistentInstructionCasing",
        "FROM scratch\ncopy a /\nCOPY b /\nCopy c /\n",
        &[2, 4],
        // The ARG before FROM does not count, as in BuildKit.
        "arg X\nFROM scratch\nCOPY a /\n",
    ),
    (
        "DuplicateStageName",
        "FROM scratch AS a\nFROM scratch AS A\n",
        &[2],
        "FROM scratch AS a\nFROM scratch AS b\n",
    ),
    (
        "ReservedStageName",
        "FROM scratch AS scratch\nFROM scratch AS context\n",
        &[1, 2],
        "FROM scratch\nFROM scratch AS ctx\n",
    ),
    (
        "MaintainerDeprecated",
        "FROM scratch\nMAINTAINER me@example.org\n",
        &[2],
        "FROM scratch\nLABEL org.opencontainers.image.authors=me@example.org\n",
    ),
    (
        "InvalidDefinitionDescription",
        "# check=experimental=InvalidDefinitionDescription\n# bar the bar\nARG foo=1\n\
         # the base\nFROM scratch AS base\n# some comment\nARG a b\n",
        &[3, 5, 7],
        "# check=experimental=InvalidDefinitionDescription\n# foo the foo\nARG foo=1\n\
         # a comment\n#\nFROM scratch AS base\n# b is b\nARG a b\n# on COPY\nCOPY a /\n",
    ),
];

#[test]
fn each_file_rule_fires_where_buildkit_does_and_not_otherwise() {
    for (rule, bad, lines, good) in CASES {
        let got: Vec<usize> = lint(bad)
            .into_iter()
            .filter(|(r, _)| r == rule)
            .map(|(_, l)| l)
            .collect();
        assert_eq!(&got, lines, "{rule} on {bad:?}");
        let got = lint(good);
        assert!(
            got.iter().all(|(r, _)| r != rule),
            "{rule} fired on {good:?}: {got:?}"
        );
    }
}

#[test]
fn every_rule_has_a_case_here_or_in_the_frontend() {
    assert_eq!(RULES.len(), 22);
    let names: BTreeSet<&str> = RULES.iter().map(|r| r.name).collect();
    assert_eq!(names.len(), 22);
    for (rule, ..) in CASES {
        assert!(names.contains(rule), "{rule}");
    }
}

#[test]
fn experimental_rules_are_off_by_default() {
    let src = "# bar the bar\nFROM scratch AS foo\n";
    assert!(lint(src).is_empty());
    let src = "# check=experimental=all\n# bar the bar\nFROM scratch AS foo\n";
    assert_eq!(lint(src), [("InvalidDefinitionDescription", 3)]);
}

#[test]
fn a_blank_line_does_not_end_a_description_but_an_empty_comment_does() {
    // BuildKit's parser keeps comments across blank lines.
    let src = "# check=experimental=all\n# not a description\n\nARG foo\n";
    assert_eq!(lint(src), [("InvalidDefinitionDescription", 4)]);
    let src = "# check=experimental=all\n# not a description\n#\nARG foo\n";
    assert!(lint(src).is_empty());
}

#[test]
fn skip_silences_rules_and_unknown_names_are_ignored() {
    let src =
        "#check=skip=ConsistentInstructionCasing,NoSuchRule\nFROM scratch as base\ncopy a /\n";
    assert_eq!(lint(src), [("FromAsCasing", 2)]);
    let src = "#check=skip=all\nFROM scratch as base\ncopy a /\n";
    assert!(lint(src).is_empty());
    // skip= does not reach experimental rules that are turned on.
    let src = "# check=skip=all;experimental=InvalidDefinitionDescription\n# x\nARG foo\n";
    assert_eq!(lint(src), [("InvalidDefinitionDescription", 3)]);
}

#[test]
fn check_options_are_read_as_buildkit_reads_them() {
    let c = CheckConfig::parse(" skip = A , B ; error = True ").unwrap();
    assert_eq!(c.skip, ["A", "B"].map(String::from).into());
    assert!(c.error);
    assert!(!c.enabled(&Rule {
        name: "A",
        ..*UNDEFINED_VAR
    }));
    assert!(c.enabled(rule("FromAsCasing").unwrap()));
    let c = CheckConfig::parse("experimental=all;error=0").unwrap();
    assert!(c.experimental_all && !c.error);
    assert!(c.enabled(COPY_IGNORED_FILE));
    assert!(!CheckConfig::default().enabled(COPY_IGNORED_FILE));
    assert!(CheckConfig::default().enabled(UNDEFINED_VAR));
    assert_eq!(
        CheckConfig::parse("skip").unwrap_err(),
        CheckConfigError::Option {
            option: "skip".into()
        }
    );
    assert_eq!(
        CheckConfig::parse("fail=true").unwrap_err(),
        CheckConfigError::Option {
            option: "fail".into()
        }
    );
    assert_eq!(
        CheckConfig::parse("error=yes").unwrap_err(),
        CheckConfigError::Bool {
            value: "yes".into()
        }
    );
}

#[test]
fn secret_names_follow_buildkit_word_list() {
    for name in [
        "SECRET_PASSPHRASE",
        "SUPER_Secret",
        "password",
        "super_duper_secret_token",
        "auth",
        "apikey",
        "git_key",
    ] {
        assert!(looks_secret(name), "{name}");
    }
    for name in [
        "PUBLIC_KEY",
        "public_token",
        "sunflower",
        "keyboard",
        "monkey",
    ] {
        assert!(!looks_secret(name), "{name}");
    }
}

#[test]
fn suggestions_are_close_names_only() {
    assert_eq!(
        suggest("DIR_ASSET", ["DIR_BINARIES", "DIR_ASSETS"]),
        Some("DIR_ASSETS")
    );
    assert_eq!(suggest("PAHT", ["PATH", "HOME"]), Some("PATH"));
    assert_eq!(suggest("foo", ["foo", "fo"]), None);
    assert_eq!(suggest("version", ["tag"]), None);
}
