//! Per-site request metrics, recorded on the hot path. One [`SiteStats`] per
//! site lives as long as the site exists, across reloads and restarts, so its
//! counters never jump back.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the request duration histogram.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the queue wait histogram.
pub const QUEUE_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];

/// Status classes, in label order.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A site's request metrics. Cloning a handle shares the same values.
#[derive(Debug)]
pub struct SiteStats {
    /// Responses by status class, indexed like [`CLASSES`].
    pub(crate) by_class: [Counter; 5],
    /// Time from the request head to the response head.
    pub(crate) duration: Histogram,
    /// Time a request waited for a free worker thread (admission queue).
    pub(crate) queue_wait: Histogram,
    pub(crate) in_flight: Gauge,
    /// WebSockets open now (tunnels the router relays).
    pub(crate) websockets_open: Gauge,
    /// WebSockets opened since the site exists.
    pub(crate) websockets_total: Counter,
    /// The PHP connection pool's counters (zero for a site without PHP).
    php_pool: std::sync::Arc<super::PhpPoolCounters>,
}

impl Default for SiteStats {
    fn default() -> Self {
        SiteStats {
            by_class: Default::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            queue_wait: Histogram::new(QUEUE_BUCKETS),
            in_flight: Gauge::default(),
            websockets_open: Gauge::default(),
            websockets_total: Counter::default(),
            php_pool: Default::default(),
        }
    }
}

impl SiteStats {
    /// Counts one response and its duration.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a request as in flight until the guard is dropped (the
    /// guard owns a handle on the gauge: it may outlive this borrow, as a
    /// request waiting for its upstream does).
    pub fn begin(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records how long a request waited for admission.
    pub fn queued(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// Every response counted so far.
    pub fn requests(&self) -> u64 {
        self.by_class.iter().map(Counter::get).sum()
    }

    pub fn responses_5xx(&self) -> u64 {
        self.by_class[4].get()
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// The PHP connection pool's counters, shared with every generation of
    /// the site's pool.
    pub fn php_pool(&self) -> &std::sync::Arc<super::PhpPoolCounters> {
        &self.php_pool
    }

    /// Counts a WebSocket as open until the guard is dropped.
    pub fn websocket_opened(&self) -> WebSocketOpen<'_> {
        self.websockets_total.inc();
        self.websockets_open.inc();
        WebSocketOpen(&self.websockets_open)
    }

    /// WebSockets open now.
    pub fn websockets_open(&self) -> u64 {
        self.websockets_open.get().max(0) as u64
    }

    /// WebSockets opened so far.
    pub fn websockets_total(&self) -> u64 {
        self.websockets_total.get()
    }

    /// The counters `polyhost status` shows, as plain values (what the
    /// router process reports to the supervisor, `privsep`).
    pub fn counters(&self) -> SiteCounters {
        SiteCounters {
            requests: self.requests(),
            responses_5xx: self.responses_5xx(),
            in_flight: self.in_flight(),
            websockets_open: self.websockets_open(),
            websockets_total: self.websockets_total(),
        }
    }
}

/// A site's status counters at one moment ([`SiteStats::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SiteCounters {
    pub requests: u64,
    pub responses_5xx: u64,
    pub in_flight: i64,
    pub websockets_open: u64,
    pub websockets_total: u64,
}

/// An open WebSocket; closed (counted down) when dropped.
pub struct WebSocketOpen<'a>(&'a Gauge);

impl Drop for WebSocketOpen<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The live handles of one site that a scrape reads (rendered by
/// `admin::metrics` with the site's status).
#[derive(Debug)]
pub struct SiteView {
    pub stats: std::sync::Arc<SiteStats>,
    /// Busy and total worker threads (Python admission: permits in use,
    /// processes × threads); `None` for sites without a thread pool.
    pub threads: Option<(u64, u64)>,
    /// The site runs PHP (its pool counters are shown).
    pub php: bool,
}

/// Ends an in-flight request when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_in_flight() {
        let s = SiteStats::default();
        for status in [101, 200, 204, 304, 404, 502, 999, 0] {
            s.record(status, Duration::from_millis(3));
        }
        assert_eq!(s.requests(), 8);
        assert_eq!(
            s.responses_5xx(),
            2,
            "502 and out-of-range 999 count as 5xx"
        );
        assert_eq!(s.by_class[0].get(), 2, "0 clamps to 1xx");
        let g = s.begin();
        assert_eq!(s.in_flight(), 1);
        drop(g);
        assert_eq!(s.in_flight(), 0);
        let (a, b) = (s.websocket_opened(), s.websocket_opened());
        assert_eq!((s.websockets_open(), s.websockets_total()), (2, 2));
        drop((a, b));
        let c = s.websocket_opened();
        assert_eq!((s.websockets_open(), s.websockets_total()), (1, 3));
        drop(c);
        assert_eq!(s.websockets_open(), 0);
    }
}
