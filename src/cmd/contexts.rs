//! `hoist build --build-context NAME=DIR|docker-image://REF|oci-layout://DIR[:TAG][@sha256:…]`:
//! each value checked before anything is built, then handed to the frontend (what `FROM NAME`
//! and `--from=NAME` stand for) and to the worker (where the files are).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use hoist_solver::Platform;
use hoist_solver::frontend::NamedContext;
use hoist_worker::named::{self, ContextValue, NamedContexts};
use hoist_worker::{ContextSource as _, LocalContext};

/// The named contexts of a local build: for the frontend, and for the worker.
pub(crate) struct Contexts {
    pub(crate) options: BTreeMap<String, NamedContext>,
    pub(crate) worker: NamedContexts,
}

fn parse_all(args: &[String]) -> anyhow::Result<Vec<(String, ContextValue)>> {
    let mut seen = Vec::new();
    for arg in args {
        let (name, value) = named::parse(arg)?;
        if seen.iter().any(|(n, _)| *n == name) {
            bail!("--build-context {name} is given twice");
        }
        seen.push((name, value));
    }
    Ok(seen)
}

/// Reads every `--build-context` of a build in this process: directories must exist, a
/// layout's image is found and its config read for `platform`.
pub(crate) fn local(
    args: &[String],
    state_root: &Path,
    platform: &Platform,
) -> anyhow::Result<Contexts> {
    let mut out = Contexts {
        options: BTreeMap::new(),
        worker: NamedContexts::default(),
    };
    for (name, value) in parse_all(args)? {
        let context = match value {
            ContextValue::Local(dir) => {
                named::check_dir(&name, &dir)?;
                let local = LocalContext::new(&dir, state_root);
                // Its own `.dockerignore`, never the main context's or the Dockerfile's.
                let ignore_patterns = local.ignore_patterns(None)?;
                out.worker.local.insert(name.clone(), Arc::new(local));
                NamedContext::Local { ignore_patterns }
            }
            ContextValue::Image(reference) => NamedContext::Image(reference),
            ContextValue::Layout { dir, tag, digest } => {
                let image = named::resolve_layout(
                    &name,
                    &dir,
                    tag.as_deref(),
                    digest.as_deref(),
                    platform,
                )?;
                out.worker.layouts.insert(name.clone(), dir);
                NamedContext::Layout {
                    manifest: image.manifest,
                    config: Box::new(image.config),
                    history: image.history,
                }
            }
        };
        out.options.insert(name, context);
    }
    Ok(out)
}

/// The `--build-context` images of a remote build, by name; directories and layouts are on
/// this machine, which the server cannot read.
pub(crate) fn remote(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (name, value) in parse_all(args)? {
        match value {
            ContextValue::Image(reference) => {
                out.insert(name, reference);
            }
            ContextValue::Local(_) | ContextValue::Layout { .. } => bail!(
                "--build-context {name}: a local directory or OCI layout is not supported with \
                 --remote yet; use docker-image://REF, or build without --remote"
            ),
        }
    }
    Ok(out)
}
