//! Platforms as a build names them (`--platform`, `FROM --platform`, `TARGETPLATFORM`):
//! `os/architecture[/variant]` in Go's names, parsed and checked against the variants each
//! architecture has. The registry client picks an image for one of these
//! (`hoist_registry::Platform`, made from the same parts).

use std::fmt;
use std::str::FromStr;

/// A target platform: `os/architecture[/variant]` with Go's names (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid platform {input:?}: {reason}")]
pub struct ParsePlatformError {
    pub input: String,
    pub reason: String,
}

/// The variants each architecture has, as the OCI image spec and containerd name them; an
/// architecture missing here has none.
const VARIANTS: &[(&str, &[&str])] = &[
    ("amd64", &["v1", "v2", "v3", "v4"]),
    ("arm", &["v5", "v6", "v7", "v8"]),
    (
        "arm64",
        &[
            "v8", "v8.0", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9",
            "v9", "v9.0", "v9.1", "v9.2", "v9.3", "v9.4", "v9.5",
        ],
    ),
    ("riscv64", &["rva20u64", "rva22u64", "rva23u64"]),
    ("ppc64le", &["power8", "power9", "power10"]),
];

impl Platform {
    /// The platform of the running host, in Go's naming.
    pub fn host() -> Self {
        let architecture = normalize_arch(std::env::consts::ARCH).to_owned();
        let variant = match architecture.as_str() {
            "arm64" => Some("v8".to_owned()),
            "arm" => Some("v7".to_owned()),
            _ => None,
        };
        Self {
            os: std::env::consts::OS.to_owned(),
            architecture,
            variant,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = ParsePlatformError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = input.split('/').collect();
        let bad = |reason: String| ParsePlatformError {
            input: input.to_owned(),
            reason,
        };
        if parts.iter().any(|p| p.is_empty()) || !(2..=3).contains(&parts.len()) {
            return Err(bad("expected os/arch[/variant]".to_owned()));
        }
        let architecture = normalize_arch(parts[1]).to_owned();
        let variant = parts.get(2).map(|v| (*v).to_owned());
        if let Some(v) = &variant {
            let known = VARIANTS
                .iter()
                .find(|(arch, _)| *arch == architecture)
                .map_or(&[][..], |(_, variants)| *variants);
            if !known.contains(&v.as_str()) {
                return Err(bad(if known.is_empty() {
                    format!("{architecture} has no variants, and {v:?} is not one")
                } else {
                    format!(
                        "{v:?} is not a variant of {architecture}: expected one of {}",
                        known.join(", ")
                    )
                }));
            }
        }
        Ok(Self {
            os: parts[0].to_owned(),
            architecture,
            variant,
        })
    }
}

fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i686" | "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_and_validate() {
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert_eq!(
            "linux/x86_64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("linux/arm/v7/x".parse::<Platform>().is_err());
        let err = "linux/amd64/v99".parse::<Platform>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid platform \"linux/amd64/v99\": \"v99\" is not a variant of amd64: expected one of v1, v2, v3, v4"
        );
        assert!("linux/386/v2".parse::<Platform>().is_err());
        assert!("linux/x86_64/v3".parse::<Platform>().is_ok());
        assert_eq!(Platform::host().os, "linux");
    }
}
