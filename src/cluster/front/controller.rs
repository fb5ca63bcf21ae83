//! The controller: failover, inside each front, acting only while this
//! front holds the etcd election `controller` (so one acts at a time).
//!
//! Once a second it reads the cluster and re-places every site whose
//! placement names a node without a live `nodes/NODE` key (its lease
//! expired): on the node [`policy::choose_node`] picks, or back on a
//! `draining` node still serving it (a move whose target died). Dead nodes
//! are dropped from `draining`. A `singleton` site moves only once its node
//! has been gone for `singleton_grace` (lease TTL + margin: a node cut off
//! from etcd stops its singleton sites when its own lease runs out).
//! Every write is a compare-and-set on the placement's revision.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio_util::sync::CancellationToken;

use crate::cluster::control::{policy, Cluster, Snapshot};
use crate::cluster::schema::{Keys, Placement};

/// One placement to write: `(site, its revision as read, new placement)`.
pub type Decision = (String, i64, Placement);

/// What the controller remembers between rounds: when each node was
/// first seen gone.
#[derive(Debug, Default)]
pub struct Memory {
    gone_since: HashMap<String, Instant>,
}

/// Campaigns for `controller` under `lease`, then runs rounds until
/// `shutdown` (or an etcd error, which ends the front's session).
pub async fn run(
    client: Client,
    keys: Keys,
    id: String,
    lease: i64,
    singleton_grace: Duration,
    shutdown: CancellationToken,
) -> Result<(), etcd_client::Error> {
    let mut cluster = Cluster { client, keys };
    cluster
        .client
        .campaign(cluster.keys.controller(), id.as_str(), lease)
        .await?;
    tracing::info!(front = %id, "cluster controller: elected");
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let snap = match cluster.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cluster controller: {e}");
                continue;
            }
        };
        for (site, rev, placement) in decide(&snap, &mut memory, Instant::now(), singleton_grace) {
            match cluster.swap_placement(&site, rev, Some(&placement)).await {
                Ok(()) => {
                    tracing::warn!(site, node = %placement.node, "cluster controller: re-placed")
                }
                Err(e) => tracing::warn!(site, "cluster controller: {e}"),
            }
        }
    }
}

/// The placements to rewrite now (pure but for `memory`).
pub fn decide(
    snap: &Snapshot,
    memory: &mut Memory,
    now: Instant,
    singleton_grace: Duration,
) -> Vec<Decision> {
    memory
        .gone_since
        .retain(|node, _| !snap.nodes.contains_key(node));
    let mut extra: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (site, p) in &snap.placements {
        let rev = snap.placement_revisions.get(site).copied().unwrap_or(0);
        let live_draining: Vec<String> = p
            .draining
            .iter()
            .filter(|n| snap.nodes.contains_key(*n))
            .cloned()
            .collect();
        if snap.nodes.contains_key(&p.node) {
            if live_draining.len() != p.draining.len() {
                out.push((
                    site.clone(),
                    rev,
                    Placement {
                        draining: live_draining,
                        ..p.clone()
                    },
                ));
            }
            continue;
        }
        let since = *memory.gone_since.entry(p.node.clone()).or_insert(now);
        if p.singleton && now.duration_since(since) < singleton_grace {
            continue;
        }
        let target = live_draining
            .iter()
            .find(|n| snap.ready_on(site, n))
            .cloned()
            .or_else(|| {
                let counted = |n: &str| extra.get(n).copied().unwrap_or(0);
                policy::choose_node(snap, site, &[p.node.as_str()], &counted)
            });
        let Some(target) = target else {
            tracing::warn!(site, dead = %p.node, "cluster controller: no live node can take the site");
            continue;
        };
        *extra.entry(target.clone()).or_default() += 1;
        let placement = Placement {
            node: target,
            draining: vec![],
            singleton: p.singleton,
        };
        out.push((site.clone(), rev, placement));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::schema::NodeReport;

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        for n in ["b", "c"] {
            let r = NodeReport {
                capacity: 10,
                accepting: true,
                ..NodeReport::default()
            };
            s.nodes.insert(n.into(), r);
        }
        for (site, singleton) in [("one", false), ("two", false), ("solo", true)] {
            let p = Placement {
                node: "a".into(),
                draining: vec![],
                singleton,
            };
            s.placements.insert(site.into(), p);
            s.placement_revisions.insert(site.into(), 7);
        }
        s
    }

    #[test]
    fn dead_node_sites_spread_and_singletons_wait() {
        let s = snap();
        let mut memory = Memory::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let first = decide(&s, &mut memory, t0, grace);
        let nodes: Vec<(&str, &str)> = first
            .iter()
            .map(|(s, _, p)| (s.as_str(), p.node.as_str()))
            .collect();
        assert_eq!(nodes, [("one", "b"), ("two", "c")]);
        assert!(first.iter().all(|(_, rev, _)| *rev == 7));
        let later = decide(&s, &mut memory, t0 + grace, grace);
        assert!(later
            .iter()
            .any(|(site, _, p)| site == "solo" && p.singleton));
    }

    #[test]
    fn live_nodes_untouched_dead_draining_dropped() {
        let mut s = snap();
        s.placements.clear();
        let p = Placement {
            node: "b".into(),
            draining: vec!["a".into()],
            singleton: false,
        };
        s.placements.insert("one".into(), p);
        let out = decide(&s, &mut Memory::default(), Instant::now(), Duration::ZERO);
        assert_eq!(out.len(), 1);
        assert!(out[0].2.draining.is_empty() && out[0].2.node == "b");
    }
}
