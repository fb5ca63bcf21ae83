//! Connecting to etcd: the settings a node (`[cluster]`) and the
//! `polyhost cluster` commands share, and the reconnect backoff.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::schema::{Keys, DEFAULT_PREFIX};

/// Where etcd is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix ([`DEFAULT_PREFIX`] by default).
    pub prefix: String,
    /// PEM CA bundle to verify etcd's certificate (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's client-cert auth.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user and password (auth enabled on etcd).
    pub user: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: DEFAULT_PREFIX.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            timeout: Duration::from_secs(5),
        }
    }
}

impl EtcdSettings {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// Connects (one attempt; callers loop with [`Backoff`]).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut options = ConnectOptions::new()
            .with_timeout(self.timeout)
            .with_connect_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if self.ca_file.is_some() || self.cert_file.is_some() {
            options = options.with_tls(self.tls()?);
        }
        let client = Client::connect(self.endpoints.clone(), Some(options))
            .await
            .map_err(|e| anyhow::anyhow!("etcd at {}: {e}", self.endpoints.join(",")))?;
        Ok(client)
    }

    fn tls(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            let cert =
                std::fs::read(cert).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            let key = std::fs::read(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        Ok(tls)
    }
}

/// Reconnect waits: 250 ms doubling to 10 s; [`Backoff::reset`] after a
/// success. Never a tight loop.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);

    /// The wait before the next attempt (doubles each call).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        wait
    }

    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }
}
