//! What a build's client lends it for the build only: secrets (`--secret`) and SSH agents
//! (`--ssh`). A RUN asks for them by id when it starts; nothing of them is kept, keyed or
//! logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The most bytes a secret may hold, as in BuildKit (its `MaxSecretSize`): a secret is a
/// token or a key, not a payload.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Error from reading a secret or parsing a `--secret` or `--ssh` value.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("read secret {id:?} from {}", path.display())]
    Read {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secret {id:?} is {bytes} bytes, over the limit of {MAX_SECRET_BYTES} bytes; give \
         the build a token or a key, and fetch bulk data with it inside the RUN"
    )]
    TooLarge { id: String, bytes: usize },
    #[error("secret {id:?}: the variable {var} it names is not set")]
    EnvUnset { id: String, var: String },
    /// A remote build's client could not lend the secret, or went away.
    #[error("secret {id:?}: the build's client {reason}")]
    Client { id: String, reason: String },
}

/// What [`Session::secret`] returns: the secret is read on demand, which for a remote build
/// means a round trip to its client.
pub type SecretFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, SessionError>> + Send + 'a>>;

/// Secrets and SSH agents a build may use. A local build reads them from this machine; a
/// remote one (`hoist serve`) asks its client for each when a RUN needs it.
pub trait Session: Send + Sync + std::fmt::Debug {
    /// The secret `id`, or `None` when the build was given no such secret.
    ///
    /// # Errors
    /// The secret was given but cannot be read.
    fn secret<'a>(&'a self, id: &'a str) -> SecretFuture<'a>;

    /// A socket of the SSH agent given as `id`, or `None`.
    fn ssh_agent(&self, id: &str) -> Option<PathBuf>;
}

/// Where a local secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Secrets and agents of this machine, from `--secret` and `--ssh` values.
#[derive(Clone, Debug, Default)]
pub struct LocalSession {
    secrets: BTreeMap<String, SecretSource>,
    ssh: BTreeMap<String, PathBuf>,
    /// Agents started for key files, alive as long as the session.
    agents: Vec<std::sync::Arc<KeyAgent>>,
}

impl LocalSession {
    /// Reads `--secret` values as buildx does: `id=ID[,src=PATH|,env=VAR][,type=file|env]`;
    /// with neither `src` nor `env`, the variable named `ID` if it is set, else the file
    /// `ID`.
    ///
    /// # Errors
    /// A malformed value, an unknown key, or a file that does not exist.
    pub fn with_secrets(mut self, values: &[String]) -> Result<Self, SessionError> {
        for value in values {
            let invalid = |reason: &str| SessionError::Invalid {
                flag: "--secret",
                value: value.clone(),
                reason: reason.to_owned(),
            };
            let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
            for field in value.split(',') {
                let (key, v) = field
                    .split_once('=')
                    .ok_or_else(|| invalid("expected id=ID,src=PATH or id=ID,env=VARIABLE"))?;
                match key.to_ascii_lowercase().as_str() {
                    "id" => id = Some(v.to_owned()),
                    "src" | "source" => src = Some(v.to_owned()),
                    "env" => env = Some(v.to_owned()),
                    "type" => kind = Some(v.to_ascii_lowercase()),
                    other => {
                        return Err(invalid(&format!(
                            "unknown key {other:?}: expected id, src (source), env or type"
                        )));
                    }
                }
            }
            let id = id
                .or_else(|| src.clone())
                .or_else(|| env.clone())
                .filter(|i| !i.is_empty())
                .ok_or_else(|| invalid("id=ID is missing"))?;
            let source = match (kind.as_deref(), src, env) {
                (_, Some(_), Some(_)) => return Err(invalid("give src or env, not both")),
                (Some("env"), Some(var), None) | (_, None, Some(var)) => SecretSource::Env(var),
                (None | Some("file"), Some(path), None) => SecretSource::File(PathBuf::from(path)),
                (Some("env"), None, None) => SecretSource::Env(id.clone()),
                (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
                (None, None, None) if std::env::var_os(&id).is_some() => {
                    SecretSource::Env(id.clone())
                }
                (None, None, None) => SecretSource::File(PathBuf::from(&id)),
                (Some(other), _, _) => {
                    return Err(invalid(&format!(
                        "unknown type {other:?}: expected file or env"
                    )));
                }
            };
            if let SecretSource::File(path) = &source
                && !path.is_file()
            {
                return Err(invalid(&format!(
                    "{} is not a readable file",
                    path.display()
                )));
            }
            self.secrets.insert(id, source);
        }
        Ok(self)
    }

    /// Reads `--ssh` values as buildx does: `ID` (the agent at `$SSH_AUTH_SOCK`), `ID=SOCKET`,
    /// or `ID=KEYFILE[,KEYFILE…]`, whose keys go into an `ssh-agent` started for this session
    /// and ended with it.
    ///
    /// # Errors
    /// A value without a path where `SSH_AUTH_SOCK` is unset, a path that is neither a socket
    /// nor a file, or keys that `ssh-add` refuses (one with a passphrase, say).
    pub fn with_ssh(mut self, values: &[String]) -> Result<Self, SessionError> {
        for value in values {
            let invalid = |reason: String| SessionError::Invalid {
                flag: "--ssh",
                value: value.clone(),
                reason,
            };
            let (id, paths): (String, Vec<PathBuf>) = match value.split_once('=') {
                Some((id, paths)) => (id.to_owned(), paths.split(',').map(PathBuf::from).collect()),
                None => match std::env::var_os("SSH_AUTH_SOCK") {
                    Some(sock) => (value.clone(), vec![PathBuf::from(sock)]),
                    None => {
                        return Err(invalid(
                            "SSH_AUTH_SOCK is not set: start an agent (eval $(ssh-agent); \
                             ssh-add) or give its socket or key files as ID=PATH"
                                .to_owned(),
                        ));
                    }
                },
            };
            if id.is_empty() {
                return Err(invalid("the id before = is empty".to_owned()));
            }
            let socket = match paths.as_slice() {
                [one] if is_socket(one) => one.clone(),
                keys => {
                    if let Some(bad) = keys.iter().find(|k| !k.is_file()) {
                        return Err(invalid(format!(
                            "{} is neither an agent's socket nor a key file",
                            bad.display()
                        )));
                    }
                    let agent = KeyAgent::start(keys).map_err(invalid)?;
                    let socket = agent.socket.clone();
                    self.agents.push(std::sync::Arc::new(agent));
                    socket
                }
            };
            self.ssh.insert(id, socket);
        }
        Ok(self)
    }
}

/// An `ssh-agent` holding key files given to `--ssh`. It runs under a `sh` that waits on a
/// pipe from this process: when the pipe closes (this session drops, or hoist dies in any
/// way) the shell ends, and the agent, which watches its parent, ends after it.
#[derive(Debug)]
struct KeyAgent {
    socket: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl KeyAgent {
    fn start(keys: &[PathBuf]) -> Result<Self, String> {
        use std::process::{Command, Stdio};
        let dir = tempfile::Builder::new()
            .prefix("hoist-ssh-")
            .tempdir()
            .map_err(|e| format!("make a directory for an ssh-agent: {e}"))?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-a")
            .arg(&socket)
            .args(["sh", "-c", "read -r _; exit 0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("start ssh-agent for the key files: {e} (apt-get install openssh-client)")
            })?;
        let mut agent = Self {
            socket,
            child,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !is_socket(&agent.socket) {
            if std::time::Instant::now() > deadline {
                return Err("ssh-agent did not open its socket within 10 s".to_owned());
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!("ssh-agent ended at once ({status})"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let added = Command::new("ssh-add")
            .args(keys)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .env_remove("SSH_ASKPASS")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run ssh-add: {e}"))?;
        if !added.status.success() {
            return Err(format!(
                "ssh-add refused the key files: {} (a key with a passphrase must be added to \
                 an agent by hand; pass that agent's socket)",
                String::from_utf8_lossy(&added.stderr).trim()
            ));
        }
        Ok(agent)
    }
}

impl Drop for KeyAgent {
    fn drop(&mut self) {
        // Closing the shell's stdin ends it; the agent follows.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs_err::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

impl Session for LocalSession {
    fn secret<'a>(&'a self, id: &'a str) -> SecretFuture<'a> {
        Box::pin(std::future::ready(self.read_secret(id)))
    }

    fn ssh_agent(&self, id: &str) -> Option<PathBuf> {
        self.ssh.get(id).cloned()
    }
}

impl LocalSession {
    /// The secret `id` as `--secret` gave it, read now.
    ///
    /// # Errors
    /// As [`Session::secret`].
    pub fn read_secret(&self, id: &str) -> Result<Option<Vec<u8>>, SessionError> {
        let Some(source) = self.secrets.get(id) else {
            return Ok(None);
        };
        let bytes = match source {
            SecretSource::File(path) => {
                fs_err::read(path).map_err(|source| SessionError::Read {
                    id: id.to_owned(),
                    path: path.clone(),
                    source,
                })?
            }
            SecretSource::Env(var) => std::env::var_os(var)
                .ok_or_else(|| SessionError::EnvUnset {
                    id: id.to_owned(),
                    var: var.clone(),
                })?
                .into_encoded_bytes(),
        };
        if bytes.len() > MAX_SECRET_BYTES {
            return Err(SessionError::TooLarge {
                id: id.to_owned(),
                bytes: bytes.len(),
            });
        }
        Ok(Some(bytes))
    }

    /// The ids `--secret` named, for a remote build's request.
    pub fn secret_ids(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    /// The ids `--ssh` named.
    pub fn ssh_ids(&self) -> impl Iterator<Item = &str> {
        self.ssh.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_read_as_buildx_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        fs_err::write(&file, "s3cret").unwrap();
        let src = format!("id=tok,src={}", file.display());
        let s = LocalSession::default()
            .with_secrets(&[
                src,
                "id=home,env=HOME".into(),
                "id=p,type=env,src=PATH".into(),
            ])
            .unwrap();
        assert_eq!(s.read_secret("tok").unwrap().unwrap(), b"s3cret");
        assert_eq!(
            s.read_secret("home").unwrap().unwrap(),
            std::env::var("HOME").unwrap().as_bytes()
        );
        assert_eq!(
            s.read_secret("p").unwrap().unwrap(),
            std::env::var("PATH").unwrap().as_bytes()
        );
        assert!(s.read_secret("other").unwrap().is_none());
        for (bad, why) in [
            ("id=a,src=/nonexistent/x", "not a readable file"),
            ("id=a,colour=red", "unknown key"),
            ("src", "expected id=ID"),
            ("id=a,src=x,env=Y", "not both"),
        ] {
            let err = LocalSession::default()
                .with_secrets(&[bad.to_owned()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_secret_over_the_limit_is_refused_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        fs_err::write(&file, vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let s = LocalSession::default()
            .with_secrets(&[format!("id=big,src={}", file.display())])
            .unwrap();
        let err = s.read_secret("big").unwrap_err().to_string();
        assert!(err.contains("512001 bytes"), "{err}");
    }

    #[test]
    fn ssh_values_need_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let s = LocalSession::default()
            .with_ssh(&[format!("default={}", sock.display())])
            .unwrap();
        assert_eq!(s.ssh_agent("default"), Some(sock.clone()));
        assert!(s.ssh_agent("gh").is_none());
        let plain = dir.path().join("key");
        fs_err::write(&plain, "").unwrap();
        let err = LocalSession::default()
            .with_ssh(&[format!("default={}", plain.display())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssh-add refused the key files"), "{err}");
        let err = LocalSession::default()
            .with_ssh(&["default=/nonexistent/key".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither an agent's socket nor a key file"),
            "{err}"
        );
    }
}
