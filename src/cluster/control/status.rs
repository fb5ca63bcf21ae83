//! `polyhost cluster status`: the cluster as one JSON-able value, and its
//! table form. A node is `up` while its leased key exists; a placement
//! naming a node without one shows that node `down`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::Snapshot;
use crate::cluster::schema::{FrontReport, NodeReport, SiteReport};

/// What `status --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub revision: i64,
    pub nodes: BTreeMap<String, NodeReport>,
    pub sites: BTreeMap<String, StatusSite>,
    pub fronts: BTreeMap<String, FrontReport>,
    /// Keys whose value does not parse: key → error.
    pub unreadable: BTreeMap<String, String>,
}

/// One site: where it is placed and what each node says of it.
#[derive(Clone, Debug, Serialize)]
pub struct StatusSite {
    /// `None`: not placed.
    pub node: Option<String>,
    pub draining: Vec<String>,
    pub singleton: bool,
    /// Whether `node` has a live key.
    pub node_up: bool,
    /// node → its report of this site.
    pub reports: BTreeMap<String, SiteReport>,
    pub stored: bool,
}

impl Status {
    pub fn of(snap: &Snapshot) -> Status {
        let mut names: Vec<&String> = snap.sites.keys().chain(snap.placements.keys()).collect();
        for report in snap.nodes.values() {
            names.extend(report.sites.keys());
        }
        names.sort();
        names.dedup();
        let sites = names
            .into_iter()
            .map(|name| (name.clone(), site(snap, name)))
            .collect();
        Status {
            revision: snap.revision,
            nodes: snap.nodes.clone(),
            sites,
            fronts: snap.fronts.clone(),
            unreadable: snap.unreadable.clone(),
        }
    }

    /// Whether some node reports some site failed.
    pub fn has_failures(&self) -> bool {
        self.sites
            .values()
            .any(|s| s.reports.values().any(|r| r.error.is_some()))
    }

    /// The table `status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "NODE\tADDRESS\tCAPACITY\tSITES\tACCEPTING");
        for (name, n) in &self.nodes {
            let placed = self
                .sites
                .values()
                .filter(|s| s.node.as_deref() == Some(name))
                .count();
            let _ = writeln!(
                out,
                "{name}\t{}\t{}\t{placed}\t{}",
                n.advertise, n.capacity, n.accepting
            );
        }
        let _ = writeln!(out, "\nSITE\tPLACED\tNODE STATES");
        for (name, s) in &self.sites {
            let _ = writeln!(out, "{name}\t{}\t{}", placed(s), states(s));
        }
        let _ = writeln!(out, "\nFRONT\tREVISION\tROUTES");
        for (id, f) in &self.fronts {
            let _ = writeln!(out, "{id}\t{}\t{}", f.applied_revision, f.routes.len());
        }
        for (key, error) in &self.unreadable {
            let _ = writeln!(out, "unreadable {key}: {error}");
        }
        out
    }
}

fn site(snap: &Snapshot, name: &str) -> StatusSite {
    let placement = snap.placements.get(name);
    let reports = snap
        .nodes
        .iter()
        .filter_map(|(node, r)| r.sites.get(name).map(|s| (node.clone(), s.clone())))
        .collect();
    StatusSite {
        node: placement.map(|p| p.node.clone()),
        draining: placement.map(|p| p.draining.clone()).unwrap_or_default(),
        singleton: placement.is_some_and(|p| p.singleton),
        node_up: placement.is_some_and(|p| snap.nodes.contains_key(&p.node)),
        reports,
        stored: snap.sites.contains_key(name),
    }
}

fn placed(s: &StatusSite) -> String {
    let mut text = match &s.node {
        None => "unplaced".to_owned(),
        Some(n) if s.node_up => n.clone(),
        Some(n) => format!("{n} (down)"),
    };
    if !s.draining.is_empty() {
        let _ = write!(text, ", draining {}", s.draining.join(","));
    }
    if s.singleton {
        text.push_str(", singleton");
    }
    if !s.stored {
        text.push_str(", no sites/ key");
    }
    text
}

fn states(s: &StatusSite) -> String {
    let parts: Vec<String> = s
        .reports
        .iter()
        .map(|(node, r)| {
            let state = serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match &r.error {
                Some(e) => format!("{node}={state}: {e}"),
                None => format!("{node}={state}"),
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::cluster::control::StoredSite;
    use crate::cluster::schema::{Placement, SiteState};

    #[test]
    fn the_table() {
        let mut snap = Snapshot {
            revision: 42,
            ..Snapshot::default()
        };
        let mut web1 = NodeReport {
            advertise: "10.0.0.1:80".into(),
            capacity: 50,
            accepting: true,
            ..NodeReport::default()
        };
        let failed = SiteReport {
            state: SiteState::Failed,
            error: Some("etcd:/polyhost/sites/blog: php.max_children: expected a number".into()),
            revision: 3,
        };
        web1.sites.insert("blog".into(), failed);
        web1.sites.insert(
            "shop".into(),
            SiteReport {
                state: SiteState::Ready,
                error: None,
                revision: 2,
            },
        );
        snap.nodes.insert("web-1".into(), web1);
        for (site, node, singleton) in [
            ("blog", "web-1", false),
            ("shop", "web-1", true),
            ("old", "web-9", false),
        ] {
            snap.sites.insert(
                site.into(),
                StoredSite {
                    toml: String::new(),
                    revision: 1,
                },
            );
            snap.placements.insert(
                site.into(),
                Placement {
                    node: node.into(),
                    draining: vec![],
                    singleton,
                },
            );
        }
        snap.fronts.insert(
            "f1".into(),
            FrontReport {
                applied_revision: 41,
                ..FrontReport::default()
            },
        );
        let status = Status::of(&snap);
        assert!(status.has_failures());
        expect![[r#"
            NODE	ADDRESS	CAPACITY	SITES	ACCEPTING
            web-1	10.0.0.1:80	50	2	true

            SITE	PLACED	NODE STATES
            blog	web-1	web-1=failed: etcd:/polyhost/sites/blog: php.max_children: expected a number
            old	web-9 (down)	-
            shop	web-1, singleton	web-1=ready

            FRONT	REVISION	ROUTES
            f1	41	0
        "#]]
        .assert_eq(&status.render());
    }
}
