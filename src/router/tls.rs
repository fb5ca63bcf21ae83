//! TLS termination: the rustls server configuration (TLS 1.2+, rustls's safe
//! default suites, ALPN `h2` and `http/1.1`) and certificate choice by SNI.
//!
//! Certificates live in the routing table
//! ([`RoutingTable::certificate_for`](super::table::RoutingTable::certificate_for),
//! loaded with the configuration), and
//! the resolver reads the *current* table at each handshake: swapping in a
//! new table (a reload) serves new certificates to new connections while
//! established ones keep their session. This module reads the table; the
//! table knows nothing of it.
//!
//! Choice: the site the SNI name routes to (exact, then longest wildcard,
//! then the default site, exactly as for `Host`) if it has `[tls]`, else the
//! default site's certificate; without either the handshake is refused.
//!
//! On-demand TLS ([`accept`]): the ClientHello is read first
//! (`LazyConfigAcceptor`); a name that needs an on-demand certificate
//! (`RoutingTable::on_demand_name`) and has none in [`OnDemandCerts`] is
//! asked of the [`OnDemandSource`] (the supervisor, over the privsep link,
//! or `crate::acme` in one process) while the handshake waits, at most
//! [`ON_DEMAND_BUDGET`]; then the handshake goes on, and the resolver finds
//! the certificate (or none: the handshake fails cleanly).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::table::SharedTable;
use crate::config::crypto_provider;

/// Resolves certificates against whatever table is current.
struct TableResolver(SharedTable);

impl fmt::Debug for TableResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableResolver")
    }
}

impl ResolvesServerCert for TableResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(cert) = self.acme_tls_alpn(&hello) {
            return Some(cert);
        }
        let table = self.0.load();
        if let Some(name) = table.on_demand_name(hello.server_name()) {
            return ON_DEMAND.get(&name);
        }
        let cert = table.certificate_for(hello.server_name());
        if cert.is_none() {
            tracing::debug!(
                sni = hello.server_name().unwrap_or("-"),
                "no certificate for this name and no default site certificate; refusing the handshake"
            );
        }
        cert
    }
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
const ACME_TLS: &[u8] = b"acme-tls/1";

impl TableResolver {
    /// The TLS-ALPN-01 challenge certificate for a validation handshake
    /// (one that offers `acme-tls/1` alone) naming a name being validated.
    fn acme_tls_alpn(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut alpn = hello.alpn()?;
        if alpn.next() != Some(ACME_TLS) || alpn.next().is_some() {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        let table = self.0.load();
        let pair = table.acme_challenges.tls_alpn01.get(&name)?;
        Some(pair.certified().clone())
    }
}

/// The rustls configuration of every TLS listener.
pub fn server_config(table: SharedTable) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(TableResolver(table)));
    // `acme-tls/1` last: chosen only by a client that offers nothing else
    // (an ACME validation), which then gets the challenge certificate.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS.to_vec()];
    Ok(Arc::new(config))
}

/// How long a handshake waits for an on-demand certificate (the ask call
/// and the whole ACME order); past it, the handshake fails.
pub const ON_DEMAND_BUDGET: Duration = Duration::from_secs(30);
/// How long the router serves an on-demand certificate before asking its
/// source again (which answers from memory): renewals are pushed
/// ([`on_demand_renewed`]); this catches one pushed while no router ran.
const ON_DEMAND_REFRESH: Duration = Duration::from_secs(600);

/// Where on-demand certificates come from: given a name, its certificate
/// (issued now if need be), or why not.
pub trait OnDemandSource: Send + Sync {
    fn certificate(
        &self,
        name: String,
    ) -> BoxFuture<'static, Result<crate::config::LoadedPair, String>>;
}

/// The on-demand certificates this process serves, by name, and the
/// source of new ones (set by whoever runs the router: `privsep` or the
/// one-process `polyhost serve`).
pub struct OnDemandCerts {
    certs: RwLock<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
    source: RwLock<Option<Arc<dyn OnDemandSource>>>,
}

static ON_DEMAND: LazyLock<OnDemandCerts> = LazyLock::new(|| OnDemandCerts {
    certs: RwLock::default(),
    source: RwLock::default(),
});

/// From now on, on-demand certificates come from `source`.
pub fn set_on_demand_source(source: Arc<dyn OnDemandSource>) {
    *ON_DEMAND.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
}

/// `name`'s certificate was renewed: new handshakes get `pair`.
pub fn on_demand_renewed(name: &str, pair: &crate::config::LoadedPair) {
    let mut certs = ON_DEMAND.certs.write().unwrap_or_else(|p| p.into_inner());
    certs.insert(name.to_owned(), (pair.certified().clone(), Instant::now()));
}

impl OnDemandCerts {
    fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs.get(name).map(|(c, _)| c.clone())
    }

    fn fresh(&self, name: &str) -> bool {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs
            .get(name)
            .is_some_and(|(_, at)| at.elapsed() < ON_DEMAND_REFRESH)
    }

    /// Asks the source for `name`'s certificate and keeps it. A refusal
    /// drops the one held: the source answers from memory for every name
    /// it holds, so it refuses only a name whose certificate it dropped.
    async fn fetch(&self, name: String) -> Result<(), String> {
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let source = source.ok_or("on-demand TLS is not available in this process")?;
        let answer = source.certificate(name.clone()).await;
        let mut certs = self.certs.write().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(pair) => {
                certs.insert(name, (pair.certified().clone(), Instant::now()));
                Ok(())
            }
            Err(why) => {
                certs.remove(&name);
                Err(why)
            }
        }
    }
}

/// Why [`accept`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not done within header_timeout")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A TLS handshake on `io` with `config`, each step bounded by `timeout`;
/// an on-demand name is certified first (see the module doc).
pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ServerConfig>,
    table: &SharedTable,
    io: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, HandshakeError> {
    use tokio::time::timeout as within;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = within(timeout, acceptor)
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let wanted = on_demand_wanted(table, &start.client_hello());
    if let Some(name) = wanted {
        match within(ON_DEMAND_BUDGET, ON_DEMAND.fetch(name.clone())).await {
            Ok(Ok(())) => {}
            // Debug: a scanner's names would flood the log (metrics count them).
            Ok(Err(why)) => tracing::debug!(name, "no on-demand certificate: {why}"),
            Err(_) => tracing::info!(
                name,
                "no on-demand certificate within {ON_DEMAND_BUDGET:?}; failing the handshake"
            ),
        }
    }
    within(timeout, start.into_stream(config))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Io)
}

/// The name this handshake needs an on-demand certificate for, unless one
/// is held (fresh) or it is an ACME validation (`acme-tls/1` alone).
fn on_demand_wanted(table: &SharedTable, hello: &ClientHello<'_>) -> Option<String> {
    if hello
        .alpn()
        .is_some_and(|mut a| a.next() == Some(ACME_TLS) && a.next().is_none())
    {
        return None;
    }
    let name = table.load().on_demand_name(hello.server_name())?;
    (!ON_DEMAND.fresh(&name)).then_some(name)
}
