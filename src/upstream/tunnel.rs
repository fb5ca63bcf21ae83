//! Protocol upgrades (WebSockets) between an upstream and the router.
//!
//! The router marks a request whose `Connection: upgrade` / `Upgrade`
//! headers it kept for an upstream that tunnels ([`Upgrade`], only when
//! [`Upstream::tunnels`](super::Upstream::tunnels) says so). An upstream
//! whose process switches protocols (`101`) answers with the `101` head and
//! a [`Tunnel`] in the response's extensions ([`TunnelSlot`]): the process's
//! connection, the bytes it sent past its head, and what the WebSocket holds
//! (its lease and admission place) for as long as it lives. The router then
//! relays bytes both ways (`router::tunnel`); it never parses them.
//!
//! Invariant: a `101` reaches a client only with a [`Tunnel`] (the router
//! turns any other `101` into a 502), so no application's response can turn
//! a connection into something the router does not account for.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// On a request: the router kept its upgrade headers for this upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upgrade;

/// A byte stream a tunnel relays: a site process's Unix socket, or the
/// loopback TCP connection of an `[app] listen = "port"` instance.
pub trait TunnelStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelStream for T {}

/// A connection a site process switched protocols on.
pub struct Tunnel {
    /// The process's end: its connection, no longer HTTP.
    pub stream: Box<dyn TunnelStream>,
    /// What the process sent after its `101` head (read with the head).
    pub read_ahead: Bytes,
    /// Released when the tunnel ends: the lease on the process (it counts
    /// against `max_concurrency`, and a draining process waits for it) and
    /// the admission place.
    pub hold: Box<dyn Send + Sync>,
}

/// Carries a [`Tunnel`] in a response's extensions (which must be `Clone`):
/// the first to [`take`](Self::take) it owns it.
#[derive(Clone)]
pub struct TunnelSlot(Arc<Mutex<Option<Tunnel>>>);

impl TunnelSlot {
    pub fn new(tunnel: Tunnel) -> Self {
        TunnelSlot(Arc::new(Mutex::new(Some(tunnel))))
    }

    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
