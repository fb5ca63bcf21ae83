//! Where a site goes (pure): the placement policy of `drain` and of the
//! controller's failover.
//!
//! Among live nodes that are `accepting`, do not list the site's root as
//! missing, are not excluded and have room (`placed < capacity`), the one
//! with the fewest placed sites relative to its capacity; ties go to the
//! node whose name sorts first (deterministic, so two runs agree).

use super::state::Snapshot;

/// The node `site` should go to, or `None` when no node fits.
/// `extra` counts placements decided in the same batch but not written yet.
pub fn choose_node(
    snap: &Snapshot,
    site: &str,
    exclude: &[&str],
    extra: &dyn Fn(&str) -> usize,
) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for (name, report) in &snap.nodes {
        let fits = report.accepting
            && !exclude.contains(&name.as_str())
            && !report.roots_missing.iter().any(|s| s == site);
        let placed = snap.placed_on(name) + extra(name);
        let capacity = report.capacity.max(1) as usize;
        if !fits || placed >= capacity {
            continue;
        }
        let load = placed as f64 / capacity as f64;
        if best.is_none_or(|(l, _)| load < l) {
            best = Some((load, name));
        }
    }
    best.map(|(_, n)| n.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::schema::{NodeReport, Placement};

    fn node(capacity: u32, missing: &[&str]) -> NodeReport {
        NodeReport {
            advertise: "127.0.0.1:1".into(),
            capacity,
            accepting: true,
            roots_missing: missing.iter().map(|s| s.to_string()).collect(),
            ..NodeReport::default()
        }
    }

    fn place(snap: &mut Snapshot, site: &str, on: &str) {
        let p = Placement {
            node: on.into(),
            draining: vec![],
            singleton: false,
        };
        snap.placements.insert(site.into(), p);
    }

    #[test]
    fn fewest_sites_relative_to_capacity() {
        let mut snap = Snapshot::default();
        snap.nodes.insert("a".into(), node(10, &[]));
        snap.nodes.insert("b".into(), node(2, &[]));
        place(&mut snap, "s1", "a");
        place(&mut snap, "s2", "b");
        // a: 1/10, b: 1/2.
        assert_eq!(choose_node(&snap, "x", &[], &|_| 0), Some("a".into()));
        assert_eq!(choose_node(&snap, "x", &["a"], &|_| 0), Some("b".into()));
        // b is full once one more is decided for it.
        assert_eq!(
            choose_node(&snap, "x", &["a"], &|n| usize::from(n == "b")),
            None
        );
    }

    #[test]
    fn skips_missing_roots_and_refusing_nodes() {
        let mut snap = Snapshot::default();
        snap.nodes.insert("a".into(), node(10, &["shop"]));
        let mut b = node(10, &[]);
        b.accepting = false;
        snap.nodes.insert("b".into(), b);
        snap.nodes.insert("c".into(), node(10, &[]));
        assert_eq!(choose_node(&snap, "shop", &[], &|_| 0), Some("c".into()));
        assert_eq!(choose_node(&snap, "shop", &["c"], &|_| 0), None);
        assert_eq!(choose_node(&snap, "blog", &[], &|_| 0), Some("a".into()));
    }
}
