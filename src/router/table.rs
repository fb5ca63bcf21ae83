//! The routing table: an immutable snapshot of every site's hosts, mounts,
//! logs and certificates. The router reads it once per request
//! (`ArcSwap::load`) and the TLS resolver once per handshake, never locks; a
//! reload swaps in a whole new table atomically, so no request sees half of
//! one.
//!
//! Invariant: building a table does no I/O (certificates come loaded with
//! the site's configuration, see `config::SiteTls::pair`).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use super::access_log::SiteLogs;
use super::mount::MountTable;
use super::vhost::{normalize_host, VhostTable};
use crate::config::{SiteConfig, SiteName};
pub use crate::metrics::SiteStats;

/// Everything the router needs to serve one site.
pub struct SiteRoute {
    pub config: Arc<SiteConfig>,
    pub mounts: MountTable,
    pub logs: Arc<SiteLogs>,
    /// Counters that outlive reloads of the site (shared between routes).
    pub stats: Arc<SiteStats>,
    /// The user the site's code runs as (none for a static site).
    pub uid: Option<u32>,
}

#[derive(Default)]
pub struct RoutingTable {
    pub vhosts: VhostTable<SiteRoute>,
    /// Certificates by site, as the sites' configurations hold them: a new
    /// table means new certificates for new TLS handshakes.
    pub certs: SiteCerts,
    /// The users sites run code as, sorted: a local connection owned by
    /// one of them is a site's code, never a trusted proxy.
    pub site_uids: Vec<u32>,
    /// ACME answers: HTTP-01 by token, served at
    /// `/.well-known/acme-challenge/TOKEN` before any site routing; TLS-ALPN-01
    /// certificates by name (`router::tls`).
    pub acme_challenges: Arc<AcmeChallenges>,
}

impl RoutingTable {
    pub fn new(sites: impl IntoIterator<Item = Arc<SiteRoute>>) -> Self {
        let sites: Vec<Arc<SiteRoute>> = sites.into_iter().collect();
        let mut vhosts = VhostTable::default();
        for site in &sites {
            vhosts.insert(&site.config.hosts, site.config.default, site.clone());
        }
        let certs = SiteCerts::of(&sites);
        let mut site_uids: Vec<u32> = sites.iter().filter_map(|s| s.uid).collect();
        site_uids.sort_unstable();
        site_uids.dedup();
        RoutingTable {
            vhosts,
            certs,
            site_uids,
            acme_challenges: Default::default(),
        }
    }

    /// With `challenges` answered (see [`RoutingTable::acme_challenges`]).
    pub fn with_acme_challenges(mut self, challenges: Arc<AcmeChallenges>) -> Self {
        self.acme_challenges = challenges;
        self
    }
}

impl RoutingTable {
    /// Whether `uid` runs some site's code.
    pub fn is_site_user(&self, uid: u32) -> bool {
        self.site_uids.binary_search(&uid).is_ok()
    }
}

/// The ACME challenges answered now (`app::router_link::Desired::acme_challenges`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcmeChallenges {
    /// HTTP-01: token → key authorization.
    pub http01: std::collections::BTreeMap<String, String>,
    /// TLS-ALPN-01: name → the challenge certificate (RFC 8737), served to
    /// handshakes that offer only `acme-tls/1`.
    pub tls_alpn01: std::collections::BTreeMap<String, crate::config::LoadedPair>,
}

/// Every site's certificate, taken from the sites' configurations.
#[derive(Default)]
pub struct SiteCerts {
    by_site: HashMap<SiteName, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// ACME sites whose certificate is not issued yet: their names get no
    /// certificate (not the default site's), so handshakes fail cleanly.
    pending: std::collections::HashSet<SiteName>,
    /// Some site has `tls.on_demand` (else no handshake looks further).
    on_demand: bool,
}

impl SiteCerts {
    fn of(sites: &[Arc<SiteRoute>]) -> SiteCerts {
        let mut certs = SiteCerts::default();
        for site in sites {
            // An ACME site without its certificate yet has none here: its
            // handshakes fail (`certificate_for` gives none for its names).
            let Some(tls) = &site.config.tls else {
                continue;
            };
            certs.on_demand |= tls.on_demand;
            let Some(pair) = tls.pair.as_ref() else {
                certs.pending.insert(site.config.name.clone());
                continue;
            };
            let key = pair.certified().clone();
            if site.config.default {
                certs.default = Some(key.clone());
            }
            certs.by_site.insert(site.config.name.clone(), key);
        }
        certs
    }

    pub fn is_empty(&self) -> bool {
        self.by_site.is_empty()
    }
}

impl RoutingTable {
    /// The certificate for a TLS handshake naming `sni` (or none): the site
    /// the name routes to (exactly as for `Host`) if it has one, else the
    /// default site's.
    pub fn certificate_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let host = sni.and_then(normalize_host);
        let site = self.vhosts.lookup(host.as_deref());
        if site.is_some_and(|s| self.certs.pending.contains(&s.config.name)) {
            return None;
        }
        site.and_then(|site| self.certs.by_site.get(&site.config.name))
            .or(self.certs.default.as_ref())
            .cloned()
    }
}

impl RoutingTable {
    /// The name a handshake for `sni` needs an on-demand certificate for
    /// (`router::tls`): one no site lists exactly, served through a
    /// wildcard or as the default site by a site with `tls.on_demand`.
    pub fn on_demand_name(&self, sni: Option<&str>) -> Option<String> {
        if !self.certs.on_demand {
            return None;
        }
        let host = normalize_host(sni?)?;
        if self.vhosts.is_exact(&host) || !host.contains('.') {
            return None;
        }
        let site = self.vhosts.lookup(Some(&host))?;
        site.config
            .tls
            .as_ref()
            .is_some_and(|t| t.on_demand)
            .then_some(host)
    }
}

/// The shared, swappable table.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;
