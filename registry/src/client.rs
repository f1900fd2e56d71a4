//! The HTTP core: URLs, authentication and retries for every registry request.
//!
//! Every request goes through [`Client::send`]. It adds the `Authorization` that the registry's
//! last challenge asked for (basic credentials, or a bearer token for the request's scopes),
//! answers a 401 by reading `WWW-Authenticate` and fetching a token once, and retries dropped
//! connections, 5xx and 429 with exponential backoff (honouring `Retry-After`). Request bodies
//! are rebuilt for each attempt by the caller's closure, so a streamed body can be retried.
//!
//! Every request is also watched for stalls (see the stall module): one that makes no
//! progress is retried too, but only `stalled_attempts` times per object across all its
//! requests, and then fails with [`RequestError::Stalled`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::auth::{
    Challenge, Credential, CredentialError, CredentialSource, DockerConfig, parse_challenge,
};
use crate::reference::{Reference, is_loopback_host, strip_port};
use crate::stall::{Activity, Awaited, Stall, Stalled, UploadBody, Wait, body_stall, watch_reply};
use crate::{Event, Observer};

/// How often and how patiently to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub attempts: u32,
    /// Attempts in total for one manifest or blob whose requests stall (see
    /// [`ClientConfig::stall_timeout`]), counted across all the requests made for it. Each costs
    /// a whole timeout, so there are fewer than `attempts`: a registry silent three times in a
    /// row is down, and the user hears so after three minutes, not five.
    pub stalled_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            stalled_attempts: 3,
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
    /// How long to wait for a connection (TCP, and TLS where used). 30 s, as Docker's registry
    /// transport dials.
    pub connect_timeout: Duration,
    /// How long a request may go without progress before it counts as stalled: no byte of its
    /// body taken by the connection, no reply, or no byte of the reply's body arriving. It is
    /// not a limit on a whole transfer: a blob of any size completes over a slow link as long
    /// as bytes keep moving. 60 s is long enough for a registry that commits a large blob
    /// before it answers the final PUT, and short enough that a hung one is noticed. The clock
    /// starts with the request, so when it is the shorter one it also bounds the connect.
    pub stall_timeout: Duration,
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
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
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
    #[error(transparent)]
    Stalled(Box<Stalled>),
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
    docker_config: Arc<dyn CredentialSource>,
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
        .connect_timeout(config.connect_timeout)
        // No total or read timeout here: a big blob takes as long as it takes, and a stalled
        // request is caught by the stall module's watch, which also covers uploads.
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
            docker_config: Arc::new(docker_config),
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

    /// Executes `request` as [`Client::execute`] does, failing it when it makes no progress for
    /// the stall timeout (see the stall module); the reply's body fails the same way.
    async fn execute_watched(&self, mut request: reqwest::Request) -> Result<Response, Failure> {
        let length = request
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let activity = Activity::new(length);
        match request.body_mut().take() {
            Some(body) if body.as_bytes().is_none() => {
                *request.body_mut() = Some(reqwest::Body::wrap(UploadBody {
                    inner: body,
                    activity: Arc::clone(&activity),
                }));
            }
            other => {
                *request.body_mut() = other;
                activity.finish();
            }
        }
        let stall = self.config.stall_timeout;
        let reply = self.execute(request);
        tokio::pin!(reply);
        loop {
            match tokio::time::timeout_at(activity.deadline(stall), &mut reply).await {
                Ok(Ok(response)) => return Ok(watch_reply(response, stall)),
                Ok(Err(e)) if e.is_connect() && e.is_timeout() => {
                    return Err(Failure::Stalled(Stall::Connect));
                }
                Ok(Err(e)) => return Err(Failure::Transport(e)),
                // The body moved since the deadline was set: wait from its last progress.
                Err(_) if activity.deadline(stall) > tokio::time::Instant::now() => {}
                Err(_) => return Err(Failure::Stalled(activity.stall())),
            }
        }
    }

    /// The error for a request of `wait` that stalled, on its `attempts`th stall.
    pub(crate) fn stall_error(
        &self,
        host: &str,
        wait: &Wait,
        stall: Stall,
        attempts: u32,
    ) -> RequestError {
        RequestError::Stalled(Box::new(Stalled {
            registry: host.to_owned(),
            awaited: wait.awaited.clone(),
            stall,
            after: self.stall_limit(stall),
            attempts,
        }))
    }

    fn stall_limit(&self, stall: Stall) -> Duration {
        if stall == Stall::Connect {
            self.config.connect_timeout
        } else {
            self.config.stall_timeout
        }
    }

    /// Counts a stall of `wait`: `Ok` with the reason to show when it may be tried again,
    /// else the error that ends it.
    pub(crate) fn count_stall(
        &self,
        host: &str,
        wait: &Wait,
        stall: Stall,
    ) -> Result<(u32, String), RequestError> {
        let stalls = wait.stalled();
        if stalls >= self.config.retry.stalled_attempts.max(1) {
            return Err(self.stall_error(host, wait, stall, stalls));
        }
        let reason = format!(
            "registry {host} {} while waiting for {}",
            stall.describe(self.stall_limit(stall)),
            wait.awaited
        );
        Ok((stalls, reason))
    }

    /// Whether `e` is a stall after which the object must not be tried again.
    pub(crate) fn stalls_spent(&self, e: &RequestError) -> bool {
        matches!(e, RequestError::Stalled(s)
            if s.attempts >= self.config.retry.stalled_attempts.max(1))
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

    /// A client with this one's settings that asks `source` for credentials instead: a
    /// remote build's pulls and pushes use its client's credentials, never the server's.
    /// Tokens and challenges are not shared with this client.
    #[must_use]
    pub fn with_credential_source(&self, source: Arc<dyn CredentialSource>) -> Self {
        Self {
            http: self.http.clone(),
            tls: self.tls.clone(),
            config: self.config.clone(),
            docker_config: source,
            explicit: Mutex::new(HashMap::new()),
            looked_up: tokio::sync::Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            observer: self.observer.clone(),
        }
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
        crate::emit_scoped(event);
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
        let wait = Wait::new(Awaited::Token {
            realm: realm.to_owned(),
        });
        let realm_host = reqwest::Url::parse(realm)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| realm.to_owned());
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
            let request = request.build().map_err(|e| token_err(error_chain(&e)))?;
            let method = request.method().to_string();
            let response = match self.execute_watched(request).await {
                Ok(r) => r,
                Err(Failure::Stalled(stall)) => {
                    let (_, reason) = self.count_stall(&realm_host, &wait, stall)?;
                    self.emit(&Event::Retrying {
                        method,
                        url: realm.to_owned(),
                        attempt,
                        reason,
                    });
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    continue;
                }
                Err(Failure::Transport(_)) if attempt < self.config.retry.attempts => {
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    continue;
                }
                Err(Failure::Transport(e)) => return Err(token_err(error_chain(&e))),
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
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(e) => match body_stall(&e) {
                    Some(stall) => {
                        let (_, reason) = self.count_stall(&realm_host, &wait, stall)?;
                        self.emit(&Event::Retrying {
                            method: method.clone(),
                            url: realm.to_owned(),
                            attempt,
                            reason,
                        });
                        tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                        continue;
                    }
                    None => return Err(token_err(error_chain(&e))),
                },
            };
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
    ///
    /// A request that stalls counts against `wait`, which is shared by every request made for
    /// one object; once `stalled_attempts` are spent it fails with [`RequestError::Stalled`].
    pub(crate) async fn send<F>(
        &self,
        target: &Target,
        wait: &Wait,
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
            let response = match self.execute_watched(request).await {
                Ok(r) => r,
                Err(Failure::Stalled(stall)) => {
                    let (stalls, reason) = self.count_stall(&target.host, wait, stall)?;
                    if attempt >= attempts {
                        return Err(self.stall_error(&target.host, wait, stall, stalls));
                    }
                    self.emit(&Event::Retrying {
                        method,
                        url,
                        attempt,
                        reason,
                    });
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    continue;
                }
                Err(Failure::Transport(source)) => {
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

/// Why a request got no reply.
enum Failure {
    Stalled(Stall),
    Transport(reqwest::Error),
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
pub(crate) type SharedStore = Arc<dyn hoist_cache::content::ContentStore>;

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
            stalled_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert!(p.backoff(1) >= Duration::from_millis(100));
        assert!(p.backoff(3) >= Duration::from_millis(400));
        assert!(p.backoff(30) <= Duration::from_millis(1250));
    }
}
