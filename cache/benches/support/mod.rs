//! The BuildKit benchmark context, shared by the benchmarks: 5,000 files of 123 bytes plus
//! files of 1, 10, 50 and 100 MiB (about 162 MiB).

use std::path::Path;

/// Letters weighted roughly like English text, digits and newlines.
const ALPHABET: &[u8] = b"etaoinshrdlucmfwypvbgkqjxz  \n0123456789";

fn fill(path: &Path, len: usize, seed: u64, text: bool) {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        // xorshift64*: fast and incompressible; `--text` maps it onto a 39-symbol alphabet of
        // word-like runs, which deflate compresses to roughly half.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if text {
            for b in v.to_le_bytes() {
                data.push(ALPHABET[usize::from(b) % ALPHABET.len()]);
            }
        } else {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    data.truncate(len);
    fs_err::write(path, data).unwrap();
}

pub(crate) fn make_context(root: &Path, text: bool, scale: usize) -> u64 {
    let small = root.join("small");
    fs_err::create_dir_all(&small).unwrap();
    let mut total = 0u64;
    for i in 0..5000u64 {
        let p = small.join(format!("file{i:04}"));
        fill(&p, 123, i + 1, text);
        total += 123;
    }
    for (i, mib) in [1usize, 10, 50, 100].into_iter().enumerate() {
        fill(
            &root.join(format!("big{mib}")),
            (mib * scale) << 20,
            1000 + i as u64,
            text,
        );
        total += ((mib * scale) as u64) << 20;
    }
    total
}
