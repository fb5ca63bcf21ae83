//! The messages between the supervisor and the router (see the module doc
//! of [`privsep`](super)). Both ends compile against these types; a frame
//! is one message ([`super::frame`]).

use std::path::PathBuf;

pub use crate::app::router_link::{Desired, DesiredChanges, DesiredSite, SiteChange, StatsReply};
pub use crate::supervisor::GroupKey;
use crate::supervisor::GroupState;

/// The environment variable that says which descriptors the router
/// inherited: `<link>,<plain listeners>,<TLS listeners>`: the link's
/// number, then how many listeners follow it, plain ones first.
pub const FDS_ENV: &str = "POLYHOST_ROUTER_FDS";

/// From the supervisor to the router.
// A few messages, each moved once into a frame: boxing `Desired` buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ToRouter {
    /// What to serve now, complete: the first message after the router's
    /// [`ToSupervisor::Hello`] (before it accepts anything), and the state
    /// any later [`ToRouter::Changes`] builds on. Answered with
    /// [`ToSupervisor::Applied`].
    Desired(Desired),
    /// What changed since the `Desired` or `Changes` sent just before on
    /// this link ([`DesiredChanges::base`]): every later publication. The
    /// router rebuilds the complete state from it
    /// (`Desired::apply_changes`); one made against another version is a
    /// protocol error: the router ends, and its successor is sent the
    /// complete state. Answered with [`ToSupervisor::Applied`].
    Changes(DesiredChanges),
    /// A process group's published state: its ready processes are the only
    /// ones the router may send requests to. Sent for every group of the
    /// current [`Desired`] when the router starts (before it), for a new
    /// group before the `Changes` that names it, then on every change.
    Group(GroupUpdate),
    /// The router's counters, for `polyhost status` and `/metrics`.
    /// Answered with [`ToSupervisor::Stats`] of the same `id`.
    StatsRequest { id: u64 },
    /// Log rotation: write what every site log holds to the file held open,
    /// close every log's descriptor (the next line opens the path, which the
    /// supervisor made again before sending this). Answered with
    /// [`ToSupervisor::LogsReopened`] of the same `id` once done: no line is
    /// written to a file renamed away after that answer.
    ReopenLogs { id: u64 },
    /// The answer to [`ToSupervisor::OnDemandCertificate`] of the same `id`:
    /// the certificate (issued or held), or why there is none (a refusal);
    /// `retry_ms`: how long the supervisor goes on refusing the name (the
    /// router refuses it alone meanwhile), none when that may change at
    /// any moment (a rate limit).
    OnDemandCertificate {
        id: u64,
        result: Result<crate::config::LoadedPair, String>,
        #[serde(default)]
        retry_ms: Option<u64>,
    },
    /// On-demand certificate `name` was renewed: new handshakes get `pair`
    /// (`router::tls::on_demand_renewed`). Not answered.
    OnDemandRenewed {
        name: String,
        pair: crate::config::LoadedPair,
    },
    /// polyhost is stopping: stop accepting, let requests in flight finish
    /// within `server.shutdown_timeout`, exit 0.
    Shutdown,
}

/// A group's snapshot as the router needs it (`supervisor::Snapshot`
/// without what only status reads).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupUpdate {
    pub group: GroupKey,
    pub state: GroupState,
    /// Ready processes that take new requests. One that was in the
    /// previous update and is not here any more is being stopped: the
    /// router takes no new lease on it and answers [`ToSupervisor::Drained`]
    /// once it holds none.
    pub endpoints: Vec<WireEndpoint>,
    /// Set while the application itself is broken (its requests get 500).
    pub app_error: Option<String>,
    pub last_error: Option<String>,
}

/// One ready process (`supervisor::Endpoint` without its counters).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireEndpoint {
    /// Unique within its group, never reused.
    pub id: u64,
    pub pid: i32,
    pub socket: PathBuf,
    /// The user that must be listening on `socket` (checked on connect).
    pub uid: Option<u32>,
    /// A loopback port instead of `socket` (`supervisor::Endpoint::tcp`).
    #[serde(default)]
    pub tcp: Option<std::net::SocketAddr>,
}

/// From the router to the supervisor.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ToSupervisor {
    /// The first frame: the router runs and waits for its [`ToRouter::Desired`].
    Hello { pid: u32 },
    /// The router serves [`Desired::version`] `version` now (its routing
    /// table was swapped); the supervisor may retire what it replaced.
    Applied { version: u64 },
    /// A request found no ready process of `group`: start it (scale from
    /// zero, or after a failure). The answer is a [`ToRouter::Group`].
    Start { group: GroupKey },
    /// Replace one process gracefully (it reached `max_requests`, or a
    /// request on it timed out).
    Recycle {
        group: GroupKey,
        endpoint: u64,
        reason: String,
    },
    /// What the router's requests did since the last report, for the
    /// supervisor's idle, recycling and drain decisions. Sent at most every
    /// 250 ms, only for groups that were used.
    Usage(Vec<GroupUsage>),
    /// The router holds no lease on `endpoint` of `group` and will take
    /// none (it was unpublished): its process may stop.
    Drained { group: GroupKey, endpoint: u64 },
    /// The answer to [`ToRouter::StatsRequest`].
    Stats(StatsReply),
    /// The answer to [`ToRouter::ReopenLogs`].
    LogsReopened { id: u64 },
    /// A TLS handshake for `name` waits for an on-demand certificate
    /// (`router::tls`): answered with [`ToRouter::OnDemandCertificate`] of
    /// the same `id` once it is held, issued, or refused (`acme::on_demand`).
    /// `client`: the address of the handshake's client, whose share of
    /// `acme.on_demand_rate` a new name spends.
    OnDemandCertificate {
        id: u64,
        name: String,
        #[serde(default)]
        client: Option<std::net::IpAddr>,
    },
}

/// A group's use by the router.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GroupUsage {
    pub group: GroupKey,
    /// Milliseconds since a request last started or ended on the group.
    pub idle_ms: u64,
    pub endpoints: Vec<EndpointUsage>,
}

/// One process's use by the router: absolute values, not deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointUsage {
    pub id: u64,
    /// Requests on it now.
    pub in_flight: u32,
    /// Requests it finished since it was published to this router.
    pub served: u64,
}
