//! The build service's wire types: `.proto` files and the tonic/prost code generated from them,
//! shared by `hoist serve` and remote clients (`hoist build --remote`).
//!
//! Nothing is defined here yet.
#![forbid(unsafe_code)]
