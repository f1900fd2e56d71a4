//! The remote client: `hoist build --remote` and the commands that talk to a `hoist serve`.

pub(crate) mod build;
pub(crate) mod connect;
pub(crate) mod tree;
pub(crate) mod upload;
