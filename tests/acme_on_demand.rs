//! On-demand TLS (issue 25) against Debian's `pebble`: a default site with
//! `[tls] on_demand = true` serves names no site lists; the first handshake
//! for such a name waits while polyhost asks the test's `ask` endpoint
//! (a small HTTP server here that records every call) and orders the
//! certificate, then completes with it. A denied name fails its handshake
//! and orders nothing; denials are cached; a scanner's random names make at
//! most `on_demand_rate` ask calls and orders; a restart serves the stored
//! certificate without asking or ordering. The router refuses a refused
//! name alone, holds at most `on_demand_waiting` handshakes, the
//! supervisor asks about at most `on_demand_concurrency` names at once,
//! and one client spends at most half of `on_demand_rate`. The tests run
//! as root, so polyhost runs split (the router holds the handshake and
//! asks the supervisor over the privsep link).

mod acme_support;
mod common;

use std::sync::{Arc, Mutex};

use acme_support::*;
use common::front::{tls_client_config, tls_connect};
use common::{Binary, TestConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `ask` endpoint: allows the names that start with `ok`, records
/// every name asked about; holds its answer about a name that starts with
/// `slow` until [`Ask::release`] (then denies it).
struct Ask {
    port: u16,
    calls: Arc<Mutex<Vec<String>>>,
    release: tokio::sync::watch::Sender<bool>,
    _task: tokio::task::JoinHandle<()>,
}

impl Ask {
    async fn start() -> Ask {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = calls.clone();
        let (release, released) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(answer(stream, record.clone(), released.clone()));
            }
        });
        Ask {
            port,
            calls,
            release,
            _task: task,
        }
    }

    /// The held answers about `slow…` names go out (denials).
    fn release(&self) {
        self.release.send_replace(true);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    calls: Arc<Mutex<Vec<String>>>,
    mut released: tokio::sync::watch::Receiver<bool>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("");
    let domain = target
        .split_once("domain=")
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let status = if domain.starts_with("ok") && target.starts_with("/allowed?") {
        "200 OK"
    } else {
        "403 Forbidden"
    };
    calls.lock().unwrap().push(domain.clone());
    if domain.starts_with("slow") {
        let _ = released.wait_for(|r| *r).await;
    }
    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(reply.as_bytes()).await;
}

/// pebble, the ask endpoint and a `polyhost.toml` with on-demand TLS at
/// `rate`, and a default site `panel` that opts in.
async fn setup(rate: &str, challenges: &str) -> (TestConfig, Pebble, Ask, u16) {
    setup_with(rate, challenges, None).await
}

/// As [`setup`], pebble's certificates valid `validity` seconds.
async fn setup_with(
    rate: &str,
    challenges: &str,
    validity: Option<u64>,
) -> (TestConfig, Pebble, Ask, u16) {
    require_pebble();
    let (http, https) = (free_port(), free_port());
    let cfg = TestConfig::new();
    let pebble = Pebble::start(cfg.path(), http, https, validity).await;
    let ask = Ask::start().await;
    write_main(&cfg, &pebble, http, https, pebble.port);
    cfg.main_extra(&format!(
        "on_demand = true\nask = \"http://127.0.0.1:{}/allowed\"\non_demand_rate = \"{rate}\"\nchallenges = {challenges}",
        ask.port
    ));
    cfg.static_site(
        "panel",
        &["panel.test"],
        "default = true\n[tls]\non_demand = true",
    );
    (cfg, pebble, ask, https)
}

/// One handshake naming `name`: the chain served, or the error.
async fn handshake(
    https: u16,
    name: &str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    let addr = format!("127.0.0.1:{https}").parse().unwrap();
    match tls_connect(addr, name, &["http/1.1"]).await {
        Ok(tls) => Ok(tls.get_ref().1.peer_certificates().unwrap().to_vec()),
        Err(e) => Err(e.to_string()),
    }
}

/// One handshake naming `name` from the local address `from`: whether it
/// got a certificate.
async fn handshake_from(https: u16, from: &str, name: &str) -> Result<(), String> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .map_err(|e| format!("bind {from}: {e}"))?;
    let tcp = socket
        .connect(format!("127.0.0.1:{https}").parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(&["http/1.1"]));
    let sni = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    connector
        .connect(sni, tcp)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Polls `/metrics` (bounded) until `prefix`'s value is `want`.
async fn wait_metric(cfg: &TestConfig, prefix: &str, want: u64) {
    let mut last = String::new();
    for _ in 0..200 {
        last = metrics(cfg).await;
        if metric(&last, prefix) == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{prefix} never reached {want}; last scrape:\n{last}");
}

/// Polls (bounded) until `ask` was asked about `name`.
async fn wait_asked(ask: &Ask, name: &str, polyhost: &Binary) {
    for _ in 0..500 {
        if ask.calls().iter().any(|c| c == name) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "{name} was never asked about: {:?}\n{}",
        ask.calls(),
        polyhost.log()
    );
}

/// The value of the metric line starting with `prefix` (`None`: absent).
fn metric(metrics: &str, prefix: &str) -> Option<u64> {
    let line = metrics.lines().find(|l| l.starts_with(prefix))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn an_allowed_name_is_certified_in_its_first_handshake_a_denied_one_fails_and_a_restart_keeps_it(
) {
    let (cfg, pebble, ask, https) = setup("10/min", "[\"http-01\"]").await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;

    let chain = handshake(https, "ok1.customer.test")
        .await
        .unwrap_or_else(|e| panic!("the first handshake failed: {e}\n{}", polyhost.log()));
    verify(&chain, pebble.root().await, "ok1.customer.test");
    assert_eq!(ask.calls(), ["ok1.customer.test"]);
    assert_eq!(orders_seen(&cfg), 1);

    // Denied: the handshake fails, nothing is ordered; later handshakes
    // for it are answered from the denial cache.
    for _ in 0..5 {
        let denied = handshake(https, "no1.customer.test").await;
        assert!(denied.is_err(), "a denied name got a certificate");
    }
    assert_eq!(ask.calls(), ["ok1.customer.test", "no1.customer.test"]);
    assert_eq!(orders_seen(&cfg), 1, "a denied name is not ordered");
    let m = metrics(&cfg).await;
    assert_eq!(
        metric(
            &m,
            "polyhost_on_demand_handshakes_refused_total{reason=\"refused_recently\"}"
        ),
        Some(4),
        "the 4 handshakes after the denial are refused by the router alone\n{m}"
    );
    // The status says so too, as a line and in JSON.
    let (code, out, err) = common::polyhost_cli(&cfg.main(), &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("handshakes: 0 waiting, 4 refused for a name refused recently"),
        "{out}"
    );
    let (_, json, _) = common::polyhost_cli(&cfg.main(), &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["on_demand"]["handshakes"]["refused_recently"], 4,
        "{json}"
    );
    // The name the site lists itself is no on-demand name.
    assert!(handshake(https, "panel.test").await.is_err());
    assert_eq!(ask.calls().len(), 2);

    let m = metrics(&cfg).await;
    assert_eq!(
        metric(&m, "polyhost_on_demand_certificates "),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(&m, "polyhost_on_demand_asks_total{result=\"denied\"}"),
        Some(1),
        "{m}"
    );
    assert!(
        m.contains("polyhost_on_demand_certificate_expiry_seconds{name=\"ok1.customer.test\"}"),
        "{m}"
    );
    polyhost.terminate().await;

    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let again = handshake(https, "ok1.customer.test")
        .await
        .unwrap_or_else(|e| panic!("after the restart: {e}\n{}", polyhost.log()));
    assert!(again[0] == chain[0], "the stored certificate is served");
    assert_eq!(orders_seen(&cfg), 1, "a restart orders nothing");
    assert_eq!(ask.calls().len(), 2, "nor asks again");
    polyhost.terminate().await;
}

/// The CA validates over TLS-ALPN-01: its validation handshake (a
/// connection of its own, offering `acme-tls/1` alone) is answered while
/// the customer's handshake for the same name is held.
#[tokio::test]
async fn an_on_demand_name_is_validated_over_tls_alpn01_while_its_handshake_waits() {
    let (cfg, pebble, ask, https) = setup("10/min", "[\"tls-alpn-01\"]").await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let chain = handshake(https, "ok-alpn.customer.test")
        .await
        .unwrap_or_else(|e| panic!("the handshake failed: {e}\n{}", polyhost.log()));
    verify(&chain, pebble.root().await, "ok-alpn.customer.test");
    assert_eq!(ask.calls(), ["ok-alpn.customer.test"]);
    assert_eq!(orders_seen(&cfg), 1);
    polyhost.terminate().await;
}

/// 100 concurrent handshakes for random allowed names from one client: at
/// most its share of `on_demand_rate` (3 per hour: 2) ask calls and
/// orders; the names beyond it fail their handshake, each refused by one
/// of the limits (rate, the client's share, concurrent asks, waiting
/// handshakes).
#[tokio::test]
async fn a_scanner_makes_at_most_the_rate_limit_of_ask_calls_and_orders() {
    let (cfg, _pebble, ask, https) = setup("3/h", "[\"http-01\"]").await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    // Ready: the listener answers (a refused handshake for the site's own name).
    let _ = handshake(https, "panel.test").await;
    let seed = std::process::id();
    let tries: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move { handshake(https, &format!("ok{seed}-{i}.scan.test")).await })
        })
        .collect();
    let mut served = 0;
    for t in tries {
        if t.await.unwrap().is_ok() {
            served += 1;
        }
    }
    let calls = ask.calls();
    assert!(
        !calls.is_empty() && calls.len() <= 2,
        "ask calls: {calls:?}\n{}",
        polyhost.log()
    );
    let orders = orders_seen(&cfg);
    assert!(orders <= 2, "orders pebble saw: {orders}");
    assert!(served <= 2, "handshakes that got a certificate: {served}");
    let m = metrics(&cfg).await;
    let limited: u64 = [
        "polyhost_on_demand_rate_limited_total",
        "polyhost_on_demand_client_limited_total",
        "polyhost_on_demand_busy_total",
        "polyhost_on_demand_handshakes_refused_total{reason=\"too_many_waiting\"}",
    ]
    .iter()
    .map(|m_| metric(&m, m_).unwrap_or(0))
    .sum();
    assert!(
        limited >= 100 - calls.len() as u64,
        "refused by a limit: {limited}\n{m}"
    );
    polyhost.terminate().await;
}

/// pebble issues 40 s certificates: an on-demand certificate is renewed
/// like a site's (`renew_before`: a third of the lifetime), after asking
/// `ask` again, and the router serves the new one (pushed to it).
#[tokio::test]
async fn an_on_demand_certificate_is_renewed_after_asking_again() {
    let (cfg, pebble, ask, https) = setup_with("10/min", "[\"http-01\"]", Some(40)).await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let first = handshake(https, "ok-renew.customer.test")
        .await
        .unwrap_or_else(|e| panic!("the first handshake failed: {e}\n{}", polyhost.log()));
    let mut renewed = None;
    for _ in 0..900 {
        let chain = handshake(https, "ok-renew.customer.test").await.unwrap();
        if chain[0] != first[0] {
            renewed = Some(chain);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let renewed = renewed.unwrap_or_else(|| panic!("not renewed; log:\n{}", polyhost.log()));
    verify(&renewed, pebble.root().await, "ok-renew.customer.test");
    let calls = ask.calls();
    assert!(calls.len() >= 2, "asked again before renewing: {calls:?}");
    assert!(
        calls.iter().all(|c| c == "ok-renew.customer.test"),
        "{calls:?}"
    );
    polyhost.terminate().await;
}

/// `on_demand_concurrency = 1`: while one name is being asked about (the
/// ask endpoint holds its answer), another new name is refused at once,
/// not asked. `on_demand_waiting = 2`: with two handshakes held (the second
/// waits behind the first one's name), a third is refused by the router
/// at once, never reaching the supervisor.
#[tokio::test]
async fn the_waiting_handshakes_and_the_concurrent_asks_are_capped() {
    let (cfg, _pebble, ask, https) = setup("100/min", "[\"http-01\"]").await;
    // The longest ask_timeout, so the held ask outlasts the steps below
    // on a busy machine; the test releases it at the end.
    cfg.main_extra("on_demand_waiting = 2\non_demand_concurrency = 1\nask_timeout = \"25s\"");
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let _ = handshake(https, "panel.test").await;

    let first = tokio::spawn(handshake(https, "slow-a.customer.test"));
    wait_asked(&ask, "slow-a.customer.test", &polyhost).await;
    let busy = handshake(https, "ok-b.customer.test").await;
    assert!(busy.is_err(), "a second new name got a certificate");
    let m = metrics(&cfg).await;
    assert_eq!(metric(&m, "polyhost_on_demand_busy_total"), Some(1), "{m}");

    let second = tokio::spawn(handshake(https, "slow-a.customer.test"));
    wait_metric(&cfg, "polyhost_on_demand_handshakes_waiting", 2).await;
    let over = handshake(https, "ok-c.customer.test").await;
    assert!(over.is_err(), "a third waiting handshake got a certificate");
    let m = metrics(&cfg).await;
    assert_eq!(
        metric(
            &m,
            "polyhost_on_demand_handshakes_refused_total{reason=\"too_many_waiting\"}"
        ),
        Some(1),
        "{m}"
    );
    assert_eq!(metric(&m, "polyhost_on_demand_busy_total"), Some(1), "{m}");

    // The held ask is denied: both waiting handshakes fail.
    ask.release();
    assert!(first.await.unwrap().is_err());
    assert!(second.await.unwrap().is_err());
    assert_eq!(
        ask.calls(),
        ["slow-a.customer.test"],
        "neither refused name was asked about"
    );
    assert_eq!(orders_seen(&cfg), 0);
    polyhost.terminate().await;
}

/// `on_demand_rate = "4/h"`: one client (127.0.0.2) gets at most half of
/// it (2 new names asked about); another client (127.0.0.3) is still asked
/// about after it.
#[tokio::test]
async fn one_client_spends_at_most_half_of_the_rate() {
    let (cfg, _pebble, ask, https) = setup("4/h", "[\"http-01\"]").await;
    let polyhost = Binary::start(&cfg.main(), &[]).await;
    let _ = handshake(https, "panel.test").await;
    for i in 0..4 {
        let name = format!("no{i}.scan.test");
        let got = handshake_from(https, "127.0.0.2", &name).await;
        assert!(got.is_err(), "a denied name got a certificate");
    }
    assert_eq!(
        ask.calls(),
        ["no0.scan.test", "no1.scan.test"],
        "the scanner's share: 2 of 4\n{}",
        polyhost.log()
    );
    let other = handshake_from(https, "127.0.0.3", "no-other.customer.test").await;
    assert!(other.is_err());
    assert!(
        ask.calls().iter().any(|c| c == "no-other.customer.test"),
        "another client's new name is asked about: {:?}",
        ask.calls()
    );
    let m = metrics(&cfg).await;
    assert_eq!(
        metric(&m, "polyhost_on_demand_client_limited_total"),
        Some(2),
        "{m}"
    );
    assert_eq!(
        metric(&m, "polyhost_on_demand_rate_limited_total"),
        Some(0),
        "{m}"
    );
    polyhost.terminate().await;
}
