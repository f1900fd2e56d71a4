//! Where a build's context comes from: the seam through which `hoist serve` will hand the
//! engine an uploaded tree instead of a local directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hoist_cache::context::{self, ContextError, Selection, StatCache};
use hoist_parser::ignore::Matcher;

/// What the hashing of a selection read: files and bytes read again (new or changed); the
/// others were known by their stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hashed {
    pub files: u64,
    pub bytes: u64,
}

/// A build context: the files COPY and ADD take, selected and hashed.
pub trait ContextSource: Send + Sync + std::fmt::Debug {
    /// The entries that `sources` (COPY's source patterns) name, less those `ignore`
    /// excludes.
    ///
    /// # Errors
    /// A source that names nothing, or a path that cannot be read.
    fn select(&self, sources: &[String], ignore: &Matcher) -> Result<Selection, ContextError>;

    /// The content key of a selection (see [`hoist_cache::context::content_key`]), and what
    /// computing it read.
    ///
    /// # Errors
    /// A selected file that cannot be read.
    fn content_key(&self, selection: &Selection) -> Result<(String, Hashed), ContextError>;

    /// The directory that selected entries are read from.
    fn root(&self) -> &Path;

    /// The `.dockerignore` patterns of the build: `<Dockerfile>.dockerignore` beside the
    /// Dockerfile at `dockerfile` when there is one, else the context's `.dockerignore`.
    ///
    /// # Errors
    /// An ignore file that exists but cannot be read.
    fn ignore_patterns(
        &self,
        dockerfile: Option<&Path>,
    ) -> Result<Vec<String>, hoist_parser::ignore::IgnoreError>;

    /// The build is over: keep what makes the next one faster.
    fn finish(&self) {}
}

/// A context directory on this machine, with a stat cache under the state root so that an
/// unchanged file is not read again on the next build.
#[derive(Debug)]
pub struct LocalContext {
    dir: PathBuf,
    stat_cache_path: PathBuf,
    stat_cache: Mutex<StatCache>,
}

impl LocalContext {
    /// The context at `dir`, keeping its stat cache under `state_root`.
    #[must_use]
    pub fn new(dir: &Path, state_root: &Path) -> Self {
        let abs = fs_err::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let key = hoist_cache::sha256_of(abs.as_os_str().as_encoded_bytes());
        let stat_cache_path = state_root
            .join("context-stat")
            .join(format!("{}.v2", key.digest()));
        Self {
            dir: dir.to_path_buf(),
            stat_cache: Mutex::new(StatCache::load(&stat_cache_path)),
            stat_cache_path,
        }
    }
}

impl ContextSource for LocalContext {
    fn select(&self, sources: &[String], ignore: &Matcher) -> Result<Selection, ContextError> {
        context::select(&self.dir, sources, ignore)
    }

    fn content_key(&self, selection: &Selection) -> Result<(String, Hashed), ContextError> {
        let mut cache = self
            .stat_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (files, bytes) = (cache.hashed_files, cache.hashed_bytes);
        let key = context::content_key(&self.dir, selection, &mut cache)?;
        Ok((
            key,
            Hashed {
                files: cache.hashed_files - files,
                bytes: cache.hashed_bytes - bytes,
            },
        ))
    }

    fn root(&self) -> &Path {
        &self.dir
    }

    fn ignore_patterns(
        &self,
        dockerfile: Option<&Path>,
    ) -> Result<Vec<String>, hoist_parser::ignore::IgnoreError> {
        Ok(
            hoist_parser::ignore::read_dockerignore_patterns(&self.dir, dockerfile)?
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.text)
                .collect(),
        )
    }

    fn finish(&self) {
        if let Ok(cache) = self.stat_cache.lock() {
            // Only a cache: failing to save it costs a rehash next time, nothing more.
            let _ = cache.save(&self.stat_cache_path);
        }
    }
}
