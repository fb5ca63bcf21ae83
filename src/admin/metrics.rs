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
//! `restarts_total`, `oom_kills_total`, `site_state{site,state}`,
//! `site_config_not_applied`; PHP sites
//! only, what the FastCGI connection pool did (`metrics::PhpPoolStats`):
//! `php_requests_reused_total`, `php_connections_opened_total`,
//! `php_connections_retired_total`, `php_connections_warmed_total`,
//! `php_connections_warm_failed_total`, `php_requests_waited_total`,
//! `php_connections_found_closed_total`, `php_requests_resent_total`,
//! `php_requests_handed_total`; server-wide:
//! `connections_accepted_total`, `connections_open`, `reloads_total{result}`,
//! `uptime_seconds`, `info{version,limits}`; on a cluster node
//! `cluster_etcd_connected{node}`; with `[acme] on_demand`
//! (`acme::on_demand`): `on_demand_certificates`,
//! `on_demand_certificate_expiry_seconds{name}`,
//! `on_demand_asks_total{result}` (`allowed`, `denied`, `error`),
//! `on_demand_rate_limited_total`, `on_demand_client_limited_total`,
//! `on_demand_busy_total`, `on_demand_orders_total{result}`, and the
//! router's (`metrics::on_demand::ROUTER_ON_DEMAND`)
//! `on_demand_handshakes_refused_total{reason}` (`refused_recently`,
//! `too_many_waiting`), `on_demand_handshakes_waiting`.

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

/// One site as the router's families need it (what the router process
/// has of a site: no process state).
#[derive(Debug)]
pub struct RouterSiteView {
    pub name: String,
    /// An ASGI site: its WebSocket families are shown.
    pub asgi: bool,
    pub view: SiteView,
}

/// Scrapes `server`: one published snapshot, never waits for a control
/// operation in progress. With a router process (`privsep`), the families
/// of requests and connections are the router's, asked of it; if it does
/// not answer, they are left out of this scrape rather than shown as this
/// process's zeros.
pub async fn scrape(server: &Server) -> String {
    let (status, sites) = server.status_with_handles().await;
    let (routed, router_on_demand) = match server.router_stats().await {
        Some(reply) => (reply.metrics, Some(reply.on_demand)),
        None if server.has_router() => (String::new(), None),
        None => (
            router_families(router_views(&status, sites)),
            Some(local_router_on_demand()),
        ),
    };
    routed + &supervisor_families(status) + &on_demand_families(router_on_demand)
}

/// The on-demand counters of the router in this process.
fn local_router_on_demand() -> crate::metrics::on_demand::RouterOnDemandSnapshot {
    crate::metrics::on_demand::router_snapshot(crate::router::tls::on_demand_waiting())
}

/// Renders a scrape of one process that both routes and supervises.
pub fn render(view: View) -> String {
    let View { status, sites } = view;
    router_families(router_views(&status, sites))
        + &supervisor_families(status)
        + &on_demand_families(Some(local_router_on_demand()))
}

/// The families of on-demand TLS, when it is on (else nothing); the
/// router's when it answered.
fn on_demand_families(router: Option<crate::metrics::on_demand::RouterOnDemandSnapshot>) -> String {
    match crate::metrics::on_demand::snapshot() {
        Some(s) => encode(OnDemandScrape(s, router)),
        None => String::new(),
    }
}

#[derive(Debug)]
struct OnDemandScrape(
    crate::metrics::on_demand::OnDemandSnapshot,
    Option<crate::metrics::on_demand::RouterOnDemandSnapshot>,
);

impl Collector for OnDemandScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Res {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        gauge(s.certificates.len() as u64).encode(enc.encode_descriptor(
            "polyhost_on_demand_certificates",
            "On-demand certificates held.",
            None,
            Gauge,
        )?)?;
        let mut family = enc.encode_descriptor(
            "polyhost_on_demand_certificate_expiry_seconds",
            "Seconds until each on-demand certificate expires.",
            None,
            Gauge,
        )?;
        for (name, not_after) in &s.certificates {
            ConstGauge::new(not_after - unix_now())
                .encode(family.encode_family(&[("name", name.as_str())])?)?;
        }
        let mut family = enc.encode_descriptor(
            "polyhost_on_demand_asks",
            "Calls of acme.ask, by answer.",
            None,
            Counter,
        )?;
        for (result, n) in [
            ("allowed", s.asks_allowed),
            ("denied", s.asks_denied),
            ("error", s.ask_errors),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
        }
        ConstCounter::new(s.rate_limited).encode(enc.encode_descriptor(
            "polyhost_on_demand_rate_limited",
            "New names refused by acme.on_demand_rate (not asked).",
            None,
            Counter,
        )?)?;
        ConstCounter::new(s.client_limited).encode(enc.encode_descriptor(
            "polyhost_on_demand_client_limited",
            "New names refused: their client spent its share of acme.on_demand_rate (not asked).",
            None,
            Counter,
        )?)?;
        ConstCounter::new(s.busy).encode(enc.encode_descriptor(
            "polyhost_on_demand_busy",
            "New names refused: acme.on_demand_concurrency asks and orders ran (not asked).",
            None,
            Counter,
        )?)?;
        if let Some(r) = &self.1 {
            encode_router_on_demand(&mut enc, r)?;
        }
        let mut family = enc.encode_descriptor(
            "polyhost_on_demand_orders",
            "ACME orders of on-demand certificates (renewals included), by outcome.",
            None,
            Counter,
        )?;
        for (result, n) in [
            ("issued", s.orders - s.orders_failed),
            ("failed", s.orders_failed),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// The router's on-demand families.
fn encode_router_on_demand(
    enc: &mut DescriptorEncoder,
    r: &crate::metrics::on_demand::RouterOnDemandSnapshot,
) -> Res {
    {
        let mut family = enc.encode_descriptor(
            "polyhost_on_demand_handshakes_refused",
            "Handshakes for on-demand names the router refused without asking the supervisor, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("refused_recently", r.refused_recently),
            ("too_many_waiting", r.too_many_waiting),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
    }
    gauge(r.waiting).encode(enc.encode_descriptor(
        "polyhost_on_demand_handshakes_waiting",
        "Handshakes waiting for an on-demand certificate now.",
        None,
        MetricType::Gauge,
    )?)
}

fn router_views(status: &ServerStatus, sites: Vec<SiteView>) -> Vec<RouterSiteView> {
    status
        .sites
        .iter()
        .zip(sites)
        .map(|(s, view)| RouterSiteView {
            name: s.name.clone(),
            asgi: asgi(s),
            view,
        })
        .collect()
}

/// The families the router's counters make: requests, durations, queue
/// waits, in flight, WebSockets, worker threads, PHP pools, connections
/// (what a router process sends in its `StatsReply::metrics`).
pub fn router_families(sites: Vec<RouterSiteView>) -> String {
    encode(RouterScrape(sites))
}

/// The families of processes and of the server: processes, memory,
/// restarts, OOM kills, site state, reloads, uptime, version.
pub fn supervisor_families(status: ServerStatus) -> String {
    encode(SupervisorScrape(status))
}

fn encode(collector: impl Collector + 'static) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be our bug.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

type Res = Result<(), std::fmt::Error>;

/// One metric family with a value per site.
fn per_site<'s, S: 's, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    sites: impl Iterator<Item = (&'s str, &'s S)>,
    (name, help, kind): (&str, &str, MetricType),
    value: impl Fn(&S) -> Option<M>,
) -> Res {
    let mut family = enc.encode_descriptor(name, help, None, kind)?;
    for (site, s) in sites {
        if let Some(metric) = value(s) {
            metric.encode(family.encode_family(&[("site", site)])?)?;
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

#[derive(Debug)]
struct RouterScrape(Vec<RouterSiteView>);

impl RouterScrape {
    fn sites(&self) -> impl Iterator<Item = (&str, &RouterSiteView)> {
        self.0.iter().map(|s| (s.name.as_str(), s))
    }
}

impl Collector for RouterScrape {
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
            for (site, s) in self.sites() {
                for (class, counter) in CLASSES.iter().zip(&s.view.stats.by_class) {
                    let labels = [("site", site), ("class", class)];
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let families: [(&str, &str, MetricType); 2] = [
            (
                "polyhost_request_duration_seconds",
                "Time from the request head to the response head.",
                Histogram,
            ),
            (
                "polyhost_queue_wait_seconds",
                "Time requests waited for a free worker thread.",
                Histogram,
            ),
        ];
        per_site(e, self.sites(), families[0], |s| {
            Some(s.view.stats.duration.clone())
        })?;
        per_site(e, self.sites(), families[1], |s| {
            s.view.threads.map(|_| s.view.stats.queue_wait.clone())
        })?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_requests_in_flight",
                "Requests being handled (until their response head).",
                Gauge,
            ),
            |s| Some(s.view.stats.in_flight.clone()),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_websockets_open",
                "WebSockets open now (ASGI sites).",
                Gauge,
            ),
            |s| s.asgi.then(|| gauge(s.view.stats.websockets_open())),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_websockets",
                "WebSockets opened (ASGI sites).",
                Counter,
            ),
            |s| {
                s.asgi
                    .then(|| ConstCounter::new(s.view.stats.websockets_total()))
            },
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_worker_threads_busy",
                "Worker threads handling a request.",
                Gauge,
            ),
            |s| s.view.threads.map(|(busy, _)| gauge(busy)),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_worker_threads_total",
                "Worker threads configured (processes x threads; ASGI: processes x max_concurrency).",
                Gauge,
            ),
            |s| s.view.threads.map(|(_, total)| gauge(total)),
        )?;
        let pools: Vec<_> = self
            .sites()
            .filter(|(_, s)| s.view.php)
            .map(|(site, s)| (site, s.view.stats.php_pool().snapshot().named()))
            .collect();
        for i in 0..pools.first().map_or(0, |(_, n)| n.len()) {
            let (name, help, _) = pools[0].1[i];
            let mut family = e.encode_descriptor(name, help, None, Counter)?;
            for (site, named) in &pools {
                ConstCounter::new(named[i].2).encode(family.encode_family(&[("site", *site)])?)?;
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
        CONNECTIONS.moved.encode(e.encode_descriptor(
            "polyhost_connections_moved",
            "Client connections moved to another router thread between two requests (the lanes' balancer).",
            None,
            Counter,
        )?)?;
        encode_kept_files(e, crate::metrics::kept_files::snapshot())
    }
}

/// The router threads' kept small files (`upstream::static_files::hot`).
fn encode_kept_files(
    e: &mut DescriptorEncoder,
    k: crate::metrics::kept_files::KeptSnapshot,
) -> Res {
    use MetricType::{Counter, Gauge};
    let families = [
        (
            "polyhost_static_kept_files",
            "Small static files the router threads keep in memory now.",
            Gauge,
            k.files,
        ),
        (
            "polyhost_static_kept_bytes",
            "Bytes those files take (contents, paths, headers).",
            Gauge,
            k.bytes,
        ),
        (
            "polyhost_static_kept_answers",
            "Requests answered from a kept file (found unchanged).",
            Counter,
            k.answers,
        ),
        (
            "polyhost_static_kept_stored",
            "Files read into memory to be kept.",
            Counter,
            k.stored,
        ),
    ];
    for (name, help, kind, v) in families {
        let metric = e.encode_descriptor(name, help, None, kind)?;
        match kind {
            Counter => ConstCounter::new(v).encode(metric)?,
            _ => gauge(v).encode(metric)?,
        }
    }
    let mut family = e.encode_descriptor(
        "polyhost_static_kept_dropped",
        "Kept files dropped, by reason: changed (found changed or gone at a request's check), evicted (for room).",
        None,
        Counter,
    )?;
    for (reason, n) in [("changed", k.changed), ("evicted", k.evicted)] {
        ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
    }
    Ok(())
}

#[derive(Debug)]
struct SupervisorScrape(ServerStatus);

impl SupervisorScrape {
    fn sites(&self) -> impl Iterator<Item = (&str, &SiteStatus)> {
        self.0.sites.iter().map(|s| (s.name.as_str(), s))
    }
}

impl Collector for SupervisorScrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Res {
        use MetricType::{Counter, Gauge};
        let e = &mut enc;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_certificate_expiry_seconds",
                "Seconds until the site's certificate expires (ACME or file; negative: expired).",
                Gauge,
            ),
            |s| {
                s.certificate_not_after
                    .map(|t| ConstGauge::new(t - unix_now()))
            },
        )?;
        per_site(
            e,
            self.sites(),
            ("polyhost_processes", "Live processes of the site.", Gauge),
            |s| Some(gauge(s.processes as u64)),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_memory_bytes",
                "Memory used by the site's processes (cgroup).",
                Gauge,
            ),
            |s| s.memory_bytes.map(gauge),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_memory_limit_bytes",
                "Memory limit of the site (limits.memory).",
                Gauge,
            ),
            |s| s.memory_limit_bytes.map(gauge),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_restarts",
                "Process restarts after crashes (current generation).",
                Counter,
            ),
            |s| Some(ConstCounter::new(s.restarts)),
        )?;
        per_site(
            e,
            self.sites(),
            (
                "polyhost_oom_kills",
                "Processes killed for exceeding limits.memory.",
                Counter,
            ),
            |s| Some(ConstCounter::new(s.oom_kills)),
        )?;
        {
            let mut family = e.encode_descriptor(
                "polyhost_site_state",
                "1 for the state the site is in.",
                None,
                Gauge,
            )?;
            for (site, s) in self.sites() {
                let labels = [("site", site), ("state", s.state.as_str())];
                ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
            }
        }
        per_site(
            e,
            self.sites(),
            (
                "polyhost_site_config_not_applied",
                "1 while the site serves its previous configuration because its latest could not be applied (status says why).",
                Gauge,
            ),
            |s| Some(gauge(u64::from(s.not_applied.is_some()))),
        )?;
        let s = &self.0;
        {
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
        if let Some(cluster) = &s.cluster {
            let mut family = e.encode_descriptor(
                "polyhost_cluster_etcd_connected",
                "1 while this cluster node is connected to etcd, else 0.",
                None,
                Gauge,
            )?;
            ConstGauge::new(i64::from(cluster.etcd_connected))
                .encode(family.encode_family(&[("node", cluster.node.as_str())])?)?;
        }
        gauge(s.uptime_seconds).encode(e.encode_descriptor(
            "polyhost_uptime_seconds",
            "Seconds since polyhost started.",
            None,
            Gauge,
        )?)?;
        {
            let mut family =
                e.encode_descriptor("polyhost_info", "polyhost's version.", None, Gauge)?;
            let labels = [
                ("version", s.version.as_str()),
                ("limits", s.limits_backend.as_str()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
