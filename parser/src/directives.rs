//! Parser directives (being written).
