//! File ops (COPY, ADD, WORKDIR, heredoc files): a fresh directory that becomes the new
//! layer, written from the context or from a read-only view of another chain.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use hoist_cache::context::{self, Origin, Selection};
use hoist_cache::copy::{self, CopyOptions};
use hoist_parser::ignore::Matcher;

use hoist_solver::op::{CopyFrom, FileAction, FileOp};

use crate::error::{WorkerError, io_err};
use crate::{BuildWorker, Layer, Output, State};

impl BuildWorker {
    pub(crate) fn file_op(
        &self,
        op: &FileOp,
        inputs: &[Output],
    ) -> Result<Vec<Layer>, WorkerError> {
        let dest_chain = inputs
            .first()
            .ok_or(WorkerError::Internal("a file op without input"))?
            .chain()?;
        let dest_layers = self.state.snapshot_dirs(dest_chain)?;
        let dest_view = View::new(&self.state, &dest_layers)?;
        let out = self.state.scratch()?;
        let out_dir = out.path().join("layer");
        fs_err::create_dir(&out_dir).map_err(io_err("create", &out_dir))?;
        for action in &op.actions {
            match action {
                FileAction::Copy {
                    src_input,
                    src,
                    dest,
                    chown,
                    chmod,
                    unpack_archives,
                    exclude,
                    from,
                    parents,
                    ..
                } => {
                    let owner = self.owner(&dest_layers, chown.as_deref())?;
                    let opts = CopyOptions {
                        chown: owner,
                        chmod: *chmod,
                    };
                    let input = inputs
                        .get(*src_input)
                        .ok_or(WorkerError::Internal("copy source missing"))?;
                    match input {
                        Output::Context(selection, context) => {
                            // The context source already applied .dockerignore, and
                            // --exclude unless the paths it matches are those below a
                            // --parents pivot.
                            let kept;
                            let selection = if *parents {
                                kept = exclude_below_pivots(selection, exclude)?;
                                &kept
                            } else {
                                selection.as_ref()
                            };
                            if *unpack_archives {
                                self.add_archives(
                                    context.root(),
                                    selection,
                                    dest,
                                    dest_view.path(),
                                    &out_dir,
                                    opts,
                                )?;
                            } else {
                                copy::copy_selection(
                                    context.root(),
                                    selection,
                                    dest,
                                    dest_view.path(),
                                    &out_dir,
                                    opts,
                                )?;
                            }
                        }
                        Output::Chain(chain) => {
                            let src_layers = self.state.snapshot_dirs(chain)?;
                            let src_view = View::new(&self.state, &src_layers)?;
                            // Messages name the stage or image, not the view's internal path.
                            let origin = match from {
                                Some(CopyFrom::Image(reference)) => {
                                    Origin::Image(reference.clone())
                                }
                                Some(CopyFrom::Stage(name)) => Origin::Stage(name.clone()),
                                Some(CopyFrom::Context(name)) => Origin::NamedContext(name.clone()),
                                Some(CopyFrom::Remote(source)) => Origin::Remote(source.clone()),
                                None => {
                                    return Err(WorkerError::Internal(
                                        "a copy from a filesystem names no stage or image",
                                    ));
                                }
                            };
                            let selection = if *parents {
                                let all = context::select_parents(
                                    src_view.path(),
                                    &origin,
                                    src,
                                    &Matcher::default(),
                                )?;
                                exclude_below_pivots(&all, exclude)?
                            } else {
                                let matcher = Matcher::new(exclude.iter().map(String::as_str))?;
                                context::select_from(src_view.path(), &origin, src, &matcher)?
                            };
                            copy::copy_selection(
                                src_view.path(),
                                &selection,
                                dest,
                                dest_view.path(),
                                &out_dir,
                                opts,
                            )?;
                        }
                    }
                }
                FileAction::Mkdir {
                    path, mode, chown, ..
                } => {
                    let owner = self.owner(&dest_layers, chown.as_deref())?;
                    copy::mkdir(dest_view.path(), &out_dir, path, *mode, owner)?;
                }
                FileAction::Mkfile {
                    path,
                    mode,
                    data,
                    chown,
                } => {
                    let owner = self.owner(&dest_layers, chown.as_deref())?;
                    copy::mkfile(
                        dest_view.path(),
                        &out_dir,
                        path,
                        data.as_bytes(),
                        *mode,
                        owner,
                    )?;
                }
            }
        }
        drop(dest_view);
        let layer = self
            .state
            .commit_layer(&out_dir, self.diff_options.source_date_epoch)?;
        let mut chain = dest_chain.to_vec();
        chain.push(layer);
        Ok(chain)
    }

    /// ADD of local files: a tar archive (plain, gzip, bzip2, xz or zstd, told by content) is
    /// extracted into the destination directory; any other file is copied as COPY would.
    pub(crate) fn add_archives(
        &self,
        root: &Path,
        selection: &Selection,
        dest: &str,
        dest_view: &Path,
        out_dir: &Path,
        opts: CopyOptions,
    ) -> Result<(), WorkerError> {
        let mut plain = Selection::default();
        for entry in &selection.entries {
            let path = root.join(&entry.source);
            let archive = if entry.kind == context::EntryKind::File {
                hoist_cache::archive::detect_archive(&path)?
            } else {
                None
            };
            if archive.is_some() {
                // The destination follows the image's symlinks (inside the root), as COPY's.
                let dir = copy::resolve_dest(dest_view, dest)?;
                copy::mkdir(dest_view, out_dir, &dir, 0o755, opts.chown)?;
                let target = out_dir.join(&dir);
                hoist_cache::archive::extract_archive(
                    &path,
                    &target,
                    &hoist_cache::archive::ExtractOptions { chown: opts.chown },
                )?;
            } else {
                plain.entries.push(entry.clone());
            }
        }
        if !plain.entries.is_empty() {
            copy::copy_selection(root, &plain, dest, dest_view, out_dir, opts)?;
        }
        Ok(())
    }

    /// Resolves `--chown` in the destination image; `None` is root.
    pub(crate) fn owner(
        &self,
        layers: &[PathBuf],
        chown: Option<&str>,
    ) -> Result<Option<(u32, u32)>, WorkerError> {
        let Some(spec) = chown else {
            return Ok(None);
        };
        // Docker: a user without a group uses the same number for the group.
        let user_only = !spec.contains(':');
        let user = hoist_executor::user::resolve_user(layers, spec).map_err(|source| {
            WorkerError::User {
                user: spec.to_owned(),
                source,
            }
        })?;
        let gid = if user_only { user.uid() } else { user.gid() };
        Ok(Some((user.uid(), gid)))
    }
}

/// A `--parents` selection less what `--exclude` matches: each pattern is matched against the
/// path an entry keeps below its pivot (where it lands under the destination), as BuildKit
/// matches it below the copy's source directory.
fn exclude_below_pivots(
    selection: &Selection,
    exclude: &[String],
) -> Result<Selection, WorkerError> {
    let matcher = Matcher::new(exclude.iter().map(String::as_str))?;
    let mut kept = selection.clone();
    kept.entries
        .retain(|e| !matcher.matches(&e.dest.to_string_lossy()));
    Ok(kept)
}

/// A read-only merged view of a chain: the single snapshot itself, an empty directory, or a
/// read-only overlay mount of several (unmounted on drop).
pub(crate) struct View {
    path: PathBuf,
    mounted: bool,
    _scratch: Option<tempfile::TempDir>,
}

impl View {
    /// A writable view of a chain: an overlay over its layers whose upperdir is thrown away
    /// with the view (`RUN --mount=type=bind,rw`).
    pub(crate) fn writable(
        state: &State,
        layers_top_first: &[PathBuf],
    ) -> Result<Self, WorkerError> {
        Self::overlay(state, layers_top_first, true)
    }

    pub(crate) fn new(state: &State, layers_top_first: &[PathBuf]) -> Result<Self, WorkerError> {
        match layers_top_first {
            [] => {
                let scratch = state.scratch()?;
                Ok(Self {
                    path: scratch.path().to_path_buf(),
                    mounted: false,
                    _scratch: Some(scratch),
                })
            }
            [one] => Ok(Self {
                path: one.clone(),
                mounted: false,
                _scratch: None,
            }),
            many => Self::overlay(state, many, false),
        }
    }

    /// An overlay of `layers_top_first` in a scratch dir, over an upperdir there if `writable`.
    fn overlay(
        state: &State,
        layers_top_first: &[PathBuf],
        writable: bool,
    ) -> Result<Self, WorkerError> {
        let scratch = state.scratch()?;
        let dir = |name: &str| -> Result<PathBuf, WorkerError> {
            let path = scratch.path().join(name);
            fs_err::create_dir(&path).map_err(io_err("create", &path))?;
            Ok(path)
        };
        let target = dir("view")?;
        let mut lowerdirs = layers_top_first.to_vec();
        if lowerdirs.is_empty() {
            // overlayfs needs a lowerdir; an empty one stands for `FROM scratch`.
            lowerdirs.push(dir("empty")?);
        }
        let upper = if writable {
            Some((dir("upper")?, dir("work")?))
        } else {
            None
        };
        hoist_executor::overlay::mount(
            &target,
            &hoist_executor::overlay::Overlay {
                lowerdirs: &lowerdirs,
                upper: upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
            },
        )
        .map_err(|source| WorkerError::View {
            target: target.clone(),
            source,
        })?;
        Ok(Self {
            path: target,
            mounted: true,
            _scratch: Some(scratch),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
        }
    }
}
