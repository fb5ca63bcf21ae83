//! A move: start-new, switch, drain (and its singleton form: stop, then
//! start). Each wait is bounded; a move that cannot finish puts the site
//! back on its old node ([`ClusterError::RolledBack`] says what was seen).
//!
//! Steps (not singleton), each a write of `placement/NAME` by
//! compare-and-set:
//! 1. `{node: B, draining: [A]}`: B starts the site, A keeps serving it;
//! 2. wait until `nodes/B` reports it `ready` (B `failed` or the timeout:
//!    back to `{node: A}`);
//! 3. wait until every live front (`fronts/*`) routes each of its hosts to
//!    B (timeout: back to `{node: A}`);
//! 4. `{node: B}`: A drains and stops it.
//!
//! Singleton: delete the placement (A stops it), wait until `nodes/A` no
//! longer lists it (or A is gone), then `{node: B, singleton}`; wait for
//! ready as in 2 (timeout: back to A, which starts it again).

use std::time::{Duration, Instant};

use super::{check_target, Cluster, ClusterError, Snapshot, POLL};
use crate::cluster::front::routes::site_hosts;
use crate::cluster::schema::{Placement, SiteState};

/// Bounds of a move's waits.
#[derive(Clone, Copy, Debug)]
pub struct MoveOptions {
    /// For the target node to report the site ready.
    pub ready_timeout: Duration,
    /// For every front to route the site to the target.
    pub switch_timeout: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            ready_timeout: Duration::from_secs(120),
            switch_timeout: Duration::from_secs(30),
        }
    }
}

/// What a move did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Already there.
    Unchanged,
    Moved {
        from: String,
        to: String,
    },
}

impl Cluster {
    /// `move NAME NODE`.
    pub async fn move_site(
        &mut self,
        name: &str,
        to: &str,
        options: MoveOptions,
    ) -> Result<MoveOutcome, ClusterError> {
        let snap = self.snapshot().await?;
        let Some(current) = snap.placements.get(name).cloned() else {
            return Err(ClusterError::refused(format!(
                "{name} is not placed: use `polyhost cluster place {name} {to}`"
            )));
        };
        if current.node == to && current.draining.is_empty() {
            return Ok(MoveOutcome::Unchanged);
        }
        check_target(&snap, name, to)?;
        let rev = snap.placement_revisions.get(name).copied().unwrap_or(0);
        let from = current.node.clone();
        if current.singleton {
            self.move_singleton(name, &from, to, rev, options).await?;
        } else {
            self.move_overlapping(name, &current, to, rev, options)
                .await?;
        }
        Ok(MoveOutcome::Moved {
            from,
            to: to.to_owned(),
        })
    }

    async fn move_overlapping(
        &mut self,
        name: &str,
        current: &Placement,
        to: &str,
        rev: i64,
        options: MoveOptions,
    ) -> Result<(), ClusterError> {
        let from = &current.node;
        let mut draining = vec![from.clone()];
        draining.extend(
            current
                .draining
                .iter()
                .filter(|n| *n != to && *n != from)
                .cloned(),
        );
        let overlap = Placement {
            node: to.to_owned(),
            draining,
            singleton: false,
        };
        self.swap_placement(name, rev, Some(&overlap)).await?;
        let waited = match self.wait_ready(name, to, options.ready_timeout).await {
            Ok(()) => self.wait_switched(name, to, options.switch_timeout).await,
            Err(e) => Err(e),
        };
        if let Err(why) = waited {
            return Err(self.roll_back(name, from, false, why).await);
        }
        let rev = self.placement_revision(name).await?;
        let done = Placement {
            node: to.to_owned(),
            draining: vec![],
            singleton: false,
        };
        self.swap_placement(name, rev, Some(&done)).await
    }

    async fn move_singleton(
        &mut self,
        name: &str,
        from: &str,
        to: &str,
        rev: i64,
        options: MoveOptions,
    ) -> Result<(), ClusterError> {
        self.swap_placement(name, rev, None).await?;
        let stopped = self.wait_gone(name, from, options.ready_timeout).await;
        let target = if stopped.is_ok() { to } else { from };
        let placement = Placement {
            node: target.to_owned(),
            draining: vec![],
            singleton: true,
        };
        self.swap_placement(name, 0, Some(&placement)).await?;
        if let Err(why) = stopped {
            return Err(ClusterError::RolledBack(format!(
                "move of {name} to {to} rolled back: {why}; placement restored to {from}"
            )));
        }
        if let Err(why) = self.wait_ready(name, to, options.ready_timeout).await {
            let rev = self.placement_revision(name).await?;
            self.swap_placement(name, rev, None).await?;
            let _ = self.wait_gone(name, to, options.ready_timeout).await;
            let back = Placement {
                node: from.to_owned(),
                ..placement
            };
            self.swap_placement(name, 0, Some(&back)).await?;
            return Err(ClusterError::RolledBack(format!(
                "move of {name} to {to} rolled back: {why}; placement restored to {from}"
            )));
        }
        Ok(())
    }

    /// Puts the site back on `from` after a failed wait; the error says why.
    async fn roll_back(
        &mut self,
        name: &str,
        from: &str,
        singleton: bool,
        why: String,
    ) -> ClusterError {
        let back = Placement {
            node: from.to_owned(),
            draining: vec![],
            singleton,
        };
        let restored = match self.placement_revision(name).await {
            Ok(rev) => self.swap_placement(name, rev, Some(&back)).await,
            Err(e) => Err(e),
        };
        match restored {
            Ok(()) => ClusterError::RolledBack(format!(
                "move of {name} rolled back: {why}; placement restored to {from}"
            )),
            Err(e) => ClusterError::RolledBack(format!(
                "move of {name} failed: {why}; restoring the placement to {from} failed too: {e}"
            )),
        }
    }

    /// Until `node` reports `site` ready; `Err` says what it saw.
    async fn wait_ready(
        &mut self,
        site: &str,
        node: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        self.poll(timeout, |snap| match snap.nodes.get(node) {
            None => Poll::Failed(format!("node {node} went away")),
            Some(report) => match report.sites.get(site) {
                Some(s) if s.state == SiteState::Ready => Poll::Done,
                Some(s) if s.state == SiteState::Failed => Poll::Failed(format!(
                    "{node} reports {site} failed: {}",
                    s.error.as_deref().unwrap_or("no error given")
                )),
                Some(s) => Poll::Waiting(format!("{node} reports {site} {:?}", s.state)),
                None if report.roots_missing.iter().any(|s| s == site) => {
                    Poll::Failed(format!("{node} reports the root of {site} missing"))
                }
                None => Poll::Waiting(format!("{node} does not report {site} yet")),
            },
        })
        .await
    }

    /// Until every live front routes each host of `site` to `node`.
    async fn wait_switched(
        &mut self,
        site: &str,
        node: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        self.poll(timeout, |snap| {
            let Some(stored) = snap.sites.get(site) else {
                return Poll::Failed(format!("sites/{site} was removed"));
            };
            let hosts = site_hosts(&stored.toml);
            for (id, front) in &snap.fronts {
                for host in &hosts {
                    let routed = front.routes.get(&host.to_string());
                    if routed.map(String::as_str) != Some(node) {
                        return Poll::Waiting(format!(
                            "front {id} routes {host} to {}",
                            routed.map_or("nothing", |s| s.as_str())
                        ));
                    }
                }
            }
            Poll::Done
        })
        .await
    }

    /// Until `node` no longer lists `site` (or the node is gone).
    async fn wait_gone(&mut self, site: &str, node: &str, timeout: Duration) -> Result<(), String> {
        self.poll(timeout, |snap| {
            match snap.nodes.get(node).and_then(|n| n.sites.get(site)) {
                None => Poll::Done,
                Some(s) => Poll::Waiting(format!("{node} still reports {site} {:?}", s.state)),
            }
        })
        .await
    }

    /// Reads the cluster every [`POLL`] until `check` decides, at most `timeout`.
    async fn poll(
        &mut self,
        timeout: Duration,
        check: impl Fn(&Snapshot) -> Poll,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.snapshot().await {
                Ok(snap) => match check(&snap) {
                    Poll::Done => return Ok(()),
                    Poll::Failed(why) => return Err(why),
                    Poll::Waiting(what) => what,
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "gave up after {}s; last seen: {last}",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `drain NODE`: moves every site placed on `node` to another node
    /// chosen by [`super::policy::choose_node`]; one move at a time.
    pub async fn drain(
        &mut self,
        node: &str,
        options: MoveOptions,
    ) -> Vec<(String, Result<MoveOutcome, ClusterError>)> {
        let snap = match self.snapshot().await {
            Ok(s) => s,
            Err(e) => return vec![(String::new(), Err(e))],
        };
        let sites: Vec<String> = snap
            .placements
            .iter()
            .filter(|(_, p)| p.node == node)
            .map(|(s, _)| s.clone())
            .collect();
        let mut results = Vec::new();
        for site in sites {
            let result = match self.snapshot().await {
                Ok(snap) => match super::policy::choose_node(&snap, &site, &[node], &|_| 0) {
                    Some(to) => self.move_site(&site, &to, options).await,
                    None => Err(ClusterError::refused(format!(
                        "no live accepting node with room and the root of {site}"
                    ))),
                },
                Err(e) => Err(e),
            };
            results.push((site, result));
        }
        results
    }
}

/// One look at the cluster during a wait.
enum Poll {
    Done,
    Waiting(String),
    Failed(String),
}
