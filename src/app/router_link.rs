//! The router process as the [`Server`](super::Server) sees it when
//! polyhost runs privilege-separated (`privsep`): after every change of
//! what is served (start-up, reload, a site stopped or started) the server
//! publishes a [`Desired`] through its [`RouterLink`] and waits until the
//! router serves it before it retires what the change replaced.
//!
//! The server always hands its link a complete [`Desired`]; what crosses
//! to the router process is either that (the first message a router gets
//! after its `Hello`, so a router that starts afresh serves exactly what
//! the supervisor does) or, for every later publication to the same
//! router, the [`DesiredChanges`] from the previous one
//! ([`Desired::changes_from`]): the sites added, changed (their state,
//! and their configuration only when it changed) and removed. At 10,000
//! sites a complete `Desired` is about 8 MB of JSON; a reload that changes
//! one site sends one site. The router rebuilds the complete state
//! ([`Desired::apply_changes`]) and reconciles against it, so both ends
//! reason about complete states only.
//!
//! Invariants:
//! - A [`DesiredChanges`] names the version it applies to
//!   ([`DesiredChanges::base`]): the `Desired` or `DesiredChanges` sent
//!   just before it on the same link. A router whose state is not that
//!   version refuses it and ends (its supervisor restarts it and sends the
//!   complete state).
//! - A site's configuration crosses the link when the site is new to the
//!   router or its configuration changed (`==`), never otherwise: the router
//!   keeps the `Arc<SiteConfig>` it received, shared by its `Desired` and
//!   the site it built from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{Config, SiteConfig, SiteName};

/// Everything the router serves, as the supervisor published it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Desired {
    /// Increases with every publication; the router echoes it when it
    /// serves this one.
    pub version: u64,
    /// The server settings (without any token) and every site's
    /// configuration, certificates included.
    pub config: Config,
    /// For each site of `config.sites`, by name: which of its generations
    /// is current and whether the operator stopped it.
    pub sites: BTreeMap<String, DesiredSite>,
    /// The HTTP-01 challenges the ACME client is answering now: token →
    /// key authorization (`crate::acme`); served before any site routing.
    #[serde(default)]
    pub acme_challenges: Arc<AcmeChallenges>,
}

pub use crate::router::table::AcmeChallenges;

/// One site's running state in a [`Desired`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DesiredSite {
    /// The generation of its process groups (a `supervisor::GroupKey`
    /// names each group by site, runtime and this number).
    pub generation: u64,
    /// Stopped by the operator (`polyhost stop SITE`): every request 503.
    pub stopped: bool,
    /// Whose uid and group the site's processes run with and its static
    /// files are read as, as the supervisor resolved them (`None`: a static
    /// site without a user, which serves world-readable files only). The
    /// router takes it as it is, rather than asking the user database again
    /// for every site (a lookup is a scan of `/etc/passwd`: thousands of
    /// lines on a host with thousands of sites).
    #[serde(default)]
    pub runs_as: Option<RunsAs>,
    /// It could not be built (`sites::Trouble::Failed`): every request
    /// 503, no process; `polyhost status` says why.
    #[serde(default)]
    pub failed: bool,
}

/// What changed between two [`Desired`]s (see the module doc).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DesiredChanges {
    /// The version of the `Desired` these changes make.
    pub version: u64,
    /// The version they apply to.
    pub base: u64,
    /// Every site new or changed (state or configuration), by name.
    pub changed: BTreeMap<SiteName, SiteChange>,
    /// Every site no longer served.
    pub removed: Vec<SiteName>,
    /// The HTTP-01 challenges, when they changed.
    #[serde(default)]
    pub acme_challenges: Option<Arc<AcmeChallenges>>,
}

/// One site of a [`DesiredChanges`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SiteChange {
    pub state: DesiredSite,
    /// Its configuration when the site is new or its configuration changed;
    /// `None`: the one the router has.
    pub config: Option<Arc<SiteConfig>>,
}

/// Why [`Desired::apply_changes`] refused changes (a protocol error: the
/// two ends disagree on what the router serves).
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("changes to version {base} arrived while version {held} is served")]
    Base { base: u64, held: u64 },
    #[error("site {0} changed without its configuration, which the router does not have")]
    NoConfig(SiteName),
}

impl Desired {
    /// What turns `before` into `self`. Cheap when little changed: a
    /// configuration is compared by pointer first (a reload keeps the
    /// `Arc` of every unchanged site), then by value.
    pub fn changes_from(&self, before: &Desired) -> DesiredChanges {
        let mut changed = BTreeMap::new();
        for (name, config) in &self.config.sites {
            let Some(&state) = self.sites.get(name.as_str()) else {
                continue;
            };
            let old_config = before.config.sites.get(name);
            let same_config =
                old_config.is_some_and(|old| Arc::ptr_eq(old, config) || **old == **config);
            let same_state = before.sites.get(name.as_str()) == Some(&state);
            if same_config && same_state {
                continue;
            }
            let config = (!same_config).then(|| config.clone());
            changed.insert(name.clone(), SiteChange { state, config });
        }
        let removed = before
            .config
            .sites
            .keys()
            .filter(|name| !self.config.sites.contains_key(*name))
            .cloned()
            .collect();
        let acme_challenges =
            (self.acme_challenges != before.acme_challenges).then(|| self.acme_challenges.clone());
        DesiredChanges {
            version: self.version,
            base: before.version,
            changed,
            removed,
            acme_challenges,
        }
    }

    /// Applies `changes` (made by [`changes_from`](Self::changes_from)
    /// against this version): `self` becomes the `Desired` they were made
    /// from. Refused, leaving `self` as it was, when they were made against
    /// another version or name a site's new state without a configuration
    /// `self` has.
    pub fn apply_changes(&mut self, changes: DesiredChanges) -> Result<(), ChangesError> {
        if changes.base != self.version {
            return Err(ChangesError::Base {
                base: changes.base,
                held: self.version,
            });
        }
        let missing = changes.changed.iter().find(|(name, change)| {
            change.config.is_none()
                && (!self.config.sites.contains_key(*name) || changes.removed.contains(name))
        });
        if let Some((name, _)) = missing {
            return Err(ChangesError::NoConfig(name.clone()));
        }
        for name in &changes.removed {
            self.config.sites.remove(name);
            self.sites.remove(name.as_str());
        }
        for (name, change) in changes.changed {
            self.sites.insert(name.to_string(), change.state);
            if let Some(config) = change.config {
                self.config.sites.insert(name, config);
            }
        }
        if let Some(challenges) = changes.acme_challenges {
            self.acme_challenges = challenges;
        }
        self.version = changes.version;
        Ok(())
    }
}

/// A site's credentials, in a [`DesiredSite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunsAs {
    pub uid: u32,
    pub gid: u32,
}

/// How long a log reopening waits for the router's answer (it writes what
/// every active log holds first).
pub const REOPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the server publishes what the router must serve.
pub trait RouterLink: Send + Sync + 'static {
    /// Tells the router to serve `desired`. Resolves once the router said
    /// it serves it, or after a bounded wait when the router is down or
    /// restarting (a new router is told the current state before it
    /// accepts); never fails.
    fn publish(&self, desired: Desired) -> BoxFuture<'_, ()>;

    /// The router's counters, for status and `/metrics`; `None` when the
    /// router does not answer within a bounded wait (down, restarting).
    fn stats(&self) -> BoxFuture<'_, Option<StatsReply>>;

    /// Tells the router to reopen every site log (log rotation) and waits
    /// for its answer: true once it said every log was reopened; false when
    /// no router is connected or it does not answer within a bounded wait.
    fn reopen_logs(&self) -> BoxFuture<'_, bool>;
}

/// The router's counters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StatsReply {
    /// The request's id (echoed).
    pub id: u64,
    /// Per site, by name: what `polyhost status` shows.
    pub sites: Vec<(String, crate::metrics::SiteCounters)>,
    /// The metric families the router's counters make (requests, durations,
    /// queue waits, in flight, WebSockets, PHP pools, connections), in the
    /// OpenMetrics text format without its `# EOF` line: the supervisor's
    /// scrape adds its own families (processes, memory, restarts, reloads)
    /// and the end. No family appears in both.
    pub metrics: String,
    /// What the router's on-demand handshakes did (`router::tls`).
    #[serde(default)]
    pub on_demand: crate::metrics::on_demand::RouterOnDemandSnapshot,
}

/// Test fixture: `config`'s sites named in `sites` (name, generation,
/// stopped), each without `runs_as`.
#[cfg(test)]
impl Desired {
    pub(crate) fn of_sites(version: u64, config: &Config, sites: &[(&str, u64, bool)]) -> Desired {
        let mut config = config.clone();
        config
            .sites
            .retain(|name, _| sites.iter().any(|(n, _, _)| *n == name.as_str()));
        let sites = sites
            .iter()
            .map(|&(name, generation, stopped)| {
                let state = DesiredSite {
                    generation,
                    stopped,
                    runs_as: None,
                    failed: false,
                };
                (name.to_owned(), state)
            })
            .collect();
        Desired {
            version,
            config,
            sites,
            acme_challenges: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use super::{ChangesError, Desired};
    use crate::config::Config;

    /// Static sites `a`, `b`, `c`, `d`; `b` answers for `hosts_b`.
    fn config(dir: &Path, hosts_b: &str) -> Config {
        crate::config::tests_support::static_sites(
            dir,
            &[
                ("a", "\"a.test\""),
                ("b", hosts_b),
                ("c", "\"c.test\""),
                ("d", "\"d.test\""),
            ],
        )
    }

    fn names<T>(map: &BTreeMap<crate::config::SiteName, T>) -> Vec<&str> {
        map.keys().map(|n| n.as_str()).collect()
    }

    #[test]
    fn changes_carry_what_changed_and_rebuild_the_complete_state() {
        let tmp = tempfile::tempdir().unwrap();
        let one = config(tmp.path(), "\"b.test\"");
        let before = Desired::of_sites(
            4,
            &one,
            &[("a", 1, false), ("b", 1, false), ("c", 1, false)],
        );
        // `a` restarted (state only), `b` answers for one more host (its
        // configuration, a new Arc from a new load), `c` removed, `d` added;
        // a reload loads every file again: `a`'s Arc is new but equal.
        let two = config(tmp.path(), "\"b.test\", \"www.b.test\"");
        let after = Desired::of_sites(
            5,
            &two,
            &[("a", 2, false), ("b", 1, false), ("d", 1, false)],
        );

        let changes = after.changes_from(&before);
        assert_eq!((changes.version, changes.base), (5, 4));
        assert_eq!(names(&changes.changed), ["a", "b", "d"]);
        let config_of = |name: &str| {
            changes
                .changed
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .unwrap()
                .1
                .config
                .is_some()
        };
        assert!(!config_of("a"), "its configuration is unchanged");
        assert!(config_of("b") && config_of("d"));
        let removed: Vec<&str> = changes.removed.iter().map(|n| n.as_str()).collect();
        assert_eq!(removed, ["c"]);
        // Through the wire's encoding, as the router gets them.
        let json = serde_json::to_vec(&changes).unwrap();
        let changes = serde_json::from_slice(&json).unwrap();

        let mut held = before.clone();
        held.apply_changes(changes).unwrap();
        assert_eq!(held.version, 5);
        assert_eq!(held.sites, after.sites);
        assert_eq!(names(&held.config.sites), ["a", "b", "d"]);
        for (name, config) in &after.config.sites {
            assert_eq!(**held.config.sites.get(name).unwrap(), **config, "{name:?}");
        }
        let a = |d: &Desired| d.config.sites.iter().next().unwrap().1.clone();
        assert!(
            Arc::ptr_eq(&a(&held), &a(&before)),
            "`a`'s config kept as it was"
        );

        // Nothing changed: nothing crosses.
        let mut again = after.clone();
        again.version = 6;
        let none = again.changes_from(&after);
        assert!(
            none.changed.is_empty() && none.removed.is_empty(),
            "{none:?}"
        );
    }

    #[test]
    fn changes_against_another_version_or_without_a_config_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let one = config(tmp.path(), "\"b.test\"");
        let v1 = Desired::of_sites(1, &one, &[("a", 1, false)]);
        let v2 = Desired::of_sites(2, &one, &[("a", 1, true), ("b", 1, false)]);
        let mut held = Desired::of_sites(3, &one, &[("a", 1, false)]);
        let got = held.apply_changes(v2.changes_from(&v1));
        assert!(
            matches!(got, Err(ChangesError::Base { base: 1, held: 3 })),
            "{got:?}"
        );
        assert_eq!(held.version, 3, "left as it was");

        // `b` named without its configuration, which the holder lacks.
        let mut changes = v2.changes_from(&v1);
        for change in changes.changed.values_mut() {
            change.config = None;
        }
        let mut held = v1.clone();
        let got = held.apply_changes(changes);
        assert!(
            matches!(&got, Err(ChangesError::NoConfig(n)) if n.as_str() == "b"),
            "{got:?}"
        );
        assert_eq!(held.sites, v1.sites, "left as it was");
    }
}
