//! Progress events and build results to and from their wire form.
//!
//! (Being written.)
