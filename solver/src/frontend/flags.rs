//! Instruction flags: checking them against what an instruction takes, and their errors.

use hoist_parser::{Flag, Span, Spanned};

use super::error::{FrontendError, FrontendErrorKind};

/// Flags by name, after checking them against what an instruction accepts.
pub(super) struct Flags<'a>(Vec<&'a Flag>);

impl<'a> Flags<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a Flag> {
        self.0.iter().copied().find(|f| f.name == name)
    }

    pub(super) fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a Flag> + 's {
        self.0.iter().copied().filter(move |f| f.name == name)
    }

    pub(super) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Checks flags against the names an instruction accepts; only `repeatable` ones may repeat.
pub(super) fn check_flags<'a>(
    flags: &'a [Flag],
    instruction: &'static str,
    allowed: &[&str],
    repeatable: &[&str],
) -> Result<Flags<'a>, FrontendError> {
    let expected: &'static str = match instruction {
        "FROM" => "--platform",
        "RUN" => "--mount, --network, --security",
        "COPY" => "--from, --chown, --chmod, --link, --parents, --exclude",
        "ADD" => "--chown, --chmod, --link, --exclude, --keep-git-dir, --checksum, --unpack",
        "HEALTHCHECK" => "--interval, --timeout, --start-period, --start-interval, --retries",
        _ => "no flags",
    };
    for (i, flag) in flags.iter().enumerate() {
        if !allowed.contains(&flag.name.as_str()) {
            return Err(FrontendError::new(
                FrontendErrorKind::UnknownFlag {
                    flag: flag.name.clone(),
                    instruction,
                    expected,
                },
                flag.span,
            ));
        }
        if !repeatable.contains(&flag.name.as_str())
            && flags[..i].iter().any(|f| f.name == flag.name)
        {
            return Err(FrontendError::new(
                FrontendErrorKind::DuplicateFlag {
                    flag: flag.name.clone(),
                    instruction,
                },
                flag.span,
            ));
        }
    }
    Ok(Flags(flags.iter().collect()))
}

/// Maps a word-expansion error to one located at the word.
pub(super) fn expand_error(
    word: &str,
    span: Span,
) -> impl FnOnce(hoist_parser::shell::ExpandError) -> FrontendError + '_ {
    move |source| {
        FrontendError::new(
            FrontendErrorKind::Expand {
                word: word.to_owned(),
                source,
            },
            span,
        )
    }
}

pub(super) fn flag_value(flag: &Flag, value: String, reason: &str) -> FrontendError {
    FrontendError::new(
        FrontendErrorKind::FlagValue {
            flag: flag.name.clone(),
            value,
            reason: reason.to_owned(),
        },
        flag.span,
    )
}

pub(super) fn required<'a>(
    value: Option<&'a Spanned<String>>,
    instruction: &'static str,
    expected: &'static str,
    span: Span,
) -> Result<&'a Spanned<String>, FrontendError> {
    value.ok_or_else(|| {
        FrontendError::new(
            FrontendErrorKind::Arity {
                instruction,
                expected,
            },
            span,
        )
    })
}
