//! The rules of `.dockerignore`, one table per rule. Each row is what `docker build` does with
//! that pattern and path.

use super::*;

/// Asserts, for each `(patterns, path, excluded)` row, what [`Matcher::matches`] says.
#[track_caller]
fn check(rows: &[(&[&str], &str, bool)]) {
    let mut failures = Vec::new();
    for &(patterns, path, excluded) in rows {
        let matcher = Matcher::new(patterns.iter().copied())
            .unwrap_or_else(|e| panic!("patterns {patterns:?}: {e}"));
        if matcher.matches(path) != excluded {
            failures.push(format!(
                "patterns {patterns:?}, path {path:?}: expected excluded={excluded}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn star_matches_within_one_component() {
    check(&[
        (&["*"], "file", true),
        (&["*"], "dir/file", true), // through the parent `dir`
        (&["*.go"], "main.go", true),
        (&["*.go"], "main.rs", false),
        (&["*.go"], "cmd/main.go", false),
        (&["*/*.go"], "cmd/main.go", true),
        (&["*/*.go"], "cmd/sub/main.go", false),
        (&["a*/b"], "abc/b", true),
        (&["a*/b"], "a/c/b", false),
        (&["*c"], "abc", true),
        (&["a*b*c*d*e*/f"], "axbxcxdxexxx/f", true),
        (&["a*b*c*d*e*/f"], "axbxcxdxe/xxx/f", false),
        (&["*x"], "xxx", true),
        (&["a*b"], "a/b", false),
    ]);
}

#[test]
fn question_mark_matches_one_character_but_slash() {
    check(&[
        (&["abc?def"], "abcZdef", true),
        (&["abc?def"], "abcdef", false),
        (&["a?b"], "a/b", false),
        (&["a?b"], "a☺b", true), // one character, not one byte
        (&["a???b"], "a☺b", false),
        (&["a*b?c*x"], "abxbbxdbxebxczzx", true),
        (&["a*b?c*x"], "abxbbxdbxebxczzy", false),
    ]);
}

#[test]
fn classes_follow_filepath_match() {
    check(&[
        (&["a[b-d]e"], "ace", true),
        (&["a[b-d]e"], "aae", false),
        (&["a[b-d]e"], "ae", false),
        (&["a[^b-d]e"], "aze", true),
        (&["a[^b-d]e"], "ace", false),
        (&["ab[c]"], "abc", true),
        (&["[\\]a]"], "]", true),
        (&["[\\-x]"], "-", true),
        (&["[x\\-]"], "z", false),
        (&["[a-ζ]*"], "α", true),
        (&["*[a-ζ]"], "A", false),
        (&["a[^a]b"], "a☺b", true),
        // `!` does not negate a class in Go, it is one more member.
        (&["[!a]x"], "!x", true),
        (&["[!a]x"], "bx", false),
        // Inside a class, `*` and `?` are plain characters.
        (&["[*?]"], "*", true),
        (&["[*?]"], "x", false),
    ]);
}

#[test]
fn escapes_make_the_next_character_literal() {
    check(&[
        (&["a\\*b"], "a*b", true),
        (&["a\\*b"], "ab", false),
        (&["a\\*b"], "axb", false),
        (&["a\\\\"], "a\\", true),
        (&["\\[x]"], "[x]", true),
        (&["f\\?"], "f?", true),
        (&["f\\?"], "fx", false),
    ]);
}

#[test]
fn regexp_characters_are_literal() {
    check(&[
        (&["abc.def"], "abc.def", true),
        (&["abc.def"], "abcZdef", false),
        (&[".*"], ".foo", true),
        (&[".*"], "foo", false),
        (&["a(b)c/def"], "a(b)c/def", true),
        (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
        (&["*.|)$(}+{bc"], "a.|)$(}+{bc", true),
        (
            &["dist/*.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        (&["a]b"], "a]b", true),
        (&["a^b"], "a^b", true),
    ]);
}

#[test]
fn caret_in_a_wildcard_pattern_anchors_at_the_start() {
    // patternmatcher passes `^` to Go's regexp, where it is the start-of-text anchor.
    check(&[
        (&["*^x"], "x", true),
        (&["*^x"], "a^x", false),
        (&["^a*"], "abc", true),
    ]);
}

#[test]
fn double_star_matches_any_depth() {
    check(&[
        (&["**"], "file", true),
        (&["**"], "dir/file", true),
        (&["**/"], "file", true),
        (&["**/**"], "dir/file", true),
        (&["dir/**"], "dir/file", true),
        (&["dir/**"], "dir/dir2/file", true),
        (&["dir/**"], "dir", false),
        (&["dir/**"], "dirt/file", false),
        (&["**/dir"], "dir", true),
        (&["**/dir"], "dir/file", true),
        (&["**/dir"], "a/b/dir", true),
        (&["**/dir"], "a/bdir", false),
        (&["**/dir2/*"], "dir/dir2/file", true),
        (&["**/dir2/**"], "dir/dir2/dir3/file", true),
        (&["**/*.txt"], "file.txt", true),
        (&["**/*.txt"], "a/b/file.txt", true),
        (&["**/**/*.txt"], "dir/dir/file.txt", true),
        (&["**/**/*.txt2"], "dir/dir/file.txt", false),
        (&["a**/*.txt"], "a/file.txt", true),
        (&["a**/*.txt"], "a/dir/dir/file.txt", true),
        (&["a/*.txt**"], "a/file.txt", true),
        (&["a/**/b"], "a/b", true),
        (&["a/**/b"], "a/x/y/b", true),
        (&["a/**/b"], "a/xb", false),
        (&["**/.foo"], ".foo", true),
        (&["**/.foo"], "bar.foo", false),
        (&["**/foo/bar"], "dir/dir2/foo/bar", true),
        // A leading `**` with only literal text after it is a suffix test in Go, so it
        // matches inside a component too; elsewhere `**` only spans whole components.
        (&["**file"], "dir/file", true),
        (&["**file"], "dir/myfile", true),
        (&["a/**file"], "a/myfile", false),
        (&["a/**file"], "a/b/file", true),
        // A trailing `**` with only literal text before it is a prefix test.
        (&["abc**"], "abcdef", true),
        (&["abc**"], "abc/def", true),
    ]);
}

#[test]
fn wildcards_do_not_cross_a_newline_where_go_regexp_would_not() {
    // Go's `.` excludes `\n`, so `(.*/)?` cannot skip a component holding one.
    check(&[
        (&["**/x*"], "a\nb/xy", false),
        (&["**/x*"], "ab/xy", true),
        (&["*"], "a\nb", true), // `[^/]` does include `\n`
    ]);
}

#[test]
fn a_pattern_matching_a_directory_excludes_everything_inside() {
    check(&[
        (&["docs"], "docs/README.md", true),
        (&["docs"], "docs/a/b/c", true),
        (&["docs"], "docsx/README.md", false),
        (&["a/b"], "a/b/c/d", true),
        (&["a/b"], "a/bc", false),
        (&["*/b"], "a/b/c", true),
        (&["d?cs"], "docs/x", true),
        (&["[a-c]"], "b/x", true),
    ]);
}

#[test]
fn last_match_wins_and_exceptions_reinclude() {
    check(&[
        (&["*.go", "!main.go"], "main.go", false),
        (&["*.go", "!main.go"], "util.go", true),
        (&["!main.go", "*.go"], "main.go", true),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs", "!docs/README.md"], "docs/other.md", true),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (
            &["**", "!dist/*.whl"],
            "dist/x-1.0+local-py3-none-any.whl",
            false,
        ),
        (&["a", "!a/b", "a/b/c"], "a/b/c/d", true),
        (&["a", "!a/b", "a/b/c"], "a/b/x", false),
        // An exception that matches a parent re-includes its children too.
        (&["a/b", "!a"], "a/b/c", false),
    ]);
}

#[test]
fn no_patterns_and_the_root_exclude_nothing() {
    check(&[
        (&[], "file", false),
        (&["*"], ".", false),
        (&["*"], "", false),
    ]);
}

#[test]
fn patterns_are_trimmed_and_cleaned() {
    check(&[
        (&["  docs  "], "docs/x", true),
        (&["./docs"], "docs", true),
        (&["docs/"], "docs", true),
        (&["a//b"], "a/b", true),
        (&["a/./b"], "a/b", true),
        (&["a/../b"], "b", true),
        (&["a/../b"], "a", false),
        (&["docs", "  !docs/x  "], "docs/x", false),
        (&["", "   "], "x", false),
    ]);
}

#[test]
fn clean_follows_go_filepath_clean() {
    for (input, expected) in [
        ("", "."),
        (".", "."),
        ("a/", "a"),
        ("a//b///c", "a/b/c"),
        ("./a/./b/.", "a/b"),
        ("a/b/../c", "a/c"),
        ("a/../..", ".."),
        ("../../a", "../../a"),
        ("/../a", "/a"),
        ("/", "/"),
        ("//", "/"),
        ("!a/..", "."),
        ("!/x", "!/x"),
    ] {
        assert_eq!(clean(input), expected, "clean({input:?})");
    }
}

#[test]
fn malformed_patterns_are_errors_that_name_the_pattern() {
    for pattern in [
        "[",
        "[^",
        "[^bc",
        "a[",
        "[]a]",
        "[-]",
        "[x-]",
        "[-x]",
        "[a-b-c]",
        "\\",
        "ab\\",
        "[a\\",
        "[z-a]",
        "[Local-Only]/",
    ] {
        let err = Matcher::new([pattern]).expect_err(pattern);
        assert!(
            matches!(&err, IgnoreError::InvalidPattern { pattern: p, line: None, .. } if p == pattern),
            "{pattern:?}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("{pattern:?}")), "{err}");
    }
    let err = Matcher::new(["a", "!"]).unwrap_err();
    assert!(
        matches!(err, IgnoreError::EmptyException { line: None }),
        "{err:?}"
    );
}

#[test]
fn a_malformed_pattern_in_a_file_is_reported_with_its_line() {
    let err = Matcher::new(parse_ignore_file("# ok\nsrc\n\nlib/[abc\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid ignore pattern \"lib/[abc\" on line 4: character class opened with [ is never \
         closed with ]"
    );
    let err = Matcher::new(parse_ignore_file("a\n  !  \n")).unwrap_err();
    assert!(
        matches!(err, IgnoreError::EmptyException { line: Some(2) }),
        "{err:?}"
    );
}

#[test]
fn ignore_file_lines_are_read_like_ignorefile_readall() {
    let text = "\u{feff}test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n ! /inverted/abs/path\n!\n! \n  # not a comment\r\n./x/../y/\n/\nlast-without-newline";
    let got: Vec<(String, Option<usize>)> = parse_ignore_file(text)
        .into_iter()
        .map(|p| (p.text, p.line))
        .collect();
    let want = [
        ("test1", 1),
        ("test2", 2),
        ("a/file/here", 3),
        ("lastfile", 5),
        ("!inverted/abs/path", 7),
        ("!", 8),
        ("!", 9),
        ("# not a comment", 10),
        ("y", 11),
        ("/", 12),
        ("last-without-newline", 13),
    ];
    let want: Vec<(String, Option<usize>)> =
        want.iter().map(|&(t, l)| (t.to_owned(), Some(l))).collect();
    assert_eq!(got, want);
}

#[test]
fn a_bom_only_counts_at_the_start_and_crlf_lines_work() {
    let got: Vec<String> = parse_ignore_file("\u{feff}#c\r\na\r\nb\r\n")
        .into_iter()
        .map(|p| p.text)
        .collect();
    assert_eq!(got, ["a", "b"]);
    let m = Matcher::new(parse_ignore_file(
        "/node_modules\r\n!/node_modules/keep\r\n",
    ))
    .unwrap();
    assert!(m.matches("node_modules/x"));
    assert!(!m.matches("node_modules/keep"));
}

#[test]
fn dir_decision_prunes_only_when_no_later_exception_can_reach_inside() {
    let cases: &[(&[&str], &str, DirDecision)] = &[
        (&["docs"], "docs", DirDecision::Excluded),
        (&["docs"], "src", DirDecision::Included),
        (
            &["docs", "!docs/README.md"],
            "docs",
            DirDecision::MustDescend,
        ),
        (&["docs", "!src/x"], "docs", DirDecision::Excluded),
        // The exception comes before the pattern that excludes the directory: it cannot win.
        (&["!docs/README.md", "docs"], "docs", DirDecision::Excluded),
        (&["docs", "!docs"], "docs", DirDecision::Included),
        (&["**", "!*.md"], "docs", DirDecision::Excluded),
        (&["**", "!**/*.md"], "docs", DirDecision::MustDescend),
        (&["**", "!*/*.md"], "docs", DirDecision::MustDescend),
        (&["**", "!*/*.md"], "docs/sub", DirDecision::Excluded),
        (&["**", "!**.md"], "docs", DirDecision::MustDescend),
        // `docs/**` re-includes what is inside docs, not docs itself.
        (&["**", "!docs/**"], "docs", DirDecision::MustDescend),
        (&["**", "!docs/**"], "docsx", DirDecision::Excluded),
        (&["**", "!doc**"], "docs", DirDecision::Included),
        (&["**", "!d**"], "x", DirDecision::Excluded),
        (&["**", "!a/b/c"], "a", DirDecision::MustDescend),
        (&["**", "!a/b/c"], "a/b", DirDecision::MustDescend),
        (&["**", "!a/b/c"], "a/b/c", DirDecision::Included),
        (&["**", "!a/b/c"], "a/x", DirDecision::Excluded),
        (&["**", "!a/[bc]/d"], "a/c", DirDecision::MustDescend),
        (&["**", "!a/[bc]/d"], "a/e", DirDecision::Excluded),
        (&["a", "!a/b", "a/b/c"], "a/b/c", DirDecision::Excluded),
        (
            &["a", "!a/b", "a/b/c", "!a/b/c/keep"],
            "a/b/c",
            DirDecision::MustDescend,
        ),
    ];
    let mut failures = Vec::new();
    for &(patterns, dir, want) in cases {
        let got = Matcher::new(patterns.iter().copied())
            .unwrap()
            .dir_decision(dir);
        if got != want {
            failures.push(format!("{patterns:?} {dir:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Walks a small tree two ways, pruning by [`Matcher::dir_decision`] and checking every path
/// with [`Matcher::matches`], and asserts that pruning never loses an included path.
#[test]
fn pruning_agrees_with_matching_every_path() {
    let tree = [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/keep",
        "a/b/d.md",
        "a/x.md",
        "docs",
        "docs/README.md",
        "docs/sub",
        "docs/sub/y.md",
        "docs/sub/z.txt",
        "src",
        "src/main.rs",
        "x.md",
    ];
    let pattern_sets: &[&[&str]] = &[
        &["docs"],
        &["docs", "!docs/README.md"],
        &["**", "!**/*.md"],
        &["**", "!*/*.md"],
        &["*", "!a/b"],
        &["a", "!a/b", "a/b/c", "!a/b/c/keep"],
        &["**", "!d**"],
        &["**/sub", "!docs/sub/*.md"],
    ];
    for &patterns in pattern_sets {
        let m = Matcher::new(patterns.iter().copied()).unwrap();
        let every: Vec<&str> = tree.iter().copied().filter(|p| !m.matches(p)).collect();
        let mut walked = Vec::new();
        for path in tree {
            let pruned = tree.iter().any(|dir| {
                path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
                    && m.dir_decision(dir) == DirDecision::Excluded
            });
            if !pruned && !m.matches(path) {
                walked.push(path);
            }
        }
        assert_eq!(walked, every, "{patterns:?}");
    }
}

/// A directory removed on drop (the crate has no `tempfile` dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hoist-ignore-test-{}-{n}", std::process::id()));
        let _ = fs_err::remove_dir_all(&path);
        fs_err::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(&self.0);
    }
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let dir = TempDir::new();
    let root = dir.path();
    assert!(
        read_dockerignore(root, Some(Path::new("Dockerfile")))
            .unwrap()
            .is_none()
    );

    fs_err::write(root.join(".dockerignore"), "*.log\n").unwrap();
    let m = read_dockerignore(root, Some(Path::new("Dockerfile")))
        .unwrap()
        .unwrap();
    assert!(m.matches("a.log"));

    fs_err::create_dir(root.join("build")).unwrap();
    fs_err::write(root.join("build/app.Dockerfile.dockerignore"), "*.tmp\n").unwrap();
    let m = read_dockerignore(root, Some(Path::new("build/app.Dockerfile")))
        .unwrap()
        .unwrap();
    assert!(m.matches("a.tmp"));
    assert!(
        !m.matches("a.log"),
        "the specific file replaces .dockerignore, it does not add"
    );

    // An absolute Dockerfile path works too, and a Dockerfile without its own file falls back.
    let m = read_dockerignore(root, Some(&root.join("build/other.Dockerfile")))
        .unwrap()
        .unwrap();
    assert!(m.matches("a.log"));
}

#[test]
fn unreadable_and_malformed_ignore_files_are_errors_naming_the_path_or_line() {
    let dir = TempDir::new();
    let root = dir.path();
    fs_err::write(root.join(".dockerignore"), b"ok\n\xff\n").unwrap();
    let err = read_dockerignore(root, Some(Path::new("Dockerfile"))).unwrap_err();
    assert!(matches!(&err, IgnoreError::NotUtf8 { path } if path == &root.join(".dockerignore")));

    fs_err::write(root.join(".dockerignore"), "ok\n[\n").unwrap();
    let err = read_dockerignore(root, Some(Path::new("Dockerfile"))).unwrap_err();
    assert!(err.to_string().contains("on line 2"), "{err}");

    fs_err::remove_file(root.join(".dockerignore")).unwrap();
    fs_err::create_dir(root.join(".dockerignore")).unwrap();
    let err = read_dockerignore(root, Some(Path::new("Dockerfile"))).unwrap_err();
    assert!(matches!(&err, IgnoreError::Read { path, .. } if path.ends_with(".dockerignore")));
}

#[test]
fn hostile_patterns_match_in_linear_time() {
    // A backtracking matcher takes exponential time here.
    let pattern = "*a".repeat(30) + "b";
    let path = "a".repeat(5000);
    let m = Matcher::new([pattern.as_str(), "!**/**/**/**/**/**/**/**/x"]).unwrap();
    assert!(!m.matches(&path));
    assert_eq!(m.dir_decision(&path), DirDecision::Included);
}
