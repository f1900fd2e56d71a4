//! ADD of a URL: one file downloaded into a one-file layer, as BuildKit's http source makes
//! it (mode 0600, its mtime from `Last-Modified`), for the COPY that puts it in place.
//!
//! Without `--checksum` the download's digest is the content key, so each build asks the
//! server; what it answered last (ETag, Last-Modified, the digest and the layer) is kept per
//! URL under `<root>/http-cache/`, and a server that says 304 Not Modified to the conditional
//! GET costs no download. With `--checksum` the checksum is the key and a cached build asks
//! nothing. Proxies come from `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`, as reqwest reads them.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::WorkerError;
use crate::{BuildWorker, Layer};

/// Why a URL could not be added.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot fetch {url}: {source}; check that the server is up and the URL is right")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {url} failed with HTTP status {status}")]
    Status { url: String, status: StatusCode },
    #[error(
        "the file at {url} has digest {actual}, not the {expected} that --checksum expects; \
         fix the checksum or the URL"
    )]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("write the download of {url} to {}", path.display())]
    Write {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// What the server said about a URL the last time, and the layer made of its answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    url: String,
    filename: String,
    etag: Option<String>,
    last_modified: Option<String>,
    /// `sha256:<hex>` of the file's bytes.
    digest: String,
    diff_id: String,
}

impl Record {
    fn layer(&self) -> Option<Layer> {
        Some(Layer {
            diff_id: self.diff_id.parse().ok()?,
            blob: None,
        })
    }
}

/// A download made while keying the vertex, for its run.
#[derive(Clone, Debug)]
pub struct Downloaded {
    layer: Layer,
}

impl BuildWorker {
    /// The content key of `ADD URL` without a checksum: the file's digest and its mtime,
    /// which both end up in the layer (with a checksum, the vertex digest already is the key).
    pub(crate) async fn http_content_key(
        &self,
        url: &str,
        filename: &str,
    ) -> Result<(String, Downloaded), HttpError> {
        let (record, layer) = self.download(url, filename, None).await?;
        let key = format!(
            "{} last-modified={}",
            record.digest,
            record.last_modified.as_deref().unwrap_or("")
        );
        Ok((key, Downloaded { layer }))
    }

    /// The one-file layer of `ADD URL`: the download made while keying, else the one made
    /// earlier for the same checksum, else a new download.
    pub(crate) async fn http_layer(
        &self,
        url: &str,
        filename: &str,
        checksum: Option<&str>,
        keyed: Option<Downloaded>,
    ) -> Result<Layer, HttpError> {
        if let Some(keyed) = keyed
            && self.state.snapshots.get(&keyed.layer.diff_id).is_some()
        {
            return Ok(keyed.layer);
        }
        if let Some(expected) = checksum
            && let Some(record) = self.http_record(url, filename)
            && record.digest == expected
            && let Some(layer) = record.layer().filter(|l| self.has_snapshot(l))
        {
            return Ok(layer);
        }
        Ok(self.download(url, filename, checksum).await?.1)
    }

    fn has_snapshot(&self, layer: &Layer) -> bool {
        self.state.snapshots.get(&layer.diff_id).is_some()
    }

    fn http_record_path(&self, url: &str, filename: &str) -> PathBuf {
        let mut hasher = Sha256::new();
        hasher.update(url.as_bytes());
        hasher.update([0]);
        hasher.update(filename.as_bytes());
        self.state
            .root
            .join("http-cache")
            .join(format!("{}.json", hex::encode(hasher.finalize())))
    }

    fn http_record(&self, url: &str, filename: &str) -> Option<Record> {
        let bytes = fs_err::read(self.http_record_path(url, filename)).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        (record.url == url && record.filename == filename).then_some(record)
    }

    /// A GET of `url` (conditional when an earlier answer's layer is still here), checked
    /// against `checksum`, made into a layer and remembered.
    async fn download(
        &self,
        url: &str,
        filename: &str,
        checksum: Option<&str>,
    ) -> Result<(Record, Layer), HttpError> {
        let fetch = |source| HttpError::Fetch {
            url: url.to_owned(),
            source,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(fetch)?;
        // With a checksum only the same bytes will do, and those were looked for already.
        let known = self
            .http_record(url, filename)
            .filter(|r| checksum.is_none_or(|c| c == r.digest))
            .filter(|r| r.layer().is_some_and(|l| self.has_snapshot(&l)));
        let mut request = client.get(url);
        if let Some(known) = &known {
            if let Some(etag) = &known.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &known.last_modified {
                request = request.header(IF_MODIFIED_SINCE, modified);
            }
        }
        let mut response = request.send().await.map_err(fetch)?;
        if response.status() == StatusCode::NOT_MODIFIED
            && let Some(found) = known.and_then(|k| k.layer().map(|l| (k, l)))
        {
            return Ok(found);
        }
        if !response.status().is_success() {
            return Err(HttpError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(ETAG);
        let last_modified = header(LAST_MODIFIED);

        let scratch = self.state.scratch()?;
        let dir = scratch.path().join("layer");
        let path = dir.join(filename);
        let write = |source| HttpError::Write {
            url: url.to_owned(),
            path: path.clone(),
            source,
        };
        fs_err::create_dir(&dir).map_err(write)?;
        let mut file = fs_err::File::create(&path).map_err(write)?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(write)?;
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = checksum
            && expected != digest
        {
            return Err(HttpError::Checksum {
                url: url.to_owned(),
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write)?;
        if let Some(mtime) = last_modified
            .as_deref()
            .and_then(|m| httpdate::parse_http_date(m).ok())
        {
            file.file().set_modified(mtime).map_err(write)?;
        }
        drop(file);
        let epoch = self.diff_options.source_date_epoch;
        let layer = tokio::task::block_in_place(|| self.state.commit_layer(&dir, epoch))?;
        let record = Record {
            url: url.to_owned(),
            filename: filename.to_owned(),
            etag,
            last_modified,
            digest,
            diff_id: layer.diff_id.to_string(),
        };
        // Only a shortcut for later builds: one that cannot be written costs a download.
        let _ = self.write_record(&record);
        Ok((record, layer))
    }

    fn write_record(&self, record: &Record) -> Result<(), WorkerError> {
        let path = self.http_record_path(&record.url, &record.filename);
        let dir = path.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir).map_err(crate::error::io_err("create", dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(crate::error::io_err("create a file in", dir))?;
        serde_json::to_writer(&mut tmp, record)
            .map_err(|_| WorkerError::Internal("an http cache record does not serialize"))?;
        tmp.persist(&path)
            .map_err(|e| crate::error::io_err("write", &path)(e.error))?;
        Ok(())
    }
}
