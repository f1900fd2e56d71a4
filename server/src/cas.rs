//! The `Cas` service: blobs and the Merkle trees of uploaded build contexts.
//!
//! (Being written.)
