//! The build graph: [`Vertex`]es (an [`Op`] plus its inputs) in a DAG, merged by digest.
//!
//! A vertex's [`VertexDigest`] is sha256 over the canonical encoding of its op and the digests
//! of its inputs, in order. Progress names and Dockerfile locations are not part of it, so the
//! same work written twice, in two stages or in two builds, is one vertex.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use hoist_parser::Span;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{Dfs, Reversed};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::op::Op;

/// sha256 of a vertex's op and inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VertexDigest(pub [u8; 32]);

impl VertexDigest {
    /// Computes the digest of an op over its inputs' digests.
    #[must_use]
    pub fn compute(op: &Op, inputs: &[VertexDigest]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"hoist.vertex.v1\0");
        // The encoding streams into the hash: an op may carry a RUN script or a heredoc file of
        // many megabytes, which is not worth a second copy. Serializing these plain data types
        // into a hasher cannot fail.
        let _ = serde_json::to_writer(HashWriter(&mut hasher), op);
        for input in inputs {
            hasher.update(input.0);
        }
        Self(hasher.finalize().into())
    }

    /// The lowercase hex of the digest, without the `sha256:` prefix.
    #[must_use]
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Feeds what is written into a hash.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Display for VertexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for VertexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}

impl Serialize for VertexDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where in the Dockerfile a vertex comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// 1-based line of the instruction.
    pub line: usize,
    /// 1-based column (in characters) where the instruction starts.
    pub column: usize,
    pub span: Span,
}

/// A handle to a vertex of a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VertexId(NodeIndex);

impl VertexId {
    /// A stable number for this vertex within its graph.
    #[must_use]
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// An op, its inputs, and what to call it.
#[derive(Clone, Debug)]
pub struct Vertex {
    pub op: Op,
    pub inputs: Vec<VertexId>,
    pub digest: VertexDigest,
    /// The progress name, such as `[build 2/4] RUN make`.
    pub name: String,
    pub location: Option<Location>,
}

/// A DAG of vertices in which every digest appears once.
#[derive(Debug, Default)]
pub struct Graph {
    /// Shared, so that a solve holds the vertices it runs without copying their ops (which may
    /// carry a RUN script or a heredoc file of many megabytes).
    graph: StableDiGraph<Arc<Vertex>, ()>,
    by_digest: HashMap<VertexDigest, VertexId>,
}

impl Graph {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vertex, or returns the existing one with the same digest.
    pub fn add(
        &mut self,
        op: Op,
        inputs: Vec<VertexId>,
        name: impl Into<String>,
        location: Option<Location>,
    ) -> VertexId {
        let input_digests: Vec<VertexDigest> =
            inputs.iter().map(|&i| self.vertex(i).digest).collect();
        let digest = VertexDigest::compute(&op, &input_digests);
        if let Some(&id) = self.by_digest.get(&digest) {
            return id;
        }
        let id = VertexId(self.graph.add_node(Arc::new(Vertex {
            op,
            inputs: inputs.clone(),
            digest,
            name: name.into(),
            location,
        })));
        for input in inputs {
            self.graph.add_edge(input.0, id.0, ());
        }
        self.by_digest.insert(digest, id);
        id
    }

    /// The vertex behind a handle.
    ///
    /// # Panics
    /// If the handle belongs to another graph: handles are only made by [`Graph::add`].
    #[must_use]
    pub fn vertex(&self, id: VertexId) -> &Vertex {
        self.shared_ref(id)
    }

    /// The vertex behind a handle, shared.
    ///
    /// # Panics
    /// As [`Graph::vertex`].
    #[must_use]
    pub fn shared(&self, id: VertexId) -> Arc<Vertex> {
        Arc::clone(self.shared_ref(id))
    }

    #[allow(clippy::expect_used)] // a foreign handle is a programming error, not input
    fn shared_ref(&self, id: VertexId) -> &Arc<Vertex> {
        self.graph
            .node_weight(id.0)
            .expect("vertex handle from this graph")
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// The vertices that `roots` depend on (the roots included), inputs before the vertices
    /// that use them.
    #[must_use]
    pub fn reachable(&self, roots: &[VertexId]) -> Vec<VertexId> {
        let reversed = Reversed(&self.graph);
        let mut seen = std::collections::HashSet::new();
        for root in roots {
            let mut dfs = Dfs::new(reversed, root.0);
            while let Some(n) = dfs.next(reversed) {
                seen.insert(n);
            }
        }
        // Node indices grow in insertion order and inputs are always inserted first, so
        // sorting by index is a topological order.
        let mut order: Vec<VertexId> = seen.into_iter().map(VertexId).collect();
        order.sort();
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{ExecOp, NetworkMode, SourceOp};

    fn run(cmd: &str) -> Op {
        Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            privileged: false,
            mounts: vec![],
            epoch: None,
        })
    }

    #[test]
    fn identical_work_merges_and_names_do_not_count() {
        let mut g = Graph::new();
        let base = g.add(Op::Source(SourceOp::Scratch), vec![], "a", None);
        let a = g.add(run("make"), vec![base], "[a 1/1] RUN make", None);
        let b = g.add(run("make"), vec![base], "[b 1/1] RUN make", None);
        assert_eq!(a, b);
        assert_eq!(g.len(), 2);
        let c = g.add(run("make test"), vec![base], "c", None);
        assert_ne!(a, c);
    }

    #[test]
    fn inputs_are_part_of_the_digest() {
        let mut g = Graph::new();
        let s1 = g.add(Op::Source(SourceOp::Scratch), vec![], "s", None);
        let img = Op::Source(SourceOp::Image {
            reference: "docker.io/library/busybox:latest".into(),
            platform: "linux/amd64".into(),
        });
        let s2 = g.add(img, vec![], "i", None);
        let a = g.add(run("x"), vec![s1], "", None);
        let b = g.add(run("x"), vec![s2], "", None);
        assert_ne!(g.vertex(a).digest, g.vertex(b).digest);
    }

    #[test]
    fn reachable_is_topological_and_skips_unused() {
        let mut g = Graph::new();
        let s = g.add(Op::Source(SourceOp::Scratch), vec![], "", None);
        let a = g.add(run("a"), vec![s], "", None);
        let unused = g.add(run("unused"), vec![s], "", None);
        let b = g.add(run("b"), vec![a], "", None);
        let order = g.reachable(&[b]);
        assert_eq!(order, vec![s, a, b]);
        assert!(!order.contains(&unused));
    }

    #[test]
    fn digests_keep_their_pinned_values() {
        // The values the encoding gave when cache keys were first written to state roots: a
        // change of encoding (field order, escaping, how the bytes reach the hash) shows here
        // before it turns every user's cache cold.
        use crate::op::{CopyFrom, FileAction, FileOp};
        let scratch = VertexDigest::compute(&Op::Source(SourceOp::Scratch), &[]);
        let exec = Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "echo \"hi\" > /x".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("A".into(), "\u{e9}\u{1}".into()),
            ],
            cwd: "/work".into(),
            user: "1000:1000".into(),
            network: NetworkMode::None,
            privileged: false,
            mounts: vec![],
            epoch: None,
        });
        let file = Op::File(FileOp {
            actions: vec![
                FileAction::Mkfile {
                    path: "/f".into(),
                    mode: 0o644,
                    data: "line\n".repeat(3),
                    chown: None,
                },
                FileAction::Copy {
                    src_input: 1,
                    src: vec!["a".into(), "b*".into()],
                    dest: "/d/".into(),
                    chown: Some("1:2".into()),
                    chmod: Some(0o755),
                    unpack_archives: true,
                    exclude: vec!["*.md".into()],
                    link: false,
                    parents: true,
                    // Named for messages only: not part of the pinned digest below.
                    from: Some(CopyFrom::Stage("builder".into())),
                },
            ],
            epoch: None,
        });
        let exec = VertexDigest::compute(&exec, &[scratch]);
        let file = VertexDigest::compute(&file, &[exec, scratch]);
        assert_eq!(
            scratch.hex(),
            "83cbc936203a138c70ce2792709107c793d47b3e67e67e20f0d5dde2ba07ffa0"
        );
        assert_eq!(
            exec.hex(),
            "5ec1b77ee3a9878bce9ec7c323094b6fa1b352277d63023a882654e6bc2c72f2"
        );
        assert_eq!(
            file.hex(),
            "90d32361ae22a4a83b11014fbc95198e20782c1e03e02e884cab14caf02e5250"
        );
    }
}
