//! The running server: its sites, the routing table the router reads, and
//! the supervisor. Every control operation (reload, restart, stop/start a
//! site) goes through [`Server`] and is serialised by one lock, so two
//! reloads never interleave. Start-up and reload are one path, a plan
//! applied site by site: see [`super::reload`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::reload::apply::{self, Builder};
use super::reload::{plan, Change, FailedSite, ReloadReport, Running};
use super::router_link::{Desired, DesiredSite, RouterLink};
use super::ServeError;
use crate::config::{self, Config, ConfigErrors, ServerConfig, SiteName};
use crate::router::{RoutingTable, SharedTable};
use crate::sites::{self, Site};
use crate::supervisor::{GroupHandle, GroupKey, Supervisor};

mod status_view;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The new configuration is invalid: nothing changed.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The site could not be set up (`polyhost start`/`restart` of a site):
    /// nothing changed.
    #[error("{0}")]
    Setup(ConfigErrors),
    #[error("no site named {0:?}")]
    NoSuchSite(String),
    /// The router process did not say it reopened the site logs.
    #[error("the router process did not confirm that it reopened the site logs within {0:?}")]
    RouterSilent(Duration),
    /// polyhost is stopping; nothing more is started.
    #[error("polyhost is shutting down")]
    ShuttingDown,
}

struct State {
    config: Config,
    sites: BTreeMap<SiteName, Site>,
    /// Set by [`Server::shutdown`]: control operations are refused from then
    /// on, so nothing is started after the sites were stopped.
    stopped: bool,
}

/// What [`Server::reopen_logs`] did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LogsReopened {
    /// Sites whose access and error logs were reopened.
    pub sites: usize,
    /// php-fpm masters sent SIGUSR1.
    pub php_masters: usize,
}

pub struct Server {
    main: PathBuf,
    started: Instant,
    table: SharedTable,
    supervisor: Supervisor,
    state: tokio::sync::Mutex<State>,
    /// The sites as last published with the routing table: status and
    /// metrics read it without the lock, so they answer during a long reload.
    published: ArcSwap<BTreeMap<SiteName, Site>>,
    generation: AtomicU64,
    reloads: AtomicU64,
    reloads_failed: AtomicU64,
    shutdown_timeout: Duration,
    /// The server settings it started with (they change only at restart).
    server_config: ServerConfig,
    /// The router process, when polyhost runs privilege-separated: told
    /// every publication ([`Server::set_router_link`]).
    router: std::sync::OnceLock<Arc<dyn RouterLink>>,
    /// Who replaces this process by a new binary (`polyhost upgrade`):
    /// set by the privilege-separated supervisor ([`Server::set_upgrader`]).
    upgrader: std::sync::OnceLock<Arc<dyn super::upgrade::Upgrader>>,
    /// The version of the last [`Desired`] published.
    desired_version: AtomicU64,
    /// The ACME HTTP-01 challenges answered now (`crate::acme`), published
    /// with the sites.
    acme_challenges: ArcSwap<super::router_link::AcmeChallenges>,
    /// Each ACME site's last order failure, until one succeeds (status).
    acme_errors: std::sync::Mutex<BTreeMap<String, String>>,
    /// A cluster node's link to etcd, as its agent last set it
    /// (`crate::cluster::node`); `None` outside a cluster.
    cluster: std::sync::Mutex<Option<super::status::ClusterLinkStatus>>,
}

impl Server {
    /// Prepares directories, the supervisor and every site. Start-up is a
    /// reload from nothing (`plan(∅, config)`, then the same apply): the
    /// same building code, the same errors.
    pub async fn start(config: Config) -> Result<Arc<Server>, ServeError> {
        // Before anything is touched: two sites that run code never share a
        // uid or group, and each one's runtime sockets can be bound.
        let mut refused =
            crate::supervisor::check_socket_paths(&config.server.state_dir, &config.sites);
        refused.0.extend(
            crate::runtime::php::check_pool_configs(
                config.sites.values(),
                &config.server.state_dir,
            )
            .0,
        );
        if !refused.is_empty() {
            return Err(refused.into());
        }
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
        let server = Server::empty(&config, Supervisor::new(&config.server));
        // A reload from nothing.
        let changes = plan(&BTreeMap::new(), &config.sites);
        let failed = {
            let mut state = server.state.lock().await;
            server.apply(&mut state, config, &changes).await
        };
        tracing::info!(sites = changes.len(), failed = failed.len(), "serving");
        Ok(Arc::new(server))
    }

    /// A server with no site yet, with `config`'s server settings.
    fn empty(config: &Config, supervisor: Supervisor) -> Server {
        Server {
            published: ArcSwap::from_pointee(BTreeMap::new()),
            main: config.server.main_file.clone(),
            started: Instant::now(),
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
            shutdown_timeout: config.server.shutdown_timeout,
            supervisor,
            state: tokio::sync::Mutex::new(State {
                config: Config {
                    server: config.server.clone(),
                    sites: BTreeMap::new(),
                },
                sites: BTreeMap::new(),
                stopped: false,
            }),
            generation: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            server_config: config.server.clone(),
            router: std::sync::OnceLock::new(),
            upgrader: std::sync::OnceLock::new(),
            desired_version: AtomicU64::new(0),
            acme_challenges: ArcSwap::from_pointee(Default::default()),
            acme_errors: Default::default(),
            cluster: Default::default(),
        }
    }

    /// From now on every publication is also sent to `link` (the router
    /// process) and awaited before what it replaced is retired. Set once,
    /// right after [`start`](Self::start); a second call is ignored.
    pub fn set_router_link(&self, link: Arc<dyn RouterLink>) {
        let _ = self.router.set(link);
    }

    /// From now on `polyhost upgrade` (and SIGUSR2) go to `upgrader`. Set
    /// once; a second call is ignored.
    pub fn set_upgrader(&self, upgrader: Arc<dyn super::upgrade::Upgrader>) {
        let _ = self.upgrader.set(upgrader);
    }

    /// Replaces this polyhost by the binary it was started from (see
    /// `privsep::upgrade`): resolves once the new one serves and this one
    /// stops accepting, or with why nothing changed.
    pub async fn upgrade(
        &self,
        timeout: Duration,
    ) -> Result<super::upgrade::Upgraded, super::upgrade::UpgradeError> {
        match self.upgrader.get() {
            Some(u) => u.upgrade(timeout).await,
            None => Err(super::upgrade::UpgradeError::Unsupported),
        }
    }

    /// After a successor failed and was stopped: whatever it left in its
    /// site cgroups is killed and the cgroups removed (`supervisor::instance`).
    pub fn remove_successor_leftovers(&self) {
        let other = crate::supervisor::instance::current().other();
        self.supervisor.remove_cgroups_of(other);
    }

    /// What the router must serve now: the sites last published, each with
    /// its generation and whether it is stopped. For a router that starts
    /// (or restarts) between publications.
    pub fn desired(&self) -> Desired {
        desired_of(
            &self.server_config,
            &self.published.load(),
            self.desired_version.load(Ordering::SeqCst),
            self.acme_challenges.load_full(),
        )
    }

    /// The server settings polyhost started with (they change only at restart).
    pub fn server_settings(&self) -> &ServerConfig {
        &self.server_config
    }

    /// The router process's counters, when polyhost runs
    /// privilege-separated and the router answers; `None` otherwise (then
    /// this process's own counters are the router's).
    pub async fn router_stats(&self) -> Option<super::router_link::StatsReply> {
        self.router.get()?.stats().await
    }

    /// Whether requests are served by a router process (`privsep`), not
    /// by this one.
    pub fn has_router(&self) -> bool {
        self.router.get().is_some()
    }

    /// Every process group of the published sites, named as the router
    /// names them.
    pub fn published_groups(&self) -> Vec<(GroupKey, GroupHandle)> {
        let published = self.published.load();
        let mut out = Vec::new();
        for (name, site) in published.iter() {
            let rt = site.runtimes();
            for g in &rt.groups {
                let key = GroupKey {
                    site: name.to_string(),
                    runtime: g.runtime.to_owned(),
                    generation: rt.generation,
                };
                out.push((key, g.clone()));
            }
        }
        out
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
    /// The service manager is told `RELOADING=1` before and `READY=1`
    /// after, whether the reload was accepted or refused (`crate::notify`).
    pub async fn reload(&self) -> Result<ReloadReport, ControlError> {
        crate::notify::reloading();
        let result = self.reload_inner().await;
        let last = match &result {
            Ok(r) => {
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(added = ?r.added, removed = ?r.removed, restarted = ?r.restarted, rerouted = ?r.rerouted, unchanged = r.unchanged, "reloaded");
                "reloaded"
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload refused; the running configuration is unchanged:\n{e}");
                "reload refused, the running configuration is unchanged"
            }
        };
        crate::notify::ready(&format!("{}; {last}", self.summary()));
        result
    }

    /// One line for the service manager's status (`STATUS=`): the sites
    /// served and how many run processes now.
    pub fn summary(&self) -> String {
        let published = self.published.load();
        let running = published.values().filter(|s| s.is_running()).count();
        let stopped = published.values().filter(|s| s.is_stopped()).count();
        format!(
            "serving {} site(s): {running} with processes running, {stopped} stopped by the operator",
            published.len()
        )
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
        let pools = crate::runtime::php::check_pool_configs(
            new.sites.values(),
            self.supervisor.state_dir(),
        );
        if !pools.is_empty() {
            return Err(ControlError::Config(pools));
        }
        let running: BTreeMap<SiteName, Running> = state
            .sites
            .iter()
            .map(|(name, site)| (name.clone(), Running::from(site)))
            .collect();
        let changes = plan(&running, &new.sites);
        let mut report = ReloadReport::of(&changes);
        if new.server != state.config.server {
            report.warnings.push("server settings (listen, state_dir, log_dir, admin, ...) take effect when polyhost is restarted".into());
        }
        let failed = self.apply(&mut state, new, &changes).await;
        Ok(report.with_failed(failed))
    }

    /// Applies `changes`, planned from `state.sites` to `new.sites`: builds
    /// and warms up the next sites, publishes them in one swap, retires
    /// what they replace. Returns the sites whose change could not be
    /// applied (each alone, see [`super::reload`]).
    async fn apply(&self, state: &mut State, new: Config, changes: &[Change]) -> Vec<FailedSite> {
        let builder = Builder {
            supervisor: &self.supervisor,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            log_dir: &state.config.server.log_dir,
        };
        let prepared = apply::prepare(changes, &state.sites, &builder).await;
        let old = std::mem::replace(&mut state.sites, prepared.sites);
        state.config = share_configs(new, &state.sites);
        self.publish(state).await;
        apply::hand_over_logs(&state.sites, &prepared.fresh, &self.supervisor);
        apply::retire(old, &state.sites, &self.supervisor);
        prepared.failed
    }

    /// Log rotation: makes every site's log files again where they were
    /// moved away, has every process that writes them (this one, the
    /// router process) write what it holds to the files it has open and
    /// close them, so the next line opens the path, and sends SIGUSR1 to
    /// every php-fpm master (which reopens its own log). Returns once the
    /// router said it is done: from then on no line goes to a renamed file.
    pub async fn reopen_logs(&self) -> Result<LogsReopened, ControlError> {
        // Under the control lock: no reload swaps the sites meanwhile.
        let _state = self.lock_running().await?;
        let published = self.published.load();
        for site in published.values() {
            if let Err(e) = site.logs().recreate() {
                tracing::warn!(site = %site.config().name, error = %e, "cannot make the site's log files again");
            }
        }
        crate::router::reopen_logs();
        if let Some(router) = self.router.get() {
            if !router.reopen_logs().await {
                return Err(ControlError::RouterSilent(
                    super::router_link::REOPEN_TIMEOUT,
                ));
            }
        }
        let mut php_masters = 0;
        for site in published.values() {
            for group in site.runtimes().groups.iter().filter(|g| g.runtime == "php") {
                php_masters += group.snapshot().pids.len();
                group.signal_processes(nix::sys::signal::Signal::SIGUSR1);
            }
        }
        tracing::info!(
            sites = published.len(),
            php_masters,
            "reopened the site logs"
        );
        Ok(LogsReopened {
            sites: published.len(),
            php_masters,
        })
    }

    /// Replaces every process of a site, new ones first (no request fails);
    /// a site that failed is built again.
    pub async fn restart_site(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.lock_running().await?;
        let entry = find(&state, name)?;
        if entry.is_failed() {
            let key = entry.config().name.clone();
            return self.build_again(&mut state, key, "restarted").await;
        }
        for g in &entry.runtimes().groups {
            g.restart();
        }
        tracing::info!(site = name, "rolling restart requested");
        Ok(())
    }

    /// Stops a site's processes; its requests get 503 until it is started.
    pub async fn stop_site(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.lock_running().await?;
        let key = find(&state, name)?.config().name.clone();
        let site = state.sites.get_mut(&key).expect("found above");
        if site.is_stopped() {
            return Ok(());
        }
        let replacement = site.stopped(&site.config().clone());
        let old = std::mem::replace(site, replacement);
        self.publish(&state).await;
        old.runtimes().stop().await;
        tracing::info!(site = name, "stopped by the operator");
        Ok(())
    }

    /// Starts a site stopped with [`stop_site`](Self::stop_site), or one
    /// that failed (built again: its owner may have mended its files).
    pub async fn start_site(&self, name: &str) -> Result<(), ControlError> {
        let mut state = self.lock_running().await?;
        let key = find(&state, name)?.config().name.clone();
        let site = state.sites.get(&key).expect("found above");
        if !site.is_stopped() && !site.is_failed() {
            return Ok(());
        }
        self.build_again(&mut state, key, "started").await
    }

    /// Builds the site `key` (stopped or failed, so running nothing) anew
    /// with its configuration and publishes it; on error it stays as it is.
    async fn build_again(
        &self,
        state: &mut State,
        key: SiteName,
        done: &str,
    ) -> Result<(), ControlError> {
        let site = state.sites.get(&key).expect("the caller found it");
        if !site.config().problems.is_empty() {
            // Found when the files were last read: only a reload reads them again.
            let mut errors = site.config().problem_errors();
            errors.push(config::ConfigError::in_file(
                &site.config().file,
                "",
                format!("site {key}: these were found when the configuration was last read; once they are mended, `polyhost reload` reads it again and starts the site"),
            ));
            return Err(ControlError::Setup(errors));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Site::build(
            site.config(),
            &self.supervisor,
            generation,
            site.logs().clone(),
            site.stats().clone(),
        )
        .map_err(ControlError::Setup)?;
        sites::give_logs_to_site(started.config(), &self.supervisor, started.logs());
        state.sites.insert(key.clone(), started);
        self.publish(state).await;
        tracing::info!(site = %key, "{done} by the operator");
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
        self.table.store(Arc::new(
            RoutingTable::new(state.sites.values().map(|site| site.route().clone()))
                .with_acme_challenges(self.acme_challenges.load_full()),
        ));
        self.published.store(Arc::new(state.sites.clone()));
    }

    /// [`swap_table`](Self::swap_table), then, with a router process,
    /// waits until it serves the same (see `app::router_link`).
    async fn publish(&self, state: &State) {
        self.swap_table(state);
        if let Some(router) = self.router.get() {
            let version = self.desired_version.fetch_add(1, Ordering::SeqCst) + 1;
            let desired = desired_of(
                &self.server_config,
                &state.sites,
                version,
                self.acme_challenges.load_full(),
            );
            router.publish(desired).await;
        }
    }

    /// Changes the ACME challenges answered (`change` edits them), in this
    /// process's table and the router's; returns once the router serves them.
    pub async fn change_acme_challenges(
        &self,
        change: impl FnOnce(&mut super::router_link::AcmeChallenges),
    ) {
        let state = self.state.lock().await;
        let mut challenges = (*self.acme_challenges.load_full()).clone();
        change(&mut challenges);
        self.acme_challenges.store(Arc::new(challenges));
        self.publish(&state).await;
    }

    /// Records (or, `None`, clears) the last ACME failure of `site`.
    pub fn set_acme_error(&self, site: &str, error: Option<String>) {
        let mut errors = self.acme_errors.lock().unwrap_or_else(|e| e.into_inner());
        match error {
            Some(e) => errors.insert(site.to_owned(), e),
            None => errors.remove(site),
        };
    }

    /// Records the cluster link's state (status, metrics).
    pub fn set_cluster_status(&self, link: super::status::ClusterLinkStatus) {
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
    }

    /// The cluster link's state, `None` outside a cluster.
    pub fn cluster_status(&self) -> Option<super::status::ClusterLinkStatus> {
        self.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops every site's processes and removes polyhost's cgroups.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        state.stopped = true;
        futures_util::future::join_all(state.sites.values().map(|site| site.runtimes().stop()))
            .await;
        self.supervisor.shutdown();
    }
}

/// `config` with each site's configuration replaced by the one its built
/// site holds when they are equal: a reload loads every vhost file anew, and
/// without this an unchanged site's configuration would be held twice (its
/// site's and the state's), 20 MiB more at 10,000 sites after one reload.
/// A site serving its previous configuration (its latest was not applied)
/// holds that one: the configuration is what is served.
fn share_configs(mut config: Config, sites: &BTreeMap<SiteName, Site>) -> Config {
    for (name, loaded) in config.sites.iter_mut() {
        let Some(site) = sites.get(name) else {
            continue;
        };
        let built = site.config();
        let previous = matches!(site.trouble(), Some(sites::Trouble::NotApplied(_)));
        if !Arc::ptr_eq(built, loaded) && (previous || **built == **loaded) {
            *loaded = built.clone();
        }
    }
    config
}

/// The [`Desired`] of `sites` under `server`'s settings.
fn desired_of(
    server: &ServerConfig,
    sites: &BTreeMap<SiteName, Site>,
    version: u64,
    acme_challenges: Arc<super::router_link::AcmeChallenges>,
) -> Desired {
    Desired {
        version,
        acme_challenges,
        config: Config {
            server: server.clone(),
            sites: sites
                .iter()
                .map(|(name, site)| (name.clone(), site.config().clone()))
                .collect(),
        },
        sites: sites
            .iter()
            .map(|(name, site)| {
                let runs_as = match &site.runtimes().reader {
                    crate::docroot::Reader::User { uid, gids } => gids
                        .first()
                        .map(|&gid| super::router_link::RunsAs { uid: *uid, gid }),
                    crate::docroot::Reader::Anyone => None,
                };
                let state = DesiredSite {
                    generation: site.runtimes().generation,
                    stopped: site.is_stopped(),
                    runs_as,
                    failed: site.is_failed(),
                };
                (name.to_string(), state)
            })
            .collect(),
    }
}

fn find<'a>(state: &'a State, name: &str) -> Result<&'a Site, ControlError> {
    SiteName::parse(name)
        .ok()
        .and_then(|n| state.sites.get(&n))
        .ok_or_else(|| ControlError::NoSuchSite(name.to_owned()))
}

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
