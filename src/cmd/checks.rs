//! Build check warnings as the user sees them: after a build on stderr, as the result of
//! `hoist build --check` on stdout, and in `--metadata-file` under buildx's key.

use std::io::Write;

/// One warning, local or from a server.
#[derive(Clone, Debug)]
pub(crate) struct Shown {
    pub(crate) rule: String,
    pub(crate) line: usize,
    pub(crate) message: String,
    pub(crate) url: String,
}

impl From<&hoist_parser::lint::Warning> for Shown {
    fn from(w: &hoist_parser::lint::Warning) -> Self {
        Self {
            rule: w.rule.to_owned(),
            line: w.line,
            message: w.message.clone(),
            url: w.url.to_owned(),
        }
    }
}

impl From<hoist_proto::v1::BuildWarning> for Shown {
    fn from(w: hoist_proto::v1::BuildWarning) -> Self {
        Self {
            rule: w.rule,
            line: usize::try_from(w.line).unwrap_or(usize::MAX),
            message: w.message,
            url: w.url,
        }
    }
}

/// `NAME:LINE RULE: message`, the line as written, and the rule's page.
pub(crate) fn write_warnings(
    out: &mut dyn Write,
    warnings: &[Shown],
    name: &str,
    source: Option<&str>,
) -> std::io::Result<()> {
    let lines: Vec<&str> = source.map(|s| s.lines().collect()).unwrap_or_default();
    for w in warnings {
        writeln!(out, "{name}:{} {}: {}", w.line, w.rule, w.message)?;
        if let Some(text) = w.line.checked_sub(1).and_then(|i| lines.get(i)) {
            writeln!(out, " {:>4} | {text}", w.line)?;
        }
        writeln!(out, "       see {}", w.url)?;
    }
    Ok(())
}

/// After a build: how many checks failed, then each, on stderr.
pub(crate) fn print_after_build(
    warnings: &[Shown],
    name: &str,
    source: Option<&str>,
) -> std::io::Result<()> {
    if warnings.is_empty() {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "{}:", count(warnings.len()))?;
    write_warnings(&mut err, warnings, name, source)
}

/// `N warnings found` / `1 warning found`.
pub(crate) fn count(n: usize) -> String {
    if n == 1 {
        "1 build check warning found".to_owned()
    } else {
        format!("{n} build check warnings found")
    }
}

/// The warnings as `--metadata-file` records them under buildx's `buildx.build.warnings`; the
/// texts are plain strings, where buildx writes base64 bytes.
pub(crate) fn metadata(warnings: &[Shown], name: &str) -> serde_json::Value {
    warnings
        .iter()
        .map(|w| {
            serde_json::json!({
                "level": 1,
                "rule": w.rule,
                "short": format!("{}: {} (line {})", w.rule, w.message, w.line),
                "url": w.url,
                "sourceInfo": { "filename": name },
                "range": [{ "start": { "line": w.line }, "end": { "line": w.line } }],
            })
        })
        .collect()
}
