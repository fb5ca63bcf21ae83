//! One consistent read of the cluster: every key under the prefix at one
//! etcd revision, parsed into the schema's types. Values that do not parse
//! are kept as errors (status shows them), never dropped silently.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};

use super::ClusterError;
use crate::cluster::schema::{FrontReport, Keys, NodeReport, Placement};

/// A site's stored vhost text and the revision it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSite {
    pub toml: String,
    pub revision: i64,
}

/// Everything under the prefix at [`Snapshot::revision`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub revision: i64,
    pub sites: BTreeMap<String, StoredSite>,
    pub placements: BTreeMap<String, Placement>,
    /// `placement/NAME` mod revisions (for compare-and-set).
    pub placement_revisions: BTreeMap<String, i64>,
    /// Live nodes: those whose leased key exists.
    pub nodes: BTreeMap<String, NodeReport>,
    pub fronts: BTreeMap<String, FrontReport>,
    /// Keys whose JSON did not parse: key → error.
    pub unreadable: BTreeMap<String, String>,
}

impl Snapshot {
    /// Reads every key under the prefix in one request (one revision).
    pub async fn load(client: &mut Client, keys: &Keys) -> Result<Snapshot, ClusterError> {
        let resp = client
            .get(keys.prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ClusterError::etcd)?;
        let mut snap = Snapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
                continue;
            };
            snap.add(keys, key, value, kv.mod_revision());
        }
        Ok(snap)
    }

    /// Files one key-value pair where it belongs.
    pub fn add(&mut self, keys: &Keys, key: &str, value: &str, revision: i64) {
        let unreadable = |e: serde_json::Error| (key.to_owned(), e.to_string());
        let bad = if let Some(name) = keys.name_in(&keys.sites(), key) {
            let site = StoredSite {
                toml: value.to_owned(),
                revision,
            };
            self.sites.insert(name.to_owned(), site);
            None
        } else if let Some(name) = keys.name_in(&keys.placements(), key) {
            self.placement_revisions.insert(name.to_owned(), revision);
            match serde_json::from_str(value) {
                Ok(p) => self.placements.insert(name.to_owned(), p).and(None),
                Err(e) => Some(unreadable(e)),
            }
        } else if let Some(name) = keys.name_in(&keys.nodes(), key) {
            match serde_json::from_str(value) {
                Ok(n) => self.nodes.insert(name.to_owned(), n).and(None),
                Err(e) => Some(unreadable(e)),
            }
        } else if let Some(id) = keys.name_in(&keys.fronts(), key) {
            match serde_json::from_str(value) {
                Ok(f) => self.fronts.insert(id.to_owned(), f).and(None),
                Err(e) => Some(unreadable(e)),
            }
        } else {
            None
        };
        if let Some((key, error)) = bad {
            self.unreadable.insert(key, error);
        }
    }

    /// Whether `node` reports `site` ready.
    pub fn ready_on(&self, site: &str, node: &str) -> bool {
        use crate::cluster::schema::SiteState;
        self.nodes
            .get(node)
            .and_then(|n| n.sites.get(site))
            .is_some_and(|s| s.state == SiteState::Ready)
    }

    /// Number of sites placed on `node` (as `node`, not draining).
    pub fn placed_on(&self, node: &str) -> usize {
        self.placements.values().filter(|p| p.node == node).count()
    }
}
