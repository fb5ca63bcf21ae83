//! The front router: accepts connections, maps each request to a site by
//! host and to an upstream by longest mount prefix, writes the access log.
//!
//! Invariant: only `router` knows hyper's server types; upstreams get plain
//! `http` requests. The routing table is an immutable snapshot
//! ([`table::RoutingTable`]) swapped atomically on reload.

pub mod access_log;
pub mod conn;
pub mod mount;
pub mod proxy;
pub mod server;
pub mod service;
pub mod table;
pub mod tls;
pub mod vhost;

pub use access_log::SiteLogs;
pub use mount::MountTable;
pub use server::Listeners;
pub use table::{RoutingTable, SharedTable, SiteRoute, SiteStats};
