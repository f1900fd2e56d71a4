//! Inputs of hostile size: huge Dockerfiles, many ENV lines, a RUN line of many megabytes.
