//! Server-wide connection counters. They are process-wide (one polyhost
//! serves one machine); the accept loops take a [`ConnectionGuard`] per
//! accepted connection and drop it when the connection ends.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

pub(crate) struct Connections {
    pub accepted: Counter,
    pub open: Gauge,
    /// Moved to another router thread between two requests (`lanes`).
    pub moved: Counter,
}

pub(crate) static CONNECTIONS: LazyLock<Connections> = LazyLock::new(|| Connections {
    accepted: Counter::default(),
    open: Gauge::default(),
    moved: Counter::default(),
});

/// Counts a connection moved to another router thread.
pub fn connection_moved() {
    CONNECTIONS.moved.inc();
}

/// Counts an accepted connection; it stays open until the guard is dropped.
pub fn connection_opened() -> ConnectionGuard {
    CONNECTIONS.accepted.inc();
    CONNECTIONS.open.inc();
    ConnectionGuard(())
}

/// An open connection (see [`connection_opened`]).
pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        CONNECTIONS.open.dec();
    }
}
