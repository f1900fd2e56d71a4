//! Cache keys: a vertex digest with its content made concrete.
//!
//! A vertex digest ([`VertexDigest`]) names the work as written: a `Local` source by the
//! patterns it selects, an image by its reference. Its [`CacheKey`] names the work as it will
//! actually be done. The key of a vertex is sha256 over
//!
//! 1. a version tag,
//! 2. the vertex digest,
//! 3. the vertex's *content key*, if its worker supplied one
//!    ([`Worker::content_key`](super::Worker::content_key)): the content hash of the context
//!    files a `Local` source selects, the manifest digest an image resolved to, and
//! 4. the cache keys of its inputs, in input order.
//!
//! Content keys are computed for all vertices before any key, and keys in topological order,
//! so a changed context file changes the key of the source that selects it and of everything
//! built on that source, and nothing else. Nothing of the session, the host or the clock enters
//! a key; the worker must keep it that way for content keys (hash bytes and modes, never
//! mtimes).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::graph::VertexDigest;

/// The key under which a vertex's result is cached and its in-flight work is shared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of a vertex with digest `digest`, content key `content` and input keys `inputs`.
    #[must_use]
    pub fn compute(digest: &VertexDigest, content: Option<&str>, inputs: &[CacheKey]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"hoist.cachekey.v1\0");
        hasher.update(digest.0);
        match content {
            // Length-prefixed, so that no content key can run into the input keys after it.
            Some(content) => {
                hasher.update([1]);
                hasher.update((content.len() as u64).to_be_bytes());
                hasher.update(content.as_bytes());
            }
            None => hasher.update([0]),
        }
        hasher.update((inputs.len() as u64).to_be_bytes());
        for input in inputs {
            hasher.update(input.0);
        }
        Self(hasher.finalize().into())
    }

    /// The lowercase hex of the key, without the `sha256:` prefix.
    #[must_use]
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses `sha256:<64 hex>` (or the bare hex), as [`fmt::Display`] writes it.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey(sha256:{})", &self.hex()[..12])
    }
}

impl Serialize for CacheKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CacheKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid cache key {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> VertexDigest {
        VertexDigest([n; 32])
    }

    #[test]
    fn every_part_counts() {
        let base = CacheKey::compute(&digest(1), None, &[]);
        assert_ne!(base, CacheKey::compute(&digest(2), None, &[]));
        assert_ne!(base, CacheKey::compute(&digest(1), Some(""), &[]));
        let a = CacheKey::compute(&digest(1), Some("sha256:aa"), &[]);
        assert_ne!(a, CacheKey::compute(&digest(1), Some("sha256:ab"), &[]));
        let k1 = CacheKey::compute(&digest(9), None, &[]);
        let k2 = CacheKey::compute(&digest(8), None, &[]);
        assert_ne!(
            CacheKey::compute(&digest(3), None, &[k1, k2]),
            CacheKey::compute(&digest(3), None, &[k2, k1]),
            "input order counts"
        );
        assert_eq!(a, CacheKey::compute(&digest(1), Some("sha256:aa"), &[]));
    }

    #[test]
    fn text_form_round_trips() {
        let key = CacheKey::compute(&digest(7), Some("x"), &[]);
        let text = key.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71, "{text}");
        assert_eq!(CacheKey::parse(&text), Some(key));
        assert_eq!(CacheKey::parse(&key.hex()), Some(key));
        assert_eq!(CacheKey::parse("sha256:xyz"), None);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<CacheKey>(&json).unwrap(), key);
    }
}
