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

/// The OCI runtimes a security case runs under: hoist's own, and runc (`--runtime`).
fn runtimes() -> [&'static str; 2] {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("runc is missing: apt-get install runc");
    ["builtin", runc]
}
