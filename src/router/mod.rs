//! The front router: accepts connections (plain and TLS, HTTP/1.1 and
//! HTTP/2), holds them to the front-door limits, maps each request to a site
//! by host and to an upstream by longest mount prefix, keeps proxy headers
//! honest both ways, writes the access log.
//!
//! - [`server`]: listeners, admission, driving hyper over a connection, shutdown.
//! - [`conn`]: one client connection: who the client is and the connection
//!   limits (`conn::client`, `conn::peer`), its clocks, its I/O wrappers.
//! - [`tls`]: rustls configuration; certificates by SNI from the current table.
//! - [`service`]: one request, the only place errors become statuses.
//! - [`target`]: request-target forms; `CONNECT` and `OPTIONS *` answered by the router.
//! - [`proxy`]: framing checks, hop-by-hop and forwarded headers, response header checks,
//!   response framing.
//! - `outgoing`: the response body on its way out: access log line, declared length kept.
//! - `tunnel`: a WebSocket after its `101`: bytes relayed both ways, unparsed.
//! - [`table`], [`vhost`], [`mount`]: the routing snapshot and its lookups.
//! - [`access_log`]: per-site access and error logs.
//!
//! Invariant: only `router` knows hyper's server types; upstreams get plain
//! `http` requests. The routing table is an immutable snapshot
//! ([`table::RoutingTable`]) swapped atomically on reload.

pub mod access_log;
pub mod conn;
pub mod mount;
mod outgoing;
pub mod proxy;
pub mod server;
pub mod service;
pub mod table;
pub mod target;
pub mod tls;
mod tunnel;
pub mod vhost;

pub use access_log::{
    flush_logs, prepare_log_dir, reopen_logs, retire_other_logs, set_log_owner, SiteLogs,
};
pub use mount::MountTable;
pub use outgoing::LoggedBody;
pub use server::Listeners;
pub use table::{RoutingTable, SharedTable, SiteRoute, SiteStats};
