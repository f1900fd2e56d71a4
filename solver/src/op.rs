//! Ops: the units of build work. A [`Vertex`](crate::graph::Vertex) is an `Op` plus its inputs.
//!
//! Everything in an `Op` is part of its digest, so it holds exactly what decides the result:
//! no timestamps, no session ids, no host paths. Maps are `BTreeMap`s so that the canonical
//! encoding (serde JSON of these types) is deterministic.

use std::collections::BTreeMap;

use serde::Serialize;

/// One unit of build work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Source(SourceOp),
    Exec(ExecOp),
    File(FileOp),
    Merge(MergeOp),
}

/// Where a filesystem comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceOp {
    /// The empty filesystem of `FROM scratch`.
    Scratch,
    /// A registry image. Its cache key becomes concrete through the manifest digest it
    /// resolves to; the tag alone never decides a cache hit.
    Image {
        /// The normalized reference, e.g. `docker.io/library/busybox:latest`.
        reference: String,
        /// `os/arch[/variant]`.
        platform: String,
    },
    /// The image of a local OCI layout given as `--build-context NAME=oci-layout://…`, pinned
    /// by its manifest digest (the layout's directory is the build's, not part of the op).
    Layout {
        /// The context's name.
        name: String,
        /// `sha256:…` of the image manifest.
        manifest: String,
        /// `os/arch[/variant]`.
        platform: String,
    },
    /// Files of a build context. Only the selected files count in the cache key, by content.
    Local {
        /// `context`, or the name of a named context.
        name: String,
        /// Patterns of the files a step uses (empty: all).
        include: Vec<String>,
        /// `.dockerignore` patterns.
        exclude: Vec<String>,
        /// `COPY --parents`: `include` keeps each file's path (below a `/./` pivot) under the
        /// destination. Absent from the digest when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        parents: bool,
    },
    /// One file downloaded by `ADD http(s)://…`, as `filename` (mode 0600, its mtime from
    /// `Last-Modified`) at the root of an otherwise empty filesystem. Without a checksum the
    /// content becomes concrete through the worker's content key (the download's digest).
    Http {
        url: String,
        /// `sha256:<hex>` from `--checksum`: the download must match it, and it is then the
        /// whole key, so a rebuild needs no network.
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
        /// The last segment of the URL's path (`__unnamed__` without one), never `..` or
        /// holding `/`.
        filename: String,
    },
    /// A git checkout of `reference` (empty: the remote's HEAD) under `subdir` of `remote`.
    /// The commit the reference resolves to is the worker's content key.
    Git {
        /// As written, without the `#ref:subdir` fragment; never holding credentials (those
        /// come from the build's secrets and SSH agents).
        remote: String,
        reference: String,
        subdir: String,
        keep_git_dir: bool,
        /// A commit (or a prefix of one) from `--checksum` that `reference` must resolve to.
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
    },
}

/// How a RUN reaches the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The build's default (a sandboxed network namespace with the host's uplink).
    #[default]
    Default,
    /// A network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
}

/// A RUN: a process in the sandbox over its input 0 as the root filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecOp {
    pub args: Vec<String>,
    /// The environment, in order (image ENV first, then build ARGs that are in scope).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// As written in USER (name or uid, optionally `:group`); empty for root.
    pub user: String,
    pub network: NetworkMode,
    /// `--security=insecure`: only with the build's entitlement.
    pub privileged: bool,
    /// Extra mounts from `RUN --mount`, by target path.
    pub mounts: Vec<Mount>,
    /// `SOURCE_DATE_EPOCH`: the layer's mtimes are clamped to it, so a layer made under another
    /// epoch (or none) is never reused. Absent from the digest when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

/// A `RUN --mount`, with BuildKit's defaults filled in. Targets are absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mount {
    /// Files of input `input` (the build context, a stage or an image) under `source`, at
    /// `target`. Their content is in the key through the input; with `read_write` the RUN may
    /// write to them, and what it writes is thrown away after the step.
    Bind {
        input: usize,
        source: String,
        target: String,
        read_write: bool,
        /// The stage or image as written, for messages; the input's digest already keys it.
        #[serde(skip)]
        from: Option<CopyFrom>,
    },
    /// A directory kept in the state root across builds under `id`, outside every key and
    /// layer. A new one starts with the files of input `seed` under `source` (empty without a
    /// seed), owned by `uid:gid` with `mode`.
    Cache {
        id: String,
        target: String,
        sharing: CacheSharing,
        seed: Option<usize>,
        source: String,
        read_only: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// An empty tmpfs, `size` bytes at most (the kernel's default, half of RAM, without).
    Tmpfs { target: String, size: Option<u64> },
    /// A secret given to the build: only its id is part of the key, never its content. As a
    /// file at `target`, or as the variable `env`, or both.
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A socket to the SSH agent given to the build as `id`.
    Ssh {
        id: String,
        target: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Who may use a cache mount while another step has it (`sharing=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Every step at once.
    #[default]
    Shared,
    /// A step that finds it in use gets a directory of its own.
    Private,
    /// One step at a time; the others wait.
    Locked,
}

/// File work that needs no container: COPY, ADD, WORKDIR's directory, heredoc files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileOp {
    pub actions: Vec<FileAction>,
    /// As [`ExecOp::epoch`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
}

/// Owner of created files, as written (`name`, `uid`, `name:group`, `uid:gid`), resolved in the
/// destination's `/etc/passwd` and `/etc/group` when the op runs.
pub type Chown = Option<String>;

/// What a `COPY --from` names, as written (after expansion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyFrom {
    /// A stage, by name or index.
    Stage(String),
    /// An image, by reference.
    Image(String),
    /// A `--build-context` directory, by name.
    Context(String),
    /// What `ADD` fetched from a URL or a git remote, as written.
    Remote(String),
}

/// One file action. Input 0 of the vertex is the destination filesystem; `Copy` reads from the
/// input at `src_input`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Copy {
        src_input: usize,
        /// Source paths relative to the source root; may hold wildcards.
        src: Vec<String>,
        /// Absolute destination; a trailing `/` means a directory.
        dest: String,
        chown: Chown,
        chmod: Option<u32>,
        /// ADD of a local archive: extract it instead of copying it.
        unpack_archives: bool,
        /// `--exclude` patterns.
        exclude: Vec<String>,
        /// `--link`: the copied layer does not depend on the destination's content.
        link: bool,
        /// `--parents`: keep the source's parent directories.
        parents: bool,
        /// What `--from` named, for messages only (`None`: the build context). Not part of
        /// the digest: the name of a stage does not change what is copied.
        #[serde(skip)]
        from: Option<CopyFrom>,
    },
    Mkdir {
        path: String,
        mode: u32,
        make_parents: bool,
        chown: Chown,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: String,
        chown: Chown,
    },
}

/// Layers stacked without a container: each input applied on the one before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MergeOp {
    /// Kept for room in the encoding; merges have no parameters yet.
    pub labels: BTreeMap<String, String>,
}
