//! Reading a build cache that `--cache-from` names: its manifest, its document, and the
//! `--cache-from`/`--cache-to` specs. None of them may panic, whatever the bytes.
//!
//! Input: a selector byte, then the bytes.
#![no_main]
// `fuzz_target!` expands to a `std::fs::File::create` (libfuzzer-sys writes its debug output
// with it), which the workspace clippy.toml bans for project code.
#![allow(clippy::disallowed_methods)]

use hoist_cache::exchange::{CacheDocument, document_of};
use hoist_worker::exchange::{CacheExport, CacheImport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(doc) = CacheDocument::decode(bytes, "fuzz") {
                // What decodes must encode, and name its blobs.
                let _ = doc.blobs();
                let encoded = doc.encode().expect("a decoded document encodes");
                let again = CacheDocument::decode(&encoded, "fuzz").expect("it decodes again");
                assert_eq!(again, doc);
            }
        }
        1 => {
            let _ = document_of(bytes, "fuzz");
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = CacheImport::parse(text);
                let _ = CacheExport::parse(text);
            }
        }
    }
});
