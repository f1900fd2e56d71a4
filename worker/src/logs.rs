//! Every build's complete log, kept under the state root so that it can be read back after
//! the build (`hoist logs`), however much a step printed.
//!
//! Progress events carry output as it comes; a renderer may fall behind and a terminal shows
//! only so much, and BuildKit cuts a step's log at 2 MiB and throttles it. Here each build's
//! output is written as it arrives, unthrottled and whole:
//!
//! - `logs/<build>.steps`: one line per change of a step, `number<TAB>status<TAB>name`
//!   (status `started`, `cached`, `done`, `error`, `canceled`; the name, with newlines as `\n`,
//!   on the lines that first show the step);
//! - `logs/<build>.<number>.log`: the step's output, byte for byte, both streams as they came.
//!
//! The newest build is the one whose steps file changed last. A build makes one file, and one
//! more per step that prints: a new inode costs about a millisecond on some filesystems
//! (journal-less ext4 after many deletions), which a cached build would feel.
//!
//! Step numbers are those the progress output shows (`#4`), given by
//! [`hoist_solver::progress::StepNumbers`]. The logs of the newest [`KEEP_BUILDS`] builds are
//! kept.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hoist_solver::progress::{Event, ProgressSink, StepNumbers};

/// How many builds' logs a state root keeps.
pub const KEEP_BUILDS: usize = 50;

/// Error of reading or writing build logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no build has run on the state root {root} yet")]
    NoBuild { root: PathBuf },
    #[error("no build {build} in {dir}: the kept builds are its *.steps files")]
    UnknownBuild { build: String, dir: PathBuf },
    #[error("build {build} has no step #{step}: its steps are #1 to #{last}")]
    UnknownStep {
        build: String,
        step: usize,
        last: usize,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> LogError + 'p {
    move |source| LogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A new build id: 12 hex digits from the time, the process and a counter.
fn new_build_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{nanos} {} {}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let digest = hoist_cache::sha256_of(seed.as_bytes());
    digest.digest()[..12].to_owned()
}

/// The logs under a state root.
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
    /// The process's lease: a new build's logs are held until it ends.
    lease: Option<Arc<hoist_cache::gc::Lease>>,
}

/// One step of a recorded build, as its `steps` file tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub number: usize,
    pub name: String,
    /// The last status recorded: `started`, `cached`, `done`, `error` or `canceled`.
    pub status: String,
}

impl LogStore {
    /// The logs of the state root `root`.
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("logs"),
            lease: None,
        }
    }

    /// The same store, holding each new build's logs in `lease` (see [`hoist_cache::gc`]).
    #[must_use]
    pub fn with_lease(mut self, lease: Arc<hoist_cache::gc::Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Every kept build's logs as a record for the collector, last used when its steps file
    /// last changed.
    #[must_use]
    pub fn gc_records(&self) -> Vec<hoist_cache::gc::Record> {
        let Ok(builds) = self.builds() else {
            return Vec::new();
        };
        builds
            .into_iter()
            .map(|(modified, build)| {
                let at = modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                crate::gc::record(
                    hoist_cache::gc::Kind::Log,
                    build.clone(),
                    format!("the logs of build {build} (hoist logs {build})"),
                    Some(at),
                    false,
                    vec![hoist_cache::gc::Unit::Log(build)],
                )
            })
            .collect()
    }

    /// The newest build's id.
    ///
    /// # Errors
    /// No build has run, or the logs cannot be listed.
    pub fn last(&self) -> Result<String, LogError> {
        let no_build = || LogError::NoBuild {
            root: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
        };
        let builds = match self.builds() {
            Ok(builds) => builds,
            Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(no_build());
            }
            Err(e) => return Err(e),
        };
        builds
            .into_iter()
            .max_by_key(|(modified, _)| *modified)
            .map(|(_, build)| build)
            .ok_or_else(no_build)
    }

    /// Every kept build, with when its steps file last changed.
    fn builds(&self) -> Result<Vec<(std::time::SystemTime, String)>, LogError> {
        let entries = fs_err::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let build = name.strip_suffix(".steps")?.to_owned();
                Some((e.metadata().ok()?.modified().ok()?, build))
            })
            .collect())
    }

    /// The steps file of `build`.
    fn steps_path(&self, build: &str) -> Result<PathBuf, LogError> {
        let path = self.dir.join(format!("{build}.steps"));
        let plain = !build.is_empty() && build.bytes().all(|b| b.is_ascii_alphanumeric());
        if plain && path.is_file() {
            Ok(path)
        } else {
            Err(LogError::UnknownBuild {
                build: build.to_owned(),
                dir: self.dir.clone(),
            })
        }
    }

    /// The steps of `build`, by number.
    ///
    /// # Errors
    /// An unknown build, or a file that cannot be read.
    pub fn steps(&self, build: &str) -> Result<Vec<StepRecord>, LogError> {
        let path = self.steps_path(build)?;
        let text = fs_err::read_to_string(&path).map_err(io_err("read", &path))?;
        let mut steps: Vec<StepRecord> = Vec::new();
        for line in text.lines() {
            let mut fields = line.splitn(3, '\t');
            let (Some(number), Some(status)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<usize>() else {
                continue;
            };
            let name = fields.next().map(|n| n.replace("\\n", "\n"));
            match steps.iter_mut().find(|s| s.number == number) {
                Some(step) => {
                    status.clone_into(&mut step.status);
                    if let Some(name) = name {
                        step.name = name;
                    }
                }
                None => steps.push(StepRecord {
                    number,
                    name: name.unwrap_or_default(),
                    status: status.to_owned(),
                }),
            }
        }
        steps.sort_by_key(|s| s.number);
        Ok(steps)
    }

    /// Opens the output of step `step` of `build`; a step that printed nothing reads empty.
    ///
    /// # Errors
    /// An unknown build or step, or a file that cannot be opened.
    pub fn open_step(&self, build: &str, step: usize) -> Result<Box<dyn io::Read>, LogError> {
        let steps = self.steps(build)?;
        if !steps.iter().any(|s| s.number == step) {
            return Err(LogError::UnknownStep {
                build: build.to_owned(),
                step,
                last: steps.last().map_or(0, |s| s.number),
            });
        }
        let path = self.dir.join(format!("{build}.{step}.log"));
        match fs_err::File::open(&path) {
            Ok(file) => Ok(Box::new(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(io::empty())),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// Writes a build's log as `hoist logs` prints it: each step's header (`#N name (status)`)
    /// and its output, or with `step` that step's output alone, byte for byte. `build` is an
    /// id, or `None` (or `last`) for the newest build.
    ///
    /// # Errors
    /// An unknown build or step, a file that cannot be read, or a failed write (as
    /// [`LogError::Io`] on `out`'s side).
    pub fn write_log(
        &self,
        build: Option<&str>,
        step: Option<usize>,
        out: &mut dyn io::Write,
    ) -> Result<(), LogError> {
        let build = match build {
            None | Some("last") => self.last()?,
            Some(id) => id.to_owned(),
        };
        let written = |source| LogError::Io {
            op: "write the log of",
            path: PathBuf::from(&build),
            source,
        };
        let copy = |from: &mut dyn io::Read, out: &mut dyn io::Write| -> Result<bool, LogError> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut ends_in_newline = true;
            loop {
                let n = from.read(&mut buf).map_err(written)?;
                if n == 0 {
                    return Ok(ends_in_newline);
                }
                out.write_all(&buf[..n]).map_err(written)?;
                ends_in_newline = buf[n - 1] == b'\n';
            }
        };
        if let Some(step) = step {
            copy(&mut self.open_step(&build, step)?, out)?;
            return Ok(());
        }
        writeln!(out, "#0 build {build}").map_err(written)?;
        for step in self.steps(&build)? {
            writeln!(out, "#{} {} ({})", step.number, step.name, step.status).map_err(written)?;
            if !copy(&mut self.open_step(&build, step.number)?, out)? {
                writeln!(out).map_err(written)?;
            }
        }
        Ok(())
    }

    /// Starts the log of a new build, which forwards every event to `forward` after
    /// recording it; drops the oldest builds' logs past [`KEEP_BUILDS`].
    ///
    /// # Errors
    /// The build's directory cannot be made.
    pub fn start(&self, forward: Arc<dyn ProgressSink>) -> Result<BuildLog, LogError> {
        fs_err::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        self.prune();
        let build = new_build_id();
        if let Some(lease) = &self.lease {
            lease.hold(hoist_cache::gc::Item::Log(build.clone()));
        }
        let steps_path = self.dir.join(format!("{build}.steps"));
        let steps = fs_err::File::create(&steps_path).map_err(io_err("create", &steps_path))?;
        Ok(BuildLog {
            forward,
            inner: Mutex::new(Inner {
                dir: self.dir.clone(),
                build: build.clone(),
                numbers: StepNumbers::default(),
                steps: BufWriter::new(steps.into()),
                outputs: HashMap::new(),
                failed: None,
            }),
            build,
        })
    }

    /// Removes the oldest builds' logs so that [`KEEP_BUILDS`] minus one remain.
    fn prune(&self) {
        let Ok(mut builds) = self.builds() else {
            return;
        };
        if builds.len() < KEEP_BUILDS {
            return;
        }
        builds.sort();
        let old: Vec<String> = builds[..=builds.len() - KEEP_BUILDS]
            .iter()
            .map(|(_, build)| format!("{build}."))
            .collect();
        let Ok(entries) = fs_err::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if old.iter().any(|prefix| name.starts_with(prefix)) {
                let _ = fs_err::remove_file(entry.path());
            }
        }
    }
}

struct Inner {
    dir: PathBuf,
    build: String,
    numbers: StepNumbers,
    steps: BufWriter<std::fs::File>,
    /// Each step's open output file.
    outputs: HashMap<usize, BufWriter<std::fs::File>>,
    /// The first write that failed: recording stops, the build goes on.
    failed: Option<String>,
}

/// One build's log: a progress sink that records each event and passes it on.
pub struct BuildLog {
    build: String,
    forward: Arc<dyn ProgressSink>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for BuildLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildLog")
            .field("build", &self.build)
            .finish_non_exhaustive()
    }
}

impl BuildLog {
    /// The build's id.
    #[must_use]
    pub fn build(&self) -> &str {
        &self.build
    }

    /// Flushes what is buffered; returns the first write that failed, if any (a log that
    /// could not be kept does not fail the build).
    pub fn finish(&self) -> Option<String> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = inner.steps.flush();
        for out in inner.outputs.values_mut() {
            let _ = out.flush();
        }
        inner.outputs.clear();
        inner.failed.clone()
    }
}

impl Inner {
    fn record(&mut self, event: &Event) -> io::Result<()> {
        let Some(number) = self.numbers.of(event) else {
            return Ok(());
        };
        let status =
            |steps: &mut BufWriter<std::fs::File>, status: &str, name: Option<&str>| match name {
                Some(name) => writeln!(steps, "{number}\t{status}\t{}", name.replace('\n', "\\n")),
                None => writeln!(steps, "{number}\t{status}"),
            };
        match event {
            Event::Build { .. } => {}
            Event::Started { name, .. } => status(&mut self.steps, "started", Some(name))?,
            Event::Cached { name, .. } => status(&mut self.steps, "cached", Some(name))?,
            Event::Log { data, .. } => {
                let out = match self.outputs.entry(number) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let path = self.dir.join(format!("{}.{number}.log", self.build));
                        e.insert(BufWriter::with_capacity(
                            64 * 1024,
                            fs_err::File::create(&path)?.into(),
                        ))
                    }
                };
                out.write_all(data)?;
            }
            Event::Finished { .. } | Event::Failed { .. } | Event::Canceled { .. } => {
                if let Some(mut out) = self.outputs.remove(&number) {
                    out.flush()?;
                }
                let word = match event {
                    Event::Finished { .. } => "done",
                    Event::Failed { .. } => "error",
                    _ => "canceled",
                };
                status(&mut self.steps, word, None)?;
                self.steps.flush()?;
            }
        }
        Ok(())
    }
}

impl ProgressSink for BuildLog {
    fn event(&self, event: Event) {
        {
            let mut inner = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if inner.failed.is_none()
                && let Err(e) = inner.record(&event)
            {
                inner.failed = Some(format!("{}/{}: {e}", inner.dir.display(), inner.build));
            }
        }
        self.forward.event(event);
    }
}
