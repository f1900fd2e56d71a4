//! Registries that accept connections and never answer, or answer too slowly.
