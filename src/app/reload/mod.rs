//! Reload as a plan and an apply. Start-up is the same path from nothing:
//! `plan(∅, config)`, then apply.
//!
//! 1. Load and validate the whole configuration; any error of a file →
//!    nothing changes (`Server::reload`). A problem of a site's own files
//!    found meanwhile (`config::SiteProblem`) is not an error of the file:
//!    that site fails at step 3.
//! 2. [`plan`]: diff the running sites and the new configuration site by
//!    site, purely ([`plan::Change`]): unchanged sites keep everything (same
//!    route, same processes); sites whose runtime settings are the same but
//!    whose routing changed (hosts, static settings, body limit,
//!    certificate) get a new route over the same processes; sites whose
//!    runtime settings changed get a new generation of processes; added
//!    sites are built; removed sites are dropped. A site stopped by the
//!    operator stays stopped, with its new settings.
//! 3. [`apply::prepare`]: build every next site; new generations of sites
//!    that were running are started and awaited (bounded by their startup
//!    timeout), so traffic moves to ready processes. A site that cannot be
//!    built (its root, its program, its virtualenv, its user: state outside
//!    the file, often its owner's) or whose new processes do not become
//!    ready fails alone: what was built for it is stopped, it serves its
//!    previous configuration if it served one, else it answers 503 (status
//!    and the report say why); every other change is applied. One tenant's
//!    files never stop a reload or the start for the others.
//! 4. One atomic swap of the routing table (`Server`); then the new
//!    generations get their logs ([`apply::hand_over_logs`]).
//! 5. [`apply::retire`]: old generations and removed sites drain (finish
//!    in-flight requests) and stop in the background.

pub(crate) mod apply;
pub mod plan;

use serde::{Deserialize, Serialize};

pub use apply::SiteNotReady;

pub use plan::{plan, Change, Running};

/// What a reload did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// New generation of processes.
    pub restarted: Vec<String>,
    /// New routes over the same processes.
    pub rerouted: Vec<String>,
    pub unchanged: usize,
    pub warnings: Vec<String>,
    /// Sites whose change could not be applied (each alone: every other
    /// change was); they are not in the lists above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedSite>,
}

/// A site whose change a reload (or the start) could not apply: its files
/// or its new processes are at fault, and it alone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailedSite {
    pub site: String,
    /// Why, one `FILE: KEY: MESSAGE` line each.
    pub errors: Vec<String>,
    /// `true`: it serves its previous configuration on (with its running
    /// processes); `false`: it answers 503 until it can be built.
    pub serves_previous: bool,
}

impl ReloadReport {
    /// Records `failed`: those sites leave the lists of what changed.
    pub fn with_failed(mut self, failed: Vec<FailedSite>) -> ReloadReport {
        for f in &failed {
            for list in [&mut self.added, &mut self.restarted, &mut self.rerouted] {
                list.retain(|name| *name != f.site);
            }
        }
        self.failed = failed;
        self
    }
}
