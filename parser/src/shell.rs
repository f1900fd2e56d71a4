//! Word expansion with the semantics of BuildKit's shell lexer.
