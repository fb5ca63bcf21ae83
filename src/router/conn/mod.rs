//! One client connection, apart from HTTP itself: who the client is and
//! how many connections it may hold, the connection's clocks, and the I/O
//! wrappers that feed them. `router::server` accepts connections and drives
//! hyper over them with these parts.
//!
//! - [`client`]: who a client is ([`Client`]: an address, or the user owning
//!   a local socket), the connection limits ([`ConnLimiter`]:
//!   `max_connections`, `max_connections_per_ip`), trusted proxies.
//! - [`peer`]: the user that owns the socket of a client on this host (`sock_diag`).
//! - `clocks`: [`Activity`], the header, keep-alive and send timeouts of one
//!   connection, and whether an idle HTTP/1 connection can park.
//! - `io`: [`TrackedIo`] (the socket), [`ReadToEnd`] (the request body),
//!   [`GuardedBody`] (the response body): each reports to the clocks.
//! - `throttle`: [`Throttle`], one log line per second for flooding events.
//!
//! Per-request limits (head size, field count, target length, body size)
//! are hyper's settings in `router::server` and the checks in
//! `router::service`.

pub mod client;
mod clocks;
mod io;
pub mod peer;
mod throttle;

pub use client::{Client, ConnLimiter, ConnPermit, Refusal};
pub use clocks::{last_request, Activity, Expiry, RequestGuard};
pub use io::{GuardedBody, PlainSocket, ReadToEnd, TrackedIo};
pub use throttle::Throttle;
