//! Status as values: what `polyhost status` prints and the admin API
//! returns as JSON.

use serde::{Deserialize, Serialize};

use crate::config::SiteConfig;
use crate::isolation::Sandbox;
use crate::sites::{Site, Trouble};
use crate::supervisor::GroupState;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    /// How resource limits are enforced: cgroup v2, v1, or the rlimit fallback.
    pub limits_backend: String,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub sites: Vec<SiteStatus>,
    /// On-demand TLS (`[acme] on_demand`): its certificates and counters;
    /// absent while it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<crate::metrics::on_demand::OnDemandSnapshot>,
    /// A cluster node's link to etcd; absent outside a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterLinkStatus>,
}

/// A cluster node's link to etcd (`crate::cluster::node` sets it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterLinkStatus {
    /// This node's name.
    pub node: String,
    pub etcd_connected: bool,
    /// Since when (Unix seconds) etcd is connected, or not.
    pub since_unix: u64,
    /// The etcd revision of the last state applied here.
    pub applied_revision: i64,
    /// Why etcd is not connected (the last error), while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SiteStatus {
    pub name: String,
    /// `static`, `running`, `idle` (scaled to zero or not started yet),
    /// `starting`, `failed`, `stopped` (by the operator).
    pub state: String,
    pub runtime: String,
    pub hosts: Vec<String>,
    pub generation: u64,
    pub pids: Vec<i32>,
    pub processes: usize,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub requests: u64,
    pub responses_5xx: u64,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_error: Option<String>,
    /// A Python site's interface, `wsgi` or `asgi`; absent for other sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The CPython (`major.minor`) a Python site's worker links; absent
    /// for other sites (and a worker whose Python polyhost cannot tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    /// An `[app]` site's listen mode, `socket` (fd 3) or `port`; absent
    /// for other sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// WebSockets open now (tunnels the router relays for the site).
    #[serde(default)]
    pub websockets_open: u64,
    /// The sandbox its processes start in; absent for a static site (no
    /// process to put in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxStatus>,
    /// When the certificate it serves expires (Unix seconds); absent
    /// without one (no `[tls]`, or ACME not issued yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<i64>,
    /// The last ACME order's failure (with the CA's problem document),
    /// until an order succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_error: Option<String>,
    /// Why its latest configuration was not applied (it could not be
    /// built, or its new processes did not become ready): it serves its
    /// previous one. Absent when it serves its latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_applied: Option<String>,
}

/// Whether a site's processes run sandboxed, and with which layers
/// (docs/isolation.md, "The sandbox").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SandboxStatus {
    pub on: bool,
    /// The layers in effect, in order: `namespaces` (mount and IPC
    /// namespaces: private `/tmp`, `/var/tmp`, `/dev/shm`, a `/proc`
    /// showing only the site's processes), `network` (`network = "none"`:
    /// loopback only), `view` (`sandbox.paths`: the read-only view of the
    /// file system). Empty when off.
    pub layers: Vec<String>,
    /// Why it is off: `sandbox = false`, or why this host cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_because: Option<String>,
}

impl SandboxStatus {
    /// What `config` asks for, as `sandbox` (the site's running context's:
    /// `None` when off or unavailable) gives it.
    fn of(config: &SiteConfig, sandbox: Option<&Sandbox>) -> Option<SandboxStatus> {
        if !config.runs_code() {
            return None;
        }
        let Some(sandbox) = sandbox else {
            let why = if config.sandbox.enabled {
                crate::isolation::sandbox::unavailable().unwrap_or("not started")
            } else {
                "sandbox = false"
            };
            return Some(SandboxStatus {
                on: false,
                layers: Vec::new(),
                off_because: Some(why.to_owned()),
            });
        };
        let layers = [
            ("namespaces", true),
            ("network", sandbox.network_none),
            ("view", sandbox.view.is_some()),
        ];
        Some(SandboxStatus {
            on: true,
            layers: layers
                .iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| (*name).to_owned())
                .collect(),
            off_because: None,
        })
    }
}

impl SiteStatus {
    /// The status of `site` now (its groups' snapshots, its cgroup's usage).
    pub fn of(e: &Site) -> SiteStatus {
        let snaps: Vec<_> = e.runtimes().groups.iter().map(|g| g.snapshot()).collect();
        let state = if e.is_stopped() {
            "stopped".to_owned()
        } else if e.is_failed() {
            "failed".to_owned()
        } else if snaps.is_empty() {
            "static".to_owned()
        } else if let Some(s) = snaps
            .iter()
            .find(|s| matches!(s.state, GroupState::Failed(_)))
        {
            s.state.label().to_owned()
        } else if snaps.iter().any(|s| s.state == GroupState::Running) {
            "running".to_owned()
        } else {
            snaps[0].state.label().to_owned()
        };
        let usage = e
            .runtimes()
            .context
            .as_ref()
            .and_then(|c| c.cgroup.as_ref())
            .and_then(|cg| cg.usage().ok());
        let pids: Vec<i32> = snaps.iter().flat_map(|s| s.pids.iter().copied()).collect();
        SiteStatus {
            name: e.config().name.to_string(),
            state,
            runtime: e.config().runtime_label().to_owned(),
            hosts: e.config().hosts.iter().map(|h| h.to_string()).collect(),
            generation: e.runtimes().generation,
            processes: pids.len(),
            pids,
            memory_bytes: usage.and_then(|u| u.memory_current),
            memory_limit_bytes: e
                .config()
                .limits
                .memory
                .or(usage.and_then(|u| u.memory_limit)),
            requests: e.stats().requests(),
            responses_5xx: e.stats().responses_5xx(),
            restarts: snaps.iter().map(|s| s.restarts).sum(),
            oom_kills: snaps
                .iter()
                .map(|s| s.oom_kills)
                .sum::<u64>()
                .max(usage.map_or(0, |u| u.oom_kills)),
            last_error: match e.trouble() {
                Some(Trouble::Failed(why)) => Some(why.to_string()),
                _ => snaps.iter().find_map(|s| s.last_error.clone()),
            },
            not_applied: match e.trouble() {
                Some(Trouble::NotApplied(why)) => Some(why.to_string()),
                _ => None,
            },
            interface: e
                .config()
                .python
                .as_ref()
                .map(|py| py.interface_name().to_owned()),
            python_version: e.runtimes().python_version.map(|v| v.to_string()),
            listen: e.config().app.as_ref().map(|app| {
                match app.listen {
                    crate::config::AppListen::Socket => "socket",
                    crate::config::AppListen::Port => "port",
                }
                .to_owned()
            }),
            websockets_open: e.stats().websockets_open(),
            sandbox: SandboxStatus::of(
                e.config(),
                e.runtimes()
                    .context
                    .as_ref()
                    .and_then(|c| c.sandbox.as_ref()),
            ),
            certificate_not_after: e
                .config()
                .tls
                .as_ref()
                .and_then(|t| t.pair.as_ref())
                .and_then(|p| p.not_after()),
            acme_error: None,
        }
    }
}

impl SiteStatus {
    /// The request counters of `counters` instead of this process's (what
    /// the router process counted, `privsep`).
    pub fn set_counters(&mut self, counters: crate::metrics::SiteCounters) {
        self.requests = counters.requests;
        self.responses_5xx = counters.responses_5xx;
        self.websockets_open = counters.websockets_open;
    }
}
