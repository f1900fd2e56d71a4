pub(crate) mod tree;
pub(crate) mod upload;
