//! The node's `nodes/NODE` value ([`NodeReport`]): per site placed here
//! `starting` until it serves, `ready`, `failed` with the error, and
//! `draining` while a site removed from here still has processes; the
//! sites whose root is missing here; the revision applied.

use std::collections::BTreeMap;
use std::path::Path;

use super::decide::Decision;
use crate::app::status::SiteStatus;
use crate::cluster::schema::{NodeReport, SiteReport, SiteState};
use crate::config::ClusterConfig;

/// What one report is made of.
pub struct Facts<'a> {
    pub config: &'a ClusterConfig,
    pub decision: &'a Decision,
    /// Sites refused by a reload, and why.
    pub refused: &'a BTreeMap<String, (String, String)>,
    pub draining: &'a BTreeMap<String, Vec<i32>>,
    /// The running server's sites (status), by name.
    pub running: &'a BTreeMap<String, SiteStatus>,
    pub roots_missing: Vec<String>,
    pub applied_revision: i64,
}

pub fn report(f: &Facts<'_>) -> NodeReport {
    let mut sites = BTreeMap::new();
    for (name, revision) in &f.decision.placed {
        let failed = f
            .decision
            .failed
            .get(name)
            .or_else(|| f.refused.get(name).map(|(_, why)| why));
        let (state, error) = match failed {
            Some(why) => (SiteState::Failed, Some(why.clone())),
            None => running_state(f.running.get(name)),
        };
        let revision = *revision;
        sites.insert(
            name.clone(),
            SiteReport {
                state,
                error,
                revision,
            },
        );
    }
    for name in f.draining.keys() {
        sites.entry(name.clone()).or_insert(SiteReport {
            state: SiteState::Draining,
            error: None,
            revision: 0,
        });
    }
    NodeReport {
        advertise: f.config.advertise.clone(),
        advertise_tls: f.config.advertise_tls.clone(),
        capacity: f.config.capacity,
        accepting: true,
        sites,
        roots_missing: f.roots_missing.clone(),
        applied_revision: f.applied_revision,
        updated_unix: 0,
    }
}

/// A site applied here, by what status says of it.
fn running_state(status: Option<&SiteStatus>) -> (SiteState, Option<String>) {
    let Some(s) = status else {
        return (SiteState::Starting, None);
    };
    if let Some(why) = &s.not_applied {
        // It serves the revision before: the one placed here is not applied.
        return (SiteState::Failed, Some(format!("not applied: {why}")));
    }
    match s.state.as_str() {
        "starting" => (SiteState::Starting, None),
        "failed" => (
            SiteState::Failed,
            s.last_error.clone().or(Some("failed".into())),
        ),
        "stopped" => (
            SiteState::Failed,
            Some(format!(
                "stopped on this node by the operator (polyhost start {})",
                s.name
            )),
        ),
        // static, running, idle (scaled to zero: started by its next request)
        _ => (SiteState::Ready, None),
    }
}

/// Sites whose `root` does not exist here (read from the text, not
/// validated: an invalid site's root counts too). Relative roots resolve
/// against `base`, as validation resolves them.
pub fn roots_missing<'t>(
    sites: impl Iterator<Item = (&'t String, &'t str)>,
    base: &Path,
) -> Vec<String> {
    sites
        .filter(|(_, text)| {
            let table: Option<toml::Table> = toml::from_str(text).ok();
            let root = table
                .as_ref()
                .and_then(|t| t.get("root"))
                .and_then(|r| r.as_str());
            root.is_some_and(|r| !base.join(r).exists())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_missing_reads_the_root_key() {
        let sites = [
            ("a".to_owned(), "root = \"/nonexistent/x\"".to_owned()),
            ("b".to_owned(), "root = \"/tmp\"".to_owned()),
            ("c".to_owned(), "hosts = [\"c.test\"]".to_owned()),
        ];
        let missing = roots_missing(sites.iter().map(|(n, t)| (n, t.as_str())), Path::new("/"));
        assert_eq!(missing, ["a"]);
    }
}
