//! Content and cache: blobs by digest, snapshots, layers, and image layouts.
//!
//! # Data flow
//!
//! ```text
//!  registry pull ──► BlobStore::writer(expected) ──► blobs/sha256/<hex>   (verified, atomic)
//!                                                       │
//!                       SnapshotStore::unpack ◄─────────┘  apply_layer, overlay whiteouts
//!                                │
//!                                ▼
//!              snapshots/sha256/<diffID>  ── overlay lowerdirs for RUN ──► upperdir
//!                                                                           │
//!   diff_upperdir / diff_changes ◄──────────────────────────────────────────┘
//!        │  deterministic tar ─► LayerWriter (diffID, gzip∥ or zstd-mt, digest, size)
//!        ▼
//!   BlobStore ──► write_image (config + manifest) ──► ImageStore::tag (index.json)
//!                                                        │
//!        exporters: OCI dir / OCI tar / docker tar / rootfs ◄┘   registry push reads blobs
//! ```
//!
//! # Principal types
//!
//! - [`content`]: the content types every crate shares: oci-spec's validated [`Digest`]
//!   (re-exported; no digest travels as a string), the media types, and the
//!   [`content::ContentStore`] trait a registry pull writes into and a push reads from.
//! - [`BlobStore`]: content-addressed blobs under `<root>/blobs/sha256/<hex>`, the one
//!   [`content::ContentStore`]. Writers hash while streaming and rename into place only when
//!   the digest matches ([`BlobWriter`]).
//! - [`apply_layer`]: a layer blob (gzip, zstd or plain, detected by magic bytes) extracted into
//!   a directory; hostile names are refused (see [`ApplyError`]). [`WhiteoutMode`] picks overlay
//!   form (snapshots) or deletion (flattening).
//! - [`SnapshotStore`]: each layer unpacked once, keyed by diffID.
//! - [`diff_upperdir`] / [`diff_changes`]: a new layer from an overlay upperdir or a change list,
//!   as a deterministic tar, through [`LayerWriter`] which yields [`LayerDigests`] in one pass.
//! - [`write_image`] / [`Image`]: config (with `rootfs.diff_ids`, history, Docker's
//!   Healthcheck/OnBuild/Shell) and manifest, OCI or Docker schema 2 ([`MediaTypes`]).
//! - [`ImageStore`]: the local store, an OCI image layout at the state root with names in
//!   `index.json`, and the exporters.
//! - [`archive`]: Dockerfile `ADD` of a local tar (plain, gzip, bzip2, xz or zstd): detection
//!   by content as Docker does, and extraction with the same confinement as layer apply.
//! - [`context`], [`copy`] and [`index`]: build-context selection and hashing, COPY/ADD file
//!   operations without a container, and the cache index (redb) from cache key to result.
//! - [`gc`]: what the state root holds record by record, the leases of running builds, and
//!   the collector that removes the least recently used records.
//!
//! # State root layout
//!
//! `blobs/sha256/<hex>` (content), `oci-layout` and `index.json` (the image layout and its
//! names), `snapshots/sha256/<diffID>` (unpacked layers), and `tmp/proc-<id>/`, each process's
//! [`scratch`] area for what it has not finished writing (blobs, snapshots, step trees), which
//! the next process reclaims when its owner died. A store without a scratch area writes blobs
//! through `ingest/`.
//!
//! Everything takes its root as a parameter; nothing here prints or exits.
#![forbid(unsafe_code)]

mod apply;
pub mod archive;
mod compress;
pub mod content;
pub mod context;
pub mod copy;
mod diff;
mod digest;
pub mod exchange;
pub mod gc;
mod image;
pub mod index;
mod layout;
mod regular;
pub mod scratch;
mod snapshot;
mod store;
mod tarwriter;

pub use oci_spec;
pub use oci_spec::image::Digest;

pub use apply::{
    ApplyError, ApplyOptions, ApplyReport, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX,
    WhiteoutMode, apply_layer,
};
pub use compress::{Compression, CompressionOptions, LayerDigests, LayerWriter, decompress};
pub use diff::{
    Change, DiffError, DiffOptions, clamp_mtimes, diff_changes, diff_upperdir, store_changes_layer,
    store_recompressed_layer, store_upperdir_layer, upperdir_diff_id,
};
pub use digest::sha256_of;
pub use image::{
    DockerConfigExtras, Healthcheck, Image, ImageError, MediaTypes, append_empty_layer_history,
    append_layer, canonical_json, layer_compression, layer_descriptor, write_config, write_image,
};
pub use layout::{ImageStore, LayoutError};
pub use snapshot::{SnapshotError, SnapshotStore, spread_directories};
pub use store::{BlobStore, BlobWriter, StoreError};
