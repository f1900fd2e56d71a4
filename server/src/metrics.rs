//! Prometheus counters of the server and its `/metrics` endpoint.
//!
//! (Being written.)
