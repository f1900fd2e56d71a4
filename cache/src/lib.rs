//! Content and cache: blobs by digest, snapshots, layers, and image layouts.
#![forbid(unsafe_code)]

mod apply;
mod compress;
mod diff;
mod digest;
mod store;
mod tarwriter;

pub use oci_spec;

pub use apply::{
    ApplyError, ApplyOptions, ApplyReport, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX,
    WhiteoutMode, apply_layer,
};
pub use compress::{Compression, CompressionOptions, LayerDigests, LayerWriter, decompress};
pub use diff::{
    Change, DiffError, DiffOptions, diff_changes, diff_upperdir, store_changes_layer,
    store_upperdir_layer,
};
pub use digest::sha256_of;
pub use store::{BlobStore, BlobWriter, StoreError};
