//! Which node each host goes to (pure): from `sites/` (the hosts of each
//! vhost TOML), `placement/` and `nodes/`.
//!
//! A site's hosts go to its placement's `node` when that node reports the
//! site ready, else to the first `draining` node that does, else to
//! [`UNAVAILABLE`] (HAProxy answers 503 with `Retry-After`: the site exists
//! but no node serves it right now, e.g. during a failover). Hosts of sites
//! without a placement are in neither map (HAProxy answers 421). Exact names go to the exact
//! map (`map`), wildcards `*.example.com` to the wildcard map keyed
//! `.example.com` (`map_end`: a suffix match, so `example.com` itself is
//! not matched, as in polyhost's own routing).

use std::collections::BTreeMap;

use crate::cluster::control::Snapshot;
use crate::config::HostPattern;

/// host → node for both maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// Exact host name → node.
    pub exact: BTreeMap<String, String>,
    /// `.suffix` → node (from `*.suffix`).
    pub wildcard: BTreeMap<String, String>,
}

impl Routes {
    pub fn of(snap: &Snapshot) -> Routes {
        let mut routes = Routes::default();
        for (site, stored) in &snap.sites {
            if !snap.placements.contains_key(site) {
                continue;
            }
            let node = serving_node(snap, site).unwrap_or_else(|| UNAVAILABLE.to_owned());
            for host in site_hosts(&stored.toml) {
                match host {
                    HostPattern::Exact(h) => routes.exact.insert(h, node.clone()),
                    HostPattern::Wildcard(s) => {
                        routes.wildcard.insert(format!(".{s}"), node.clone())
                    }
                };
            }
        }
        routes
    }

    /// host pattern (as written in the site, `*.x` for wildcards) → node:
    /// what `fronts/ID` reports.
    pub fn by_pattern(&self) -> BTreeMap<String, String> {
        let exact = self.exact.iter().map(|(h, n)| (h.clone(), n.clone()));
        let wild = self
            .wildcard
            .iter()
            .map(|(s, n)| (format!("*{s}"), n.clone()));
        exact.chain(wild).collect()
    }
}

/// The node whose copy of `site` gets its traffic now, if any.
pub fn serving_node(snap: &Snapshot, site: &str) -> Option<String> {
    let placement = snap.placements.get(site)?;
    std::iter::once(&placement.node)
        .chain(&placement.draining)
        .find(|node| snap.ready_on(site, node))
        .cloned()
}

/// The `hosts` of a vhost TOML text (invalid entries skipped: the nodes
/// refuse such a site and report why).
pub fn site_hosts(toml_text: &str) -> Vec<HostPattern> {
    #[derive(serde::Deserialize)]
    struct Hosts {
        #[serde(default)]
        hosts: Vec<String>,
    }
    toml::from_str::<Hosts>(toml_text)
        .map(|h| {
            h.hosts
                .iter()
                .filter_map(|s| HostPattern::parse(s).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The "node" of a placed site no node serves now (never a node's name:
/// those are not empty).
pub const UNAVAILABLE: &str = "";

/// HAProxy's backend for a node (the map's value); `unavailable` for
/// [`UNAVAILABLE`].
pub fn backend_name(node: &str) -> String {
    if node == UNAVAILABLE {
        "unavailable".to_owned()
    } else {
        format!("node_{node}")
    }
}

/// A map file's text: `key backend` per line, sorted.
pub fn map_text(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, node)| format!("{key} {}\n", backend_name(node)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::control::StoredSite;
    use crate::cluster::schema::{NodeReport, Placement, SiteReport, SiteState};

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        let toml = r#"hosts = ["Shop.Example", "*.shop.example"]"#;
        s.sites.insert(
            "shop".into(),
            StoredSite {
                toml: toml.into(),
                revision: 1,
            },
        );
        let p = Placement {
            node: "b".into(),
            draining: vec!["a".into()],
            singleton: false,
        };
        s.placements.insert("shop".into(), p);
        s
    }

    fn report(site: &str, state: SiteState) -> NodeReport {
        let mut r = NodeReport::default();
        r.sites.insert(
            site.into(),
            SiteReport {
                state,
                error: None,
                revision: 1,
            },
        );
        r
    }

    #[test]
    fn draining_node_until_the_new_one_is_ready() {
        let mut s = snap();
        s.nodes.insert("a".into(), report("shop", SiteState::Ready));
        s.nodes
            .insert("b".into(), report("shop", SiteState::Starting));
        let r = Routes::of(&s);
        assert_eq!(r.exact.get("shop.example"), Some(&"a".to_string()));
        assert_eq!(r.wildcard.get(".shop.example"), Some(&"a".to_string()));
        s.nodes.insert("b".into(), report("shop", SiteState::Ready));
        let r = Routes::of(&s);
        assert_eq!(r.exact.get("shop.example"), Some(&"b".to_string()));
        assert_eq!(map_text(&r.exact), "shop.example node_b\n");
        assert_eq!(r.by_pattern().get("*.shop.example"), Some(&"b".to_string()));
    }

    #[test]
    fn no_ready_node_unavailable_and_unplaced_absent() {
        let mut s = snap();
        s.nodes
            .insert("b".into(), report("shop", SiteState::Failed));
        let r = Routes::of(&s);
        assert_eq!(
            r.exact.get("shop.example").map(String::as_str),
            Some(UNAVAILABLE)
        );
        assert_eq!(map_text(&r.exact), "shop.example unavailable\n");
        s.placements.clear();
        assert_eq!(Routes::of(&s), Routes::default());
    }
}
