//! `.dockerignore` patterns with the semantics of Go's `patternmatcher`.
