//! The scrape behind `GET /metrics`: renders a [`View`] (a status snapshot
//! plus every site's hot-path handles, [`SiteView`]) in the Prometheus text
//! format (version 0.0.4) with `prometheus-client`. It lives next to the API
//! that serves it: it reads [`crate::app::status`], and `metrics` (below the
//! router) only defines the handles it reads. Gauges that describe processes (count, memory,
//! restarts, OOM kills) are read from the status at scrape time, so nothing
//! on the request path keeps them up to date.
//!
//! Names (all prefixed `polyhost_`), labels `site` unless noted:
//! `requests_total{site,class}`, `request_duration_seconds`,
//! `queue_wait_seconds`, `requests_in_flight`, `websockets_open` and
//! `websockets_total` (ASGI sites), `worker_threads_busy`,
//! `worker_threads_total`, `processes`, `memory_bytes`, `memory_limit_bytes`,
//! `restarts_total`, `oom_kills_total`, `site_state{site,state}`; PHP sites
//! only, what the FastCGI connection pool did (`metrics::PhpPoolStats`):
//! `php_requests_reused_total`, `php_connections_opened_total`,
//! `php_connections_retired_total`, `php_connections_warmed_total`,
//! `php_connections_warm_failed_total`, `php_requests_waited_total`,
//! `php_connections_found_closed_total`, `php_requests_resent_total`; server-wide:
//! `connections_accepted_total`, `connections_open`, `reloads_total{result}`,
//! `uptime_seconds`, `info{version,limits}`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::app::status::{ServerStatus, SiteStatus};
use crate::app::Server;
use crate::metrics::connections::CONNECTIONS;
use crate::metrics::site::CLASSES;
pub use crate::metrics::SiteView;

/// Whether a site is an ASGI one (its WebSocket metrics are shown).
fn asgi(s: &SiteStatus) -> bool {
    s.interface.as_deref() == Some("asgi")
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape shows.
#[derive(Debug)]
pub struct View {
    pub status: ServerStatus,
    /// One per `status.sites`, in the same order.
    pub sites: Vec<SiteView>,
}

/// Scrapes `server`: one published snapshot, never waits for a control
/// operation in progress.
pub async fn scrape(server: &Server) -> String {
    let (status, sites) = server.status_with_handles().await;
    render(View { status, sites })
}

/// Renders a scrape.
pub fn render(view: View) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(view)));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be our bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

#[derive(Debug)]
struct Scrape(View);

type Res = Result<(), std::fmt::Error>;

impl Scrape {
    fn sites(&self) -> impl Iterator<Item = (&SiteStatus, &SiteView)> {
        self.0.status.sites.iter().zip(&self.0.sites)
    }

    /// One metric family with a value per site.
    fn per_site<M: EncodeMetric>(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&SiteStatus, &SiteView) -> Option<M>,
    ) -> Res {
        let mut family = enc.encode_descriptor(name, help, None, kind)?;
        for (status, view) in self.sites() {
            if let Some(metric) = value(status, view) {
                let labels = [("site", status.name.as_str())];
                metric.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Res {
        use MetricType::{Counter, Gauge, Histogram};
        let e = &mut enc;
        {
            let mut family = e.encode_descriptor(
                "polyhost_requests",
                "Responses by site and status class.",
                None,
                Counter,
            )?;
            for (status, view) in self.sites() {
                for (class, counter) in CLASSES.iter().zip(&view.stats.by_class) {
                    let labels = [("site", status.name.as_str()), ("class", class)];
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        self.per_site(
            e,
            "polyhost_request_duration_seconds",
            "Time from the request head to the response head.",
            Histogram,
            |_, v| Some(v.stats.duration.clone()),
        )?;
        self.per_site(
            e,
            "polyhost_queue_wait_seconds",
            "Time requests waited for a free worker thread.",
            Histogram,
            |_, v| v.threads.map(|_| v.stats.queue_wait.clone()),
        )?;
        self.per_site(
            e,
            "polyhost_requests_in_flight",
            "Requests being handled (until their response head).",
            Gauge,
            |_, v| Some(v.stats.in_flight.clone()),
        )?;
        self.per_site(
            e,
            "polyhost_websockets_open",
            "WebSockets open now (ASGI sites).",
            Gauge,
            |s, v| asgi(s).then(|| gauge(v.stats.websockets_open())),
        )?;
        self.per_site(
            e,
            "polyhost_websockets",
            "WebSockets opened (ASGI sites).",
            Counter,
            |s, v| asgi(s).then(|| ConstCounter::new(v.stats.websockets_total())),
        )?;
        self.per_site(
            e,
            "polyhost_worker_threads_busy",
            "Worker threads handling a request.",
            Gauge,
            |_, v| v.threads.map(|(busy, _)| gauge(busy)),
        )?;
        self.per_site(
            e,
            "polyhost_worker_threads_total",
            "Worker threads configured (processes x threads; ASGI: processes x max_concurrency).",
            Gauge,
            |_, v| v.threads.map(|(_, total)| gauge(total)),
        )?;
        self.per_site(
            e,
            "polyhost_processes",
            "Live processes of the site.",
            Gauge,
            |s, _| Some(gauge(s.processes as u64)),
        )?;
        self.per_site(
            e,
            "polyhost_memory_bytes",
            "Memory used by the site's processes (cgroup).",
            Gauge,
            |s, _| s.memory_bytes.map(gauge),
        )?;
        self.per_site(
            e,
            "polyhost_memory_limit_bytes",
            "Memory limit of the site (limits.memory).",
            Gauge,
            |s, _| s.memory_limit_bytes.map(gauge),
        )?;
        self.per_site(
            e,
            "polyhost_restarts",
            "Process restarts after crashes (current generation).",
            Counter,
            |s, _| Some(ConstCounter::new(s.restarts)),
        )?;
        self.per_site(
            e,
            "polyhost_oom_kills",
            "Processes killed for exceeding limits.memory.",
            Counter,
            |s, _| Some(ConstCounter::new(s.oom_kills)),
        )?;
        let pools: Vec<_> = self
            .sites()
            .filter(|(_, v)| v.php)
            .map(|(s, v)| (s.name.as_str(), v.stats.php_pool().snapshot().named()))
            .collect();
        for i in 0..pools.first().map_or(0, |(_, n)| n.len()) {
            let (name, help, _) = pools[0].1[i];
            let mut family = e.encode_descriptor(name, help, None, Counter)?;
            for (site, named) in &pools {
                ConstCounter::new(named[i].2).encode(family.encode_family(&[("site", *site)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "polyhost_site_state",
                "1 for the state the site is in.",
                None,
                Gauge,
            )?;
            for (status, _) in self.sites() {
                let labels = [
                    ("site", status.name.as_str()),
                    ("state", status.state.as_str()),
                ];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        CONNECTIONS.accepted.encode(e.encode_descriptor(
            "polyhost_connections_accepted",
            "Client connections accepted.",
            None,
            Counter,
        )?)?;
        CONNECTIONS.open.encode(e.encode_descriptor(
            "polyhost_connections_open",
            "Client connections open now.",
            None,
            Gauge,
        )?)?;
        {
            let s = &self.0.status;
            let mut family = e.encode_descriptor(
                "polyhost_reloads",
                "Configuration reloads by result (ok, refused).",
                None,
                Counter,
            )?;
            ConstCounter::new(s.reloads).encode(family.encode_family(&[("result", "ok")])?)?;
            ConstCounter::new(s.reloads_failed)
                .encode(family.encode_family(&[("result", "refused")])?)?;
        }
        gauge(self.0.status.uptime_seconds).encode(e.encode_descriptor(
            "polyhost_uptime_seconds",
            "Seconds since polyhost started.",
            None,
            Gauge,
        )?)?;
        {
            let mut family =
                e.encode_descriptor("polyhost_info", "polyhost's version.", None, Gauge)?;
            let labels = [
                ("version", self.0.status.version.as_str()),
                ("limits", self.0.status.limits_backend.as_str()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
