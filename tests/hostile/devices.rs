//! Device nodes: a RUN may make them (it holds CAP_MKNOD, as under Docker) but may open only
//! Docker's short list of harmless devices.
