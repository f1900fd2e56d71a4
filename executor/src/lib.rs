//! The RUN sandbox.
//!
//! Data flow: the solver hands over an OCI runtime `Spec` (process, env, cwd, user, mounts,
//! namespaces, cgroup resources, capabilities, seccomp, rlimits), a rootfs made of a snapshot
//! chain (overlay lowerdirs) plus a fresh upperdir, extra mounts and stdio sinks. The executor
//! runs the process in new namespaces under its own cgroup, either through the built-in runtime
//! or an external OCI runtime (runc) fed the same `Spec`, and returns the exit status, streamed
//! output, resource usage and the upperdir holding exactly the changes.
//!
//! Nothing is implemented here yet; see issue "RUN sandbox".
