//! The cache index as the scheduler's cache.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use hoist_cache::index::{BlobRecord, CacheRecord, LayerRecord};
use hoist_cache::oci_spec::image::{Descriptor, Digest, MediaType};

use crate::{Layer, Output, State};
use hoist_solver::graph::Vertex;
use hoist_solver::scheduler::{BoxError, BoxFuture, Cache, CacheKey};

/// The redb index as the scheduler's cache. Only filesystem results are recorded; a record
/// whose snapshots are gone is a miss.
#[derive(Debug)]
pub struct IndexCache {
    pub state: Arc<State>,
}

impl Cache<Output> for IndexCache {
    fn lookup<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
    ) -> BoxFuture<'a, Result<Option<Output>, BoxError>> {
        Box::pin(async move {
            let Some(record) = self.state.index()?.get(&key.to_string())? else {
                return Ok(None);
            };
            let mut chain = Vec::new();
            for layer in record.layers {
                let Ok(diff_id) = layer.diff_id.parse::<Digest>() else {
                    return Ok(None);
                };
                if self.state.snapshots.get(&diff_id).is_none() {
                    return Ok(None);
                }
                // A pulled layer keeps its blob; a built one may have none yet.
                let blob = match layer.blob {
                    None => None,
                    Some(blob) => {
                        let Ok(digest) = blob.digest.parse::<Digest>() else {
                            return Ok(None);
                        };
                        if !self.state.blobs.has(&digest) {
                            return Ok(None);
                        }
                        Some(Descriptor::new(
                            MediaType::from(blob.media_type.as_str()),
                            blob.size,
                            digest,
                        ))
                    }
                };
                chain.push(Layer { diff_id, blob });
            }
            Ok(Some(Output::Chain(Arc::new(chain))))
        })
    }

    fn record<'a>(
        &'a self,
        key: &'a CacheKey,
        _vertex: &'a Vertex,
        result: &'a Output,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let Output::Chain(chain) = result else {
                return Ok(());
            };
            let record = CacheRecord {
                layers: chain
                    .iter()
                    .map(|l| LayerRecord {
                        diff_id: l.diff_id.to_string(),
                        blob: l.blob.as_ref().map(|b| BlobRecord {
                            digest: b.digest().to_string(),
                            size: b.size(),
                            media_type: b.media_type().to_string(),
                        }),
                    })
                    .collect(),
                took_ms: 0,
            };
            self.state.index()?.put(&key.to_string(), &record)?;
            Ok(())
        })
    }
}
