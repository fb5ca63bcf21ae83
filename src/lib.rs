//! polyhost: a hosting supervisor for shared hosting. One process (as root)
//! runs an async front router and supervises each site's runtime processes
//! (php-fpm pools, `polyhost-python` workers), each under its own user and
//! cgroup.
//!
//! # Layout
//!
//! - [`cli`]: argument parsing and exit codes; thin.
//! - [`app`]: `serve` as a library call (used by the binary and the tests).
//! - [`check`]: `polyhost check`.
//! - [`config`]: files → validated, typed configuration; all errors at once.
//! - [`sites`]: a site's config → its mounts (upstreams) and logs.
//! - [`router`]: listeners, hyper connections, host and mount routing, access log.
//! - [`runtime`]: what a site's runtime needs to start (php-fpm pool config).
//! - [`upstream`]: the [`upstream::Upstream`] trait and its implementations.
//!
//! See `docs/architecture.md` for the code map and its invariants.
pub mod app;
pub mod check;
pub mod cli;
pub mod config;
pub mod router;
pub mod runtime;
pub mod sites;
pub mod upstream;
