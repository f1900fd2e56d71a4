//! Who may build: the unix socket's owner, group and mode; mutual TLS; bearer tokens.
//!
//! (Being written: see the issue. The listeners in [`crate::control`] call into here.)
