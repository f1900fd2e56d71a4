//! A build killed with `kill -9` at any point: the next start on that state root reclaims
//! everything the dead process left.
