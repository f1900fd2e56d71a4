//! Images outside a build: pull into the local store, push from it, and run one in the sandbox
//! as `docker run` would (ENTRYPOINT, CMD, ENV, USER and WORKDIR honoured, the exit code passed
//! through).

// Errors travel once, on the slow path; see worker.rs.
#![allow(clippy::result_large_err)]

use hoist_cache::oci_spec::image::Descriptor;
use hoist_cache::{Image, ImageStore};
use hoist_executor::ExitStatus;
use hoist_executor::spec;
use hoist_registry::{Client, PushOptions, Reference};
use hoist_solver::Platform;
use tokio::io::AsyncWrite;

use crate::{Engine, Sandboxed, State};
use hoist_solver::frontend::ImageConfig;

/// An image operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageOpError {
    #[error("invalid image reference {reference:?}")]
    Reference {
        reference: String,
        #[source]
        source: hoist_registry::ParseReferenceError,
    },
    #[error("pulling {reference}")]
    Pull {
        reference: String,
        #[source]
        source: Box<hoist_registry::PullError>,
    },
    #[error("pushing {reference}")]
    Push {
        reference: String,
        #[source]
        source: Box<hoist_registry::PushError>,
    },
    #[error(transparent)]
    Store(#[from] hoist_cache::LayoutError),
    #[error(transparent)]
    Image(#[from] hoist_cache::ImageError),
    #[error(transparent)]
    Snapshot(#[from] hoist_cache::SnapshotError),
    #[error("image {reference} has no command: give one after the image name")]
    NoCommand { reference: String },
    #[error(transparent)]
    Sandbox(#[from] crate::WorkerError),
    #[error("the sandbox failed")]
    Run(#[from] hoist_executor::RunError),
}

fn parse(reference: &str) -> Result<Reference, ImageOpError> {
    reference.parse().map_err(|source| ImageOpError::Reference {
        reference: reference.to_owned(),
        source,
    })
}

/// Pulls an image into the content store and names it in the local store. It needs the
/// content store and the registry only: no sandbox and no cache index.
///
/// # Errors
/// The reference is invalid, or the pull fails (the message says why).
pub async fn pull(
    state: &State,
    registry: &Client,
    reference: &str,
    platform: &Platform,
) -> Result<Descriptor, ImageOpError> {
    let parsed = parse(reference)?;
    let store = state.registry_store();
    let resolved = registry
        .pull(&parsed, &crate::source::registry_platform(platform), store)
        .await
        .map_err(|source| ImageOpError::Pull {
            reference: reference.to_owned(),
            source: Box::new(source),
        })?;
    // The layers and config are in the store; the platform's manifest goes there too, so the
    // local name points at something complete.
    state
        .blobs
        .put(&resolved.manifest.bytes)
        .map_err(hoist_cache::LayoutError::from)?;
    let descriptor = resolved.manifest.descriptor();
    let images = ImageStore::open(&state.root)?;
    images.tag(&parsed.to_string(), &descriptor)?;
    Ok(descriptor)
}

/// Pushes a locally named image to `target` (the same name when `None`). Returns the pushed
/// reference pinned to its digest. Like [`pull`], it needs the content store and the registry
/// only: no sandbox and no cache index.
///
/// # Errors
/// The name is unknown locally, or the push fails.
pub async fn push(
    state: &State,
    registry: &Client,
    name: &str,
    target: Option<&str>,
) -> Result<String, ImageOpError> {
    let source = parse(name)?;
    let images = ImageStore::open(&state.root)?;
    let descriptor = images.resolve(&source.to_string())?;
    let target_ref = parse(target.unwrap_or(name))?;
    let report = registry
        .push(
            &target_ref,
            &descriptor,
            state.registry_store(),
            &PushOptions::default(),
        )
        .await
        .map_err(|source| ImageOpError::Push {
            reference: target_ref.to_string(),
            source: Box::new(source),
        })?;
    Ok(report.reference.to_string())
}

/// What `hoist run` was asked for beyond the image.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Replaces the image's CMD (and is appended to its ENTRYPOINT).
    pub command: Vec<String>,
    /// Replaces the image's ENTRYPOINT.
    pub entrypoint: Option<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub network: spec::NetworkMode,
}

/// Runs an image from the local store (pulling it first if it is not there), streaming its
/// output, and returns its exit code (128 + signal for a signal, as shells report it).
///
/// # Errors
/// The image cannot be had, has no command, or the sandbox fails to start.
pub async fn run<O, E>(
    engine: &Engine,
    reference: &str,
    platform: &Platform,
    options: &RunOptions,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<i32, ImageOpError>
where
    O: AsyncWrite + Unpin + Send + ?Sized,
    E: AsyncWrite + Unpin + Send + ?Sized,
{
    let parsed = parse(reference)?;
    let images = ImageStore::open(&engine.state.root)?;
    let descriptor = match images.resolve(&parsed.to_string()) {
        Ok(d) => d,
        Err(_) => pull(&engine.state, &engine.registry, reference, platform).await?,
    };
    let image = Image::load(&engine.state.blobs, &descriptor)?;
    let mut lowerdirs = engine
        .state
        .snapshots
        .unpack_image(&engine.state.blobs, &image)?;
    lowerdirs.reverse();
    let config: ImageConfig = image_runtime_config(&engine.state.blobs, &image);

    let mut args: Vec<String> = match &options.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    if options.command.is_empty() {
        if options.entrypoint.is_none() {
            args.extend(config.cmd.clone().unwrap_or_default());
        }
    } else {
        args.extend(options.command.iter().cloned());
    }
    if args.is_empty() {
        return Err(ImageOpError::NoCommand {
            reference: reference.to_owned(),
        });
    }
    let mut env = config.env.clone();
    for (k, v) in &options.env {
        env.retain(|kv| kv.split_once('=').is_none_or(|(key, _)| key != k));
        env.push(format!("{k}={v}"));
    }
    let user = options.user.clone().unwrap_or_else(|| config.user.clone());
    let cwd = options
        .workdir
        .clone()
        .or_else(|| (!config.working_dir.is_empty()).then(|| config.working_dir.clone()))
        .unwrap_or_else(|| "/".to_owned());
    let (request, scratch) = engine.state.sandbox_request(
        &engine.executor,
        Sandboxed {
            args,
            env,
            cwd: &cwd,
            user: &user,
            hostname: "hoist-run",
            network: options.network,
            insecure: false,
            lowerdirs,
            limits: hoist_executor::spec::Limits::default(),
            mounts: Vec::new(),
        },
    )?;
    let outcome = engine.executor.run(request, stdout, stderr).await?;
    // `--rm` is the only mode: the container's changes go with the scratch dir.
    drop(scratch);
    Ok(match outcome.status {
        ExitStatus::Exited(code) => code,
        ExitStatus::Signaled(signal) => 128 + signal,
    })
}

/// The runtime part (`config`) of an image's config blob.
fn image_runtime_config(blobs: &hoist_cache::BlobStore, image: &Image) -> ImageConfig {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        config: Option<ImageConfig>,
    }
    blobs
        .read(image.manifest.config().digest())
        .ok()
        .and_then(|raw| serde_json::from_slice::<Raw>(&raw).ok())
        .and_then(|r| r.config)
        .unwrap_or_default()
}
