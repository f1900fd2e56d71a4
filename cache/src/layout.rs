//! The local image store (an OCI image layout under the state root, names in `index.json`) and
//! the exporters: OCI layout as a directory or tar, `docker load` tar, flattened rootfs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ANNOTATION_REF_NAME, Descriptor, Digest, ImageIndex, ImageIndexBuilder, ImageManifest,
    MediaType,
};

use crate::apply::{ApplyError, ApplyOptions, WhiteoutMode, apply_layer};
use crate::content::{is_index, is_manifest};
use crate::image::{ImageError, canonical_json};
use crate::store::{BlobStore, StoreError};
use crate::tarwriter::{TarHeader, TarKind, TarWriter};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Errors of the image store and the exporters.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Reading or writing a layout file failed.
    #[error("{op} {path}")]
    Io {
        /// The operation ("write index", "lock index", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `index.json` is malformed.
    #[error("parse {path}")]
    ParseIndex {
        /// The index file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// No image has this name.
    #[error("no image named {name} in {root}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// The store root.
        root: PathBuf,
    },
    /// Image JSON or blobs failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Applying a layer for a rootfs export failed.
    #[error("apply layer {digest} into {dest}")]
    Apply {
        /// The layer blob.
        digest: Digest,
        /// The export directory.
        dest: PathBuf,
        /// The cause.
        source: Box<ApplyError>,
    },
    /// Writing an export archive failed.
    #[error("write export entry {entry}")]
    Export {
        /// The archive entry being written.
        entry: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The local image store: an OCI image layout at the state root. Blobs live in the
/// [`BlobStore`] at the same root; `index.json` lists each named image with the
/// `org.opencontainers.image.ref.name` annotation, so `umoci`, `skopeo` (`oci:ROOT:NAME`) and
/// other OCI tools read it directly.
#[derive(Debug, Clone)]
pub struct ImageStore {
    blobs: BlobStore,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    ///
    /// # Errors
    /// The root or its `oci-layout` file cannot be written.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, LayoutError> {
        let blobs = BlobStore::new(root);
        let root = blobs.root().to_path_buf();
        fs_err::create_dir_all(root.join("blobs/sha256")).map_err(io_err("create", &root))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, OCI_LAYOUT)?;
        }
        let store = Self { blobs };
        if !store.index_path().exists() {
            // Under the lock, so a concurrent first `tag` is never overwritten by an empty index.
            store.update(|_| {})?;
        }
        Ok(store)
    }

    /// The content store behind this image store.
    #[must_use]
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn index_path(&self) -> PathBuf {
        self.blobs.root().join("index.json")
    }

    /// All named images, sorted by name.
    ///
    /// # Errors
    /// `index.json` cannot be read or parsed.
    pub fn list(&self) -> Result<Vec<(String, Descriptor)>, LayoutError> {
        let path = self.index_path();
        let raw = match fs_err::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let index: ImageIndex =
            serde_json::from_slice(&raw).map_err(|source| LayoutError::ParseIndex {
                path: path.clone(),
                source,
            })?;
        let mut out: Vec<(String, Descriptor)> = index
            .manifests()
            .iter()
            .filter_map(|d| {
                let name = d.annotations().as_ref()?.get(ANNOTATION_REF_NAME)?.clone();
                Some((name, d.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The descriptor named `name`.
    ///
    /// # Errors
    /// No such name, or the index is unreadable.
    pub fn resolve(&self, name: &str) -> Result<Descriptor, LayoutError> {
        self.list()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| LayoutError::NotFound {
                name: name.to_string(),
                root: self.blobs.root().to_path_buf(),
            })
    }

    /// Names `descriptor` (a manifest or index already in the blob store) `name`, replacing any
    /// image of that name. Concurrent taggers are serialized by a lock file.
    ///
    /// # Errors
    /// The descriptor's blob is missing, or the index cannot be updated.
    pub fn tag(&self, name: &str, descriptor: &Descriptor) -> Result<(), LayoutError> {
        if !self.blobs.has(descriptor.digest()) {
            return Err(StoreError::NotFound {
                digest: descriptor.digest().clone(),
                path: self.blobs.blob_path(descriptor.digest())?,
            }
            .into());
        }
        self.update(|entries| {
            entries.retain(|(n, _)| n != name);
            let mut d = descriptor.clone();
            let mut ann = d.annotations().clone().unwrap_or_default();
            ann.insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
            d.set_annotations(Some(ann));
            entries.push((name.to_string(), d));
        })
    }

    /// Removes the name (blobs stay until garbage collection). Returns whether it existed.
    ///
    /// # Errors
    /// The index cannot be updated.
    pub fn untag(&self, name: &str) -> Result<bool, LayoutError> {
        let mut found = false;
        self.update(|entries| {
            let before = entries.len();
            entries.retain(|(n, _)| n != name);
            found = entries.len() != before;
        })?;
        Ok(found)
    }

    fn update(&self, f: impl FnOnce(&mut Vec<(String, Descriptor)>)) -> Result<(), LayoutError> {
        let lock_path = self.blobs.root().join("index.json.lock");
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            LayoutError::Io {
                op: "lock",
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
        let mut entries = self.list()?;
        f(&mut entries);
        let path = self.index_path();
        write_atomic(&path, &index_bytes(&entries)?)
        // The lock is released when `lock` is closed.
    }

    /// Every blob an image references (manifest or index, config, layers), recursively.
    ///
    /// # Errors
    /// A manifest or index blob is missing or malformed.
    pub fn reachable(&self, descriptor: &Descriptor) -> Result<Vec<Descriptor>, LayoutError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        self.walk(descriptor, &mut seen, &mut out)?;
        Ok(out)
    }

    fn walk(
        &self,
        d: &Descriptor,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<Descriptor>,
    ) -> Result<(), LayoutError> {
        if !seen.insert(d.digest().to_string()) {
            return Ok(());
        }
        out.push(d.clone());
        let json_err = |source| {
            LayoutError::Image(ImageError::Json {
                what: "manifest",
                digest: d.digest().to_string(),
                source,
            })
        };
        if is_manifest(d.media_type()) {
            let m: ImageManifest =
                serde_json::from_slice(&self.blobs.read(d.digest())?).map_err(json_err)?;
            self.walk(m.config(), seen, out)?;
            for l in m.layers() {
                self.walk(l, seen, out)?;
            }
        } else if is_index(d.media_type()) {
            let i: ImageIndex =
                serde_json::from_slice(&self.blobs.read(d.digest())?).map_err(json_err)?;
            for m in i.manifests() {
                self.walk(m, seen, out)?;
            }
        }
        Ok(())
    }

    /// Writes the named images as an OCI image layout directory at `dest` (blobs hardlinked
    /// when on the same filesystem, copied otherwise).
    ///
    /// # Errors
    /// A blob is missing, or `dest` cannot be written.
    pub fn export_oci_dir(
        &self,
        names: &[(String, Descriptor)],
        dest: &Path,
    ) -> Result<(), LayoutError> {
        let blob_dir = dest.join("blobs/sha256");
        fs_err::create_dir_all(&blob_dir).map_err(io_err("create", &blob_dir))?;
        for (_, d) in names {
            for b in self.reachable(d)? {
                let src = self.blobs.blob_path(b.digest())?;
                let dst = blob_dir.join(b.digest().digest());
                if dst.exists() {
                    continue;
                }
                if fs_err::hard_link(&src, &dst).is_err() {
                    let tmp = blob_dir.join(format!(".tmp-{}", b.digest().digest()));
                    fs_err::copy(&src, &tmp).map_err(io_err("copy blob to", &tmp))?;
                    fs_err::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
                }
            }
        }
        write_atomic(&dest.join("oci-layout"), OCI_LAYOUT)?;
        write_atomic(&dest.join("index.json"), &index_bytes(&named(names))?)
    }

    /// Streams the named images as an OCI image layout tar (`docker buildx -o type=oci`).
    ///
    /// # Errors
    /// A blob is missing, or writing fails.
    pub fn export_oci_tar<W: Write>(
        &self,
        names: &[(String, Descriptor)],
        out: W,
    ) -> Result<W, LayoutError> {
        let mut blobs = BTreeMap::new();
        for (_, d) in names {
            for b in self.reachable(d)? {
                blobs.insert(b.digest().digest().to_string(), b);
            }
        }
        let mut tar = ExportTar::new(out);
        tar.bytes("oci-layout", OCI_LAYOUT)?;
        tar.bytes("index.json", &index_bytes(&named(names))?)?;
        tar.dir("blobs/")?;
        tar.dir("blobs/sha256/")?;
        for b in blobs.values() {
            tar.blob(&self.blobs, b.digest())?;
        }
        tar.finish()
    }

    /// Streams one image as a `docker load` tar: `manifest.json` and `repositories` as
    /// `docker save` writes them, with the blobs in OCI layout (as Docker 25+ does), so the same
    /// file is also an OCI layout tar.
    ///
    /// # Errors
    /// The descriptor is not a single manifest, a blob is missing, or writing fails.
    pub fn export_docker_tar<W: Write>(
        &self,
        descriptor: &Descriptor,
        repo_tags: &[String],
        out: W,
    ) -> Result<W, LayoutError> {
        let image = crate::image::Image::load(&self.blobs, descriptor)?;
        let blob_name = |d: &Digest| format!("blobs/sha256/{}", d.digest());
        let manifest_json = serde_json::json!([{
            "Config": blob_name(image.manifest.config().digest()),
            "RepoTags": repo_tags,
            "Layers": image.manifest.layers().iter().map(|l| blob_name(l.digest())).collect::<Vec<_>>(),
        }]);
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for tag in repo_tags {
            let (repo, t) = split_tag(tag);
            repositories.entry(repo.to_string()).or_default().insert(
                t.to_string(),
                image.manifest.config().digest().digest().to_string(),
            );
        }
        let names: Vec<(String, Descriptor)> = if repo_tags.is_empty() {
            vec![(String::new(), descriptor.clone())]
        } else {
            repo_tags
                .iter()
                .map(|t| (t.clone(), descriptor.clone()))
                .collect()
        };
        let mut tar = ExportTar::new(out);
        tar.dir("blobs/")?;
        tar.dir("blobs/sha256/")?;
        for b in self.reachable(descriptor)? {
            tar.blob(&self.blobs, b.digest())?;
        }
        let encode = |v: &serde_json::Value| {
            canonical_json(v).map_err(|source| {
                LayoutError::Image(ImageError::Json {
                    what: "manifest",
                    digest: "(docker tar)".into(),
                    source,
                })
            })
        };
        tar.bytes("index.json", &index_bytes(&named(&names))?)?;
        tar.bytes("manifest.json", &encode(&manifest_json)?)?;
        tar.bytes("oci-layout", OCI_LAYOUT)?;
        tar.bytes(
            "repositories",
            &encode(&serde_json::to_value(&repositories).unwrap_or_default())?,
        )?;
        tar.finish()
    }

    /// Applies an image's layers in order into `dest`, carrying out whiteouts by deletion:
    /// the flattened root filesystem (`-o type=local`).
    ///
    /// # Errors
    /// A blob is missing or a layer fails to apply.
    pub fn export_rootfs(&self, descriptor: &Descriptor, dest: &Path) -> Result<(), LayoutError> {
        let image = crate::image::Image::load(&self.blobs, descriptor)?;
        let diff_ids = image.diff_ids().to_vec();
        for (i, layer) in image.manifest.layers().iter().enumerate() {
            let expected_diff_id = diff_ids.get(i).and_then(|s| s.parse().ok());
            let blob = self.blobs.open(layer.digest())?;
            // Flattening applies every layer into `dest`, so hardlink targets from lower layers
            // are already there; no lower snapshots are needed.
            let options = ApplyOptions {
                whiteouts: WhiteoutMode::Remove,
                expected_diff_id,
                lower_dirs: Vec::new(),
            };
            apply_layer(blob, dest, &options).map_err(|source| LayoutError::Apply {
                digest: layer.digest().clone(),
                dest: dest.to_path_buf(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }
}

/// `name:tag` split the way Docker does: the tag follows the last `:` after the last `/`.
fn split_tag(reference: &str) -> (&str, &str) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], &reference[slash + i + 1..]),
        None => (reference, "latest"),
    }
}

fn named(names: &[(String, Descriptor)]) -> Vec<(String, Descriptor)> {
    names
        .iter()
        .map(|(n, d)| {
            let mut d = d.clone();
            if !n.is_empty() {
                let mut ann: HashMap<String, String> = d.annotations().clone().unwrap_or_default();
                ann.insert(ANNOTATION_REF_NAME.to_string(), n.clone());
                d.set_annotations(Some(ann));
            }
            (n.clone(), d)
        })
        .collect()
}

fn index_bytes(entries: &[(String, Descriptor)]) -> Result<Vec<u8>, LayoutError> {
    let mut manifests: Vec<Descriptor> = entries.iter().map(|(_, d)| d.clone()).collect();
    manifests.dedup_by(|a, b| a == b);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| LayoutError::Export {
            entry: "index.json".into(),
            source: io::Error::other(e.to_string()),
        })?;
    canonical_json(&index).map_err(|source| {
        LayoutError::Image(ImageError::Json {
            what: "index",
            digest: "index.json".into(),
            source,
        })
    })
}

/// Writes a small file atomically: temp file in the same directory, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("create temp file in", dir))?;
    tmp.write_all(bytes).map_err(io_err("write", path))?;
    tmp.as_file().sync_all().map_err(io_err("sync", path))?;
    tmp.persist(path).map_err(|e| LayoutError::Io {
        op: "rename onto",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// A deterministic export tar: fixed owner, mode and mtime for every entry.
struct ExportTar<W: Write> {
    tar: TarWriter<W>,
}

impl<W: Write> ExportTar<W> {
    fn new(out: W) -> Self {
        Self {
            tar: TarWriter::new(out),
        }
    }

    fn header(path: &str, kind: TarKind, mode: u32) -> TarHeader {
        TarHeader {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }

    fn dir(&mut self, path: &str) -> Result<(), LayoutError> {
        self.tar
            .append(
                &Self::header(path.trim_end_matches('/'), TarKind::Dir, 0o755),
                None,
            )
            .map_err(|source| LayoutError::Export {
                entry: path.to_string(),
                source,
            })
    }

    fn bytes(&mut self, path: &str, data: &[u8]) -> Result<(), LayoutError> {
        let h = Self::header(
            path,
            TarKind::File {
                size: data.len() as u64,
            },
            0o644,
        );
        self.tar
            .append(&h, Some(&mut &data[..]))
            .map_err(|source| LayoutError::Export {
                entry: path.to_string(),
                source,
            })
    }

    fn blob(&mut self, store: &BlobStore, digest: &Digest) -> Result<(), LayoutError> {
        let entry = format!("blobs/sha256/{}", digest.digest());
        let size = store.size(digest)?;
        let mut f = store.open(digest)?;
        let h = Self::header(&entry, TarKind::File { size }, 0o644);
        self.tar
            .append(&h, Some(&mut f))
            .map_err(|source| LayoutError::Export { entry, source })
    }

    fn finish(self) -> Result<W, LayoutError> {
        self.tar.finish().map_err(|source| LayoutError::Export {
            entry: "(end of archive)".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app", "latest")
        );
        assert_eq!(
            split_tag("localhost:5000/app:v1"),
            ("localhost:5000/app", "v1")
        );
    }
}
