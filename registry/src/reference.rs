//! Image references, normalized the way docker normalizes them.
//!
//! `busybox` is `docker.io/library/busybox:latest`; `localhost:5000/app@sha256:…` names a digest.
//! The rules follow the distribution reference grammar: a first path component is a registry host
//! only if it contains `.` or `:` or is `localhost`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_spec::image::Digest;

/// The registry that unqualified names belong to.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves the Docker Hub API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parse failure, with the text that failed.
#[derive(Debug, thiserror::Error)]
pub enum ParseReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid repository name {name:?} in reference {input:?}: {reason}")]
    Repository {
        input: String,
        name: String,
        reason: &'static str,
    },
    #[error("invalid tag {tag:?} in reference {input:?}")]
    Tag { input: String, tag: String },
    #[error("invalid digest {digest:?} in reference {input:?}")]
    Digest { input: String, digest: String },
    #[error("invalid registry host {host:?} in reference {input:?}")]
    Host { input: String, host: String },
}

/// A fully qualified image reference: registry, repository, and a tag and/or a digest.
///
/// At least one of tag and digest is always set; a digest wins when both are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes a reference as docker does.
    pub fn parse(input: &str) -> Result<Self, ParseReferenceError> {
        input.parse()
    }

    /// The registry as named (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The `host[:port]` that serves the API: `registry-1.docker.io` for Docker Hub.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What goes after `/manifests/`: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The same repository with this digest (the tag is kept, as docker prints `name:tag@digest`).
    #[must_use]
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with this tag and no digest.
    #[must_use]
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// Another repository on the same registry, for cross-repository mounts.
    #[must_use]
    pub fn with_repository(&self, repository: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            ..self.clone()
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ParseReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ParseReferenceError::Empty);
        }
        let (rest, digest) = match input.rsplit_once('@') {
            Some((rest, d)) => (rest, Some(parse_digest(input, d)?)),
            None => (input, None),
        };
        // A tag is after the last ':' only when that ':' follows the last '/', else it is a port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ParseReferenceError::Tag {
                input: input.to_owned(),
                tag: tag.to_owned(),
            });
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        if !valid_host(&registry) {
            return Err(ParseReferenceError::Host {
                input: input.to_owned(),
                host: registry,
            });
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if let Err(reason) = validate_repository(&repository) {
            return Err(ParseReferenceError::Repository {
                input: input.to_owned(),
                name: repository,
                reason,
            });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

fn parse_digest(input: &str, text: &str) -> Result<Digest, ParseReferenceError> {
    let bad = || ParseReferenceError::Digest {
        input: input.to_owned(),
        digest: text.to_owned(),
    };
    let (alg, hex) = text.split_once(':').ok_or_else(bad)?;
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Digest::from_str(text).map_err(|_| bad())
}

fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    tag.len() <= 128
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Path components are lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repo: &str) -> Result<(), &'static str> {
    if repo.len() > 255 {
        return Err("longer than 255 characters");
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err("empty path component");
        }
        let bytes = component.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err("path components must start and end with a lowercase letter or digit");
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_uppercase() {
                return Err("repository names must be lowercase");
            }
            if b.is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err("invalid separator in path component");
            }
        }
    }
    Ok(())
}

/// Whether docker would talk plain HTTP to this registry host by default: `localhost` and the
/// loopback ranges (127.0.0.0/8, ::1), with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = strip_port(host);
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host:port` → `host`; `[::1]:5000` → `[::1]`; a bare IPv6 address is kept.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_names_are_normalized() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/busybox");
    }

    #[test]
    fn hosts_ports_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/a/b@{d}")).unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), d);
        let r = Reference::parse(&format!("127.0.0.1:5000/app:v1@{d}")).unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/app:v1@{d}"));
        assert_eq!(norm("quay.io/org/app:tag"), "quay.io/org/app:tag");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
    }

    #[test]
    fn bad_references_are_rejected_with_their_text() {
        assert!(matches!(
            Reference::parse(""),
            Err(ParseReferenceError::Empty)
        ));
        assert!(matches!(
            Reference::parse("Busybox"),
            Err(ParseReferenceError::Repository { .. })
        ));
        assert!(matches!(
            Reference::parse("busybox:-bad"),
            Err(ParseReferenceError::Tag { .. })
        ));
        let err = Reference::parse("busybox@sha256:abc").unwrap_err();
        assert!(err.to_string().contains("sha256:abc"), "{err}");
        assert!(Reference::parse("a//b").is_err());
        assert!(Reference::parse("a/b-").is_err());
    }

    #[test]
    fn loopback_hosts_are_recognized() {
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("127.0.0.1:5000"));
        assert!(is_loopback_host("127.3.4.5"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("128.0.0.1:5000"));
        assert!(!is_loopback_host("docker.io"));
        assert!(!is_loopback_host("localhost.example.com"));
    }
}
