//! Applying a plan, in the steps of the module doc of [`super`]: build the
//! next sites ([`prepare`]: build, then warm up), and once they are published
//! (by `Server`, one swap of the routing table) hand the new generations
//! their logs ([`hand_over_logs`]) and retire what the old sites ran
//! ([`retire`]).
//!
//! Invariant: [`prepare`] either returns every next site, built and warm, or
//! stops everything it started and returns why; until its result is
//! published, the running sites are untouched and serve on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, SiteConfig, SiteName};
use crate::sites::{self, NotReady, Runtimes, Site};
use crate::supervisor::Supervisor;

use super::plan::Change;

/// Builds a site's new generation of processes: [`Builder`] for real, a
/// stand-in in the tests (so that [`prepare`] is tested without processes).
pub(crate) trait Generations {
    /// `config` over a new generation; `old` (the site's running version,
    /// if any) lends its logs and counters, which outlive generations.
    fn build(&self, config: &Arc<SiteConfig>, old: Option<&Site>) -> Result<Site, ConfigErrors>;
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
    /// The new generations among them: stopped if the apply is abandoned,
    /// handed their logs once it is published.
    pub fresh: Vec<Arc<Runtimes>>,
}

/// Why an apply was abandoned; nothing changed.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// Some site could not be built.
    Setup(ConfigErrors),
    /// Some site's new processes did not become ready.
    NotReady(Vec<SiteNotReady>),
}

/// A site whose new generation did not become ready: it keeps its running one.
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
            format!("site {}: its new processes did not become ready, so it keeps its running ones: {} (the site's error log has their output)", self.site.name, self.cause),
        )
    }
}

impl Generations for Builder<'_> {
    fn build(&self, config: &Arc<SiteConfig>, old: Option<&Site>) -> Result<Site, ConfigErrors> {
        let (logs, stats) = match old {
            Some(old) => (old.logs().clone(), old.stats().clone()),
            None => (sites::open_logs(config, self.log_dir), Default::default()),
        };
        Site::build(config, self.supervisor, self.generation, logs, stats)
    }
}

/// Builds every site of `changes` over `current`, then warms up the new
/// generations of sites that were running (traffic moves only to ready
/// processes). On any failure, stops what it built.
pub(crate) async fn prepare(
    changes: &[Change],
    current: &BTreeMap<SiteName, Site>,
    generations: &impl Generations,
) -> Result<Prepared, ApplyError> {
    let (prepared, errors) = build(changes, current, generations);
    if !errors.is_empty() {
        prepared.abandon().await;
        return Err(ApplyError::Setup(errors));
    }
    if let Err(not_ready) = warm_up(changes, current, &prepared.sites).await {
        prepared.abandon().await;
        return Err(ApplyError::NotReady(not_ready));
    }
    Ok(prepared)
}

/// The next site of each change (none for a removed site), and the errors
/// of those that could not be built.
fn build(
    changes: &[Change],
    current: &BTreeMap<SiteName, Site>,
    generations: &impl Generations,
) -> (Prepared, ConfigErrors) {
    let mut prepared = Prepared {
        sites: BTreeMap::new(),
        fresh: Vec::new(),
    };
    let mut errors = ConfigErrors::default();
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
            Err(e) => errors.0.extend(e.0),
        }
    }
    (prepared, errors)
}

/// The site `change` makes of `old` (its running version, if any).
fn next_site(
    change: &Change,
    old: Option<&Site>,
    generations: &impl Generations,
) -> Result<Option<Site>, ConfigErrors> {
    let site = match (change, old) {
        (Change::Remove(_), _) => return Ok(None),
        (Change::Keep(_), Some(old)) => old.clone(),
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
/// waits until each serves (bounded by its startup timeout).
async fn warm_up(
    changes: &[Change],
    current: &BTreeMap<SiteName, Site>,
    next: &BTreeMap<SiteName, Site>,
) -> Result<(), Vec<SiteNotReady>> {
    let warm: Vec<&Site> = changes
        .iter()
        .filter_map(|change| match change {
            Change::Restart(config) => Some(&config.name),
            _ => None,
        })
        .filter(|name| current.get(*name).is_some_and(Site::is_running))
        .filter_map(|name| next.get(name))
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
    let not_ready: Vec<SiteNotReady> = warmed.into_iter().filter_map(Result::err).collect();
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(not_ready)
    }
}

impl Prepared {
    /// Stops every new generation: the apply is abandoned.
    async fn abandon(self) {
        for runtimes in self.fresh {
            runtimes.stop().await;
        }
    }
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
