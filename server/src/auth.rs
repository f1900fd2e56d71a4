//! Who may build: the unix socket's owner, group and mode; mutual TLS; bearer tokens.
//!
//! - A **unix socket** is guarded by the file system, as docker's socket is: it is `0660`, owned
//!   by the server's user (root) and by `--group`, and whoever can open it may build. No token is
//!   asked over it.
//! - **TCP** needs a credential the server can check: a client certificate signed by
//!   `--tls-client-ca` (checked in the TLS handshake, so a client without one never gets to send
//!   a request), a bearer token from `--token-file` (checked on every request by [`TokenLayer`]),
//!   or both, and then both are required. TLS with no client CA only encrypts, so it needs tokens.
//!   [`crate::listen::check`] refuses TCP with neither, unless `--insecure-no-auth`.
//!
//! The gRPC health service (`grpc.health.v1.Health`) answers without a token: load balancers and
//! orchestrators probe it without custom headers, and it tells no more than whether the server
//! is up. Over mutual TLS the handshake still needs a client certificate, health checks included.

use std::fmt;
use std::future::{Ready, ready};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error_chain;

/// A token shorter than this is too easy to guess to guard a build service.
pub const MIN_TOKEN_LEN: usize = 16;

/// The path prefix of the gRPC health service, which answers without a token.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The server's certificate and key, and the CA that signs the client certificates it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the server's certificate chain, PEM.
    pub cert: PathBuf,
    /// `--tls-key`: the server's private key, PEM.
    pub key: PathBuf,
    /// `--tls-client-ca`: the CA certificates that client certificates must chain to, PEM. Without
    /// it, TLS only encrypts, and bearer tokens say who may build.
    pub client_ca: Option<PathBuf>,
}

/// Who may build, loaded and checked once at start-up.
#[derive(Clone)]
pub struct AuthConfig {
    tokens: Option<Arc<Tokens>>,
    tls: Option<Tls>,
    group: Option<Group>,
    insecure_no_auth: bool,
}

/// The loaded TLS material. The key is never shown, not even in `Debug`.
#[derive(Clone)]
struct Tls {
    files: TlsFiles,
    identity: Identity,
    client_ca: Option<Certificate>,
}

/// The group given the unix socket, resolved at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// As given to `--group`: a name or a number.
    pub given: String,
    /// Its id.
    pub gid: u32,
}

/// Loading who may build failed: each names the file or group it came from.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the {what}: {source}")]
    Read {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the token file {path} holds no token: write one token per line (blank lines and lines starting with # are ignored)"
    )]
    NoTokens { path: PathBuf },
    #[error(
        "line {line} of the token file {path} is not a usable token: {reason}; make one with `openssl rand -hex 32`"
    )]
    BadToken {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("the {what} {path} is not PEM: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the {what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the TLS key {path} (--tls-key) holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error(
        "the TLS certificate {cert} and key {key} do not make a usable server configuration: {reason}"
    )]
    TlsConfig {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error(
        "no group named {given:?} (--group): give the name or number of the group that may use the socket"
    )]
    UnknownGroup { given: String },
    #[error("cannot look up the group {given:?} (--group): {source}")]
    GroupLookup { given: String, source: nix::Error },
}

impl AuthConfig {
    /// Loads and checks the token file, the TLS files and the socket's group, so that a mistake
    /// stops `hoist serve` at start-up rather than refusing every client later.
    pub fn load(
        token_file: Option<&Path>,
        tls: Option<TlsFiles>,
        group: Option<String>,
        insecure_no_auth: bool,
    ) -> Result<Self, AuthError> {
        let tokens = token_file.map(Tokens::load).transpose()?.map(Arc::new);
        let tls = tls.map(Tls::load).transpose()?;
        let group = group.map(Group::resolve).transpose()?;
        Ok(Self {
            tokens,
            tls,
            group,
            insecure_no_auth,
        })
    }

    /// Whether requests over TCP must carry a bearer token.
    pub fn requires_token(&self) -> bool {
        self.tokens.is_some()
    }

    /// Whether TCP connections must present a client certificate.
    pub fn requires_client_certificate(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some())
    }

    /// The TLS files, when TCP serves TLS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|tls| &tls.files)
    }

    /// The group given the unix socket.
    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    /// Whether `--insecure-no-auth` allows TCP without any credential.
    pub fn insecure_no_auth(&self) -> bool {
        self.insecure_no_auth
    }

    /// The server's TLS configuration for TCP listeners. With a client CA, a client certificate
    /// is required (tonic's default), not merely asked for.
    pub(crate) fn server_tls(&self) -> Option<ServerTlsConfig> {
        let tls = self.tls.as_ref()?;
        let mut config = ServerTlsConfig::new()
            .identity(tls.identity.clone())
            // A client that opens a connection and never finishes the handshake holds a task
            // and a socket; this bounds how long.
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(ca.clone());
        }
        Some(config)
    }

    /// The layer that checks bearer tokens on a TCP listener; it lets everything through when no
    /// token file was given.
    pub(crate) fn token_layer(&self) -> TokenLayer {
        TokenLayer {
            tokens: self.tokens.clone(),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.tokens.as_ref().map(|t| t.digests.len()))
            .field("tls", &self.tls_files())
            .field("group", &self.group)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .finish()
    }
}

impl Tls {
    fn load(files: TlsFiles) -> Result<Self, AuthError> {
        let cert = read(&files.cert, "TLS certificate (--tls-cert)")?;
        let key = read(&files.key, "TLS key (--tls-key)")?;
        expect_certificate(&cert, &files.cert, "TLS certificate (--tls-cert)")?;
        match PrivateKeyDer::from_pem_slice(&key) {
            Ok(_) => {}
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(AuthError::NoKey {
                    path: files.key.clone(),
                });
            }
            Err(source) => {
                return Err(AuthError::Pem {
                    what: "TLS key (--tls-key)",
                    path: files.key.clone(),
                    source,
                });
            }
        }
        let client_ca = match &files.client_ca {
            Some(path) => {
                let what = "client CA (--tls-client-ca)";
                let pem = read(path, what)?;
                expect_certificate(&pem, path, what)?;
                Some(Certificate::from_pem(pem))
            }
            None => None,
        };
        let tls = Self {
            identity: Identity::from_pem(cert, key),
            client_ca,
            files,
        };
        // Building the acceptor checks that the key matches the certificate and that the client
        // CA is usable, which the PEM checks above cannot tell.
        let config = AuthConfig {
            tokens: None,
            tls: Some(tls.clone()),
            group: None,
            insecure_no_auth: false,
        }
        .server_tls();
        if let Some(config) = config
            && let Err(err) = tonic::transport::Server::builder().tls_config(config)
        {
            return Err(AuthError::TlsConfig {
                cert: tls.files.cert.clone(),
                key: tls.files.key.clone(),
                reason: error_chain(&err),
            });
        }
        Ok(tls)
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, AuthError> {
    fs_err::read(path).map_err(|source| AuthError::Read { what, source })
}

fn expect_certificate(pem: &[u8], path: &Path, what: &'static str) -> Result<(), AuthError> {
    let mut found = false;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|source| AuthError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
        found = true;
    }
    if !found {
        return Err(AuthError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

impl Group {
    fn resolve(given: String) -> Result<Self, AuthError> {
        if let Ok(gid) = given.parse::<u32>() {
            return Ok(Self { given, gid });
        }
        match nix::unistd::Group::from_name(&given) {
            Ok(Some(group)) => Ok(Self {
                gid: group.gid.as_raw(),
                given,
            }),
            Ok(None) => Err(AuthError::UnknownGroup { given }),
            Err(source) => Err(AuthError::GroupLookup { given, source }),
        }
    }
}

/// The accepted tokens, kept only as SHA-256 digests: comparing digests of equal length in
/// constant time tells a timing attacker neither a token's bytes nor its length.
struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    fn load(path: &Path) -> Result<Self, AuthError> {
        let text = fs_err::read_to_string(path).map_err(|source| AuthError::Read {
            what: "token file (--token-file)",
            source,
        })?;
        let mut digests = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let bad = |reason| AuthError::BadToken {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "a token is printable ASCII without spaces, as an HTTP header carries it",
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad("it is shorter than 16 characters"));
            }
            digests.push(Sha256::digest(token.as_bytes()).into());
        }
        if digests.is_empty() {
            return Err(AuthError::NoTokens {
                path: path.to_owned(),
            });
        }
        Ok(Self { digests })
    }

    fn admits(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every digest is compared, so the time taken does not say which token matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, digest| {
                found | digest.ct_eq(&presented)
            })
            .into()
    }
}

/// Why a request was refused, for the `Unauthenticated` status. None of these echo the token.
fn check_token(tokens: &Tokens, headers: &http::HeaderMap) -> Result<(), &'static str> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(
            "missing credentials: this server needs `authorization: Bearer <token>` on every request; give the client a token (HOIST_TOKEN or --remote-token-file)",
        );
    };
    let Some(token) = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) else {
        return Err("the authorization header is not `Bearer <token>`");
    };
    if !tokens.admits(token.trim()) {
        return Err(
            "the bearer token is not one this server accepts: check the client's token against the server's --token-file",
        );
    }
    Ok(())
}

/// A tower layer that refuses, with `Unauthenticated`, every request without an accepted bearer
/// token, except health checks.
#[derive(Clone)]
pub struct TokenLayer {
    tokens: Option<Arc<Tokens>>,
}

impl fmt::Debug for TokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLayer")
            .field("tokens", &self.tokens.as_ref().map(|t| t.digests.len()))
            .finish()
    }
}

impl<S> tower::Layer<S> for TokenLayer {
    type Service = TokenCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenCheck {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`TokenLayer`] makes.
#[derive(Clone)]
pub struct TokenCheck<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> fmt::Debug for TokenCheck<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCheck").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TokenCheck<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(tokens) = &self.tokens
            && !request.uri().path().starts_with(HEALTH_PREFIX)
            && let Err(reason) = check_token(tokens, request.headers())
        {
            let status = tonic::Status::unauthenticated(reason);
            return Either::Right(ready(Ok(status.into_http())));
        }
        Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Result<Tokens, AuthError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs_err::write(&path, text).unwrap();
        Tokens::load(&path)
    }

    #[test]
    fn token_file_skips_blanks_and_comments() {
        let tokens = tokens("# ci\n\n  0123456789abcdef0123  \n#x\nfedcba9876543210\n").unwrap();
        assert!(tokens.admits("0123456789abcdef0123"));
        assert!(tokens.admits("fedcba9876543210"));
        assert!(!tokens.admits("0123456789abcdef012"));
        assert!(!tokens.admits(""));
        assert!(!tokens.admits("# ci"));
    }

    #[test]
    fn token_file_without_tokens_is_refused() {
        let err = tokens("# only a comment\n\n").err().unwrap().to_string();
        assert!(err.contains("holds no token"), "{err}");
        let err = tokens("").err().unwrap().to_string();
        assert!(err.contains("holds no token"), "{err}");
    }

    #[test]
    fn bad_tokens_are_refused_by_line_without_showing_them() {
        let err = tokens("# x\nshort\n").err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(
            !err.contains("short\n") && !err.contains("\"short\""),
            "{err}"
        );
        let err = tokens("has a space in the middle\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 1") && !err.contains("space in"), "{err}");
    }

    #[test]
    fn unknown_group_is_refused() {
        let err = Group::resolve("no-such-group-hoist".into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no group named \"no-such-group-hoist\""),
            "{err}"
        );
        assert_eq!(Group::resolve("1234".into()).unwrap().gid, 1234);
        assert_eq!(Group::resolve("root".into()).unwrap().gid, 0);
    }
}
