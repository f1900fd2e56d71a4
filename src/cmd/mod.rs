//! One module per subcommand. Each exposes its clap arguments and a `run` that returns the exit
//! code, or an error that `report` renders.

pub(crate) mod build;
pub(crate) mod debug;
pub(crate) mod engine;
pub(crate) mod image;
pub(crate) mod parse;
pub(crate) mod run;

use std::io::Write as _;

/// Renders an error and its causes on stderr, once, at the edge.
pub(crate) fn report(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
}
