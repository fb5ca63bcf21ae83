//! Metrics: what polyhost counts and how it is exposed in the Prometheus
//! text format.
//!
//! - [`site`]: [`SiteStats`], the per-site handles recorded on the hot path
//!   (created once when the site is first built, shared by every generation
//!   of its routes and runtimes; a request touches atomics and one histogram,
//!   never a label lookup).
//! - [`connections`]: server-wide connection counters the accept loops bump.
//! - [`export`]: the scrape: hot-path handles plus gauges computed from
//!   [`crate::app::Server::status`] (processes, memory, restarts, OOM kills),
//!   rendered with `prometheus-client`.

pub mod connections;
pub mod export;
pub mod site;

pub use connections::{connection_opened, ConnectionGuard};
pub use export::{render, SiteView, View, CONTENT_TYPE};
pub use site::{InFlight, SiteStats};
