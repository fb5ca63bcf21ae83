//! What the server reports about itself and its sites ([`Server::status`],
//! [`Server::site_status`], the metrics' view): read from the published
//! sites, never waiting for a control operation; with a router process,
//! its request counters are asked of it (bounded wait).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::{ControlError, Server};
use crate::app::status::{ServerStatus, SiteStatus};
use crate::config::SiteName;
use crate::metrics::on_demand::RouterOnDemandSnapshot;
use crate::sites::Site;

impl Server {
    fn status_of_site(&self, site: &Site) -> SiteStatus {
        let mut status = SiteStatus::of(site);
        let errors = self.acme_errors.lock().unwrap_or_else(|e| e.into_inner());
        status.acme_error = errors.get(&status.name).cloned();
        status
    }

    /// Never waits for a control operation in progress. With a router
    /// process, its request counters are asked of it (bounded wait).
    pub async fn status(&self) -> ServerStatus {
        let mut status = self.status_of(&self.published.load());
        let handshakes = self.with_router_counters(&mut status.sites).await;
        if let (Some(on_demand), Some(handshakes)) = (&mut status.on_demand, handshakes) {
            on_demand.handshakes = handshakes;
        }
        status
    }

    /// Puts the router process's request counters into `sites` (nothing
    /// without one; zeros, said in the log, when it does not answer), and
    /// returns what its on-demand TLS handshakes did (without a router
    /// process, this process's router's).
    async fn with_router_counters(
        &self,
        sites: &mut [SiteStatus],
    ) -> Option<RouterOnDemandSnapshot> {
        if !self.has_router() {
            return Some(crate::metrics::on_demand::router_snapshot(
                crate::router::tls::on_demand_waiting(),
            ));
        }
        let (counters, handshakes): (BTreeMap<String, crate::metrics::SiteCounters>, _) = match self
            .router_stats()
            .await
        {
            Some(reply) => (reply.sites.into_iter().collect(), Some(reply.on_demand)),
            None => {
                tracing::warn!("the router process did not report its counters: status shows none");
                (BTreeMap::new(), None)
            }
        };
        for site in sites {
            site.set_counters(counters.get(&site.name).copied().unwrap_or_default());
        }
        handshakes
    }

    fn status_of(&self, sites: &BTreeMap<SiteName, Site>) -> ServerStatus {
        ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            limits_backend: self.supervisor.cgroups().describe(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            sites: sites.values().map(|s| self.status_of_site(s)).collect(),
            cluster: self.cluster_status(),
            on_demand: crate::metrics::on_demand::snapshot(),
        }
    }

    /// Status of one site, or [`ControlError::NoSuchSite`]; never waits.
    pub async fn site_status(&self, name: &str) -> Result<SiteStatus, ControlError> {
        let status = SiteName::parse(name)
            .ok()
            .and_then(|n| {
                self.published
                    .load()
                    .get(&n)
                    .map(|s| self.status_of_site(s))
            })
            .ok_or_else(|| ControlError::NoSuchSite(name.to_owned()))?;
        let mut one = [status];
        self.with_router_counters(&mut one).await;
        let [status] = one;
        Ok(status)
    }

    /// What a metrics scrape shows: the status plus each site's live
    /// handles (one per `status.sites`, in the same order), from one
    /// published snapshot; never waits.
    pub async fn status_with_handles(&self) -> (ServerStatus, Vec<crate::metrics::SiteView>) {
        let sites = self.published.load_full();
        let status = self.status_of(&sites);
        let views = sites.values().map(Site::metrics_view).collect();
        (status, views)
    }
}
