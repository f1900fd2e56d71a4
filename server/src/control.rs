//! The `Control` service.
//!
//! (Being written.)
