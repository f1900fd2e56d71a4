//! Source ops: the build context, selected and hashed; base images, pulled and unpacked; and
//! what ADD fetches, a URL ([`crate::http`]) or a git repository ([`crate::git`]).

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use hoist_cache::context::Selection;
use hoist_cache::oci_spec::image::Digest;
use hoist_parser::ignore::Matcher;
use hoist_registry::Reference;

use hoist_solver::graph::VertexDigest;
use hoist_solver::op::SourceOp;
use hoist_solver::progress::Stream;
use hoist_solver::scheduler::{BoxError, VertexContext};

use crate::context::ContextSource;
use crate::error::WorkerError;
use crate::{BuildWorker, Layer};

/// What keying a URL or git source found, for its run.
#[derive(Clone, Debug)]
pub enum RemoteKeyed {
    Http(Box<crate::http::Downloaded>),
    /// The commit the reference resolved to.
    Git(String),
}

impl BuildWorker {
    /// The content key of a URL (the download's digest, unless a checksum pins it) or of a
    /// git source (the commit its reference resolves to).
    pub(crate) async fn remote_content_key(
        &self,
        digest: VertexDigest,
        op: &SourceOp,
    ) -> Result<Option<String>, BoxError> {
        let (key, keyed) = match op {
            SourceOp::Http {
                checksum: Some(_), ..
            } => return Ok(None),
            SourceOp::Http { url, filename, .. } => {
                let (key, downloaded) = self.http_content_key(url, filename).await?;
                (key, RemoteKeyed::Http(Box::new(downloaded)))
            }
            SourceOp::Git {
                remote,
                reference,
                checksum,
                ..
            } => {
                let commit = self
                    .git_commit(remote, reference, checksum.as_deref())
                    .await?;
                (format!("commit {commit}"), RemoteKeyed::Git(commit))
            }
            _ => return Ok(None),
        };
        if let Ok(mut keyed_all) = self.remote_keyed.lock() {
            keyed_all.insert(digest, keyed);
        }
        Ok(Some(key))
    }

    /// The one layer of a URL or git source, from what keying found where it can.
    pub(crate) async fn remote_layer(
        &self,
        digest: VertexDigest,
        op: &SourceOp,
    ) -> Result<Layer, BoxError> {
        let keyed = self
            .remote_keyed
            .lock()
            .ok()
            .and_then(|k| k.get(&digest).cloned());
        match op {
            SourceOp::Http {
                url,
                checksum,
                filename,
            } => {
                let downloaded = match keyed {
                    Some(RemoteKeyed::Http(d)) => Some(*d),
                    _ => None,
                };
                Ok(self
                    .http_layer(url, filename, checksum.as_deref(), downloaded)
                    .await?)
            }
            SourceOp::Git {
                remote,
                reference,
                subdir,
                keep_git_dir,
                checksum,
            } => {
                let commit = match keyed {
                    Some(RemoteKeyed::Git(commit)) => commit,
                    _ => {
                        self.git_commit(remote, reference, checksum.as_deref())
                            .await?
                    }
                };
                Ok(self
                    .git_checkout(remote, &commit, subdir, *keep_git_dir)
                    .await?)
            }
            _ => Err(WorkerError::Internal("not a URL or git source").into()),
        }
    }

    pub(crate) fn select_context(
        &self,
        context: &dyn ContextSource,
        include: &[String],
        exclude: &[String],
        parents: bool,
    ) -> Result<Selection, WorkerError> {
        let sources: Vec<String> = if include.is_empty() {
            vec![".".to_owned()]
        } else {
            include.to_vec()
        };
        let matcher = Matcher::new(exclude.iter().map(String::as_str))?;
        if parents {
            return Ok(context.select_parents(&sources, &matcher)?);
        }
        Ok(context.select(&sources, &matcher)?)
    }

    /// The build context a local source names: `context`, or a `--build-context` name.
    pub(crate) fn context_named(&self, name: &str) -> Result<Arc<dyn ContextSource>, WorkerError> {
        if name == "context" {
            return Ok(Arc::clone(&self.context));
        }
        self.named_contexts
            .local
            .get(name)
            .cloned()
            .ok_or_else(|| WorkerError::NamedContext {
                name: name.to_owned(),
            })
    }

    pub(crate) async fn pull(
        &self,
        reference: &str,
        platform: &str,
        ctx: &VertexContext,
    ) -> Result<Vec<Layer>, WorkerError> {
        let parsed: Reference = reference.parse().map_err(|source| WorkerError::Reference {
            reference: reference.to_owned(),
            source,
        })?;
        let platform = platform
            .parse::<hoist_solver::Platform>()
            .map(|p| registry_platform(&p))
            .map_err(|source| WorkerError::Platform {
                reference: reference.to_owned(),
                source,
            })?;
        let store = self.state.registry_store();
        // Each registry event is a line of this step's output, so a pull that waits shows
        // which manifest or blob it waits for. The observer must be 'static and `ctx` is
        // borrowed, hence the channel.
        let (lines, mut pending) = tokio::sync::mpsc::unbounded_channel::<String>();
        let observer: hoist_registry::Observer = Arc::new(move |event| {
            let _ = lines.send(format!("{event}\n"));
        });
        let pull = hoist_registry::observe(observer, self.registry.pull(&parsed, &platform, store));
        tokio::pin!(pull);
        let pulled = loop {
            tokio::select! {
                pulled = &mut pull => break pulled,
                Some(line) = pending.recv() => ctx.log(Stream::Stdout, line.as_bytes()),
            }
        };
        while let Ok(line) = pending.try_recv() {
            ctx.log(Stream::Stdout, line.as_bytes());
        }
        let resolved = pulled.map_err(|source| WorkerError::Pull {
            reference: reference.to_owned(),
            source: Box::new(source),
        })?;
        let state = Arc::clone(&self.state);
        let image = resolved.image.clone();
        tokio::task::spawn_blocking(move || {
            let config_bytes = state
                .blobs
                .read(image.config().digest())
                .map_err(|_| WorkerError::Internal("the pulled config blob is missing"))?;
            unpack_layers(&state, image.layers(), &config_bytes, |_| Ok(()))
        })
        .await
        .map_err(|_| WorkerError::Internal("the unpack task panicked"))?
    }
}

/// The chain of an image whose manifest lists `layers` and whose config is `config`: each
/// layer, once `before` has made its blob available, unpacked into its snapshot.
pub(crate) fn unpack_layers(
    state: &crate::State,
    layers: &[hoist_cache::oci_spec::image::Descriptor],
    config: &[u8],
    mut before: impl FnMut(&Digest) -> Result<(), WorkerError>,
) -> Result<Vec<Layer>, WorkerError> {
    let diff_ids = diff_ids_of(config);
    if diff_ids.len() != layers.len() {
        return Err(WorkerError::Internal(
            "the image's config and manifest disagree on its layers",
        ));
    }
    let mut chain = Vec::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        before(layer.digest())?;
        state
            .snapshots
            .unpack(&state.blobs, layer, &diff_id)
            .map_err(|source| WorkerError::Snapshot {
                layer: layer.digest().clone(),
                source,
            })?;
        chain.push(Layer {
            diff_id,
            blob: Some(layer.clone()),
        });
    }
    Ok(chain)
}

/// The config's `rootfs.diff_ids`.
pub(crate) fn diff_ids_of(config: &[u8]) -> Vec<Digest> {
    #[derive(serde::Deserialize)]
    struct Rootfs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Rootfs,
    }
    serde_json::from_slice::<Config>(config)
        .map(|c| {
            c.rootfs
                .diff_ids
                .iter()
                .filter_map(|d| d.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The registry's view of a build's platform, for choosing from an image index.
#[must_use]
pub fn registry_platform(p: &hoist_solver::Platform) -> hoist_registry::Platform {
    hoist_registry::Platform::new(&p.os, &p.architecture, p.variant.as_deref())
}
