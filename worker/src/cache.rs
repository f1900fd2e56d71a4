//! The cache index as the scheduler's cache.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use hoist_cache::index::{BlobRecord, CacheRecord, LayerRecord};

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
            // A record the index refuses (see `IndexError::Decode`) is a miss: the step runs
            // again and its record replaces the bad one. Failing the build instead would fail
            // every build that reaches this step until the state root is wiped.
            let record = match self.state.index()?.get(&key.to_string()) {
                Err(e) if e.is_bad_record() => return Ok(None),
                record => record?,
            };
            let Some(record) = record else {
                return Ok(None);
            };
            let mut chain = Vec::with_capacity(record.layers.len());
            for layer in record.layers {
                if self.state.snapshots.get(&layer.diff_id).is_none() {
                    return Ok(None);
                }
                // A pulled layer keeps its blob; a built one may have none yet.
                let blob = match layer.blob {
                    None => None,
                    Some(blob) if self.state.blobs.has(&blob.digest) => Some(blob.descriptor()),
                    Some(_) => return Ok(None),
                };
                chain.push(Layer {
                    diff_id: layer.diff_id,
                    blob,
                });
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
                        diff_id: l.diff_id.clone(),
                        blob: l.blob.as_ref().map(BlobRecord::from),
                    })
                    .collect(),
                took_ms: 0,
            };
            self.state.index()?.put(&key.to_string(), &record)?;
            Ok(())
        })
    }
}
