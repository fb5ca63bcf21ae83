//! Sites: a validated [`SiteConfig`] turned into what polyhost runs and
//! serves. One [`Site`] owns everything of one site: its configuration (with
//! its loaded certificate, `config::SiteTls::pair`), its logs and counters
//! (which outlive its generations), its current generation of processes
//! ([`Runtimes`]) and the route the router serves over them ([`SiteRoute`]).
//!
//! - [`runtimes`]: one generation of a site's processes and upstreams.
//! - [`route`]: the route over a generation, or the 503 route of a stopped site.
//!
//! A site changes only by being replaced by a new [`Site`]: with a new
//! generation ([`Site::build`]), a new route over the same generation
//! ([`Site::rerouted`]), stopped ([`Site::stopped`]), failed
//! ([`Site::failed`]: it could not be built) or serving on with a note that
//! its latest configuration was not applied ([`Site::not_applied`]). The
//! logs and counters go from each to the next.
//!
//! Invariant: building a site has no effect on other sites; a failure names
//! the site's file and key.

pub mod route;
pub mod runtimes;

use std::path::Path;
use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, SiteConfig};
use crate::router::{SiteLogs, SiteRoute, SiteStats};
use crate::supervisor::{GroupState, Supervisor};

pub use route::{build_route, disabled_route, unavailable_route};
pub use runtimes::{build_runtimes, same_runtime, GroupNotReady, NotReady, Runtimes};

/// One site as it runs: see the module doc. Cloning shares everything.
#[derive(Clone)]
pub struct Site {
    /// What the router serves; holds the site's config, logs and counters.
    route: Arc<SiteRoute>,
    /// The current generation of processes (none for a static or stopped site).
    runtimes: Arc<Runtimes>,
    /// Stopped by the operator (`polyhost stop SITE`).
    stopped: bool,
    /// Why this site does not serve its configuration, if it does not:
    /// see [`Trouble`].
    trouble: Option<Trouble>,
}

/// Why a site does not serve its configuration: something of the site's
/// own could not be built or did not start (its files, its processes). It
/// concerns that site alone (see `app::reload`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// It could not be built: every request gets a 503, no process runs;
    /// the next reload (or `polyhost start`/`restart`) builds it again.
    Failed(Arc<str>),
    /// Its latest configuration could not be built or did not become
    /// ready: it serves its previous one, with its running processes.
    NotApplied(Arc<str>),
}

impl Site {
    /// Builds `config` with a new generation of processes (none started
    /// yet). `logs` and `stats` are the site's: opened with [`open_logs`]
    /// when it is new, its previous [`Site`]'s otherwise.
    pub fn build(
        config: &Arc<SiteConfig>,
        supervisor: &Supervisor,
        generation: u64,
        logs: Arc<SiteLogs>,
        stats: Arc<SiteStats>,
    ) -> Result<Site, ConfigErrors> {
        refuse_problems(config)?;
        let runtimes = Arc::new(build_runtimes(config, supervisor, generation, &stats)?);
        match build_route(config, &runtimes, logs, stats) {
            Ok(route) => Ok(Site::over(route, runtimes)),
            Err(e) => {
                let rt = runtimes.clone();
                tokio::spawn(async move { rt.stop().await });
                Err(e)
            }
        }
    }

    /// A site serving `route` over `runtimes`.
    pub fn over(route: SiteRoute, runtimes: Arc<Runtimes>) -> Site {
        Site {
            route: Arc::new(route),
            runtimes,
            stopped: false,
            trouble: None,
        }
    }

    /// This site with `config`'s routing (hosts, static settings, body
    /// limit, certificate) over the same processes.
    pub fn rerouted(&self, config: &Arc<SiteConfig>) -> Result<Site, ConfigErrors> {
        refuse_problems(config)?;
        let route = build_route(
            config,
            &self.runtimes,
            self.logs().clone(),
            self.stats().clone(),
        )?;
        Ok(Site::over(route, self.runtimes.clone()))
    }

    /// This site stopped by the operator, with `config`: every request gets
    /// a 503, no process runs. Its processes are not stopped here: stop
    /// [`Self::runtimes`] of `self` once the stopped site is published.
    pub fn stopped(&self, config: &Arc<SiteConfig>) -> Site {
        let old = &self.runtimes;
        let route = disabled_route(config, self.logs().clone(), self.stats().clone(), old.uid());
        Site {
            route: Arc::new(route),
            runtimes: Arc::new(Runtimes::without_processes(
                old.generation,
                old.context.clone(),
                old.reader.clone(),
            )),
            stopped: true,
            trouble: None,
        }
    }

    /// A site stopped by the operator that was not running here before
    /// (the router process learns it stopped): like [`stopped`](Self::stopped)
    /// of its running version, at `generation`.
    pub fn stopped_at(
        config: &Arc<SiteConfig>,
        supervisor: &Supervisor,
        generation: u64,
        logs: Arc<SiteLogs>,
        stats: Arc<SiteStats>,
    ) -> Site {
        let uid = match config.runs_code() {
            true => supervisor.identity(config).ok().flatten().map(|id| id.uid),
            false => None,
        };
        Site {
            route: Arc::new(disabled_route(config, logs, stats, uid)),
            runtimes: Arc::new(Runtimes::without_processes(
                generation,
                None,
                crate::docroot::Reader::Anyone,
            )),
            stopped: true,
            trouble: None,
        }
    }

    /// A site that cannot be served as configured here (the router process
    /// could not build what the supervisor did): every request gets a 503
    /// saying `why`, rather than another site's answer.
    pub fn unavailable(
        config: &Arc<SiteConfig>,
        generation: u64,
        logs: Arc<SiteLogs>,
        stats: Arc<SiteStats>,
        why: String,
    ) -> Site {
        Site {
            route: Arc::new(unavailable_route(config, logs, stats, None, why)),
            runtimes: Arc::new(Runtimes::without_processes(
                generation,
                None,
                crate::docroot::Reader::Anyone,
            )),
            stopped: false,
            trouble: None,
        }
    }

    /// `config` failed to build (`why`: the errors of its file): every
    /// request gets a 503 saying so, no process runs, status says why.
    pub fn failed(
        config: &Arc<SiteConfig>,
        generation: u64,
        logs: Arc<SiteLogs>,
        stats: Arc<SiteStats>,
        why: &ConfigErrors,
    ) -> Site {
        let why = why.to_string();
        let said = format!("site {} failed: {why}", config.name);
        let mut site = Site::unavailable(config, generation, logs, stats, said);
        site.trouble = Some(Trouble::Failed(why.into()));
        site
    }

    /// This site, serving on although its latest configuration could not
    /// be applied (`why`).
    pub fn not_applied(&self, why: String) -> Site {
        Site {
            trouble: Some(Trouble::NotApplied(why.into())),
            ..self.clone()
        }
    }

    /// This site with its configuration applied after all (the next
    /// configuration is the one it serves): no [`Trouble::NotApplied`].
    pub fn applied(&self) -> Site {
        match self.trouble {
            Some(Trouble::NotApplied(_)) => Site {
                trouble: None,
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// Why it does not serve its configuration, if it does not.
    pub fn trouble(&self) -> Option<&Trouble> {
        self.trouble.as_ref()
    }

    /// It could not be built: it runs nothing and answers 503.
    pub fn is_failed(&self) -> bool {
        matches!(self.trouble, Some(Trouble::Failed(_)))
    }

    pub fn config(&self) -> &Arc<SiteConfig> {
        &self.route.config
    }

    pub fn logs(&self) -> &Arc<SiteLogs> {
        &self.route.logs
    }

    /// What a metrics scrape reads of the site: its counters and, for a
    /// Python site, its worker threads.
    pub fn metrics_view(&self) -> crate::metrics::SiteView {
        crate::metrics::SiteView {
            stats: self.stats().clone(),
            threads: self.runtimes().python.as_ref().map(|py| py.threads()),
            php: self.runtimes().php.is_some(),
        }
    }

    pub fn stats(&self) -> &Arc<SiteStats> {
        &self.route.stats
    }

    /// What the routing table holds for this site.
    pub fn route(&self) -> &Arc<SiteRoute> {
        &self.route
    }

    pub fn runtimes(&self) -> &Arc<Runtimes> {
        &self.runtimes
    }

    /// Stopped by the operator.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether some process group of its generation serves now.
    pub fn is_running(&self) -> bool {
        self.runtimes
            .groups
            .iter()
            .any(|g| g.snapshot().state == GroupState::Running)
    }

    /// Whether `other` runs on the same generation of processes as this site.
    pub fn shares_runtimes(&self, other: &Site) -> bool {
        Arc::ptr_eq(&self.runtimes, &other.runtimes)
    }
}

/// Opens a site's log files (see [`SiteLogs::open`]: never an error).
pub fn open_logs(site: &SiteConfig, log_dir: &Path) -> Arc<SiteLogs> {
    Arc::new(SiteLogs::open(log_dir, site.name.as_str()))
}

/// Opens a site's log files as the supervisor made them (the router
/// process, `privsep`: see [`SiteLogs::open_existing`]).
pub fn attach_logs(site: &SiteConfig, log_dir: &Path) -> Arc<SiteLogs> {
    Arc::new(SiteLogs::open_existing(log_dir, site.name.as_str()))
}

/// Gives read access to a site's logs to the group its processes run with
/// (a site that runs code: no other such site has that group), or to root
/// only (a static site). Called once a site's processes are committed (at
/// start, after a reload's swap, on `start`): its group may have changed.
/// A failure leaves the logs root's (the site cannot read its own) and is
/// logged.
pub fn give_logs_to_site(site: &SiteConfig, supervisor: &Supervisor, logs: &SiteLogs) {
    let group = if site.runs_code() {
        supervisor.identity(site).ok().flatten().map(|id| id.gid)
    } else {
        None
    };
    if let Err(e) = logs.give_to_group(group) {
        tracing::warn!(site = %site.name, file = %logs.access.path().display(), error = %e, "cannot give the site's logs to its group");
    }
}

/// A configuration whose site's own files are at fault
/// ([`SiteConfig::problems`]) is never built.
fn refuse_problems(config: &SiteConfig) -> Result<(), ConfigErrors> {
    match config.problems.is_empty() {
        true => Ok(()),
        false => Err(config.problem_errors()),
    }
}

fn one_error(site: &SiteConfig, key: &str, msg: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::in_file(&site.file, key, msg)])
}

#[cfg(test)]
pub(crate) mod tests;
