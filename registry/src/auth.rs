//! Credentials and authentication challenges.
//!
//! Credentials come from the docker config (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`) the way the docker CLI reads it: a per-registry `credHelpers` entry
//! wins, then the global `credsStore`, then the inline `auths` entry. Helpers are the
//! `docker-credential-<name>` programs, asked with `get` and the server URL on stdin.
//!
//! Challenges are the `WWW-Authenticate` headers of a 401: `Basic realm=…` means send the
//! credentials on every request; `Bearer realm=…,service=…,scope=…` means trade them for a token
//! at the realm (the docker token protocol).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::reference::DOCKER_HUB;

/// The key docker uses for Docker Hub in `auths` and for credential helpers.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or personal access token).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (docker's `identitytoken`), traded at the token realm.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// A failure reading the docker config or running a credential helper.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("read docker config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse docker config {path}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid auth entry for {registry} in {path}: not base64 of user:password")]
    BadAuthEntry { registry: String, path: PathBuf },
    #[error("run credential helper {helper} for {server}")]
    RunHelper {
        helper: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("credential helper {helper} failed for {server}: {message}")]
    HelperFailed {
        helper: String,
        server: String,
        message: String,
    },
    #[error("credential helper {helper} returned invalid output for {server}")]
    HelperOutput {
        helper: String,
        server: String,
        #[source]
        source: serde_json::Error,
    },
    /// A remote build's client was asked for the credentials and could not give them.
    #[error("credentials for {server} from the build's client: {message}")]
    Remote { server: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What [`CredentialSource::credential_for`] returns.
pub type CredentialFuture<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<Option<Credential>, CredentialError>> + Send + 'a>,
>;

/// Where a client's registry credentials come from: this machine's docker config, or (for a
/// remote build) the build's client, asked over its stream.
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// The credentials for a registry as named in references (`docker.io`, `host:port`), or
    /// `None` to go anonymous.
    fn credential_for<'a>(&'a self, registry: &'a str) -> CredentialFuture<'a>;
}

impl CredentialSource for DockerConfig {
    fn credential_for<'a>(&'a self, registry: &'a str) -> CredentialFuture<'a> {
        Box::pin(DockerConfig::credential_for(self, registry))
    }
}

/// The docker client configuration, as far as registry credentials go.
#[derive(Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    file: ConfigFile,
    helper_dir: Option<PathBuf>,
}

impl DockerConfig {
    /// Loads `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; a missing file means no
    /// credentials.
    pub fn load_default() -> Result<Self, CredentialError> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker"),
                None => return Ok(Self::default()),
            },
        };
        Self::load_dir(&dir)
    }

    /// Loads `config.json` from a docker config directory.
    pub fn load_dir(dir: &Path) -> Result<Self, CredentialError> {
        let path = dir.join("config.json");
        let text = match fs_err::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CredentialError::ReadConfig { path, source }),
        };
        let file = serde_json::from_str(&text).map_err(|source| CredentialError::ParseConfig {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path: Some(path),
            file,
            helper_dir: None,
        })
    }

    /// Looks credential helpers up in this directory instead of `PATH`.
    #[must_use]
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    /// The credentials for a registry as named in a reference (`docker.io`, `host:port`).
    pub async fn credential_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let server = server_key(registry);
        let helper = self
            .file
            .cred_helpers
            .iter()
            .find(|(k, _)| normalize_key(k) == normalize_key(&server))
            .map(|(_, v)| v.clone())
            .or_else(|| self.file.creds_store.clone());
        if let Some(helper) = helper.filter(|h| !h.is_empty()) {
            return self.run_helper(&helper, &server).await;
        }
        let Some((key, entry)) = self
            .file
            .auths
            .iter()
            .find(|(k, _)| normalize_key(k) == normalize_key(&server))
        else {
            return Ok(None);
        };
        if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credential::IdentityToken(token.clone())));
        }
        if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
            let bad = || CredentialError::BadAuthEntry {
                registry: key.clone(),
                path: self.path.clone().unwrap_or_default(),
            };
            let decoded = BASE64.decode(auth.trim()).map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) => Ok(Some(Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            })),
            _ => Ok(None),
        }
    }

    async fn run_helper(
        &self,
        helper: &str,
        server: &str,
    ) -> Result<Option<Credential>, CredentialError> {
        let program = format!("docker-credential-{helper}");
        let program = match &self.helper_dir {
            Some(dir) => dir.join(&program),
            None => PathBuf::from(&program),
        };
        let run_err = |source| CredentialError::RunHelper {
            helper: program.display().to_string(),
            server: server.to_owned(),
            source,
        };
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(run_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper may answer (and exit) without reading its input, as a "not found" one
            // often does: a closed pipe is not a failure, its exit status and output decide.
            match stdin.write_all(server.as_bytes()).await {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.map_err(run_err)?,
            }
        }
        let out = child.wait_with_output().await.map_err(run_err)?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            // The helpers' protocol says "credentials not found" on stdout for a miss.
            if message.contains("credentials not found") || stderr.contains("credentials not found")
            {
                return Ok(None);
            }
            return Err(CredentialError::HelperFailed {
                helper: program.display().to_string(),
                server: server.to_owned(),
                message: if message.is_empty() { stderr } else { message },
            });
        }
        #[derive(Deserialize)]
        struct HelperReply {
            #[serde(rename = "Username", default)]
            username: String,
            #[serde(rename = "Secret", default)]
            secret: String,
        }
        let reply: HelperReply = serde_json::from_slice(&out.stdout).map_err(|source| {
            CredentialError::HelperOutput {
                helper: program.display().to_string(),
                server: server.to_owned(),
                source,
            }
        })?;
        if reply.secret.is_empty() {
            return Ok(None);
        }
        // Helpers mark an identity token with the user name "<token>".
        if reply.username == "<token>" {
            return Ok(Some(Credential::IdentityToken(reply.secret)));
        }
        Ok(Some(Credential::Basic {
            username: reply.username,
            password: reply.secret,
        }))
    }
}

/// The key docker stores a registry's credentials under.
fn server_key(registry: &str) -> String {
    if registry == DOCKER_HUB || registry == "index.docker.io" || registry == "registry-1.docker.io"
    {
        DOCKER_HUB_AUTH_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// `https://host:port/v1/` → `host:port`, as docker matches legacy keys.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "index.docker.io".to_owned(),
        other => other.to_owned(),
    }
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value; unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        let realm = params.get("realm")?.clone();
        return Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        });
    }
    None
}

/// `k="v", k2=v2` with quoted strings that may hold commas and escaped quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[tokio::test]
    async fn config_auths_helpers_and_hub_keys() {
        let dir = tempfile::tempdir().unwrap();
        let auth = BASE64.encode("alice:s3cret:with:colons");
        fs_err::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "localhost:5000": {{"username": "bob", "password": "pw"}},
                    "https://quay.example/v1/": {{"identitytoken": "refresh"}}
                }},
                "credHelpers": {{"helped.example": "hoisttest"}}}}"#
            ),
        )
        .unwrap();
        let helper = dir.path().join("docker-credential-hoisttest");
        fs_err::write(
            &helper,
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 3\n\
             printf '{\"ServerURL\":\"%s\",\"Username\":\"carol\",\"Secret\":\"from-helper\"}' \"$server\"\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&helper)
            .status()
            .unwrap();
        let cfg = DockerConfig::load_dir(dir.path())
            .unwrap()
            .with_helper_dir(dir.path());
        assert_eq!(
            cfg.credential_for("docker.io").await.unwrap(),
            Some(Credential::Basic {
                username: "alice".into(),
                password: "s3cret:with:colons".into()
            })
        );
        assert_eq!(
            cfg.credential_for("localhost:5000").await.unwrap(),
            Some(Credential::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            cfg.credential_for("quay.example").await.unwrap(),
            Some(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(
            cfg.credential_for("helped.example").await.unwrap(),
            Some(Credential::Basic {
                username: "carol".into(),
                password: "from-helper".into()
            })
        );
        assert_eq!(cfg.credential_for("nowhere.example").await.unwrap(), None);
        let missing = DockerConfig::load_dir(&dir.path().join("absent")).unwrap();
        assert_eq!(missing.credential_for("docker.io").await.unwrap(), None);
    }

    #[tokio::test]
    async fn creds_store_applies_to_every_registry_and_misses_are_none() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("config.json"), r#"{"credsStore": "miss"}"#).unwrap();
        let helper = dir.path().join("docker-credential-miss");
        fs_err::write(
            &helper,
            "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&helper)
            .status()
            .unwrap();
        let cfg = DockerConfig::load_dir(dir.path())
            .unwrap()
            .with_helper_dir(dir.path());
        assert_eq!(cfg.credential_for("registry.example").await.unwrap(), None);
        let broken = DockerConfig::load_dir(dir.path())
            .unwrap()
            .with_helper_dir(dir.path().join("nope"));
        let err = broken.credential_for("registry.example").await.unwrap_err();
        assert!(matches!(err, CredentialError::RunHelper { .. }), "{err}");
    }
}
