//! The content store as the registry client's blob store.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::io;

use hoist_cache::BlobStore;
use hoist_cache::oci_spec::image::Digest;

/// The content store as the registry client's blob store: both keep `blobs/sha256/<hex>`.
#[derive(Clone, Debug)]
pub struct StoreAdapter(pub BlobStore);

impl hoist_registry::BlobStore for StoreAdapter {
    fn size(&self, digest: &Digest) -> Result<Option<u64>, hoist_registry::StoreError> {
        if self.0.has(digest) {
            self.0.size(digest).map(Some).map_err(store_err)
        } else {
            Ok(None)
        }
    }

    fn open(
        &self,
        digest: &Digest,
    ) -> Result<Box<dyn hoist_registry::BlobReader>, hoist_registry::StoreError> {
        Ok(Box::new(self.0.open(digest).map_err(store_err)?))
    }

    fn writer(
        &self,
        expected: &Digest,
        _size: Option<u64>,
    ) -> Result<Box<dyn hoist_registry::BlobWriter>, hoist_registry::StoreError> {
        Ok(Box::new(WriterAdapter(
            self.0.writer(expected).map_err(store_err)?,
        )))
    }
}

struct WriterAdapter(hoist_cache::BlobWriter);

impl io::Write for WriterAdapter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl hoist_registry::BlobWriter for WriterAdapter {
    fn commit(self: Box<Self>) -> Result<(), hoist_registry::StoreError> {
        self.0.commit().map(|_| ()).map_err(store_err)
    }
}

fn store_err(e: hoist_cache::StoreError) -> hoist_registry::StoreError {
    hoist_registry::StoreError::Backend(Box::new(e))
}
