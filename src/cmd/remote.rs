//! The flags that send a command to a `hoist serve` instead of running it here.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use hoist_server::Addr;

use crate::remote::connect::{ClientCreds, Connection, connect};

#[derive(Debug, Args)]
pub(crate) struct RemoteArgs {
    /// Run on this server instead of in this process: unix:///path or tcp://host:port.
    #[arg(long, env = "HOIST_REMOTE", value_name = "ADDR")]
    pub(crate) remote: Option<String>,
    /// A file whose first line is the bearer token for the server (else $HOIST_TOKEN).
    #[arg(long, value_name = "FILE")]
    remote_token_file: Option<PathBuf>,
    /// This client's TLS certificate (PEM), for a server that asks for one.
    #[arg(long, value_name = "FILE", requires = "remote_tls_key")]
    remote_tls_cert: Option<PathBuf>,
    /// The key of --remote-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "remote_tls_cert")]
    remote_tls_key: Option<PathBuf>,
    /// The CA that signed the server's certificate (PEM); default: the system's.
    #[arg(long, value_name = "FILE")]
    remote_tls_ca: Option<PathBuf>,
}

impl RemoteArgs {
    /// The server's address, when one is given.
    pub(crate) fn addr(&self) -> anyhow::Result<Option<Addr>> {
        self.remote
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| r.parse::<Addr>().context("--remote (or HOIST_REMOTE)"))
            .transpose()
    }

    /// Connects to the server at `addr` with this client's credentials.
    pub(crate) async fn connect(&self, addr: &Addr) -> anyhow::Result<Connection> {
        let env_token = std::env::var("HOIST_TOKEN").ok();
        let creds = ClientCreds::load(
            env_token.as_deref(),
            self.remote_token_file.as_deref(),
            self.remote_tls_cert.as_deref(),
            self.remote_tls_key.as_deref(),
            self.remote_tls_ca.as_deref(),
        )?;
        connect(addr, &creds).await
    }
}
