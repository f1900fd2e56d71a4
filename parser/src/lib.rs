//! The Dockerfile parser.
//!
//! Data flow: source text → [`parse`] → [`Dockerfile`]. Parsing first reads the parser
//! directives at the top (`syntax`, `escape`, `check`; see [`directives`]), which fix the escape
//! character for the rest of the file. The grammar then splits the text into logical lines
//! (joining line continuations, dropping comment lines inside them), and turns each into a typed
//! [`Instruction`] that carries a byte [`Span`] into the source. Heredoc bodies (`<<EOF`) are
//! taken from the lines that follow their instruction ([`heredoc`]).
//!
//! The AST is not expanded: variables stay as written. Word expansion with BuildKit's shell-lexer
//! semantics lives in [`shell`], and the solver applies it to exactly the instructions where
//! BuildKit expands. [`ignore`] implements `.dockerignore` patterns; [`dump`] prints the AST in
//! BuildKit's test dump format, which the conformance suite compares byte for byte.
//!
//! [`lint`] holds the build checks (BuildKit's linter rules) that need only the file, and the
//! `check` directive's configuration that the solver's checks share.
//!
//! Errors are [`ParseError`]s that carry a span; [`LineIndex`] turns a span into `line:column`
//! only when an error is shown.
#![forbid(unsafe_code)]

pub mod ast;
pub mod directives;
pub mod dump;
pub mod error;
mod grammar;
pub mod heredoc;
pub mod ignore;
mod json;
pub mod lint;
pub mod pathmatch;
pub mod shell;

pub use ast::*;
pub use error::{LineIndex, ParseError, ParseErrorKind};
pub use grammar::parse;
