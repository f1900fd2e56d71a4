//! `.dockerignore` reading, compiling and matching on arbitrary input.
//!
//! Input: an ignore file, a NUL byte, then paths separated by newlines. Beyond "never panics",
//! it checks the promise a context walker relies on: [`DirDecision::Excluded`] prunes a
//! directory only when every path inside it is excluded, and the decision agrees with
//! [`Matcher::matches`] on the directory itself.
#![no_main]
// `fuzz_target!` expands to a `std::fs::File::create` (libfuzzer-sys writes its debug output
// with it), which the workspace clippy.toml bans for project code.
#![allow(clippy::disallowed_methods)]

use hoist_parser::ignore::{DirDecision, Matcher, parse_ignore_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (file, paths) = input.split_once('\0').unwrap_or((input, ""));
    let Ok(matcher) = Matcher::new(parse_ignore_file(file)) else {
        return;
    };
    // The walker only asks about clean relative paths.
    let paths: Vec<&str> = paths
        .split('\n')
        .filter(|p| !p.is_empty() && p.split('/').all(|c| !matches!(c, "" | "." | "..")))
        .take(64)
        .collect();
    for dir in &paths {
        let decision = matcher.dir_decision(dir);
        assert_eq!(
            decision == DirDecision::Included,
            !matcher.matches(dir),
            "dir_decision({dir:?}) = {decision:?} disagrees with matches"
        );
        if decision != DirDecision::Excluded {
            continue;
        }
        for path in &paths {
            if path
                .strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
            {
                assert!(
                    matcher.matches(path),
                    "{dir:?} was pruned but {path:?} inside it is not excluded"
                );
            }
        }
    }
});
