//! The router process as the [`Server`](super::Server) sees it when
//! polyhost runs privilege-separated (`privsep`): after every change of
//! what is served (start-up, reload, a site stopped or started) the server
//! publishes a [`Desired`] through its [`RouterLink`] and waits until the
//! router serves it before it retires what the change replaced.
//!
//! Invariant: a [`Desired`] is complete (every site, with its generation),
//! never a diff: a router that starts afresh is told the current one and
//! serves exactly what the supervisor does.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;

use crate::config::Config;

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
}

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
}

/// A site's credentials, in a [`DesiredSite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunsAs {
    pub uid: u32,
    pub gid: u32,
}

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
}
