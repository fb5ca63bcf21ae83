//! polyhost: a hosting supervisor for shared hosting. One process (as root)
//! runs an async front router and supervises each site's runtime processes
//! (php-fpm pools, `polyhost-python` workers), each under its own user and
//! cgroup.
//!
//! # Layout
//!
//! - [`cli`]: argument parsing, exit codes, the admin API client commands.
//! - [`admin`]: the admin API (Unix socket, optional TCP) and its client.
//! - [`metrics`]: per-site and server metrics, the Prometheus scrape.
//! - [`app`]: `serve` as a library call (used by the binary and the tests).
//! - [`check`]: `polyhost check`.
//! - [`privsep`]: polyhost as a root supervisor and an unprivileged router process.
//! - [`config`]: files → validated, typed configuration; all errors at once.
//! - [`sites`]: a site's config → its mounts (upstreams) and logs.
//! - [`notify`]: systemd's service notifications (READY, RELOADING, STOPPING, WATCHDOG).
//! - [`lanes`]: the router's threads, one single-threaded runtime each.
//! - [`router`]: listeners, hyper connections, host and mount routing, access log.
//! - [`docroot`]: resolving request paths beneath a document root (openat2), for every runtime.
//! - [`sendfile`]: file bodies sent with `sendfile(2)` on plain HTTP/1 connections, beneath hyper.
//! - [`runtime`]: launchers: how each language's processes are started (php-fpm, polyhost-python).
//! - [`upstream`]: the [`upstream::Upstream`] trait and its implementations.
//! - [`supervisor`]: site process groups: start, watch, restart, recycle, scale to zero.
//! - [`isolation`]: the only module that forks, drops privileges and writes cgroups.
//!
//! See `docs/architecture.md` for the code map and its invariants.
//!
//! `unsafe` code is denied crate-wide and allowed only in [`isolation`] (as
//! in the worker crate, `runtimes/python`): the compiler keeps the
//! architecture invariant, and `tests/architecture.rs` checks that no other
//! module allows it again.

#![deny(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod app;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod docroot;
#[allow(unsafe_code)] // fork/exec set-up, prctl, close_range: see its module doc.
pub mod isolation;
pub mod lanes;
pub mod metrics;
pub mod notify;
pub mod privsep;
pub mod router;
pub mod runtime;
pub mod sendfile;
pub mod sites;
pub mod supervisor;
pub mod upstream;
