//! Applying a plan, in the steps of the module doc of [`super`]: build the
//! next sites ([`prepare`]: build, then warm up), and once they are published
//! (by `Server`, one swap of the routing table) hand the new generations
//! their logs ([`hand_over_logs`]) and retire what the old sites ran
//! ([`retire`]).
//!
//! Invariants: until [`prepare`]'s result is published, the running sites
//! are untouched and serve on. A site whose change cannot be applied (it
//! cannot be built, or its new processes do not become ready) concerns that
//! site alone: it serves its previous configuration if it served one
//! ([`Site::not_applied`]), else it fails ([`Site::failed`]: 503, no
//! process); every other site's change is applied.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, SiteConfig, SiteName};
use crate::sites::{self, NotReady, Runtimes, Site};
use crate::supervisor::Supervisor;

use super::plan::Change;
use super::FailedSite;

/// Builds a site's new generation of processes: [`Builder`] for real, a
/// stand-in in the tests (so that [`prepare`] is tested without processes).
pub(crate) trait Generations {
    /// `config` over a new generation; `old` (the site's running version,
    /// if any) lends its logs and counters, which outlive generations.
    fn build(&self, config: &Arc<SiteConfig>, old: Option<&Site>) -> Result<Site, ConfigErrors>;

    /// `config`, which could not be built (`why`), as a failed site (with
    /// `old`'s logs and counters, if any).
    fn failed(&self, config: &Arc<SiteConfig>, old: Option<&Site>, why: &ConfigErrors) -> Site;
}

/// What building a site needs from the server.
pub(crate) struct Builder<'a> {
    pub supervisor: &'a Supervisor,
    /// The generation number of every process group built by this apply.
    pub generation: u64,
    /// Where a new site's logs go.
    pub log_dir: &'a Path,
}

/// The sites after a plan, built (and warm) but not yet serving.
pub(crate) struct Prepared {
    pub sites: BTreeMap<SiteName, Site>,
    /// The new generations among them, handed their logs once published.
    pub fresh: Vec<Arc<Runtimes>>,
    /// The sites whose change could not be applied, in name order.
    pub failed: Vec<FailedSite>,
}

/// A site whose new processes did not become ready: it keeps its running ones.
#[derive(Debug)]
pub struct SiteNotReady {
    pub site: Arc<SiteConfig>,
    pub cause: NotReady,
}

impl SiteNotReady {
    /// As an error of the site's file (what the admin API and the log show).
    pub fn to_config_error(&self) -> ConfigError {
        ConfigError::in_file(
            &self.site.file,
            "",
            format!("site {}: its new processes did not become ready: {} (the site's error log has their output)", self.site.name, self.cause),
        )
    }
}

impl Generations for Builder<'_> {
    fn build(&self, config: &Arc<SiteConfig>, old: Option<&Site>) -> Result<Site, ConfigErrors> {
        let (logs, stats) = self.logs_and_stats(config, old);
        Site::build(config, self.supervisor, self.generation, logs, stats)
    }

    fn failed(&self, config: &Arc<SiteConfig>, old: Option<&Site>, why: &ConfigErrors) -> Site {
        let (logs, stats) = self.logs_and_stats(config, old);
        Site::failed(config, self.generation, logs, stats, why)
    }
}

impl Builder<'_> {
    /// `old`'s logs and counters, or a new site's.
    fn logs_and_stats(
        &self,
        config: &SiteConfig,
        old: Option<&Site>,
    ) -> (Arc<crate::router::SiteLogs>, Arc<crate::router::SiteStats>) {
        match old {
            Some(old) => (old.logs().clone(), old.stats().clone()),
            None => (sites::open_logs(config, self.log_dir), Default::default()),
        }
    }
}

/// Builds every site of `changes` over `current`, then warms up the new
/// generations of sites that were running (traffic moves only to ready
/// processes). A site that cannot be built or does not become ready falls
/// back alone (see the module doc).
pub(crate) async fn prepare(
    changes: &[Change],
    current: &BTreeMap<SiteName, Site>,
    generations: &impl Generations,
) -> Prepared {
    let mut prepared = build(changes, current, generations);
    for not_ready in warm_up(changes, current, &prepared.sites).await {
        let name = &not_ready.site.name;
        if let Some(fresh) = prepared.sites.get(name).map(|s| s.runtimes().clone()) {
            prepared.fresh.retain(|rt| !Arc::ptr_eq(rt, &fresh));
            tokio::spawn(async move { fresh.stop().await });
        }
        let why = ConfigErrors(vec![not_ready.to_config_error()]);
        let old = current.get(name).expect("only running sites warm up");
        prepared.fall_back(&not_ready.site, Some(old), &why, generations);
    }
    prepared.failed.sort_by(|a, b| a.site.cmp(&b.site));
    prepared
}

/// The next site of each change (none for a removed site); a site that
/// cannot be built falls back.
fn build(
    changes: &[Change],
    current: &BTreeMap<SiteName, Site>,
    generations: &impl Generations,
) -> Prepared {
    let mut prepared = Prepared {
        sites: BTreeMap::new(),
        fresh: Vec::new(),
        failed: Vec::new(),
    };
    for change in changes {
        let old = current.get(change.site());
        match next_site(change, old, generations) {
            Ok(None) => {}
            Ok(Some(site)) => {
                if matches!(change, Change::Add(_) | Change::Restart(_)) {
                    prepared.fresh.push(site.runtimes().clone());
                }
                prepared.sites.insert(change.site().clone(), site);
            }
            Err(why) => {
                let config = change.config().expect("only built changes fail");
                prepared.fall_back(config, old, &why, generations);
            }
        }
    }
    prepared
}

impl Prepared {
    /// `config` could not be applied (`why`): the site serves `old` on if
    /// that served, else it fails. Recorded in [`Self::failed`].
    fn fall_back(
        &mut self,
        config: &Arc<SiteConfig>,
        old: Option<&Site>,
        why: &ConfigErrors,
        generations: &impl Generations,
    ) {
        let serving = old.filter(|old| !old.is_failed());
        let site = match serving {
            Some(old) => old.not_applied(why.to_string()),
            None => generations.failed(config, old, why),
        };
        tracing::error!(site = %config.name, serves_previous = serving.is_some(), "the site's new configuration cannot be applied; the other sites' changes are:\n{why}");
        self.failed.push(FailedSite {
            site: config.name.to_string(),
            errors: why.iter().map(ToString::to_string).collect(),
            serves_previous: serving.is_some(),
        });
        self.sites.insert(config.name.clone(), site);
    }
}

/// The site `change` makes of `old` (its running version, if any).
fn next_site(
    change: &Change,
    old: Option<&Site>,
    generations: &impl Generations,
) -> Result<Option<Site>, ConfigErrors> {
    let site = match (change, old) {
        (Change::Remove(_), _) => return Ok(None),
        (Change::Keep(_), Some(old)) => old.applied(),
        (Change::Reroute(config), Some(old)) if old.is_stopped() => old.stopped(config),
        (Change::Reroute(config), Some(old)) => old.rerouted(config)?,
        (Change::Add(config) | Change::Restart(config), old) => generations.build(config, old)?,
        (Change::Keep(_) | Change::Reroute(_), None) => {
            unreachable!("the plan keeps or reroutes only running sites")
        }
    };
    Ok(Some(site))
}

/// Starts the new generation of every restarted site that was running and
/// waits until each serves (bounded by its startup timeout); returns the
/// sites whose new generation did not.
async fn warm_up(
    changes: &[Change],
    current: &BTreeMap<SiteName, Site>,
    next: &BTreeMap<SiteName, Site>,
) -> Vec<SiteNotReady> {
    let warm: Vec<&Site> = changes
        .iter()
        .filter_map(|change| match change {
            Change::Restart(config) => Some(&config.name),
            _ => None,
        })
        .filter(|name| current.get(*name).is_some_and(Site::is_running))
        .filter_map(|name| next.get(name))
        .filter(|site| !site.is_failed() && site.trouble().is_none())
        .collect();
    let warmed = futures_util::future::join_all(warm.iter().map(|site| async move {
        site.runtimes()
            .warm_up()
            .await
            .map_err(|cause| SiteNotReady {
                site: site.config().clone(),
                cause,
            })
    }))
    .await;
    warmed.into_iter().filter_map(Result::err).collect()
}

/// Once published: a new generation's group (which may have changed) reads
/// its site's logs.
pub(crate) fn hand_over_logs(
    sites: &BTreeMap<SiteName, Site>,
    fresh: &[Arc<Runtimes>],
    supervisor: &Supervisor,
) {
    for site in sites.values() {
        if fresh.iter().any(|rt| Arc::ptr_eq(rt, site.runtimes())) {
            sites::give_logs_to_site(site.config(), supervisor, site.logs());
        }
    }
}

/// Once published: the generations of `old` that `now` no longer runs drain
/// and stop in the background; a removed site's logs go back to root and
/// its cgroup is removed.
pub(crate) fn retire(
    old: BTreeMap<SiteName, Site>,
    now: &BTreeMap<SiteName, Site>,
    supervisor: &Supervisor,
) {
    for (name, old) in old {
        if now
            .get(&name)
            .is_some_and(|site| site.shares_runtimes(&old))
        {
            continue;
        }
        let removed = !now.contains_key(&name);
        if removed {
            // Its group may be given to a new site's user one day.
            if let Err(e) = old.logs().give_to_group(None) {
                tracing::warn!(site = %name, error = %e, "cannot give a removed site's logs back to root");
            }
        }
        let runtimes = old.runtimes().clone();
        let remover = match (&runtimes.context, removed) {
            (Some(ctx), true) => Some(supervisor.cgroup_remover(ctx, name.as_str())),
            _ => None,
        };
        tokio::spawn(async move {
            runtimes.stop().await;
            if let Some(remove) = remover {
                let _ = tokio::task::spawn_blocking(remove).await;
            }
        });
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
