//! Placeholder: the side-by-side comparison with BuildKit and buildah is being written.
fn main() {}
