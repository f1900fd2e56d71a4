//! Where a server listens and a client connects: `unix:///path` or `tcp://host:port`.

use std::path::PathBuf;

/// A server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// `host:port`, as given (a name or an address).
    Tcp(String),
}

/// An address that is neither `unix:///path` nor `tcp://host:port`.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {given:?}: {reason}; expected unix:///path/to/socket or tcp://host:port")]
pub struct AddrError {
    pub given: String,
    pub reason: &'static str,
}

impl std::str::FromStr for Addr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddrError {
            given: text.to_owned(),
            reason,
        };
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(err("a unix socket path must be absolute"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = text.strip_prefix("tcp://") {
            let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
            let Some((host, port)) = hostport.rsplit_once(':') else {
                return Err(err("a tcp address needs a port"));
            };
            if host.is_empty() {
                return Err(err("a tcp address needs a host"));
            }
            if port.parse::<u16>().is_err() {
                return Err(err("the port is not a number from 0 to 65535"));
            }
            return Ok(Self::Tcp(hostport.to_owned()));
        }
        Err(err("unknown scheme"))
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(hostport) => write!(f, "tcp://{hostport}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Addr;

    #[test]
    fn addresses_parse_as_written() {
        assert_eq!(
            "unix:///run/hoist.sock".parse::<Addr>().unwrap(),
            Addr::Unix("/run/hoist.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:8765".parse::<Addr>().unwrap(),
            Addr::Tcp("127.0.0.1:8765".into())
        );
        assert_eq!(
            "tcp://[::1]:8765".parse::<Addr>().unwrap(),
            Addr::Tcp("[::1]:8765".into())
        );
        for bad in [
            "unix://run/x",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "http://h:1",
            "",
        ] {
            let err = bad.parse::<Addr>().unwrap_err().to_string();
            assert!(err.contains("expected unix:///"), "{bad}: {err}");
        }
    }
}
