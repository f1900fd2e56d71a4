//! sha256 digests as oci-spec `Digest` values.

use std::str::FromStr;

use oci_spec::image::Digest;

/// The `sha256:<hex>` digest of a finished hash.
#[allow(
    clippy::expect_used,
    reason = "64 lowercase hex digits always form a valid sha256 digest; no input reaches this"
)]
pub(crate) fn sha256_digest(hash: &[u8; 32]) -> Digest {
    Digest::from_str(&format!("sha256:{}", hex::encode(hash))).expect("valid sha256 digest")
}

/// The sha256 digest of `bytes`.
#[must_use]
pub fn sha256_of(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha256_digest(&sha2::Sha256::digest(bytes).into())
}
