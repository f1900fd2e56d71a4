//! One module per subcommand. Each exposes its clap arguments and a `run` that returns the exit
//! code, or an error that `report` renders.

pub(crate) mod build;
pub(crate) mod builds;
pub(crate) mod checks;
pub(crate) mod contexts;
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

/// The async runtime a command runs its work on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

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

/// Splits `-o`'s value as buildx does (CSV): a field in double quotes may hold commas, as
/// `"name=a:1,b:2"` does.
fn csv_fields(spec: &str) -> anyhow::Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if quoted {
        anyhow::bail!("output {spec:?}: a quote is not closed");
    }
    fields.push(field);
    Ok(fields)
}

/// One `hoist build -o` in buildx's syntax: where the image goes, and how it is made.
#[derive(Debug)]
pub(crate) struct OutputSpec {
    pub(crate) output: Output,
    /// `name=A,B`: names in the local store (and push targets with `push=true`).
    pub(crate) names: Vec<String>,
    pub(crate) push: bool,
    /// `compression=`, `compression-level=`.
    pub(crate) compression: Option<hoist_cache::CompressionOptions>,
    /// `oci-mediatypes=`.
    pub(crate) oci_mediatypes: Option<bool>,
    /// `force-compression=true`: base image layers are compressed again too.
    pub(crate) force_compression: bool,
    /// `annotation.KEY=V` and `annotation-manifest.KEY=V`: annotations of the manifest.
    pub(crate) annotations: Vec<(String, String)>,
}

/// Keys every image output takes, besides `type`.
const IMAGE_KEYS: &[&str] = &[
    "compression",
    "compression-level",
    "force-compression",
    "oci-mediatypes",
];

impl OutputSpec {
    /// Parses buildx's `-o`: `type=image|registry` with `name=`, `push=`; `type=oci|docker|tar`
    /// with `dest=` (and `tar=false` for an OCI directory); `type=local,dest=`; and for every
    /// image `compression=gzip|zstd|uncompressed`, `compression-level=N`,
    /// `oci-mediatypes=true|false`. An unknown key, or a value out of range, is an error that
    /// lists the valid ones.
    pub(crate) fn parse(spec: &str) -> anyhow::Result<Self> {
        use anyhow::{Context as _, bail};
        let mut fields = std::collections::BTreeMap::new();
        for kv in csv_fields(spec)? {
            let Some((key, value)) = kv.split_once('=') else {
                bail!("output {spec:?}: {kv:?} is not KEY=VALUE");
            };
            if fields.insert(key.to_owned(), value.to_owned()).is_some() {
                bail!("output {spec:?}: {key} is given twice");
            }
        }
        let kind = fields.get("type").cloned().with_context(|| {
            format!("output {spec:?} has no type=: expected for example type=oci,dest=out.tar")
        })?;
        let allowed: Vec<&str> = match kind.as_str() {
            "image" | "registry" => [&["type", "name", "push"][..], IMAGE_KEYS].concat(),
            "oci" => [&["type", "dest", "tar"][..], IMAGE_KEYS].concat(),
            "docker" | "tar" => [&["type", "dest"][..], IMAGE_KEYS].concat(),
            "local" => vec!["type", "dest"],
            other => bail!(
                "unknown output type {other:?}: expected image, registry, oci, docker, local or tar"
            ),
        };
        if let Some(key) = fields.keys().find(|k| {
            let annotation = k.starts_with("annotation");
            !allowed.contains(&k.as_str()) && !annotation
        }) {
            bail!(
                "output {spec:?}: hoist does not know {key}= for type={kind}; the keys it takes \
                 here are {}",
                allowed.join(", ")
            );
        }
        // A build makes one manifest and no index: annotations go on the manifest.
        let mut annotations = Vec::new();
        for (key, value) in fields.iter().filter(|(k, _)| k.starts_with("annotation")) {
            let name = key
                .strip_prefix("annotation.")
                .or_else(|| key.strip_prefix("annotation-manifest."));
            match name {
                Some(name) if !name.is_empty() && !name.contains('[') => {
                    annotations.push((name.to_owned(), value.clone()));
                }
                _ => bail!(
                    "output {spec:?}: {key}= is not one hoist takes: a build makes one manifest \
                     (no index, one platform), so give annotation.KEY= or \
                     annotation-manifest.KEY="
                ),
            }
        }
        let bool_of = |key: &str| -> anyhow::Result<Option<bool>> {
            fields
                .get(key)
                .map(|v| match v.as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    other => bail!("output {spec:?}: {key}={other}: expected true or false"),
                })
                .transpose()
        };
        let force_compression = bool_of("force-compression")? == Some(true);
        let compression = hoist_worker::exchange::parse_compression(&fields)
            .map_err(|reason| anyhow::anyhow!("output {spec:?}: {reason}"))?;
        let dest = || -> anyhow::Result<PathBuf> {
            fields
                .get("dest")
                .map(PathBuf::from)
                .with_context(|| format!("output {spec:?} needs dest=PATH"))
        };
        let output = match kind.as_str() {
            "image" => Output::Image,
            "registry" => Output::Registry,
            "oci" => {
                let dest = dest()?;
                // Without tar=, a dest ending in .tar is a tar and any other a directory, as
                // hoist has always read it; tar=false is buildx's way to ask for a directory.
                let tar =
                    bool_of("tar")?.unwrap_or_else(|| dest.extension().is_some_and(|e| e == "tar"));
                if tar {
                    Output::OciTar(dest)
                } else {
                    Output::OciDir(dest)
                }
            }
            "tar" => Output::OciTar(dest()?),
            "docker" => Output::Docker(dest()?),
            _ => Output::Local(dest()?),
        };
        let push = bool_of("push")?.unwrap_or(false) || matches!(output, Output::Registry);
        let names: Vec<String> = fields
            .get("name")
            .map(|n| {
                n.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            output,
            names,
            push,
            compression,
            oci_mediatypes: bool_of("oci-mediatypes")?,
            force_compression,
            annotations,
        })
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
    /// Parses a file output of an image that exists already (`hoist save -o`): `type=` and
    /// `dest=` (and `tar=false`) as a build's `-o` takes them; what would change the image
    /// (`compression=`, `name=`, …) is refused, since saving writes the image as it is.
    pub(crate) fn parse(spec: &str) -> anyhow::Result<Self> {
        let parsed = OutputSpec::parse(spec)?;
        if parsed.compression.is_some()
            || parsed.oci_mediatypes.is_some()
            || parsed.force_compression
            || !parsed.annotations.is_empty()
            || !parsed.names.is_empty()
            || (parsed.push && !matches!(parsed.output, Self::Registry))
        {
            anyhow::bail!(
                "output {spec:?}: saving writes the image as it is stored; give only type= and \
                 dest= (build with -o compression=… or name=… to change it)"
            );
        }
        Ok(parsed.output)
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
