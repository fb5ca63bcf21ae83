//! The plan of a reload: what happens to each site, decided from the running
//! sites and the new configuration alone. Pure: it reads no file, starts no
//! process, and the same inputs always give the same plan.
//!
//! Invariant: every site of either side appears in exactly one [`Change`],
//! in name order; a site present on both sides is [`Change::Keep`] exactly
//! when its configuration is equal and it did not fail (a failed site is
//! always built again: [`Change::Restart`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{SiteConfig, SiteName};
use crate::sites::{same_runtime, Site};

use super::ReloadReport;

/// What one reload does to one site.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Same configuration: same route, same processes.
    Keep(SiteName),
    /// A new site: a new route over a new generation of processes.
    Add(Arc<SiteConfig>),
    /// Runtime settings changed: a new generation of processes.
    Restart(Arc<SiteConfig>),
    /// Only routing changed (hosts, static settings, limits the router
    /// enforces, certificate), or the site is stopped by the operator:
    /// a new route over the same processes (or none).
    Reroute(Arc<SiteConfig>),
    /// Gone from the configuration: its processes drain and stop.
    Remove(SiteName),
}

/// What the plan needs to know of a running site.
#[derive(Clone, Copy, Debug)]
pub struct Running<'a> {
    pub config: &'a SiteConfig,
    /// Stopped by the operator: it stays stopped, whatever changed.
    pub stopped: bool,
    /// It could not be built (`Site::failed`): every reload builds it
    /// again, whatever changed (its owner may have mended its files).
    pub failed: bool,
}

impl<'a> From<&'a Site> for Running<'a> {
    fn from(site: &'a Site) -> Self {
        Running {
            config: site.config(),
            stopped: site.is_stopped(),
            failed: site.is_failed(),
        }
    }
}

/// The changes that take the running sites `current` to the sites `new`.
pub fn plan(
    current: &BTreeMap<SiteName, Running<'_>>,
    new: &BTreeMap<SiteName, Arc<SiteConfig>>,
) -> Vec<Change> {
    let mut changes: Vec<Change> = new
        .iter()
        .map(|(name, site)| match current.get(name) {
            None => Change::Add(site.clone()),
            Some(old) if old.failed => Change::Restart(site.clone()),
            Some(old) if *old.config == **site => Change::Keep(name.clone()),
            Some(old) if old.stopped || same_runtime(old.config, site) => {
                Change::Reroute(site.clone())
            }
            Some(_) => Change::Restart(site.clone()),
        })
        .collect();
    changes.extend(
        current
            .keys()
            .filter(|name| !new.contains_key(*name))
            .map(|name| Change::Remove(name.clone())),
    );
    changes.sort_by(|a, b| a.site().cmp(b.site()));
    changes
}

impl Change {
    /// The configuration it applies (none for keeping or removing a site).
    pub fn config(&self) -> Option<&Arc<SiteConfig>> {
        match self {
            Change::Keep(_) | Change::Remove(_) => None,
            Change::Add(c) | Change::Restart(c) | Change::Reroute(c) => Some(c),
        }
    }

    /// The site this change is about.
    pub fn site(&self) -> &SiteName {
        match self {
            Change::Keep(name) | Change::Remove(name) => name,
            Change::Add(c) | Change::Restart(c) | Change::Reroute(c) => &c.name,
        }
    }
}

impl ReloadReport {
    /// The report of a plan (without warnings).
    pub fn of(changes: &[Change]) -> ReloadReport {
        let mut report = ReloadReport::default();
        for change in changes {
            let name = change.site().to_string();
            match change {
                Change::Keep(_) => report.unchanged += 1,
                Change::Add(_) => report.added.push(name),
                Change::Restart(_) => report.restarted.push(name),
                Change::Reroute(_) => report.rerouted.push(name),
                Change::Remove(_) => report.removed.push(name),
            }
        }
        report
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
