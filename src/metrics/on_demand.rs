//! What on-demand TLS did (`acme::on_demand` records it; `/metrics` and
//! `polyhost status` read [`snapshot`]): the certificates held, the ask
//! calls by answer, the names refused by the rate limit, the orders.
//! Server-wide, in the supervisor; nothing on the request path.
//! [`ROUTER_ON_DEMAND`]: what the router's TLS handshakes did
//! (`router::tls`), counted in the router process (sent to the supervisor
//! in its `StatsReply`), only for names served on demand.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The counters; `enabled` once on-demand TLS started.
#[derive(Default)]
pub struct OnDemandStats {
    pub enabled: AtomicBool,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub ask_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    /// New names refused: their client spent its share of the rate.
    pub client_limited: AtomicU64,
    /// New names refused: `on_demand_concurrency` asks and orders ran.
    pub busy: AtomicU64,
    pub orders: AtomicU64,
    pub orders_failed: AtomicU64,
    /// Every certificate held: name → its end (Unix seconds).
    certificates: Mutex<BTreeMap<String, i64>>,
}

pub static ON_DEMAND: OnDemandStats = OnDemandStats {
    enabled: AtomicBool::new(false),
    allowed: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    ask_errors: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
    client_limited: AtomicU64::new(0),
    busy: AtomicU64::new(0),
    orders: AtomicU64::new(0),
    orders_failed: AtomicU64::new(0),
    certificates: Mutex::new(BTreeMap::new()),
};

/// On-demand TLS as metrics and status show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnDemandSnapshot {
    /// Every certificate held: name → its end (Unix seconds).
    pub certificates: BTreeMap<String, i64>,
    pub asks_allowed: u64,
    pub asks_denied: u64,
    pub ask_errors: u64,
    pub rate_limited: u64,
    #[serde(default)]
    pub client_limited: u64,
    #[serde(default)]
    pub busy: u64,
    pub orders: u64,
    pub orders_failed: u64,
    /// What the router's handshakes for on-demand names did (filled in by
    /// the status from the router process, or this one's router).
    #[serde(default)]
    pub handshakes: RouterOnDemandSnapshot,
}

impl OnDemandStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records certificate `name` (valid until `not_after`), or its removal.
    pub fn set_certificate(&self, name: &str, not_after: Option<i64>) {
        let mut certs = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        match not_after {
            Some(t) => certs.insert(name.to_owned(), t),
            None => certs.remove(name),
        };
    }
}

/// The counters now; `None` while on-demand TLS is off.
pub fn snapshot() -> Option<OnDemandSnapshot> {
    let s = &ON_DEMAND;
    if !s.enabled.load(Ordering::Relaxed) {
        return None;
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Some(OnDemandSnapshot {
        certificates: s
            .certificates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        asks_allowed: n(&s.allowed),
        asks_denied: n(&s.denied),
        ask_errors: n(&s.ask_errors),
        rate_limited: n(&s.rate_limited),
        client_limited: n(&s.client_limited),
        busy: n(&s.busy),
        orders: n(&s.orders),
        orders_failed: n(&s.orders_failed),
        handshakes: RouterOnDemandSnapshot::default(),
    })
}

/// What the router's handshakes for on-demand names did (`router::tls`).
#[derive(Default)]
pub struct RouterOnDemandStats {
    /// Refused by the router alone: the source refused the name recently.
    pub refused_recently: AtomicU64,
    /// Refused at once: `acme.on_demand_waiting` handshakes waited.
    pub too_many_waiting: AtomicU64,
}

pub static ROUTER_ON_DEMAND: RouterOnDemandStats = RouterOnDemandStats {
    refused_recently: AtomicU64::new(0),
    too_many_waiting: AtomicU64::new(0),
};

/// The router's on-demand counters, as it sends them to the supervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouterOnDemandSnapshot {
    pub refused_recently: u64,
    pub too_many_waiting: u64,
    /// Handshakes waiting for an answer now.
    pub waiting: u64,
}

/// The router's counters now (`waiting`: how many handshakes wait).
pub fn router_snapshot(waiting: usize) -> RouterOnDemandSnapshot {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    RouterOnDemandSnapshot {
        refused_recently: n(&ROUTER_ON_DEMAND.refused_recently),
        too_many_waiting: n(&ROUTER_ON_DEMAND.too_many_waiting),
        waiting: waiting as u64,
    }
}
