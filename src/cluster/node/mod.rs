//! A cluster node's agent (`[cluster]` set): one task in the supervisor,
//! started beside the ACME task ([`spawn`]). It owns the node's half of
//! the contract in `cluster::schema`:
//!
//! - `nodes/NODE` ([`NodeReport`]) under a lease of `lease_ttl`, kept
//!   alive by its own task (a long reload does not starve it), granted
//!   anew after every reconnect; revoked at shutdown, so the key goes at
//!   once.
//! - `sites/` and `placement/`: listed at one revision ([`view::View`]),
//!   then watched from the next one. A failed watch or keep-alive ends the
//!   session: reconnect with [`Backoff`], list again, never stop serving.
//! - The sites placed here ([`decide`]) are validated exactly as vhost
//!   files, written to `state_dir/cluster/vhosts` ([`local_dir`]) and
//!   applied with `Server::reload` ([`apply`]): an invalid site never
//!   reaches the directory, a refused reload is rolled back. The directory
//!   is the last applied state: `config::load` reads it at start, so a
//!   node restarted while etcd is down serves it.
//! - Singleton sites: when the lease has not been renewed for `lease_ttl`,
//!   the node stops its singleton sites (the controller may place them
//!   elsewhere once the lease has expired); they come back when the node
//!   holds a lease again and they are still placed here.
//!
//! Lifecycle: Disconnected ──connect, grant, list──▶ Connected (apply,
//! report, watch) ──watch/keep-alive error──▶ Disconnected (backoff) …;
//! any ──shutdown──▶ lease revoked, task ends.

mod apply;
mod decide;
mod local_dir;
mod report;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, PutOptions, WatchOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::apply::Applier;
use self::decide::{Decision, Inputs, Validated};
use self::view::View;
use super::etcd::{Backoff, EtcdSettings};
use super::schema::{Keys, NodeReport};
use crate::app::status::ClusterLinkStatus;
use crate::app::Server;
use crate::config::{cluster_vhosts_dir, ClusterConfig};

/// How often the report is checked for changes (and written if changed).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The etcd settings of `[cluster]`.
pub fn settings(c: &ClusterConfig) -> EtcdSettings {
    EtcdSettings {
        endpoints: c.endpoints.clone(),
        prefix: c.prefix.clone(),
        ca_file: c.ca_file.clone(),
        cert_file: c.cert_file.clone(),
        key_file: c.key_file.clone(),
        user: c.user.clone(),
        password: c.password.clone(),
        // A request that takes longer than half the lease would lose it.
        timeout: (c.lease_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5)),
    }
}

/// Starts the agent when `[cluster]` is set. The task ends with
/// `shutdown`, after revoking its lease; await it (bounded) before exit.
pub fn spawn(
    server: Arc<Server>,
    config: Option<ClusterConfig>,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let config = config?;
    Some(tokio::spawn(async move {
        let running = server.config().await.server;
        Agent::new(server, config, &running.state_dir, running.base_dir)
            .run(shutdown)
            .await;
    }))
}

/// Waits (at most a few seconds) for the agent to have revoked its lease.
pub async fn stopped(agent: Option<JoinHandle<()>>) {
    if let Some(agent) = agent {
        let _ = tokio::time::timeout(Duration::from_secs(3), agent).await;
    }
}

struct Agent {
    config: ClusterConfig,
    keys: Keys,
    settings: EtcdSettings,
    base: std::path::PathBuf,
    view: View,
    validated: Validated,
    applier: Applier,
    decision: Decision,
    /// When the lease was last renewed (granted or kept alive).
    renewed: Arc<Mutex<Instant>>,
    suspended: bool,
    roots_missing: Vec<String>,
    applied_revision: i64,
    link: ClusterLinkStatus,
    written: Option<NodeReport>,
    /// Reloads accepted that this agent did not make, when last seen:
    /// after one (e.g. the operator fixed a local vhost file), refused
    /// sites are tried again.
    reloads_seen: u64,
}

impl Agent {
    fn new(
        server: Arc<Server>,
        config: ClusterConfig,
        state_dir: &std::path::Path,
        base: std::path::PathBuf,
    ) -> Agent {
        let dir = local_dir::LocalDir::new(cluster_vhosts_dir(state_dir));
        let (applied, applied_singletons) = dir.read();
        let link = ClusterLinkStatus {
            node: config.node.clone(),
            etcd_connected: false,
            since_unix: unix_now(),
            applied_revision: 0,
            error: Some("connecting".into()),
        };
        server.set_cluster_status(link.clone());
        Agent {
            keys: Keys::new(&config.prefix),
            settings: settings(&config),
            applier: Applier {
                dir,
                server,
                prefix: config.prefix.clone(),
                applied,
                applied_singletons,
                refused: BTreeMap::new(),
                draining: BTreeMap::new(),
                reloads_done: 0,
            },
            config,
            base,
            view: View::default(),
            validated: Validated::default(),
            decision: Decision::default(),
            renewed: Arc::new(Mutex::new(Instant::now())),
            suspended: false,
            roots_missing: Vec::new(),
            applied_revision: 0,
            link,
            written: None,
            reloads_seen: 0,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let ended = self.session(&shutdown, &mut backoff).await;
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = ended {
                tracing::warn!(error = %e, "cluster: etcd link lost; serving the last applied state, reconnecting");
                self.set_link(false, Some(e));
            }
            let wait = backoff
                .next_wait()
                .min(self.until_lease_lost().max(Duration::from_millis(100)));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !self.suspended && self.until_lease_lost().is_zero() {
                tracing::warn!(ttl = ?self.config.lease_ttl, "cluster: lease not renewed for its TTL; stopping this node's singleton sites");
                self.suspended = true;
                if !self.apply().await {
                    return;
                }
            }
        }
    }

    /// Time left before the lease counts as lost.
    fn until_lease_lost(&self) -> Duration {
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        (renewed + self.config.lease_ttl).saturating_duration_since(Instant::now())
    }

    /// One connection: grant, list, apply, report, watch until an error or
    /// shutdown (`Ok`).
    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let mut client = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = self.settings.connect() => c.map_err(|e| format!("{e:#}"))?,
        };
        let ttl = self.config.lease_ttl.as_secs() as i64;
        let lease = client.lease_grant(ttl, None).await.map_err(etcd)?.id();
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let keeper = KeepAlive::start(
            client.clone(),
            lease,
            self.config.lease_ttl,
            self.renewed.clone(),
        )
        .await?;
        self.view = View::list(&mut client, &self.keys).await.map_err(etcd)?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.view.revision + 1);
        let mut watch = client
            .watch(self.keys.sites(), Some(options.clone()))
            .await
            .map_err(etcd)?;
        watch
            .watch(self.keys.placements(), Some(options))
            .await
            .map_err(etcd)?;
        tracing::info!(node = %self.config.node, revision = self.view.revision, "cluster: connected to etcd");
        backoff.reset();
        self.suspended = false;
        self.written = None;
        self.set_link(true, None);
        let mut dirty = true;
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                message = watch.message() => match message {
                    Ok(Some(r)) if r.canceled() => break Err(format!("watch canceled by etcd: {}", r.cancel_reason())),
                    Ok(Some(r)) => dirty |= self.view.apply(&self.keys, &r),
                    Ok(None) => break Err("watch ended".into()),
                    Err(e) => break Err(etcd(e)),
                },
                _ = tick.tick() => {
                    if keeper.ended() {
                        break Err("the lease keep-alive failed".into());
                    }
                    let status = self.applier.server.status_with_handles().await.0;
                    dirty |= self.retry_refused(status.reloads);
                    if dirty {
                        dirty = false;
                        if !self.apply().await {
                            break Ok(());
                        }
                    }
                    if let Err(e) = self.report(&mut client, lease, status).await {
                        break Err(e);
                    }
                }
            }
        };
        keeper.stop();
        if shutdown.is_cancelled() {
            self.revoke(&mut client, lease).await;
        }
        result
    }

    /// Decides and applies; `false` once polyhost is shutting down.
    async fn apply(&mut self) -> bool {
        let local: BTreeSet<String> = self
            .applier
            .server
            .config()
            .await
            .sites
            .values()
            .filter(|s| !s.file.to_string_lossy().starts_with("etcd:"))
            .map(|s| s.name.to_string())
            .collect();
        let inputs = Inputs {
            node: &self.config.node,
            prefix: &self.config.prefix,
            base: &self.base,
            local: &local,
            applied: &self.applier.applied,
            applied_singletons: &self.applier.applied_singletons,
            suspend_singletons: self.suspended,
        };
        let decision = decide::decide(&self.view, &inputs, &mut self.validated);
        for (name, error) in &decision.failed {
            if self.decision.failed.get(name) != Some(error) {
                tracing::warn!(site = %name, %error, "cluster: site not applied");
            }
        }
        let texts = self.view.sites.iter().map(|(n, s)| (n, s.text.as_str()));
        self.roots_missing = report::roots_missing(texts, &self.base);
        let going_on = self.applier.apply(decision_copy(&decision)).await;
        self.decision = decision;
        if self.view.listed {
            self.applied_revision = self.view.revision;
            self.link.applied_revision = self.applied_revision;
            self.applier.server.set_cluster_status(self.link.clone());
        }
        going_on
    }

    /// After a reload of someone else's (SIGHUP, `polyhost reload`) was
    /// accepted since the last look, sites a reload refused are tried again
    /// (what refused them may be gone); `true` if any.
    fn retry_refused(&mut self, reloads: u64) -> bool {
        let reloads = reloads.saturating_sub(self.applier.reloads_done);
        let seen = std::mem::replace(&mut self.reloads_seen, reloads);
        if seen == reloads || self.applier.refused.is_empty() {
            return false;
        }
        self.applier.refused.clear();
        true
    }

    /// Writes `nodes/NODE` when it changed since the last write.
    /// `status`: the server's, read this tick (a site applied since shows
    /// as `starting` until the next).
    async fn report(
        &mut self,
        client: &mut Client,
        lease: i64,
        status: crate::app::status::ServerStatus,
    ) -> Result<(), String> {
        self.applier.drained();
        let running = status
            .sites
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let report = report::report(&report::Facts {
            config: &self.config,
            decision: &self.decision,
            refused: &self.applier.refused,
            draining: &self.applier.draining,
            running: &running,
            roots_missing: self.roots_missing.clone(),
            applied_revision: self.applied_revision,
        });
        if self.written.as_ref() == Some(&report) {
            return Ok(());
        }
        let mut value = report.clone();
        value.updated_unix = unix_now();
        let json = serde_json::to_string(&value).map_err(|e| e.to_string())?;
        client
            .put(
                self.keys.node(&self.config.node),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd)?;
        self.written = Some(report);
        Ok(())
    }

    /// Shutdown: the lease (and with it `nodes/NODE`) goes now, not after its TTL.
    async fn revoke(&mut self, client: &mut Client, lease: i64) {
        let revoked =
            tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
        match revoked {
            Ok(Ok(_)) => tracing::info!("cluster: left the cluster (lease revoked)"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cluster: cannot revoke the lease; nodes/NODE goes when it expires"),
            Err(_) => tracing::warn!("cluster: etcd did not answer the lease revocation; nodes/NODE goes when it expires"),
        }
    }

    fn set_link(&mut self, connected: bool, error: Option<String>) {
        if self.link.etcd_connected != connected || self.link.error.is_some() != error.is_some() {
            self.link.since_unix = unix_now();
        }
        self.link.etcd_connected = connected;
        self.link.error = error;
        self.applier.server.set_cluster_status(self.link.clone());
    }
}

fn decision_copy(d: &Decision) -> Decision {
    Decision {
        files: d.files.clone(),
        singletons: d.singletons.clone(),
        placed: d.placed.clone(),
        failed: d.failed.clone(),
    }
}

fn etcd(e: etcd_client::Error) -> String {
    format!("etcd: {e}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The lease's keep-alive, a task of its own: a keep-alive every third of
/// the TTL; each answer with a TTL left marks the lease renewed.
struct KeepAlive {
    task: JoinHandle<()>,
}

impl KeepAlive {
    async fn start(
        mut client: Client,
        lease: i64,
        ttl: Duration,
        renewed: Arc<Mutex<Instant>>,
    ) -> Result<KeepAlive, String> {
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(etcd)?;
        let task = tokio::spawn(async move {
            loop {
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match tokio::time::timeout(ttl, answers.message()).await {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        *renewed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    }
                    _ => return,
                }
                tokio::time::sleep(ttl / 3).await;
            }
        });
        Ok(KeepAlive { task })
    }

    fn ended(&self) -> bool {
        self.task.is_finished()
    }

    fn stop(self) {
        drop(self);
    }
}

/// A session that ends early (an error before its loop) stops its
/// keep-alive too: no stray task renews a lease nobody uses.
impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}
