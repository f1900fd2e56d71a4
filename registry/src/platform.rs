//! Platform selection from image indexes and manifest lists.

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
#[error("invalid platform {input:?}: expected os/arch[/variant]")]
pub struct ParsePlatformError {
    pub input: String,
}

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

    /// Whether an index entry's platform satisfies this one. A variant is compared only when
    /// both sides name one; `arm64` without a variant means `v8`.
    pub fn matches(&self, candidate: &oci_spec::image::Platform) -> bool {
        if candidate.os().to_string() != self.os
            || normalize_arch(&candidate.architecture().to_string()) != self.architecture
        {
            return false;
        }
        let default_variant = (self.architecture == "arm64").then_some("v8");
        let theirs = candidate.variant().as_deref().or(default_variant);
        let ours = self.variant.as_deref().or(default_variant);
        match (ours, theirs) {
            (Some(a), Some(b)) => a == b,
            _ => true,
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
        let bad = || ParsePlatformError {
            input: input.to_owned(),
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Self {
                os: (*os).to_owned(),
                architecture: normalize_arch(arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] => Ok(Self {
                os: (*os).to_owned(),
                architecture: normalize_arch(arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(bad()),
        }
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
    use oci_spec::image::{Arch, Os, PlatformBuilder};

    fn entry(arch: Arch, variant: Option<&str>) -> oci_spec::image::Platform {
        let mut p = PlatformBuilder::default()
            .os(Os::Linux)
            .architecture(arch)
            .build()
            .unwrap();
        p.set_variant(variant.map(str::to_owned));
        p
    }

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches(&entry(Arch::ARM64, None)));
        assert!(p.matches(&entry(Arch::ARM64, Some("v8"))));
        assert!(!p.matches(&entry(Arch::Amd64, None)));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(v7.matches(&entry(Arch::ARM, Some("v7"))));
        assert!(!v7.matches(&entry(Arch::ARM, Some("v6"))));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert_eq!(Platform::host().os, "linux");
    }
}
