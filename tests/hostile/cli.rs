//! Command-line input that must be refused, or read as docker reads it.
