//! The Dockerfile frontend, the build graph and the scheduler.
//!
//! Data flow: a parsed Dockerfile (from `hoist-parser`) is lowered, stage by stage, into `Op`s
//! (`Source`, `Exec`, `File`, `Merge`). Each `Op` with its inputs is a `Vertex` of a `Graph`
//! (a petgraph DAG). A vertex's digest is sha256 over the canonical encoding of its `Op` and its
//! inputs' digests, so identical work merges; its `CacheKey` makes content concrete. The scheduler
//! walks the graph on tokio, asks the cache for each key, and runs misses through the executor
//! (RUN), the cache's file ops (COPY/ADD) or the registry (FROM). Image assembly turns the final
//! `Result` into a config and manifest for the outputs.
//!
//! Nothing is implemented here yet; see issue "hoist build".
#![forbid(unsafe_code)]
