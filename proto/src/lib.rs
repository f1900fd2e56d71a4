//! The build service's wire types: `hoist.v1`, generated from `hoist/v1/*.proto` by
//! tonic-prost-build (compiled with protox), shared by `hoist serve` and remote clients
//! (`hoist build --remote`).
#![forbid(unsafe_code)]

/// `hoist.v1`: the Cas and Control services and their messages.
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hoist.v1.rs"));
}
