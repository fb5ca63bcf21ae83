//! Metrics: what polyhost counts and how it is exposed in the Prometheus
//! text format.
//!
//! - [`site`]: [`SiteStats`], the per-site handles recorded on the hot path
//!   (created once when the site is first built, shared by every generation
//!   of its routes and runtimes; a request touches atomics and one histogram,
//!   never a label lookup).
//!   [`SiteView`] is what a scrape reads of one site.
//! - [`connections`]: server-wide connection counters the accept loops bump.
//! - [`kept_files`]: what the router threads' kept small files hold and
//!   did (answers, files read, dropped as changed or for room), summed
//!   over threads at scrape time.
//! - [`php_pool`]: what a PHP site's FastCGI connection pool did (reused,
//!   retired, warmed successors, ...), per site, across reloads.
//! - [`on_demand`]: what on-demand TLS did (`acme::on_demand`), server-wide.
//!
//! The scrape itself (these handles plus gauges computed from the status:
//! processes, memory, restarts, OOM kills) is `admin::metrics`, next to the
//! API that serves it: this module sits below the router and imports nothing
//! above it.

pub mod connections;
pub mod kept_files;
pub mod on_demand;
pub mod php_pool;
pub mod site;

pub use connections::{connection_opened, ConnectionGuard};
pub use php_pool::{PhpPoolCounters, PhpPoolStats, PoolEvent};
pub use site::{InFlight, SiteCounters, SiteStats, SiteView};
