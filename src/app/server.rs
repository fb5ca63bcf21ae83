//! The running server: its sites (routes + runtimes), the routing table the
//! router reads, and the supervisor. Every control operation (reload,
//! restart, stop/start a site) goes through [`Server`] and is serialised by
//! one lock, so two reloads never interleave.
//!
//! # Reload
//!
//! 1. Load and validate the whole configuration; any error → nothing changes.
//! 2. Diff old and new site by site: unchanged sites keep everything (same
//!    route, same processes); sites whose runtime settings are the same but
//!    whose routing changed (hosts, static settings, body limit) get a new
//!    route over the same processes; sites whose runtime settings changed get
//!    a new generation of processes; added sites are built; removed sites are
//!    dropped. Building anything fails → what was built is stopped, nothing
//!    changes.
//! 3. New generations of sites that were running are started and awaited
//!    (bounded by their startup timeout), so traffic moves to ready processes.
//! 4. One atomic swap of the routing table.
//! 5. Old generations and removed sites drain (finish in-flight requests) and
//!    stop in the background.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::status::{ServerStatus, SiteStatus};
use super::ServeError;
use crate::config::{self, Config, ConfigErrors, SiteConfig, SiteName};
use crate::router::{RoutingTable, SharedTable, SiteLogs, SiteRoute, SiteStats};
use crate::sites::{self, Runtimes};
use crate::supervisor::{GroupState, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The new configuration is invalid: nothing changed.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The configuration is valid but a site could not be set up: nothing changed.
    #[error("{0}")]
    Setup(ConfigErrors),
    #[error("no site named {0:?}")]
    NoSuchSite(String),
    /// polyhost is stopping; nothing more is started.
    #[error("polyhost is shutting down")]
    ShuttingDown,
}

/// What a reload did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// New generation of processes.
    pub restarted: Vec<String>,
    /// New routes over the same processes.
    pub rerouted: Vec<String>,
    pub unchanged: usize,
    pub warnings: Vec<String>,
}

#[derive(Clone)]
struct SiteEntry {
    config: Arc<SiteConfig>,
    route: Arc<SiteRoute>,
    runtimes: Arc<Runtimes>,
    logs: Arc<SiteLogs>,
    stats: Arc<SiteStats>,
    /// Stopped by the operator (`polyhost stop SITE`).
    disabled: bool,
}

struct State {
    config: Config,
    sites: BTreeMap<SiteName, SiteEntry>,
    /// Set by [`Server::shutdown`]: control operations are refused from then
    /// on, so nothing is started after the sites were stopped.
    stopped: bool,
}

pub struct Server {
    main: PathBuf,
    started: Instant,
    table: SharedTable,
    supervisor: Supervisor,
    state: tokio::sync::Mutex<State>,
    /// The sites as last published with the routing table: status and
    /// metrics read it without the lock, so they answer during a long reload.
    published: ArcSwap<BTreeMap<SiteName, SiteEntry>>,
    generation: AtomicU64,
    reloads: AtomicU64,
    reloads_failed: AtomicU64,
    shutdown_timeout: Duration,
}

impl Server {
    /// Prepares directories, the supervisor and every site. Start-up is a
    /// reload from nothing: the same building code, the same errors.
    pub async fn start(config: Config) -> Result<Arc<Server>, ServeError> {
        // Before anything is touched: two sites that run code never share a uid or group.
        crate::supervisor::site_identities(
            &config.sites,
            &crate::supervisor::IdentityDefaults::of(&config.server),
        )?;
        std::fs::create_dir_all(&config.server.state_dir).map_err(|source| ServeError::Dir {
            path: config.server.state_dir.display().to_string(),
            source,
        })?;
        crate::router::prepare_log_dir(&config.server.log_dir).map_err(|source| {
            ServeError::Dir {
                path: config.server.log_dir.display().to_string(),
                source,
            }
        })?;
        warn_if_hard_links_unprotected();
        let names: Vec<&str> = config.sites.keys().map(SiteName::as_str).collect();
        crate::router::retire_other_logs(&config.server.log_dir, &names);
        let supervisor = Supervisor::new(&config.server);
        let mut sites = BTreeMap::new();
        let mut errors = ConfigErrors::default();
        for site in config.sites.values() {
            match build_entry(site, &supervisor, 1, &config.server.log_dir, None) {
                Ok(entry) => {
                    sites.insert(site.name.clone(), entry);
                }
                Err(e) => errors.0.extend(e.0),
            }
        }
        if !errors.is_empty() {
            for entry in sites.values() {
                entry.runtimes.stop().await;
            }
            supervisor.shutdown();
            return Err(errors.into());
        }
        for entry in sites.values() {
            sites::give_logs_to_site(&entry.config, &supervisor, &entry.logs);
        }
        let table = Arc::new(ArcSwap::from_pointee(RoutingTable::new(
            sites.values().map(|e| e.route.clone()),
        )));
        tracing::info!(sites = sites.len(), "serving");
        let published = ArcSwap::from_pointee(sites.clone());
        Ok(Arc::new(Server {
            published,
            main: config.server.main_file.clone(),
            started: Instant::now(),
            table,
            shutdown_timeout: config.server.shutdown_timeout,
            supervisor,
            state: tokio::sync::Mutex::new(State {
                config,
                sites,
                stopped: false,
            }),
            generation: AtomicU64::new(1),
            reloads: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }))
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    pub async fn config(&self) -> Config {
        self.state.lock().await.config.clone()
    }

    /// Re-reads the configuration and applies the difference (see the module doc).
    pub async fn reload(&self) -> Result<ReloadReport, ControlError> {
        let result = self.reload_inner().await;
        match &result {
            Ok(r) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(added = ?r.added, removed = ?r.removed, restarted = ?r.restarted, rerouted = ?r.rerouted, unchanged = r.unchanged, "reloaded");
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload refused; the running configuration is unchanged:\n{e}");
            }
        }
        result
    }

    async fn reload_inner(&self) -> Result<ReloadReport, ControlError> {
        // Read the files under the lock: of two reloads, the later one applies
        // the later files.
        let mut state = self.lock_running().await?;
        let new = config::load(&self.main).map_err(ControlError::Config)?;
        // With the identity settings polyhost runs with (server settings
        // change at restart): no two sites that run code share a uid or group.
        self.supervisor
            .site_identities(&new.sites)
            .map_err(ControlError::Config)?;
        let mut report = ReloadReport::default();
        if new.server != state.config.server {
            report.warnings.push("server settings (listen, state_dir, log_dir, admin, ...) take effect when polyhost is restarted".into());
        }
        let log_dir = state.config.server.log_dir.clone();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut next: BTreeMap<SiteName, SiteEntry> = BTreeMap::new();
        let mut fresh: Vec<Arc<Runtimes>> = Vec::new();
        let mut errors = ConfigErrors::default();
        for (name, site) in &new.sites {
            let old = state.sites.get(name);
            let planned = match old {
                Some(old) if old.config == *site => {
                    report.unchanged += 1;
                    Ok(old.clone())
                }
                Some(old) if old.disabled => {
                    report.rerouted.push(name.to_string());
                    Ok(disabled_entry(site, old))
                }
                Some(old) if sites::same_runtime(&old.config, site) => {
                    report.rerouted.push(name.to_string());
                    sites::build_route(site, &old.runtimes, old.logs.clone(), old.stats.clone())
                        .map(|route| SiteEntry {
                            config: site.clone(),
                            route: Arc::new(route),
                            runtimes: old.runtimes.clone(),
                            logs: old.logs.clone(),
                            stats: old.stats.clone(),
                            disabled: false,
                        })
                }
                Some(old) => {
                    report.restarted.push(name.to_string());
                    build_entry(site, &self.supervisor, generation, &log_dir, Some(old))
                        .inspect(|e| fresh.push(e.runtimes.clone()))
                }
                None => {
                    report.added.push(name.to_string());
                    build_entry(site, &self.supervisor, generation, &log_dir, None)
                        .inspect(|e| fresh.push(e.runtimes.clone()))
                }
            };
            match planned {
                Ok(entry) => {
                    next.insert(name.clone(), entry);
                }
                Err(e) => errors.0.extend(e.0),
            }
        }
        if !errors.is_empty() {
            for rt in fresh {
                rt.stop().await;
            }
            return Err(ControlError::Setup(errors));
        }
        report.removed = state
            .sites
            .keys()
            .filter(|n| !new.sites.contains_key(*n))
            .map(|n| n.to_string())
            .collect();

        // Traffic moves only to ready processes: warm up new generations of
        // running sites; one that does not become ready refuses the reload
        // (its old generation keeps serving).
        let warm: Vec<_> = report
            .restarted
            .iter()
            .filter_map(|n| {
                let name = SiteName::parse(n).ok()?;
                let was_running = state
                    .sites
                    .get(&name)?
                    .runtimes
                    .groups
                    .iter()
                    .any(|g| g.snapshot().state == GroupState::Running);
                was_running
                    .then(|| {
                        next.get(&name)
                            .map(|e| (e.config.clone(), e.runtimes.clone()))
                    })
                    .flatten()
            })
            .collect();
        let warmed = futures_util::future::join_all(warm.iter().map(|(site, rt)| async move {
            rt.warm_up().await.map_err(|why| {
                config::ConfigError::in_file(
                    &site.file,
                    "",
                    format!("site {}: its new processes did not become ready, so it keeps its running ones: {why} (the site's error log has their output)", site.name),
                )
            })
        }))
        .await;
        let errors = ConfigErrors(warmed.into_iter().filter_map(Result::err).collect());
        if !errors.is_empty() {
            for rt in fresh {
                rt.stop().await;
            }
            return Err(ControlError::Setup(errors));
        }

        let old_sites = std::mem::replace(&mut state.sites, next);
        state.config = new;
        self.swap_table(&state);
        // Once committed: a new generation's group (which may have changed)
        // reads the site's logs.
        for entry in state.sites.values() {
            if fresh.iter().any(|rt| Arc::ptr_eq(rt, &entry.runtimes)) {
                sites::give_logs_to_site(&entry.config, &self.supervisor, &entry.logs);
            }
        }
        for (name, old) in old_sites {
            let keep = state
                .sites
                .get(&name)
                .is_some_and(|e| Arc::ptr_eq(&e.runtimes, &old.runtimes));
            if keep {
                continue;
            }
            let removed = !state.sites.contains_key(&name);
            if removed {
                // Its group may be given to a new site's user one day.
                if let Err(e) = old.logs.give_to_group(None) {
                    tracing::warn!(site = %name, error = %e, "cannot give a removed site's logs back to root");
                }
            }
            let runtimes = old.runtimes.clone();
            let remover = match (&old.runtimes.context, removed) {
                (Some(ctx), true) => Some(self.supervisor.cgroup_remover(ctx, name.as_str())),
                _ => None,
            };
            tokio::spawn(async move {
                runtimes.stop().await;
                if let Some(remove) = remover {
                    let _ = tokio::task::spawn_blocking(remove).await;
                }
            });
        }
        Ok(report)
    }

    /// Replaces every process of a site, new ones first (no request fails).
    pub async fn restart_site(&self, name: &str) -> Result<(), ControlError> {
        let state = self.lock_running().await?;
        let entry = find(&state, name)?;
        for g in &entry.runtimes.groups {
            g.restart();
        }
        tracing::info!(site = name, "rolling restart requested");
        Ok(())
    }

    /// Stops a site's processes; its requests get 503 until it is started.
    pub async fn stop_site(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.lock_running().await?;
        let key = find(&state, name)?.config.name.clone();
        let entry = state.sites.get_mut(&key).expect("found above");
        if entry.disabled {
            return Ok(());
        }
        let replacement = disabled_entry(&entry.config, entry);
        let old = std::mem::replace(entry, replacement);
        self.swap_table(&state);
        old.runtimes.stop().await;
        tracing::info!(site = name, "stopped by the operator");
        Ok(())
    }

    /// Starts a site stopped with [`stop_site`](Self::stop_site).
    pub async fn start_site(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.lock_running().await?;
        let key = find(&state, name)?.config.name.clone();
        let log_dir = state.config.server.log_dir.clone();
        let entry = state.sites.get(&key).expect("found above");
        if !entry.disabled {
            return Ok(());
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let started = build_entry(
            &entry.config.clone(),
            &self.supervisor,
            generation,
            &log_dir,
            Some(entry),
        )
        .map_err(ControlError::Setup)?;
        sites::give_logs_to_site(&started.config, &self.supervisor, &started.logs);
        state.sites.insert(key, started);
        self.swap_table(&state);
        tracing::info!(site = name, "started by the operator");
        Ok(())
    }

    /// The state, unless polyhost is shutting down.
    async fn lock_running(&self) -> Result<tokio::sync::MutexGuard<'_, State>, ControlError> {
        let state = self.state.lock().await;
        if state.stopped {
            return Err(ControlError::ShuttingDown);
        }
        Ok(state)
    }

    /// Publishes `state.sites`: one atomic swap of the routing table, then
    /// of what status reads.
    fn swap_table(&self, state: &State) {
        self.table.store(Arc::new(RoutingTable::new(
            state.sites.values().map(|e| e.route.clone()),
        )));
        self.published.store(Arc::new(state.sites.clone()));
    }

    /// Never waits for a control operation in progress.
    pub async fn status(&self) -> ServerStatus {
        self.status_of(&self.published.load())
    }

    fn status_of(&self, sites: &BTreeMap<SiteName, SiteEntry>) -> ServerStatus {
        ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            limits_backend: self.supervisor.cgroups().describe(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            sites: sites.values().map(site_status).collect(),
        }
    }

    /// Status of one site, or [`ControlError::NoSuchSite`]; never waits.
    pub async fn site_status(&self, name: &str) -> Result<SiteStatus, ControlError> {
        SiteName::parse(name)
            .ok()
            .and_then(|n| self.published.load().get(&n).map(site_status))
            .ok_or_else(|| ControlError::NoSuchSite(name.to_owned()))
    }

    /// What a metrics scrape shows: the status plus each site's live
    /// handles (one per `status.sites`, in the same order), from one
    /// published snapshot; never waits.
    pub async fn status_with_handles(&self) -> (ServerStatus, Vec<crate::metrics::SiteView>) {
        let sites = self.published.load_full();
        let status = self.status_of(&sites);
        let views = sites
            .values()
            .map(|e| crate::metrics::SiteView {
                stats: e.stats.clone(),
                threads: e.runtimes.python.as_ref().map(|py| py.threads()),
            })
            .collect();
        (status, views)
    }

    /// Stops every site's processes and removes polyhost's cgroups.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        state.stopped = true;
        futures_util::future::join_all(state.sites.values().map(|e| e.runtimes.stop())).await;
        self.supervisor.shutdown();
    }
}

fn find<'a>(state: &'a State, name: &str) -> Result<&'a SiteEntry, ControlError> {
    SiteName::parse(name)
        .ok()
        .and_then(|n| state.sites.get(&n))
        .ok_or_else(|| ControlError::NoSuchSite(name.to_owned()))
}

/// Builds a site with a new generation of processes; `previous` lends its
/// logs and counters so they continue across generations.
/// Warns when the kernel lets anyone hard-link a file they do not own
/// (`fs.protected_hardlinks` = 0): site code can then link another site's
/// log or a root-only file into its own directories. polyhost copes (a log
/// file with a second link is moved aside at start, a static file with one
/// is served only to its owner), but the host is open to more than polyhost
/// sees.
fn warn_if_hard_links_unprotected() {
    const KNOB: &str = "/proc/sys/fs/protected_hardlinks";
    if std::fs::read_to_string(KNOB).is_ok_and(|v| v.trim() == "0") {
        tracing::warn!("{KNOB} is 0: site code can hard-link files it does not own (other sites' logs, root's files) into its own directories; set fs.protected_hardlinks = 1 (sysctl), the default of every major distribution");
    }
}

fn build_entry(
    site: &Arc<SiteConfig>,
    supervisor: &Supervisor,
    generation: u64,
    log_dir: &std::path::Path,
    previous: Option<&SiteEntry>,
) -> Result<SiteEntry, ConfigErrors> {
    let logs = match previous {
        Some(p) => p.logs.clone(),
        None => sites::open_logs(site, log_dir),
    };
    let stats = previous.map(|p| p.stats.clone()).unwrap_or_default();
    let runtimes = Arc::new(sites::build_runtimes(site, supervisor, generation, &stats)?);
    match sites::build_route(site, &runtimes, logs.clone(), stats.clone()) {
        Ok(route) => Ok(SiteEntry {
            config: site.clone(),
            route: Arc::new(route),
            runtimes,
            logs,
            stats,
            disabled: false,
        }),
        Err(e) => {
            let rt = runtimes.clone();
            tokio::spawn(async move { rt.stop().await });
            Err(e)
        }
    }
}

fn disabled_entry(site: &Arc<SiteConfig>, old: &SiteEntry) -> SiteEntry {
    SiteEntry {
        config: site.clone(),
        route: Arc::new(sites::disabled_route(
            site,
            old.logs.clone(),
            old.stats.clone(),
            old.runtimes.uid(),
        )),
        runtimes: Arc::new(Runtimes {
            generation: old.runtimes.generation,
            groups: Vec::new(),
            python: None,
            php: None,
            context: old.runtimes.context.clone(),
            reader: old.runtimes.reader.clone(),
        }),
        logs: old.logs.clone(),
        stats: old.stats.clone(),
        disabled: true,
    }
}

fn site_status(e: &SiteEntry) -> SiteStatus {
    let snaps: Vec<_> = e.runtimes.groups.iter().map(|g| g.snapshot()).collect();
    let state = if e.disabled {
        "stopped".to_owned()
    } else if snaps.is_empty() {
        "static".to_owned()
    } else if let Some(s) = snaps
        .iter()
        .find(|s| matches!(s.state, GroupState::Failed(_)))
    {
        s.state.label().to_owned()
    } else if snaps.iter().any(|s| s.state == GroupState::Running) {
        "running".to_owned()
    } else {
        snaps[0].state.label().to_owned()
    };
    let usage = e
        .runtimes
        .context
        .as_ref()
        .and_then(|c| c.cgroup.as_ref())
        .and_then(|cg| cg.usage().ok());
    let pids: Vec<i32> = snaps.iter().flat_map(|s| s.pids.iter().copied()).collect();
    SiteStatus {
        name: e.config.name.to_string(),
        state,
        runtime: e.config.runtime_label().to_owned(),
        hosts: e.config.hosts.iter().map(|h| h.to_string()).collect(),
        generation: e.runtimes.generation,
        processes: pids.len(),
        pids,
        memory_bytes: usage.and_then(|u| u.memory_current),
        memory_limit_bytes: e
            .config
            .limits
            .memory
            .or(usage.and_then(|u| u.memory_limit)),
        requests: e.stats.requests(),
        responses_5xx: e.stats.responses_5xx(),
        restarts: snaps.iter().map(|s| s.restarts).sum(),
        oom_kills: snaps
            .iter()
            .map(|s| s.oom_kills)
            .sum::<u64>()
            .max(usage.map_or(0, |u| u.oom_kills)),
        last_error: snaps.iter().find_map(|s| s.last_error.clone()),
    }
}
