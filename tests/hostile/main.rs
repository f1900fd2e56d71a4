//! Hostile and faulty inputs, as an attacker or an operator would try them against `hoist`: one
//! module per theme, each test named for what broke. The next hostile run adds its cases here.
//! Needs root (namespaces, overlay, cgroups, loop devices).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod crash;
mod devices;
mod disk;
mod files;
mod network;
mod registry;
mod scale;
