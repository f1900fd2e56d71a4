//! Where a build's context comes from: the seam through which `hoist serve` will hand the
//! engine an uploaded tree instead of a local directory.

use std::path::{Path, PathBuf};

use hoist_cache::context::{self, ContextError, Selection, StatCache};
use hoist_parser::ignore::Matcher;

/// What the hashing of a selection read: files and bytes read again (new or changed); the
/// others were known by their stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hashed {
    pub files: u64,
    pub bytes: u64,
}

/// A selection's content key, and what computing it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// `sha256:…`
    pub key: String,
    pub hashed: Hashed,
    /// The content digest of each regular file, by entry index of the selection (see
    /// [`hoist_cache::context::ContentKey::file_digests`]).
    pub file_digests: Vec<Option<String>>,
}

/// A build context: the files COPY and ADD take, selected and hashed.
pub trait ContextSource: Send + Sync + std::fmt::Debug {
    /// The entries that `sources` (COPY's source patterns) name, less those `ignore`
    /// excludes.
    ///
    /// # Errors
    /// A source that names nothing, or a path that cannot be read.
    fn select(&self, sources: &[String], ignore: &Matcher) -> Result<Selection, ContextError>;

    /// As [`ContextSource::select`] for `COPY --parents` (see
    /// [`hoist_cache::context::select_parents`]).
    ///
    /// # Errors
    /// A plain source that names nothing, or a path that cannot be read.
    fn select_parents(
        &self,
        sources: &[String],
        ignore: &Matcher,
    ) -> Result<Selection, ContextError> {
        let root = self.root();
        context::select_parents(
            root,
            &context::Origin::Context(root.to_path_buf()),
            sources,
            ignore,
        )
    }

    /// The content key of a selection (see [`hoist_cache::context::content_key`]), what
    /// computing it read, and the digest of each file.
    ///
    /// # Errors
    /// A selected file that cannot be read.
    fn content_key(&self, selection: &Selection) -> Result<Keyed, ContextError>;

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
/// unchanged file is not read again on the next build. Content keys of one context are
/// computed at once (the stat cache is locked only briefly, never while a file is read).
#[derive(Debug)]
pub struct LocalContext {
    dir: PathBuf,
    stat_cache_path: PathBuf,
    stat_cache: StatCache,
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
            stat_cache: StatCache::load(&stat_cache_path),
            stat_cache_path,
        }
    }
}

impl ContextSource for LocalContext {
    fn select(&self, sources: &[String], ignore: &Matcher) -> Result<Selection, ContextError> {
        context::select(&self.dir, sources, ignore)
    }

    fn content_key(&self, selection: &Selection) -> Result<Keyed, ContextError> {
        let key = context::content_key(&self.dir, selection, &self.stat_cache)?;
        Ok(Keyed {
            key: key.key,
            hashed: Hashed {
                files: key.files_read,
                bytes: key.bytes_read,
            },
            file_digests: key.file_digests,
        })
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
        // Only a cache: failing to save it costs a rehash next time, nothing more.
        let _ = self.stat_cache.save(&self.stat_cache_path);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::fcntl::AT_FDCWD;
    use nix::sys::fanotify::{
        EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
    };

    use super::*;

    /// Two COPY sources of one build, or two builds, key one context at once: a key must not
    /// wait while another is reading a file. The first key is held inside its read by a
    /// fanotify permission event (the kernel holds its open of the file until the test
    /// answers), as a file that is slow to read would hold it; the second key must end
    /// meanwhile.
    #[test]
    fn a_content_key_is_not_held_up_by_another_reading_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("held"), "held\n").unwrap();
        fs_err::write(dir.path().join("free"), "free\n").unwrap();
        let context = &LocalContext::new(dir.path(), state.path());
        let select = |name: &str| {
            context
                .select(&[name.to_owned()], &Matcher::default())
                .unwrap()
        };
        let (held, free) = (&select("held"), &select("free"));
        std::thread::scope(|s| {
            // Made inside the scope: should the test fail, dropping it lets the held open go
            // before the scope waits for the threads.
            let fanotify = Fanotify::init(
                InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC,
                EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC,
            )
            .expect("fanotify_init (permission events need CAP_SYS_ADMIN: run this test as root)");
            fanotify
                .mark(
                    MarkFlags::FAN_MARK_ADD,
                    MaskFlags::FAN_OPEN_PERM,
                    AT_FDCWD,
                    Some(&dir.path().join("held")),
                )
                .unwrap();
            let first = s.spawn(move || context.content_key(held));
            // Returns once the first key is inside its read of "held", its open held.
            let events = fanotify.read_events().unwrap();
            let (done, finished) = mpsc::channel();
            s.spawn(move || {
                let _ = done.send(context.content_key(free));
            });
            // A watchdog, not a timing: were the stat cache locked for a whole key, the second
            // key would wait for the first, which waits for this test.
            let second = finished.recv_timeout(Duration::from_secs(60));
            for event in &events {
                if let Some(fd) = event.fd() {
                    fanotify
                        .write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW))
                        .unwrap();
                }
            }
            let second = second.expect(
                "the second content key waited for the first, which was reading a file: \
                 the context's stat cache is locked for a whole key",
            );
            let read_one = Hashed { files: 1, bytes: 5 };
            assert_eq!(second.unwrap().hashed, read_one);
            assert_eq!(first.join().unwrap().unwrap().hashed, read_one);
        });
    }
}
