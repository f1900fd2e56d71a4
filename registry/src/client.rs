//! The HTTP core: URLs, authentication and retries for every registry request.
//!
//! Every request goes through [`Client::send`]. It adds the `Authorization` that the registry's
//! last challenge asked for (basic credentials, or a bearer token for the request's scopes),
//! answers a 401 by reading `WWW-Authenticate` and fetching a token once, and retries dropped
//! connections, 5xx and 429 with exponential backoff (honouring `Retry-After`). Request bodies
//! are rebuilt for each attempt by the caller's closure, so a streamed body can be retried.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::auth::{Challenge, Credential, CredentialError, DockerConfig, parse_challenge};
use crate::reference::{Reference, is_loopback_host, strip_port};
use crate::{Event, Observer};

/// How often and how patiently to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` counts from 1), with a little jitter so
    /// that concurrent transfers do not retry in lockstep.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let base = exp.min(self.max_backoff);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 250) / 1000.0)
    }
}

/// Client settings. The defaults suit a CLI.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Hosts (`host` or `host:port`) spoken to over plain HTTP, beyond localhost and 127.0.0.0/8.
    pub insecure_registries: Vec<String>,
    /// Blobs moved at the same time, per pull or push.
    pub max_concurrent_transfers: usize,
    /// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of `chunk_size`.
    pub monolithic_threshold: u64,
    pub chunk_size: u64,
    pub retry: RetryPolicy,
    pub user_agent: String,
    /// Where upload sessions are journaled, so that a push run again after an interruption
    /// resumes a half-sent blob instead of starting it over. `None` keeps no journal.
    pub resume_dir: Option<PathBuf>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            max_concurrent_transfers: 4,
            monolithic_threshold: 32 << 20,
            chunk_size: 16 << 20,
            retry: RetryPolicy::default(),
            user_agent: concat!("hoist/", env!("CARGO_PKG_VERSION")).to_owned(),
            resume_dir: None,
        }
    }
}

/// A request that could not be made or was refused, named by method and URL.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("build request to {registry}")]
    Build {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}")]
    Transport {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: registry answered {status} after {attempts} attempts")]
    Exhausted {
        method: String,
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("unauthorized: {method} {url}: {message}")]
    Unauthorized {
        method: String,
        url: String,
        message: String,
    },
    #[error("fetch token from {realm}: {message}")]
    Token { realm: String, message: String },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("create http client")]
    Client(#[source] reqwest::Error),
}

/// What a request is for: the registry (for credentials) and the token scopes it needs.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) registry: String,
    pub(crate) host: String,
    pub(crate) scopes: Vec<String>,
}

impl Target {
    pub(crate) fn pull(r: &Reference) -> Self {
        Self {
            registry: r.registry().to_owned(),
            host: r.api_host().to_owned(),
            scopes: vec![format!("repository:{}:pull", r.repository())],
        }
    }

    pub(crate) fn push(r: &Reference) -> Self {
        Self {
            registry: r.registry().to_owned(),
            host: r.api_host().to_owned(),
            scopes: vec![format!("repository:{}:pull,push", r.repository())],
        }
    }

    #[must_use]
    pub(crate) fn also_pull(mut self, repository: &str) -> Self {
        self.scopes.push(format!("repository:{repository}:pull"));
        self
    }

    fn scope_key(&self) -> String {
        self.scopes.join(" ")
    }
}

/// An OCI distribution client. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Client {
    /// For plain-HTTP registries (loopback and insecure ones): no TLS roots are loaded, and a
    /// redirect to HTTPS is returned to [`Client::send`], which follows it with `tls`.
    pub(crate) http: reqwest::Client,
    /// For HTTPS, made at the first HTTPS request: loading the system's roots reads every file
    /// of `SSL_CERT_DIR` when it is set, which a build against a local registry never needs.
    tls: std::sync::OnceLock<reqwest::Client>,
    pub(crate) config: ClientConfig,
    docker_config: DockerConfig,
    explicit: Mutex<HashMap<String, Credential>>,
    looked_up: tokio::sync::Mutex<HashMap<String, Option<Credential>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), String>>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The settings both HTTP clients share.
fn http_builder(config: &ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(Duration::from_secs(30))
        // No total timeout: a big blob takes as long as it takes, but a stalled one fails.
        .read_timeout(Duration::from_secs(120))
        .pool_idle_timeout(Duration::from_secs(30))
}

impl Client {
    /// A client that reads credentials from this docker config.
    pub fn new(config: ClientConfig, docker_config: DockerConfig) -> Result<Self, RequestError> {
        let http = http_builder(&config)
            .tls_built_in_root_certs(false)
            .tls_built_in_native_certs(false)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.url().scheme() == "https" {
                    attempt.stop()
                } else if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(RequestError::Client)?;
        Ok(Self {
            http,
            tls: std::sync::OnceLock::new(),
            config,
            docker_config,
            explicit: Mutex::new(HashMap::new()),
            looked_up: tokio::sync::Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            observer: None,
        })
    }

    /// The client for `url`: the plain one for `http://`, else the TLS one (made now if this
    /// is the first HTTPS request). Should the TLS client fail to build, the plain one is
    /// used, and the request fails with the certificate error that explains it.
    fn client_for(&self, url: &reqwest::Url) -> &reqwest::Client {
        if url.scheme() == "http" {
            return &self.http;
        }
        self.tls.get_or_init(|| {
            http_builder(&self.config)
                .build()
                .unwrap_or_else(|_| self.http.clone())
        })
    }

    /// Executes `request` with the client its scheme needs; a plain-HTTP response that
    /// redirects to HTTPS (a registry handing blobs to TLS storage) is followed with the TLS
    /// client, without the registry's credentials.
    async fn execute(&self, request: reqwest::Request) -> Result<Response, reqwest::Error> {
        let method = request.method().clone();
        let mut headers = request.headers().clone();
        headers.remove(AUTHORIZATION);
        let response = self.client_for(request.url()).execute(request).await?;
        let to_https = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .filter(|u| response.status().is_redirection() && u.scheme() == "https");
        match to_https {
            Some(location) if method == reqwest::Method::GET || method == reqwest::Method::HEAD => {
                self.client_for(&location)
                    .request(method, location)
                    .headers(headers)
                    .send()
                    .await
            }
            _ => Ok(response),
        }
    }

    /// A client that reads credentials from `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`, as the docker CLI does.
    pub fn with_default_credentials(config: ClientConfig) -> Result<Self, RequestError> {
        Self::new(config, DockerConfig::load_default()?)
    }

    /// Reports progress and retries to `observer`.
    #[must_use]
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Uses these credentials for `registry` (as named in references), ahead of the docker
    /// config.
    pub fn set_credential(&self, registry: &str, credential: Credential) {
        if let Ok(mut map) = self.explicit.lock() {
            map.insert(registry.to_owned(), credential);
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub(crate) fn emit(&self, event: &Event) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }

    /// `http://host` for loopback and insecure registries, else `https://host`.
    pub(crate) fn base_url(&self, host: &str) -> String {
        let insecure = is_loopback_host(host)
            || self
                .config
                .insecure_registries
                .iter()
                .any(|h| h == host || h == strip_port(host));
        let scheme = if insecure { "http" } else { "https" };
        format!("{scheme}://{host}")
    }

    pub(crate) fn url(&self, r: &Reference, tail: &str) -> String {
        format!(
            "{}/v2/{}/{tail}",
            self.base_url(r.api_host()),
            r.repository()
        )
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, RequestError> {
        if let Some(c) = self
            .explicit
            .lock()
            .ok()
            .and_then(|m| m.get(registry).cloned())
        {
            return Ok(Some(c));
        }
        let mut cache = self.looked_up.lock().await;
        if let Some(c) = cache.get(registry) {
            return Ok(c.clone());
        }
        let c = self.docker_config.credential_for(registry).await?;
        cache.insert(registry.to_owned(), c.clone());
        Ok(c)
    }

    async fn authorization(&self, target: &Target) -> Result<Option<String>, RequestError> {
        let challenge = self
            .challenges
            .lock()
            .ok()
            .and_then(|m| m.get(&target.host).cloned());
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match self.credential(&target.registry).await? {
                Some(Credential::Basic { username, password }) => Some(format!(
                    "Basic {}",
                    BASE64.encode(format!("{username}:{password}"))
                )),
                _ => None,
            }),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = (target.host.clone(), target.scope_key());
                if let Some(token) = self.tokens.lock().ok().and_then(|m| m.get(&key).cloned()) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let token = self.fetch_token(target, &realm, service.as_deref()).await?;
                if let Ok(mut m) = self.tokens.lock() {
                    m.insert(key, token.clone());
                }
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// The docker token protocol: GET the realm with basic credentials (if any), or POST an
    /// OAuth2 refresh-token grant for an identity token.
    async fn fetch_token(
        &self,
        target: &Target,
        realm: &str,
        service: Option<&str>,
    ) -> Result<String, RequestError> {
        #[derive(Deserialize)]
        struct TokenReply {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let credential = self.credential(&target.registry).await?;
        let token_err = |message: String| RequestError::Token {
            realm: realm.to_owned(),
            message,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = match &credential {
                Some(Credential::IdentityToken(refresh)) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token".to_owned()),
                        ("client_id", "hoist".to_owned()),
                        ("refresh_token", refresh.clone()),
                        ("scope", target.scopes.join(" ")),
                    ];
                    if let Some(s) = service {
                        form.push(("service", s.to_owned()));
                    }
                    self.http.post(realm).form(&form)
                }
                other => {
                    let mut query: Vec<(&str, &str)> = target
                        .scopes
                        .iter()
                        .map(|s| ("scope", s.as_str()))
                        .collect();
                    if let Some(s) = service {
                        query.push(("service", s));
                    }
                    let mut req = self.http.get(realm).query(&query);
                    if let Some(Credential::Basic { username, password }) = other {
                        req = req.basic_auth(username, Some(password));
                    }
                    req
                }
            };
            let response = match async {
                let request = request.build()?;
                self.execute(request).await
            }
            .await
            {
                Ok(r) => r,
                Err(e) if attempt < self.config.retry.attempts && !e.is_builder() => {
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(token_err(error_chain(&e))),
            };
            let status = response.status();
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS)
                && attempt < self.config.retry.attempts
            {
                tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                continue;
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(token_err(format!("{status}: {}", truncate(&body))));
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| token_err(error_chain(&e)))?;
            let reply: TokenReply =
                serde_json::from_slice(&body).map_err(|e| token_err(e.to_string()))?;
            return reply
                .token
                .or(reply.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| token_err("reply holds no token".to_owned()));
        }
    }

    /// Sends a request built by `make`, authenticating and (when `retry`) retrying as the module
    /// doc describes. Any status but 401 and the retried ones is returned for the caller to
    /// judge.
    pub(crate) async fn send<F>(
        &self,
        target: &Target,
        retry: bool,
        make: F,
    ) -> Result<Response, RequestError>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let attempts = if retry { self.config.retry.attempts } else { 1 };
        let mut attempt = 0;
        let mut authenticated_again = false;
        loop {
            attempt += 1;
            let mut builder = make(&self.http);
            if let Some(auth) = self.authorization(target).await? {
                builder = builder.header(AUTHORIZATION, auth);
            }
            let request = builder.build().map_err(|source| RequestError::Build {
                registry: target.registry.clone(),
                source,
            })?;
            let method = request.method().to_string();
            let url = request.url().to_string();
            let response = match self.execute(request).await {
                Ok(r) => r,
                Err(source) => {
                    if attempt < attempts {
                        self.emit(&Event::Retrying {
                            method,
                            url,
                            attempt,
                            reason: error_chain(&source),
                        });
                        tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                        continue;
                    }
                    return Err(RequestError::Transport {
                        method,
                        url,
                        source,
                    });
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                let challenge = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(parse_challenge);
                let message = truncate(&response.text().await.unwrap_or_default());
                let Some(challenge) = challenge else {
                    return Err(RequestError::Unauthorized {
                        method,
                        url,
                        message,
                    });
                };
                if authenticated_again {
                    return Err(RequestError::Unauthorized {
                        method,
                        url,
                        message,
                    });
                }
                authenticated_again = true;
                if challenge == Challenge::Basic
                    && !matches!(
                        self.credential(&target.registry).await?,
                        Some(Credential::Basic { .. })
                    )
                {
                    return Err(RequestError::Unauthorized {
                        method,
                        url,
                        message: format!("no credentials for {}", target.registry),
                    });
                }
                if let Ok(mut m) = self.challenges.lock() {
                    m.insert(target.host.clone(), challenge);
                }
                if let Ok(mut m) = self.tokens.lock() {
                    m.remove(&(target.host.clone(), target.scope_key()));
                }
                attempt -= 1;
                continue;
            }
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                if attempt < attempts {
                    let wait = retry_after(response.headers().get(RETRY_AFTER))
                        .unwrap_or_else(|| self.config.retry.backoff(attempt));
                    self.emit(&Event::Retrying {
                        method,
                        url,
                        attempt,
                        reason: status.to_string(),
                    });
                    tokio::time::sleep(wait.min(self.config.retry.max_backoff)).await;
                    continue;
                }
                if retry {
                    return Err(RequestError::Exhausted {
                        method,
                        url,
                        status: status.as_u16(),
                        attempts,
                    });
                }
            }
            return Ok(response);
        }
    }
}

fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// An error with its sources, for messages that cross the library boundary as text.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

pub(crate) fn truncate(body: &str) -> String {
    const MAX: usize = 512;
    let body = body.trim();
    if body.len() <= MAX {
        return body.to_owned();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

/// A registry's error reply, reduced to its first code and message.
pub(crate) fn registry_error_code(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        code: String,
    }
    let e: Errors = serde_json::from_str(body).ok()?;
    e.errors.into_iter().next().map(|e| e.code)
}

/// Shared handle used by the pull and push paths.
pub(crate) type SharedStore = Arc<dyn crate::store::BlobStore>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_follow_docker_defaults() {
        let c = Client::new(
            ClientConfig {
                insecure_registries: vec!["reg.internal:5000".into(), "plain.example".into()],
                ..ClientConfig::default()
            },
            DockerConfig::default(),
        )
        .unwrap();
        assert_eq!(c.base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(c.base_url("127.0.0.1:41234"), "http://127.0.0.1:41234");
        assert_eq!(c.base_url("reg.internal:5000"), "http://reg.internal:5000");
        assert_eq!(c.base_url("plain.example:443"), "http://plain.example:443");
        assert_eq!(c.base_url("reg.internal:6000"), "https://reg.internal:6000");
        assert_eq!(
            c.base_url("registry-1.docker.io"),
            "https://registry-1.docker.io"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert!(p.backoff(1) >= Duration::from_millis(100));
        assert!(p.backoff(3) >= Duration::from_millis(400));
        assert!(p.backoff(30) <= Duration::from_millis(1250));
    }
}
