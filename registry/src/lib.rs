//! The OCI distribution client.
//!
//! Data flow: a reference is normalized (`busybox` is `docker.io/library/busybox:latest`), then
//! resolved to a manifest (OCI or Docker schema 2, through an index or manifest list for the
//! wanted platform). Blobs stream from the registry into the content store, verified against their
//! digests; pushes go the other way, skipping blobs that exist and mounting across repositories.
//! Authentication comes from the docker config and bearer-token challenges.
//!
//! Nothing is implemented here yet; see issue "Image I/O".
#![forbid(unsafe_code)]
