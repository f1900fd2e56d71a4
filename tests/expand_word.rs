//! The contract of `hoist debug expand-word`: the expansion on stdout and exit 0, one word per
//! line with `--words`, and a malformed word reported on stderr with exit 1.
// The helpers below are outside #[test] fns, where clippy.toml's test allowance does not reach.
#![allow(clippy::expect_used, reason = "a failed expectation is a failed test")]

use std::process::{Command, Output};

fn hoist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["debug", "expand-word"])
        .args(args)
        .output()
        .expect("run hoist")
}

fn stdout(out: &Output) -> &str {
    std::str::from_utf8(&out.stdout).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> &str {
    std::str::from_utf8(&out.stderr).expect("stderr is UTF-8")
}

/// Asserts success and returns stdout.
fn expands(args: &[&str]) -> String {
    let out = hoist(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: stderr: {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out), "", "{args:?}");
    stdout(&out).to_owned()
}

/// Asserts failure with exit 1, nothing on stdout, and returns stderr.
fn fails(args: &[&str]) -> String {
    let out = hoist(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: stdout: {}",
        stdout(&out)
    );
    assert_eq!(stdout(&out), "", "{args:?}");
    stderr(&out).to_owned()
}

#[test]
fn prints_the_expansion_and_exits_zero() {
    assert_eq!(expands(&["plain"]), "plain\n");
    assert_eq!(
        expands(&["--env", "NAME=world", "hello, $NAME"]),
        "hello, world\n"
    );
    assert_eq!(expands(&["${UNSET:-default}"]), "default\n");
    assert_eq!(expands(&["'$NAME' \"x\""]), "$NAME x\n");
    // An empty expansion is an empty line, not nothing.
    assert_eq!(expands(&["$UNSET"]), "\n");
}

#[test]
fn env_flags_repeat_and_the_last_one_wins() {
    let args = [
        "--env",
        "A=1",
        "--env",
        "B=two words",
        "--env",
        "A=3",
        "$A/${B// /_}",
    ];
    assert_eq!(expands(&args), "3/two_words\n");
    // Only the first `=` separates the name from the value; the value may be empty.
    assert_eq!(
        expands(&["--env", "EQ=a=b", "--env", "E=", "$EQ:${E:-empty}"]),
        "a=b:empty\n"
    );
}

#[test]
fn words_mode_prints_one_word_per_line() {
    let out = expands(&[
        "--words",
        "--env",
        "PORTS=80/tcp  443",
        "$PORTS \"8080 x\" 9\\ 9",
    ]);
    assert_eq!(out, "80/tcp\n443\n8080 x\n9 9\n");
    assert_eq!(expands(&["--words", "   "]), "");
}

#[test]
fn backtick_escape() {
    assert_eq!(
        expands(&["--escape", "`", "C:\\Users\\`$HOME"]),
        "C:\\Users\\$HOME\n"
    );
    assert_eq!(
        expands(&["--escape", "`", "--env", "D=x", "\"``$D\""]),
        "`x\n"
    );
    // With the default escape, the backslash escapes instead.
    assert_eq!(expands(&["C:\\Users\\`$HOME"]), "C:Users`\n");
}

#[test]
fn words_that_start_with_a_dash_are_words() {
    assert_eq!(expands(&["--env", "V=1", "-Dv=$V"]), "-Dv=1\n");
}

#[test]
fn malformed_words_fail_on_stderr_with_exit_one() {
    let err = fails(&["ab${cd"]);
    assert!(err.contains("cannot expand \"ab${cd\""), "{err}");
    assert!(err.contains("expected '}'"), "{err}");
    assert!(err.contains("byte 2"), "{err}");

    for word in [
        "${}", "'open", "\"open", "${a:=b}", "${a/b", "${a#\\q}", "${x", "${{x}",
    ] {
        let err = fails(&[word]);
        assert!(err.starts_with("error: cannot expand"), "{word}: {err}");
    }
    let err = fails(&["--words", "a 'b"]);
    assert!(err.contains("unterminated single quote"), "{err}");
}

#[test]
fn required_variables_report_their_message() {
    let err = fails(&["${TOKEN:?set TOKEN to deploy}"]);
    assert!(err.contains("TOKEN: set TOKEN to deploy"), "{err}");
    assert_eq!(
        expands(&["--env", "TOKEN=t", "${TOKEN:?set TOKEN to deploy}"]),
        "t\n"
    );
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["--escape", "x", "w"][..],
        &["--env", "NOEQUALS", "w"][..],
        &[][..],
    ] {
        let out = hoist(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
}
