//! One module per subcommand. Each exposes its clap arguments and a `run` that returns the exit
//! code, or an error that `report` renders.

pub(crate) mod build;
pub(crate) mod builds;
pub(crate) mod debug;
pub(crate) mod disk;
pub(crate) mod engine;
pub(crate) mod image;
pub(crate) mod info;
pub(crate) mod logs;
pub(crate) mod parse;
pub(crate) mod remote;
pub(crate) mod run;
pub(crate) mod serve;

use std::io::Write as _;
use std::path::PathBuf;

/// Renders an error and its causes on stderr, once, at the edge.
pub(crate) fn report(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
}

/// `K=V`, or a bare `K` taken from the environment (as docker does for `--build-arg` and `-e`).
pub(crate) fn key_value(kv: &str, flag: &str) -> anyhow::Result<(String, String)> {
    use anyhow::Context as _;
    match kv.split_once('=') {
        Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
        None => std::env::var(kv)
            .map(|v| (kv.to_owned(), v))
            .with_context(|| {
                format!("{flag} {kv:?} has no =VALUE and is not set in the environment")
            }),
    }
}

/// Where `-o type=…` sends an image.
#[derive(Debug)]
pub(crate) enum Output {
    /// The local store (always written by a build).
    Image,
    /// Push every tag.
    Registry,
    OciDir(PathBuf),
    OciTar(PathBuf),
    /// A `docker load` tar.
    Docker(PathBuf),
    /// The flattened root filesystem.
    Local(PathBuf),
}

impl Output {
    /// Parses `type=…[,dest=…]`. `type=oci` writes a tar when `dest` ends in `.tar`, else a
    /// directory; `type=tar` always writes an OCI layout tar.
    pub(crate) fn parse(spec: &str) -> anyhow::Result<Self> {
        use anyhow::{Context as _, bail};
        let mut fields = std::collections::BTreeMap::new();
        for kv in spec.split(',') {
            let Some((key, value)) = kv.split_once('=') else {
                bail!("output {spec:?}: {kv:?} is not KEY=VALUE");
            };
            if fields.insert(key, value).is_some() {
                bail!("output {spec:?}: {key} is given twice");
            }
        }
        // Keys that BuildKit knows and hoist does not act on yet (name=, push=,
        // compression=, …) are refused: ignored, they would leave a build that looks done
        // and did not do what was asked.
        let allowed: &[&str] = match fields.get("type").copied() {
            Some("image" | "registry") => &["type"],
            _ => &["type", "dest"],
        };
        if let Some(key) = fields.keys().find(|k| !allowed.contains(k)) {
            bail!(
                "output {spec:?}: {key}= is not supported yet; the keys hoist takes here are {}. \
                 Name the image with -t and push it with --push",
                allowed.join(", ")
            );
        }
        let dest = || -> anyhow::Result<PathBuf> {
            fields
                .get("dest")
                .map(PathBuf::from)
                .with_context(|| format!("output {spec:?} needs dest=PATH"))
        };
        Ok(match fields.get("type").copied() {
            Some("image") => Self::Image,
            Some("registry") => Self::Registry,
            Some("oci") => {
                let dest = dest()?;
                if dest.extension().is_some_and(|e| e == "tar") {
                    Self::OciTar(dest)
                } else {
                    Self::OciDir(dest)
                }
            }
            Some("tar") => Self::OciTar(dest()?),
            Some("docker") => Self::Docker(dest()?),
            Some("local") => Self::Local(dest()?),
            Some(other) => bail!(
                "unknown output type {other:?}: expected image, registry, oci, docker, local or tar"
            ),
            None => {
                bail!("output {spec:?} has no type=: expected for example type=oci,dest=out.tar")
            }
        })
    }

    /// Writes a file output of the image `manifest` under `names`; the store and registry
    /// outputs are not files and write nothing here.
    pub(crate) fn export(
        &self,
        store: &hoist_cache::ImageStore,
        manifest: &hoist_cache::oci_spec::image::Descriptor,
        names: &[String],
    ) -> anyhow::Result<()> {
        let named: Vec<(String, _)> = names
            .iter()
            .map(|n| (n.clone(), manifest.clone()))
            .collect();
        match self {
            Self::Image | Self::Registry => {}
            Self::OciDir(dest) => store.export_oci_dir(&named, dest)?,
            Self::OciTar(dest) => {
                store.export_oci_tar(&named, fs_err::File::create(dest)?)?;
            }
            Self::Docker(dest) => {
                store.export_docker_tar(manifest, names, fs_err::File::create(dest)?)?;
            }
            Self::Local(dest) => store.export_rootfs(manifest, dest)?,
        }
        Ok(())
    }
}
