//! Here-documents (being written).

/// Strips leading tabs from every line of a `<<-` heredoc body.
#[must_use]
pub fn chomp(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}
