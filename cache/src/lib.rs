//! Content and cache: blobs by digest, snapshots, layers, and the cache index.
//!
//! Data flow: registry blobs land in the content store (`blobs/sha256/<hex>`), verified on the
//! way in. A `Layer` (a tar diff with OCI whiteouts) is applied once into a `Snapshot` directory
//! that stacks as an overlay lowerdir. After a step, the changes (an overlay upperdir, or an
//! explicit change list for COPY-like steps) become a new deterministic layer tar, compressed in
//! one streaming pass that also yields its diffID, digest and size. The cache index maps a
//! `CacheKey` to the `Result` that the step produced.
//!
//! Nothing is implemented here yet; see issue "Image I/O".
#![forbid(unsafe_code)]
