//! The server-wide lines of the status table below its first line: a
//! cluster node's link to etcd and on-demand TLS. Every string from the
//! server goes through [`clean`] / [`cleaned`], as in the rest of `render`.

use super::{clean, cleaned};

/// `cluster: node web-3, etcd connected since 2026-12-06 01:02:03 UTC, applied revision 42`.
pub(super) fn cluster_line(c: &crate::app::status::ClusterLinkStatus) -> String {
    let since = utc_time(c.since_unix);
    let link = if c.etcd_connected {
        format!("etcd connected since {since}")
    } else {
        let why = c
            .error
            .as_deref()
            .map(|e| format!(" ({})", clean(e)))
            .unwrap_or_default();
        format!("etcd NOT connected since {since}{why}; serving the last applied state")
    };
    format!(
        "cluster: node {}, {link}, applied revision {}\n",
        clean(&c.node),
        c.applied_revision
    )
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_time(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// On-demand TLS in one line: its certificates (the first few names; all
/// in `status --json`), ask calls, rate-limited names, orders.
pub(super) fn on_demand_line(d: &crate::metrics::on_demand::OnDemandSnapshot) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<String> = d
        .certificates
        .keys()
        .take(SHOWN)
        .map(|n| cleaned(n))
        .collect();
    if d.certificates.len() > SHOWN {
        names.push("…".into());
    }
    let listed = if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    };
    let h = &d.handshakes;
    format!(
        "on-demand TLS: {} certificates{listed}; asks: {} allowed, {} denied, {} failed; new names refused: {} over the rate, {} over a client's share, {} while busy; orders: {} ({} failed); handshakes: {} waiting, {} refused for a name refused recently, {} for too many waiting\n",
        d.certificates.len(),
        d.asks_allowed,
        d.asks_denied,
        d.ask_errors,
        d.rate_limited,
        d.client_limited,
        d.busy,
        d.orders,
        d.orders_failed,
        h.waiting,
        h.refused_recently,
        h.too_many_waiting
    )
}
