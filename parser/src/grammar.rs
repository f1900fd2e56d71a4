//! The Dockerfile grammar (being written).

use crate::ast::{Dockerfile, Span};
use crate::error::{ParseError, ParseErrorKind};

/// Parses a Dockerfile.
///
/// # Errors
/// A [`ParseError`] with the span of the offending text.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    Err(ParseError::new(
        ParseErrorKind::NoInstructions,
        Span::new(0, source.len()),
    ))
}
