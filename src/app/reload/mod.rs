//! Reload as a plan and an apply. Start-up is the same path from nothing:
//! `plan(∅, config)`, then apply.
//!
//! 1. Load and validate the whole configuration; any error → nothing changes
//!    (`Server::reload`).
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
//!    timeout), so traffic moves to ready processes. Any failure → what was
//!    built is stopped, nothing changes, the old sites serve on.
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
}
