//! TLS termination: the rustls server configuration (TLS 1.2+, rustls's safe
//! default suites, ALPN `h2` and `http/1.1`) and certificate choice by SNI.
//!
//! Certificates live in the routing table ([`SiteCerts`], loaded from disk
//! whenever a table is built), and the resolver reads the *current* table at
//! each handshake: swapping in a new table (a reload) serves new certificates
//! to new connections while established ones keep their session.
//!
//! Choice: the site the SNI name routes to (exact, then longest wildcard,
//! then the default site, exactly as for `Host`) if it has `[tls]`, else the
//! default site's certificate; without either the handshake is refused.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::table::{RoutingTable, SharedTable, SiteRoute};
use super::vhost::normalize_host;
use crate::config::{crypto_provider, load_certified_key, SiteName};

/// Every site's certificate, loaded when a routing table is built.
#[derive(Default)]
pub struct SiteCerts {
    by_site: HashMap<SiteName, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SiteCerts {
    /// Reads each site's certificate pair. Validation has already checked
    /// the files; one that changed in between is logged and skipped (its
    /// names then get the default certificate) rather than failing the table.
    pub fn load<'a>(sites: impl IntoIterator<Item = &'a Arc<SiteRoute>>) -> SiteCerts {
        let mut certs = SiteCerts::default();
        for site in sites {
            let Some(tls) = &site.config.tls else {
                continue;
            };
            match load_certified_key(&tls.cert, &tls.key) {
                Ok(key) => {
                    if site.config.default {
                        certs.default = Some(key.clone());
                    }
                    certs.by_site.insert(site.config.name.clone(), key);
                }
                Err((which, msg)) => tracing::error!(
                    site = %site.config.name,
                    key = which.key_name(),
                    error = %msg,
                    "cannot load the site's certificate; its names get the default certificate"
                ),
            }
        }
        certs
    }

    pub fn is_empty(&self) -> bool {
        self.by_site.is_empty()
    }
}

impl RoutingTable {
    /// The certificate for a TLS handshake naming `sni` (or none).
    pub fn certificate_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let host = sni.and_then(normalize_host);
        self.vhosts
            .lookup(host.as_deref())
            .and_then(|site| self.certs.by_site.get(&site.config.name))
            .or(self.certs.default.as_ref())
            .cloned()
    }
}

/// Resolves certificates against whatever table is current.
struct TableResolver(SharedTable);

impl fmt::Debug for TableResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableResolver")
    }
}

impl ResolvesServerCert for TableResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
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

/// The rustls configuration of every TLS listener.
pub fn server_config(table: SharedTable) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(TableResolver(table)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
