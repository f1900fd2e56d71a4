//! Decoding and validating a context tree's `Directory` messages, as `hoist serve` does with
//! what a client uploads.
//!
//! Input: any bytes, decoded as a Directory under tight and default limits. Beyond "never
//! panics", it checks what the checkout relies on: a Directory that passes has only names that
//! are one path component (not empty, `.`, `..`, nor holding `/` or NUL), sorted and unique
//! across its four lists, with well-formed digests; and its digest does not depend on mtimes.
#![no_main]
// `fuzz_target!` expands to a `std::fs::File::create` (libfuzzer-sys writes its debug output
// with it), which the workspace clippy.toml bans for project code.
#![allow(clippy::disallowed_methods)]

use hoist_proto::v1::Directory;
use hoist_server::cas::{BlobId, CasLimits, canonical_directory, decode_directory, directory_digest};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let id = BlobId {
        hex: "0".repeat(64),
        size: data.len() as u64,
    };
    let tight = CasLimits {
        max_directory: 4096,
        max_entries: 16,
        ..CasLimits::default()
    };
    let _ = decode_directory(&id, data, &tight);
    let Ok(dir) = decode_directory(&id, data, &CasLimits::default()) else {
        return;
    };
    let mut names: Vec<&[u8]> = Vec::new();
    names.extend(dir.files.iter().map(|n| &n.name[..]));
    names.extend(dir.directories.iter().map(|n| &n.name[..]));
    names.extend(dir.symlinks.iter().map(|n| &n.name[..]));
    names.extend(dir.specials.iter().map(|n| &n.name[..]));
    for name in &names {
        assert!(!name.is_empty() && *name != b"." && *name != b"..");
        assert!(!name.contains(&b'/') && !name.contains(&0));
    }
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a name appears twice");
    for d in dir.files.iter().filter_map(|f| f.digest.as_ref()) {
        assert!(BlobId::parse(d).is_ok());
    }
    for d in dir.directories.iter().filter_map(|f| f.digest.as_ref()) {
        assert!(BlobId::parse(d).is_ok());
    }
    // Its canonical form decodes, passes, and has the same digest: mtimes never count.
    let canonical = canonical_directory(&dir);
    let again = Directory::decode(&canonical[..]).expect("a canonical encoding decodes");
    assert_eq!(directory_digest(&again), directory_digest(&dir));
    assert!(decode_directory(&id, &canonical, &CasLimits::default()).is_ok());
});
