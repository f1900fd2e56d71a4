//! A remote build's secrets, SSH agents and registry credentials, asked of its client.
//!
//! (Being written.)
