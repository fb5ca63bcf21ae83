//! The cluster's keys in etcd and their values: the contract between the
//! node agents, the front/controller and the `polyhost cluster` commands.
//!
//! Under the configured prefix (default `/polyhost/`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `sites/NAME` | the site's vhost file (TOML text), validated on write exactly as a vhost file | `polyhost cluster put` (panels) |
//! | `placement/NAME` | [`Placement`] (JSON) | `polyhost cluster place/move/drain`, the controller (failover) |
//! | `nodes/NODE` | [`NodeReport`] (JSON), under the node's lease | the node's agent |
//! | `fronts/ID` | [`FrontReport`] (JSON), under the front's lease | each front |
//! | `controller` | the election of the controller (etcd election API) | fronts |
//!
//! Invariants: a node runs a site iff the site's placement names it as
//! `node` or lists it in `draining`; the front routes a site's hosts to
//! `node` once that node reports the site [`SiteState::Ready`], else to a
//! `draining` node that reports it ready; a `singleton` site is never in
//! `draining` (a move stops it on the old node before the new one starts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/polyhost/";

/// Builds and parses keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` gets a trailing `/` if it has none.
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn site(&self, name: &str) -> String {
        format!("{}sites/{name}", self.prefix)
    }
    pub fn sites(&self) -> String {
        format!("{}sites/", self.prefix)
    }
    pub fn placement(&self, name: &str) -> String {
        format!("{}placement/{name}", self.prefix)
    }
    pub fn placements(&self) -> String {
        format!("{}placement/", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }
    pub fn front(&self, id: &str) -> String {
        format!("{}fronts/{id}", self.prefix)
    }
    pub fn fronts(&self) -> String {
        format!("{}fronts/", self.prefix)
    }
    pub fn controller(&self) -> String {
        format!("{}controller", self.prefix)
    }

    /// The last part of a key under `dir` (one of [`Keys::sites`],
    /// [`Keys::placements`], [`Keys::nodes`], [`Keys::fronts`]): the
    /// site's, node's or front's name. `None` for a key elsewhere.
    pub fn name_in<'k>(&self, dir: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(dir)
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }
}

/// `placement/NAME`: which node serves a site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node that serves (or is to serve) the site.
    pub node: String,
    /// Nodes that still run the site during a move, until the front has
    /// switched to `node`; empty outside a move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// Never run on two nodes at once (a move stops, then starts; failover
    /// waits until the dead node's lease has expired and its own singleton
    /// sites have been stopped by it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub singleton: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Placement {
    /// Whether `node` runs the site under this placement.
    pub fn runs_on(&self, node: &str) -> bool {
        self.node == node || self.draining.iter().any(|n| n == node)
    }
}

/// `nodes/NODE`: a node's self-report, kept under its lease (it disappears
/// when the node stops renewing it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Where the front sends plain HTTP for this node (`host:port`).
    pub advertise: String,
    /// Where the front sends TLS (SNI passthrough), if the node serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_tls: Option<String>,
    /// How many sites the node takes (`[cluster] capacity`).
    pub capacity: u32,
    /// `false` while the node is shutting down or draining (placement
    /// avoids it).
    #[serde(default = "yes")]
    pub accepting: bool,
    /// Every site the node runs or tried to run, by name.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteReport>,
    /// Sites under `sites/` whose `root` does not exist on this node (a
    /// move to this node refuses them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots_missing: Vec<String>,
    /// The etcd revision of the last state the node applied.
    #[serde(default)]
    pub applied_revision: i64,
    /// Seconds since the epoch when the report was written.
    #[serde(default)]
    pub updated_unix: u64,
}

fn yes() -> bool {
    true
}

/// One site on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteReport {
    pub state: SiteState,
    /// Why the site is `failed` (the validation error names the key; a
    /// refused reload or a start failure says what failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The etcd `mod_revision` of the `sites/NAME` value this state is for.
    #[serde(default)]
    pub revision: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    /// Applied; processes starting.
    Starting,
    /// Served: the front may send it traffic.
    Ready,
    /// Refused (validation, reload) or failed to start; `error` says why.
    Failed,
    /// No longer placed here; draining its requests before it stops.
    Draining,
}

/// `fronts/ID`: what one front has applied to its HAProxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontReport {
    /// The etcd revision of the state the front's maps reflect.
    pub applied_revision: i64,
    /// host → node, as in the map HAProxy uses now.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    #[serde(default)]
    pub updated_unix: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names() {
        let k = Keys::new("/ph");
        assert_eq!(k.site("shop"), "/ph/sites/shop");
        assert_eq!(k.name_in(&k.sites(), "/ph/sites/shop"), Some("shop"));
        assert_eq!(k.name_in(&k.sites(), "/ph/sites/"), None);
        assert_eq!(k.name_in(&k.sites(), "/ph/nodes/a"), None);
        assert_eq!(k.name_in(&k.sites(), "/ph/sites/a/b"), None);
    }

    #[test]
    fn placement_json() {
        let p: Placement = serde_json::from_str(r#"{"node":"b","draining":["a"]}"#).unwrap();
        assert!(p.runs_on("a") && p.runs_on("b") && !p.runs_on("c"));
        assert!(!p.singleton);
        assert_eq!(
            serde_json::to_string(&Placement {
                node: "b".into(),
                draining: vec![],
                singleton: false
            })
            .unwrap(),
            r#"{"node":"b"}"#
        );
    }
}
