//! BuildKit's AST dump format (being written).

use crate::ast::Dockerfile;

/// Prints the AST as BuildKit's parser tests do, one line per instruction.
#[must_use]
pub fn dump(file: &Dockerfile, _source: &str) -> String {
    format!("{} instructions\n", file.instructions.len())
}
