//! polyhost as a cluster of nodes (issue 26): etcd is the source of truth,
//! HAProxy the front. Nothing here is a consensus of polyhost's own.
//!
//! - [`schema`]: the keys under the configured prefix and what each value
//!   holds (JSON, except `sites/NAME`, which is a vhost file's TOML text).
//!   Every part reads and writes etcd only through these types.
//! - [`etcd`]: connecting to etcd (endpoints, TLS, user/password) and the
//!   reconnect backoff every long-running loop uses.
//! - `node` (a node's agent, inside `polyhost serve` when `[cluster]` is
//!   set): registers `nodes/NODE` under a lease, watches its placements,
//!   materialises them through the same validated configuration path and
//!   reload-as-diff as vhost files, reports per-site state and errors.
//! - `front` (`polyhost cluster front`): keeps HAProxy's maps current
//!   through its runtime API and on disk; runs the controller (failover,
//!   re-placement) under an etcd election.
//! - `control` (`polyhost cluster ...` commands): put/remove a site, place,
//!   move (start-new, switch, drain), drain a node, status.

pub mod control;
pub mod etcd;
pub mod front;
pub mod node;
pub mod schema;
