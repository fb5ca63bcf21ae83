//! The `polyhost cluster` operations on etcd: put/remove a site, place,
//! move (start-new, switch, drain), drain a node, status. The CLI
//! (`cli::cluster`) only parses arguments and prints; everything that reads
//! or writes etcd is here, so the front's controller shares it.
//!
//! Invariants: a site's TOML is validated as a vhost file before it is
//! written; a placement is rewritten only by compare-and-set against the
//! revision it was read at ([`Cluster::swap_placement`]), so a move and the
//! controller never overwrite each other's decision unseen.

mod moves;
pub mod policy;
pub mod state;
mod status;

use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::cluster::etcd::EtcdSettings;
use crate::cluster::schema::{Keys, Placement};
pub use moves::{MoveOptions, MoveOutcome};
pub use state::{Snapshot, StoredSite};
pub use status::{Status, StatusSite};

/// Why an operation did not happen. The CLI maps each to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd is not reachable or answered with an error (exit 2).
    #[error("etcd: {0}")]
    Etcd(#[source] etcd_client::Error),
    /// The request is invalid or the cluster's state forbids it (exit 1).
    #[error("{0}")]
    Refused(String),
    /// A move did not complete in time and was rolled back (exit 3).
    #[error("{0}")]
    RolledBack(String),
}

impl ClusterError {
    pub fn etcd(e: etcd_client::Error) -> ClusterError {
        ClusterError::Etcd(e)
    }
    fn refused(msg: impl Into<String>) -> ClusterError {
        ClusterError::Refused(msg.into())
    }
}

/// A connection to the cluster's etcd and its keys.
pub struct Cluster {
    pub client: Client,
    pub keys: Keys,
}

impl Cluster {
    pub async fn connect(settings: &EtcdSettings) -> anyhow::Result<Cluster> {
        Ok(Cluster {
            client: settings.connect().await?,
            keys: settings.keys(),
        })
    }

    pub async fn snapshot(&mut self) -> Result<Snapshot, ClusterError> {
        Snapshot::load(&mut self.client, &self.keys).await
    }

    /// `put NAME FILE`: validates `text` as the vhost file `NAME.toml`
    /// (relative paths against `base`), then writes `sites/NAME`.
    pub async fn put_site(
        &mut self,
        name: &str,
        text: &str,
        base: &Path,
    ) -> Result<(), ClusterError> {
        validate_site(&self.keys, name, text, base)?;
        self.client
            .put(self.keys.site(name), text, None)
            .await
            .map_err(ClusterError::etcd)?;
        Ok(())
    }

    /// `remove NAME`: deletes `sites/NAME` and `placement/NAME` at once.
    pub async fn remove_site(&mut self, name: &str) -> Result<bool, ClusterError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.site(name), None),
            TxnOp::delete(self.keys.placement(name), None),
        ]);
        let resp = self.client.txn(txn).await.map_err(ClusterError::etcd)?;
        let deleted = resp.op_responses().iter().any(|r| match r {
            etcd_client::TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(deleted)
    }

    /// `place NAME NODE`: the first placement of a site, or a forced one
    /// (no start-new-then-switch: use `move` for a served site).
    pub async fn place(
        &mut self,
        name: &str,
        node: &str,
        singleton: bool,
    ) -> Result<(), ClusterError> {
        let snap = self.snapshot().await?;
        if !snap.sites.contains_key(name) {
            return Err(ClusterError::refused(format!(
                "no site {name:?} in etcd: `polyhost cluster put {name} FILE` first"
            )));
        }
        check_target(&snap, name, node)?;
        let placement = Placement {
            node: node.to_owned(),
            draining: vec![],
            singleton,
        };
        let rev = snap.placement_revisions.get(name).copied().unwrap_or(0);
        self.swap_placement(name, rev, Some(&placement)).await
    }

    /// Writes (or with `None` deletes) `placement/NAME` if it is still at
    /// mod revision `expected` (0: absent). Refused when someone else
    /// changed it in between.
    pub async fn swap_placement(
        &mut self,
        name: &str,
        expected: i64,
        placement: Option<&Placement>,
    ) -> Result<(), ClusterError> {
        let key = self.keys.placement(name);
        let op = match placement {
            Some(p) => TxnOp::put(key.clone(), serde_json::to_string(p).expect("json"), None),
            None => TxnOp::delete(key.clone(), None),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([op]);
        let resp = self.client.txn(txn).await.map_err(ClusterError::etcd)?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(ClusterError::refused(format!(
                "placement of {name} changed meanwhile (another move or the controller): retry"
            )))
        }
    }

    /// The mod revision `placement/NAME` has now (0: absent).
    async fn placement_revision(&mut self, name: &str) -> Result<i64, ClusterError> {
        let resp = self
            .client
            .get(self.keys.placement(name), None)
            .await
            .map_err(ClusterError::etcd)?;
        Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }
}

/// Whether `node` may take `site`: live, accepting, its root there.
fn check_target(snap: &Snapshot, site: &str, node: &str) -> Result<(), ClusterError> {
    let Some(report) = snap.nodes.get(node) else {
        let live: Vec<&str> = snap.nodes.keys().map(String::as_str).collect();
        return Err(ClusterError::refused(format!(
            "node {node:?} is not registered (no live nodes/{node} key); live nodes: {}",
            if live.is_empty() {
                "none".into()
            } else {
                live.join(", ")
            }
        )));
    };
    if report.roots_missing.iter().any(|s| s == site) {
        return Err(ClusterError::refused(format!(
            "node {node} reports the root of {site} missing: copy the site's files there first"
        )));
    }
    if !report.accepting {
        return Err(ClusterError::refused(format!(
            "node {node} does not accept sites (shutting down or draining)"
        )));
    }
    Ok(())
}

/// Validates `text` exactly as the vhost file of site `name` would be
/// (`config::site_from_text`, what the nodes run); every error as
/// `etcd:PREFIX/sites/NAME: KEY: MESSAGE`.
pub fn validate_site(keys: &Keys, name: &str, text: &str, base: &Path) -> Result<(), ClusterError> {
    site_errors(keys, name, text, base).map_err(|errors| ClusterError::Refused(errors.to_string()))
}

/// [`validate_site`] with each error kept apart (file, key, message), for
/// the admin API's 422 answer.
pub fn site_errors(
    keys: &Keys,
    name: &str,
    text: &str,
    base: &Path,
) -> Result<(), crate::config::ConfigErrors> {
    let file = crate::config::cluster_site_file(keys.prefix(), name);
    crate::config::site_from_text(name, &file, text, base).map(drop)
}

/// How long the waits of a move poll between reads.
pub(crate) const POLL: Duration = Duration::from_millis(200);
