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

use std::fmt;
use std::sync::Arc;

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
        let cert = self.0.load().certificate_for(hello.server_name());
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
