//! Platform selection from image indexes and manifest lists.

use std::fmt;

/// A target platform: `os/architecture[/variant]` with Go's names (`linux/arm64/v8`). Users'
/// platforms are parsed and checked by the build (`hoist_solver::platform`); this one selects
/// from an index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `os/architecture[/variant]`, with the architecture in Go's naming (`x86_64` is `amd64`).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: normalize_arch(architecture).to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

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
    fn match_by_os_arch_and_variant() {
        let p = Platform::new("linux", "arm64", None);
        assert!(p.matches(&entry(Arch::ARM64, None)));
        assert!(p.matches(&entry(Arch::ARM64, Some("v8"))));
        assert!(!p.matches(&entry(Arch::Amd64, None)));
        let v7 = Platform::new("linux", "arm", Some("v7"));
        assert!(v7.matches(&entry(Arch::ARM, Some("v7"))));
        assert!(!v7.matches(&entry(Arch::ARM, Some("v6"))));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert_eq!(Platform::host().os, "linux");
        assert_eq!(Platform::new("linux", "x86_64", None).architecture, "amd64");
    }
}
