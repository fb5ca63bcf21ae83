//! One site cannot take the router away from the others by exhausting
//! file descriptors: the admin and metrics TCP listeners are capped (in all
//! and per client); `max_connections` is fitted under `RLIMIT_NOFILE`; at
//! EMFILE a spare descriptor lets the router accept and refuse. Each test
//! runs the real binary; attacks run as a site's user
//! (tests/exhaustion_support: the attacker) and stay on loopback. Client
//! connections: tests/local_clients.rs.

mod common;
mod exhaustion_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Binary, TestConfig, TestUser};
use exhaustion_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_the_metrics_port_leaves_the_router_its_descriptors() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    two_sites(&cfg, &user, "");
    cfg.main_extra("[metrics]\nlisten = \"127.0.0.1:0\"");
    // 256 descriptors: 300 held metrics connections would take them all.
    let (polyhost, metrics) = start(&cfg, Some(256)).await;
    let addr = polyhost.addr;
    let metrics = metrics.expect("metrics address");
    wait_for_attacker_site(addr, &polyhost).await;

    let port = metrics.port().to_string();
    let mut attacker = Attacker::start(&user, &["hold", &port, "300", "-", "-"]);
    let report = attacker.line().await;
    // The connections over the cap are closed right after accept.
    let closed_soon = common::eventually(Duration::from_secs(5), || async {
        open_fds(&polyhost) < 200
    })
    .await;
    assert!(
        closed_soon,
        "metrics connections held: {} fds open; {report}",
        open_fds(&polyhost)
    );
    for i in 0..20 {
        let status = other_site_answers(addr).await;
        assert_eq!(
            status,
            200,
            "request {i} of another site during the flood; {report}; log:\n{}",
            polyhost.log()
        );
    }
    attacker.stop().await;
    let m = common::get(metrics, "x", "/metrics").await;
    assert_eq!(m.status, 200, "metrics answer once the flood is over");
    finish(polyhost, &user).await;
}

/// What a GET of `/metrics` on a fresh connection to `addr` got back (with
/// `Authorization: Bearer token` when given, `Connection: close` when
/// `close`), read to its end; empty when refused, reset, or not ended
/// within 5 s.
async fn scrape(addr: SocketAddr, token: Option<&str>, close: bool) -> String {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut req = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
        if let Some(t) = token {
            req += &format!("Authorization: Bearer {t}\r\n");
        }
        if close {
            req += "Connection: close\r\n";
        }
        s.write_all(format!("{req}\r\n").as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.ok()?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_holding_metrics_connections_does_not_lock_the_scraper_out() {
    use std::os::unix::fs::PermissionsExt;
    let cfg = TestConfig::new();
    let user = TestUser::new();
    two_sites(&cfg, &user, "");
    cfg.main_extra("[metrics]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"metrics.token\"");
    let token = cfg.write("metrics.token", "scrape-s3cret\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (polyhost, metrics) = start(&cfg, None).await;
    let metrics = metrics.expect("metrics address");
    wait_for_attacker_site(polyhost.addr, &polyhost).await;

    // Without the token, a kept-alive request gets its 401 and the
    // connection is closed (before: kept open for the next try).
    let refused = scrape(metrics, None, false).await;
    assert_eq!(common::raw_status(&refused), 401, "{refused:?}");
    assert!(
        refused.to_ascii_lowercase().contains("connection: close"),
        "{refused}"
    );

    // The site's code holds 100 connections to the metrics port. Before,
    // its first 32 took every place and the scraper's connection was
    // closed at once; now it holds 4.
    let port = metrics.port().to_string();
    let mut attacker = Attacker::start(&user, &["hold", &port, "100", "-", "-"]);
    let report = attacker.line().await;
    let scraped = scrape(metrics, Some("scrape-s3cret"), true).await;
    assert_eq!(
        common::raw_status(&scraped),
        200,
        "root's authorised scrape while the site holds connections ({report}): {scraped:?}; log:\n{}",
        polyhost.log()
    );
    assert!(scraped.contains("polyhost_requests_total"), "{scraped}");
    attacker.stop().await;
    finish(polyhost, &user).await;
}

/// Descriptors polyhost holds.
fn open_fds(polyhost: &Binary) -> usize {
    let pid = serving_pid(polyhost);
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The process that accepts the clients: the router process when polyhost
/// runs as root (`privsep`), else polyhost itself.
fn serving_pid(polyhost: &Binary) -> u32 {
    let supervisor = polyhost.child.id().unwrap();
    common::router_process_of(supervisor as i32).map_or(supervisor, |p| p as u32)
}

/// What one client saw: its GET answered 200, refused (503, or closed or
/// reset without an answer), another answer, or nothing within 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Served,
    Refused,
    Other,
    Hung,
}

/// Opens `n` connections at once, each sends a GET for `www.test`; returns
/// what each saw and the connections that were served (held open).
async fn clients(addr: SocketAddr, n: usize) -> (Vec<Seen>, Vec<TcpStream>) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
            else {
                return (Seen::Hung, None);
            };
            if s.write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n")
                .await
                .is_err()
            {
                return (Seen::Refused, None);
            }
            let mut head = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await {
                Err(_) => (Seen::Hung, None),
                Ok(Ok(n)) if head[..n].starts_with(b"HTTP/1.1 200") => (Seen::Served, Some(s)),
                Ok(Ok(n)) if n == 0 || head[..n].starts_with(b"HTTP/1.1 503") => {
                    (Seen::Refused, None)
                }
                Ok(Ok(_)) => (Seen::Other, None),
                Ok(Err(_)) => (Seen::Refused, None),
            }
        }));
    }
    let mut seen = Vec::new();
    let mut held = Vec::new();
    for t in tasks {
        let (s, conn) = t.await.unwrap();
        seen.push(s);
        held.extend(conn);
    }
    (seen, held)
}

fn tally(seen: &[Seen], what: Seen) -> usize {
    seen.iter().filter(|s| **s == what).count()
}

fn summary(seen: &[Seen]) -> String {
    [Seen::Served, Seen::Refused, Seen::Other, Seen::Hung]
        .map(|w| format!("{w:?}={}", tally(seen, w)))
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_descriptor_limit_clients_get_503_and_the_router_recovers() {
    let cfg = TestConfig::new();
    common::edge::site(&cfg);
    // max_connections stays 10000: far more than 256 descriptors hold.
    let (polyhost, _) = start(&cfg, Some(256)).await;
    let addr = polyhost.addr;
    let started = Instant::now();

    // 1. More clients than descriptors. Before, accept failed with EMFILE
    // (logged every 50 ms) and the clients past it waited unanswered; now
    // max_connections is fitted under the limit: 256 - 128 admitted.
    let (seen, held) = clients(addr, 300).await;
    assert_eq!(
        (tally(&seen, Seen::Served), tally(&seen, Seen::Refused)),
        (128, 172),
        "{}; log:\n{}",
        summary(&seen),
        polyhost.log()
    );
    drop(held);
    let recovered = common::eventually(Duration::from_secs(10), || async {
        status(addr, "www.test").await == 200
    })
    .await;
    assert!(recovered, "served again once the clients left");
    assert!(
        polyhost.log().contains("RLIMIT_NOFILE"),
        "{}",
        polyhost.log()
    );

    // 2. The limit lowered under polyhost's feet: accept hits EMFILE, and
    // the spare descriptor still answers 503.
    // Once most of phase 1's connections are closed (about 30 descriptors
    // remain at rest): 20 to spare, or up to 20 more as the last ones close;
    // fewer than the 80 clients either way.
    let closed = common::eventually(Duration::from_secs(10), || async {
        open_fds(&polyhost) <= 50
    })
    .await;
    assert!(closed, "{} descriptors open", open_fds(&polyhost));
    let pid = serving_pid(&polyhost).to_string();
    let low = open_fds(&polyhost) + 20;
    // The soft limit only: raising a hard limit needs CAP_SYS_RESOURCE.
    // Another user's process (the router's) only by that user, without it.
    let router_user = (serving_pid(&polyhost) != polyhost.child.id().unwrap())
        .then(|| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(common::router_uid())))
        .and_then(|u| u.ok().flatten())
        .map(|u| u.name);
    let set = |n: usize| {
        let limit = format!("--nofile={n}:256");
        let prlimit = ["prlimit", "--pid", &pid, &limit];
        let out = match &router_user {
            Some(user) => std::process::Command::new("runuser")
                .args(["-u", user, "--"])
                .args(prlimit)
                .output(),
            None => std::process::Command::new(prlimit[0])
                .args(&prlimit[1..])
                .output(),
        }
        .unwrap();
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    set(low);
    let (seen, held) = clients(addr, 80).await;
    let log = polyhost.log();
    assert_eq!(
        tally(&seen, Seen::Hung),
        0,
        "{}; log:\n{log}",
        summary(&seen)
    );
    assert!(tally(&seen, Seen::Refused) > 0, "{}", summary(&seen));
    assert!(
        polyhost.log().contains("out of file descriptors"),
        "{}",
        polyhost.log()
    );
    drop(held);
    set(256);
    let recovered = common::eventually(Duration::from_secs(10), || async {
        status(addr, "www.test").await == 200
    })
    .await;
    assert!(recovered, "served again; log:\n{}", polyhost.log());
    assert!(started.elapsed() < Duration::from_secs(60));
    let log = polyhost.log();
    assert!(
        !log.contains("accept failed"),
        "no accept error loop:\n{log}"
    );
    assert!(polyhost.terminate().await.success(), "{log}");
}
