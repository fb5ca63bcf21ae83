//! What the router serves: its sites, rebuilt from each [`Desired`] the
//! supervisor sends ([`RouterState::apply`]), and the routing table over
//! them.
//!
//! A site is kept, rerouted, stopped or built afresh by the same rules the
//! supervisor used to get there ([`decide`]): its generation says whether
//! its processes are the ones the router holds, its configuration whether
//! its route is. Logs and counters go from a site's version to the next, as
//! in the supervisor. A site the router cannot build although the
//! supervisor did (its document root vanished in between, a user removed)
//! answers 503 with the reason, never another site's answer, and is built
//! again at the next [`Desired`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::app::router_link::{Desired, DesiredSite};
use crate::config::{SiteConfig, SiteName};
use crate::metrics::SiteCounters;
use crate::router::{RoutingTable, SiteStats};
use crate::sites::{self, Site};
use crate::supervisor::Supervisor;
use crate::upstream::python::PythonUpstream;

/// What to do with one site of a [`Desired`], given what the router holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve it as it is.
    Keep,
    /// Same processes, a new route (hosts, certificate, static settings).
    Reroute,
    /// Stopped by the operator: 503, no process.
    Stop,
    /// A new generation of processes (or a site new here).
    Build,
    /// The supervisor could not build it: 503, no process.
    Fail,
}

/// What the router holds of a site, as [`decide`] needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeldSite {
    pub generation: u64,
    pub stopped: bool,
    /// Built as the supervisor did (not a 503 stand-in).
    pub usable: bool,
    /// Its configuration is the one wanted now.
    pub same_config: bool,
}

/// The decision for a site wanted as `want`, held as `held` (if at all).
pub(crate) fn decide(held: Option<HeldSite>, want: DesiredSite) -> Decision {
    if want.failed {
        return Decision::Fail;
    }
    let Some(held) = held.filter(|h| h.usable) else {
        return match want.stopped {
            true => Decision::Stop,
            false => Decision::Build,
        };
    };
    let same_generation = held.generation == want.generation;
    match (want.stopped, held.stopped) {
        (true, true) if same_generation && held.same_config => Decision::Keep,
        (true, _) => Decision::Stop,
        (false, true) => Decision::Build,
        (false, false) if !same_generation => Decision::Build,
        (false, false) if held.same_config => Decision::Keep,
        (false, false) => Decision::Reroute,
    }
}

/// One site as the router serves it.
struct Held {
    site: Site,
    usable: bool,
}

/// The router's sites.
pub(crate) struct RouterState {
    supervisor: Supervisor,
    log_dir: PathBuf,
    sites: BTreeMap<SiteName, Held>,
}

/// What [`RouterState::apply`] replaced: Python and `[app]` upstreams to
/// settle before the supervisor may stop their processes.
pub(crate) struct Replaced {
    pub python: Vec<Arc<PythonUpstream>>,
    pub app: Vec<Arc<crate::upstream::app::AppUpstream>>,
}

impl Replaced {
    /// Waits until no request is queued on a replaced upstream between its
    /// admission and its lease (as the supervisor's retire does in one
    /// process), bounded by their queue timeouts.
    pub async fn settle(self) {
        let python = futures_util::future::join_all(self.python.iter().map(|py| py.settle()));
        let app = futures_util::future::join_all(self.app.iter().map(|app| app.settle()));
        futures_util::future::join(python, app).await;
    }
}

impl RouterState {
    /// `supervisor`: the router's (`Supervisor::for_router`). `log_dir`:
    /// where the supervisor made the sites' logs.
    pub fn new(supervisor: Supervisor, log_dir: PathBuf) -> RouterState {
        RouterState {
            supervisor,
            log_dir,
            sites: BTreeMap::new(),
        }
    }

    /// Serves `desired` from now on: every site decided ([`decide`]) and
    /// built; sites no longer wanted are dropped (their processes are the
    /// supervisor's to stop). Returns what was replaced.
    pub fn apply(&mut self, desired: &Desired) -> Replaced {
        self.supervisor.know_identities(
            desired
                .sites
                .iter()
                .map(|(name, site)| (name.clone(), site.runs_as.map(|r| (r.uid, r.gid)))),
        );
        let mut next = BTreeMap::new();
        let mut old_sites = Vec::new();
        for (name, config) in &desired.config.sites {
            let Some(want) = desired.sites.get(name.as_str()).copied() else {
                tracing::error!(site = %name, "the supervisor sent a site without its state (generation, stopped); not serving it");
                continue;
            };
            let held = self.sites.remove(name);
            let site = self.next_site(config, want, held.as_ref());
            if let Some(held) = held {
                old_sites.push(held.site);
            }
            next.insert(name.clone(), site);
        }
        old_sites.extend(
            std::mem::replace(&mut self.sites, next)
                .into_values()
                .map(|h| h.site),
        );
        let replaced: Vec<&Site> = old_sites
            .iter()
            .filter(|old| !self.shares_runtimes(old))
            .collect();
        Replaced {
            python: replaced
                .iter()
                .filter_map(|old| old.runtimes().python.clone())
                .collect(),
            app: replaced
                .iter()
                .filter_map(|old| old.runtimes().app.clone())
                .collect(),
        }
    }

    /// Whether some site served now runs on `old`'s processes.
    fn shares_runtimes(&self, old: &Site) -> bool {
        self.sites
            .get(&old.config().name)
            .is_some_and(|held| held.site.shares_runtimes(old))
    }

    fn next_site(&self, config: &Arc<SiteConfig>, want: DesiredSite, held: Option<&Held>) -> Held {
        let view = held.map(|h| HeldSite {
            generation: h.site.runtimes().generation,
            stopped: h.site.is_stopped(),
            usable: h.usable,
            // The same `Arc` for every site a `Changes` left alone.
            same_config: Arc::ptr_eq(h.site.config(), config) || **h.site.config() == **config,
        });
        let decision = decide(view, want);
        let (logs, stats) = match held {
            Some(h) => (h.site.logs().clone(), h.site.stats().clone()),
            None => (
                sites::attach_logs(config, &self.log_dir),
                Arc::new(SiteStats::default()),
            ),
        };
        let built = match (decision, held) {
            (Decision::Keep, Some(h)) => Ok(h.site.clone()),
            (Decision::Reroute, Some(h)) => h.site.rerouted(config),
            (Decision::Stop, Some(h)) if h.site.runtimes().generation == want.generation => {
                Ok(h.site.stopped(config))
            }
            (Decision::Fail, _) => {
                let why = format!(
                    "site {} failed to start; `polyhost status {}` says why",
                    config.name, config.name
                );
                return Held {
                    site: Site::unavailable(config, want.generation, logs, stats, why),
                    usable: false,
                };
            }
            (Decision::Stop, _) => Ok(Site::stopped_at(
                config,
                &self.supervisor,
                want.generation,
                logs.clone(),
                stats.clone(),
            )),
            _ => Site::build(
                config,
                &self.supervisor,
                want.generation,
                logs.clone(),
                stats.clone(),
            ),
        };
        match built {
            Ok(site) => Held { site, usable: true },
            Err(errors) => {
                let why = format!(
                    "site {} cannot be served by the router process: {errors}",
                    config.name
                );
                tracing::error!("{why}");
                Held {
                    site: Site::unavailable(config, want.generation, logs, stats, why),
                    usable: false,
                }
            }
        }
    }

    /// The routing table over every site served now.
    pub fn table(&self) -> RoutingTable {
        RoutingTable::new(self.sites.values().map(|h| h.site.route().clone()))
    }

    /// Every site's counters, by name.
    pub fn counters(&self) -> Vec<(String, SiteCounters)> {
        self.sites
            .iter()
            .map(|(name, held)| (name.to_string(), held.site.stats().counters()))
            .collect()
    }

    /// The router's metric families over every site served now
    /// (`StatsReply::metrics`).
    pub fn metrics(&self) -> String {
        let views = self
            .sites
            .iter()
            .map(|(name, held)| crate::admin::metrics::RouterSiteView {
                name: name.to_string(),
                asgi: held
                    .site
                    .config()
                    .python
                    .as_ref()
                    .and_then(|py| py.asgi())
                    .is_some(),
                view: held.site.metrics_view(),
            })
            .collect();
        crate::admin::metrics::router_families(views)
    }

    /// The site served as `name` now (tests).
    #[cfg(test)]
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, h)| &h.site)
    }

    /// Whether the site served as `name` was built as the supervisor did (tests).
    #[cfg(test)]
    pub fn usable(&self, name: &str) -> bool {
        self.sites
            .iter()
            .any(|(n, h)| n.as_str() == name && h.usable)
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
