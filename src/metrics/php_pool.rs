//! What a PHP site's FastCGI connection pool did (`upstream::php::pool`):
//! counters bumped by the pool, read by `/metrics` and the tests. One set
//! per site, held by its [`SiteStats`](super::SiteStats), so the counts
//! survive reloads and restarts (the pool itself is rebuilt with each
//! route).

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters; bumped with relaxed atomics (no order between them).
#[derive(Debug, Default)]
pub struct PhpPoolCounters {
    reused: AtomicU64,
    opened: AtomicU64,
    retired: AtomicU64,
    warmed: AtomicU64,
    warm_failed: AtomicU64,
    waited: AtomicU64,
    found_closed: AtomicU64,
    resent: AtomicU64,
    handed: AtomicU64,
}

/// A snapshot of [`PhpPoolCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhpPoolStats {
    /// Kept-alive connections taken from the pool: requests sent on one,
    /// and the ones a POST closed to open its own in their place.
    pub reused: u64,
    /// Connections a request opened itself (no pooled one was left, or the
    /// request could not be sent again: POST, large body).
    pub opened: u64,
    /// Connections retired after their child's `max_requests`-th response.
    pub retired: u64,
    /// Successors: connections opened while a connection's last request was
    /// running and pooled once a live child had accepted them (read their
    /// probe), so the request after a retirement finds one ready.
    pub warmed: u64,
    /// Successors that no child accepted in time, or whose connect failed.
    pub warm_failed: u64,
    /// Requests that found no pooled connection while a successor was on
    /// its way and waited for the first connection back in the pool instead
    /// of opening one (which only a child not yet forked could accept).
    pub waited: u64,
    /// Idle connections found closed by php-fpm when taken (never used).
    pub found_closed: u64,
    /// Requests sent again on a fresh connection because their kept-alive
    /// one was closed by php-fpm before it answered.
    pub resent: u64,
    /// Queued requests written onto a kept-alive connection the moment its
    /// previous answer had been read, and handed that connection.
    pub handed: u64,
}

/// Which counter to bump.
#[derive(Clone, Copy, Debug)]
pub enum PoolEvent {
    Reused,
    Opened,
    Retired,
    Warmed,
    WarmFailed,
    Waited,
    FoundClosed,
    Resent,
    Handed,
}

impl PhpPoolCounters {
    pub fn count(&self, event: PoolEvent) {
        let c = match event {
            PoolEvent::Reused => &self.reused,
            PoolEvent::Opened => &self.opened,
            PoolEvent::Retired => &self.retired,
            PoolEvent::Warmed => &self.warmed,
            PoolEvent::WarmFailed => &self.warm_failed,
            PoolEvent::Waited => &self.waited,
            PoolEvent::FoundClosed => &self.found_closed,
            PoolEvent::Resent => &self.resent,
            PoolEvent::Handed => &self.handed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PhpPoolStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PhpPoolStats {
            reused: get(&self.reused),
            opened: get(&self.opened),
            retired: get(&self.retired),
            warmed: get(&self.warmed),
            warm_failed: get(&self.warm_failed),
            waited: get(&self.waited),
            found_closed: get(&self.found_closed),
            resent: get(&self.resent),
            handed: get(&self.handed),
        }
    }
}

impl PhpPoolStats {
    /// Every counter with its `/metrics` family name (`_total` is added)
    /// and help text, in a fixed order.
    pub fn named(&self) -> [(&'static str, &'static str, u64); 9] {
        [
            ("polyhost_php_requests_reused", "Kept-alive php-fpm connections taken from the pool (for a request, or closed for a POST).", self.reused),
            ("polyhost_php_connections_opened", "php-fpm connections a request opened itself.", self.opened),
            ("polyhost_php_connections_retired", "php-fpm connections retired after their child's max_requests-th response.", self.retired),
            ("polyhost_php_connections_warmed", "Successor connections accepted by a live php-fpm child before a retirement.", self.warmed),
            ("polyhost_php_connections_warm_failed", "Successor connections no php-fpm child accepted in time.", self.warm_failed),
            ("polyhost_php_requests_waited", "Requests that waited for a pooled php-fpm connection while a successor was on its way.", self.waited),
            ("polyhost_php_connections_found_closed", "Idle php-fpm connections found closed when taken.", self.found_closed),
            ("polyhost_php_requests_resent", "Requests sent again because their kept-alive php-fpm connection was closed.", self.resent),
            ("polyhost_php_requests_handed", "Queued requests written onto a php-fpm connection as soon as its previous answer was read.", self.handed),
        ]
    }
}
