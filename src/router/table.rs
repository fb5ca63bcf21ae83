//! The routing table: an immutable snapshot of every site's hosts, mounts
//! and logs. The router reads it once per request (`ArcSwap::load`), never
//! locks; a reload swaps in a whole new table atomically, so no request sees
//! half of one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::access_log::SiteLogs;
use super::mount::MountTable;
use super::tls::SiteCerts;
use super::vhost::VhostTable;
use crate::config::SiteConfig;
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
    /// Certificates by site, read from disk when this table was built: a new
    /// table means new certificates for new TLS handshakes.
    pub certs: SiteCerts,
    /// The users sites run code as, sorted: a local connection owned by
    /// one of them is a site's code, never a trusted proxy.
    pub site_uids: Vec<u32>,
}

impl RoutingTable {
    pub fn new(sites: impl IntoIterator<Item = Arc<SiteRoute>>) -> Self {
        let sites: Vec<Arc<SiteRoute>> = sites.into_iter().collect();
        let mut vhosts = VhostTable::default();
        for site in &sites {
            vhosts.insert(&site.config.hosts, site.config.default, site.clone());
        }
        let certs = SiteCerts::load(&sites);
        let mut site_uids: Vec<u32> = sites.iter().filter_map(|s| s.uid).collect();
        site_uids.sort_unstable();
        site_uids.dedup();
        RoutingTable {
            vhosts,
            certs,
            site_uids,
        }
    }
}

impl RoutingTable {
    /// Whether `uid` runs some site's code.
    pub fn is_site_user(&self, uid: u32) -> bool {
        self.site_uids.binary_search(&uid).is_ok()
    }
}

/// The shared, swappable table.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;
