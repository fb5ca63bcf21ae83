//! Recycled php-fpm children under load (`max_requests`), against a real
//! php-fpm master with the config polyhost generates: no request fails,
//! each child serves at most `max_requests` requests, and a kept-alive
//! connection whose child is retiring is never sent a request when the
//! pool's count of it is exact (the sequential phase); under concurrency,
//! with POSTs closing idle connections, the one retry covers the rest.
//! The successors: every retirement was preceded by a successor a live
//! child accepted, so after the first connections no request ever opens
//! one (which would wait in php-fpm's backlog for a fork). And the pool's
//! counters on `/metrics`, through the whole server. No timing is asserted.

mod common;
mod php_fpm;

use std::collections::HashMap;
use std::sync::Arc;

use std::time::{Duration, Instant};

use http::Request;
use polyhost::upstream::php::PoolStats;

use php_fpm::harness::{body, harness, Harness};
use php_fpm::SiteOptions;

const MAX_REQUESTS: u64 = 3;

/// Sends GET or POST /pid.php; returns the pid of the child that answered.
async fn pid_of(h: &Harness, post: bool, i: usize) -> u32 {
    let req = if post {
        let payload = format!("n={i}");
        Request::post("/pid.php")
            .header("content-length", payload.len())
            .body(body(payload))
    } else {
        Request::get("/pid.php").body(body(""))
    };
    let (status, _, got) = h
        .send(req.unwrap())
        .await
        .unwrap_or_else(|e| panic!("request {i} (post: {post}): {e}"));
    let text = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(status, 200, "request {i}: {text}");
    let mut words = text.split(' ');
    let pid = words.next().and_then(|p| p.parse().ok());
    let method = words.next();
    let input = words.next().unwrap_or("");
    assert_eq!(method, Some(if post { "POST" } else { "GET" }), "{text}");
    if post {
        assert_eq!(input, format!("n={i}"), "the POST body arrived once, whole");
    }
    pid.unwrap_or_else(|| panic!("request {i}: no pid in {text:?}"))
}

/// `clients` concurrent clients, each sending `each` requests one after
/// another: the PIDs of the children that answered, in no order.
async fn pids_from_clients(h: &Arc<Harness>, clients: usize, each: usize) -> Vec<u32> {
    let mut tasks = Vec::new();
    for t in 0..clients {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut pids = Vec::new();
            for i in 0..each {
                pids.push(pid_of(&h, false, 1000 * (t + 1) + i).await);
            }
            pids
        }));
    }
    let mut pids = Vec::new();
    for t in tasks {
        pids.extend(t.await.unwrap());
    }
    pids
}

fn served_per_child(pids: &[u32]) -> HashMap<u32, u64> {
    let mut per = HashMap::new();
    for p in pids {
        *per.entry(*p).or_default() += 1;
    }
    per
}

#[tokio::test]
async fn recycled_children_lose_no_request_and_get_none_after_their_last() {
    let h = Arc::new(harness(SiteOptions {
        max_children: 2,
        max_requests: MAX_REQUESTS,
        ..Default::default()
    }));

    // Sequential GETs: every connection's count is its child's count, so
    // each is retired right after its child's third response; none is
    // found closed and no request is ever sent into a closing one. Each
    // third request opens the next connection's successor, which the spare
    // child accepts: only the first request opens a connection itself.
    let mut pids = Vec::new();
    for i in 0..60 {
        pids.push(pid_of(&h, false, i).await);
    }
    let per = served_per_child(&pids);
    assert!(
        per.values().all(|&n| n <= MAX_REQUESTS),
        "a child served more than max_requests: {per:?}"
    );
    assert_eq!(per.len(), 20, "recycled every 3 requests: {per:?}");
    let stats = settled(&h).await;
    assert_eq!(
        PoolStats { waited: 0, ..stats },
        PoolStats {
            reused: 59,
            opened: 1,
            retired: 20,
            warmed: 20,
            ..Default::default()
        },
        "every third response retires its connection, whose successor a live child \
         already holds; none is sent to a closing child"
    );

    // Concurrent GETs and POSTs, more clients than children.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut pids = Vec::new();
            for i in 0..25 {
                let n = 1000 * (t + 1) + i;
                pids.push(pid_of(&h, i % 4 == 3, n).await);
            }
            pids
        }));
    }
    for t in tasks {
        pids.extend(t.await.unwrap());
    }
    let per = served_per_child(&pids);
    assert!(
        per.values().all(|&n| n <= MAX_REQUESTS),
        "a child served more than max_requests: {per:?}"
    );
    assert!(per.len() >= 260 / 3, "children were recycled: {per:?}");
    let stats = h.upstream.pool_stats();
    assert!(stats.retired > 20 && stats.warmed > 20, "{stats:?}");
    assert_eq!(
        h.runtime.done.load(std::sync::atomic::Ordering::SeqCst),
        260
    );
}

/// The pool's counters once no successor is on its way any more (each is
/// warmed or failed within a bounded wait).
async fn settled(h: &Harness) -> PoolStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = h.upstream.pool_stats();
        // Each retirement was preceded by one successor.
        if s.warmed + s.warm_failed >= s.retired || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Many recycles under concurrency, GETs only (nothing closes a connection
/// but a retirement): every child served at most `max_requests`, every
/// retirement had a successor a live child accepted, no request met a
/// closing connection, and no request opened a connection after the first
/// `max_children`: when nothing was idle, a request waited for the first
/// connection back instead (`waited` counts those, and `handed` those
/// written onto a connection as its answer ended, without asserting how
/// many: that depends on timing).
#[tokio::test]
async fn under_concurrency_no_request_opens_a_connection_after_the_first_ones() {
    const CHILDREN: u64 = 4;
    const MAX: u64 = 5;
    let h = Arc::new(harness(SiteOptions {
        max_children: CHILDREN,
        max_requests: MAX,
        ..Default::default()
    }));
    let pids = pids_from_clients(&h, 16, 50).await;
    let per = served_per_child(&pids);
    assert!(
        per.values().all(|&n| n <= MAX),
        "a child served more than max_requests: {per:?}"
    );
    assert!(per.len() as u64 >= 800 / MAX, "recycled: {per:?}");
    let stats = settled(&h).await;
    assert_eq!(
        PoolStats {
            reused: 0,
            waited: 0,
            handed: 0,
            ..stats
        },
        PoolStats {
            opened: CHILDREN,
            retired: stats.retired,
            warmed: stats.retired,
            ..Default::default()
        },
        "each retirement had its successor; nothing found closed or re-sent"
    );
    // Kept-alive: taken from the pool, or handed to a queued request.
    assert_eq!(stats.reused + stats.handed, 800 - CHILDREN, "{stats:?}");
    assert!(stats.retired >= 800 / MAX - CHILDREN, "{stats:?}");
}

/// The default `ondemand` pool keeps its connections alive too: php-fpm
/// forks a child per new connection only when none waits in `accept`, so a
/// connection can be left in its backlog (the master saw a child in
/// `accept`, which then took another connection and stays with it). The
/// pool nudges the master then (`warm::watch`); without that, such a
/// request waits until an idle connection is closed (`idle_timeout`, 10 s
/// here) and gets 504 after `request_timeout` (3 s) first. So: 16 clients
/// from a cold pool, with and without recycling, every request answered,
/// and most on kept-alive connections.
#[tokio::test]
async fn an_ondemand_pool_keeps_connections_alive_and_strands_no_request() {
    use polyhost::config::PhpMode;
    for max_requests in [0, 7] {
        let h = Arc::new(harness(SiteOptions {
            max_children: 4,
            max_requests,
            mode: PhpMode::OnDemand,
            request_timeout: Duration::from_secs(3),
            ..Default::default()
        }));
        let pids = pids_from_clients(&h, 16, 25).await;
        let per = served_per_child(&pids);
        if max_requests > 0 {
            assert!(
                per.values().all(|&n| n <= max_requests),
                "a child served more than max_requests: {per:?}"
            );
        }
        let stats = settled(&h).await;
        assert!(
            stats.reused + stats.handed >= 400 / 2,
            "max_requests {max_requests}: most requests on kept-alive connections: {stats:?}"
        );
    }
}

/// The counters on `/metrics`, per PHP site, through the whole server (the
/// supervisor's php-fpm, the router), after real traffic; none for a site
/// without PHP.
#[tokio::test]
async fn pool_counters_are_on_metrics() {
    use common::{get, open_up, InProcess, TestConfig, TestUser};
    let cfg = TestConfig::new();
    let user = TestUser::new();
    cfg.write("www/p/index.php", "<?php echo getmypid();");
    cfg.write(
        "vhosts/p.toml",
        &format!(
            "hosts = [\"p.test\"]\nroot = \"www/p\"\nuser = \"{}\"\n\
             [php]\nmode = \"static\"\nmax_children = 2\nmax_requests = 3\n",
            user.name
        ),
    );
    cfg.static_site("www", &["www.test"], "");
    open_up(cfg.path());
    let server = InProcess::start(&cfg).await;
    for _ in 0..30 {
        let r = get(server.addr, "p.test", "/index.php").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(get(server.addr, "www.test", "/").await.status, 200);
    let value = |text: &str, name: &str, site: &str| -> Option<f64> {
        let series = format!("{name}_total{{site=\"{site}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: {v}")))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = polyhost::admin::metrics::scrape(&server.server).await;
        let warmed = value(&text, "polyhost_php_connections_warmed", "p");
        if warmed == Some(10.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let got: Vec<(&str, Option<f64>)> = [
        "polyhost_php_requests_reused",
        "polyhost_php_connections_opened",
        "polyhost_php_connections_retired",
        "polyhost_php_connections_warmed",
        "polyhost_php_connections_warm_failed",
        "polyhost_php_connections_found_closed",
        "polyhost_php_requests_resent",
    ]
    .into_iter()
    .map(|n| (n, value(&text, n, "p")))
    .collect();
    let want = [29.0, 1.0, 10.0, 10.0, 0.0, 0.0, 0.0].map(Some);
    assert_eq!(
        got.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        want,
        "{got:?}\n{text}"
    );
    for timing in [
        "polyhost_php_requests_waited",
        "polyhost_php_requests_handed",
    ] {
        assert!(value(&text, timing, "p").is_some(), "{timing}: {text}");
    }
    assert!(
        !text.contains("polyhost_php_requests_reused_total{site=\"www\"}"),
        "no pool counters for a static site:\n{text}"
    );
    assert!(
        text.contains("# TYPE polyhost_php_connections_retired_total counter"),
        "{text}"
    );
}

/// Sends GET /nap.php?ms=`ms` (sleeps, then answers its child's pid).
async fn nap(h: &Harness, ms: u64) -> u32 {
    let req = Request::get(format!("/nap.php?ms={ms}")).body(body(""));
    let (status, _, got) = h.send(req.unwrap()).await.expect("nap.php answered");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(status, 200, "{text}");
    text.parse()
        .unwrap_or_else(|_| panic!("no pid in {text:?}"))
}

/// Sends SIGCONT to what it stopped, however the test ends.
struct Stopped(Vec<i32>);

impl Stopped {
    fn stop(pids: Vec<i32>) -> Stopped {
        for &pid in &pids {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .unwrap();
        }
        Stopped(pids)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
}

/// A retired connection's place waits for its successor; the requests
/// queued meanwhile take whichever connection frees first, in their order.
/// Here no successor can be ready (the master and the spare child are
/// stopped): the request queued first must not wait for it while the other
/// child's connection serves the requests queued after it (issue 19: that
/// wait was the c = 16 tail).
#[tokio::test]
async fn queued_requests_go_to_a_live_connection_not_to_a_successor_still_coming() {
    const MAX: u64 = 10;
    let h = Arc::new(harness(SiteOptions {
        max_children: 2,
        max_requests: MAX,
        request_timeout: Duration::from_secs(120),
        ..Default::default()
    }));
    // Two connections, then one of them (the newest) to its child's last
    // request but one: its next request opens its successor.
    let (a, b) = tokio::join!(nap(&h, 300), nap(&h, 300));
    assert_ne!(a, b, "two connections, two children");
    let retiring = nap(&h, 0).await;
    for _ in 2..MAX - 1 {
        assert_eq!(nap(&h, 0).await, retiring, "the newest idle connection");
    }
    let live = if retiring == a { b } else { a };
    let others: Vec<i32> = h
        .fpm
        .children()
        .into_iter()
        .filter(|&p| p != a as i32 && p != b as i32)
        .collect();
    assert!(!others.is_empty(), "php-fpm runs a spare child");
    let mut stopped = vec![h.fpm.master_pid()];
    stopped.extend(others);
    let _stopped = Stopped::stop(stopped);

    // The retiring connection's last request, then a longer one on the
    // other connection, then six queued behind them.
    let last = tokio::spawn({
        let h = h.clone();
        async move { nap(&h, 500).await }
    });
    common::wait_for(
        "the last request took its connection",
        Duration::from_secs(30),
        async || h.upstream.idle_connections(),
        |&idle| idle == 1,
    )
    .await;
    let long = tokio::spawn({
        let h = h.clone();
        async move { nap(&h, 1500).await }
    });
    common::wait_for(
        "the long request took the other connection",
        Duration::from_secs(30),
        async || h.upstream.idle_connections(),
        |&idle| idle == 0,
    )
    .await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut queued = Vec::new();
    for i in 0..6 {
        let (h2, order) = (h.clone(), order.clone());
        queued.push(tokio::spawn(async move {
            let pid = nap(&h2, 20).await;
            order.lock().unwrap().push(i);
            pid
        }));
        // Queued in this order: each is in the queue before the next is
        // spawned.
        common::wait_for(
            "the request queued for a place",
            Duration::from_secs(30),
            async || h.upstream.queued_requests(),
            |&queued| queued == i + 1,
        )
        .await;
    }
    assert_eq!(last.await.unwrap(), retiring);
    assert_eq!(long.await.unwrap(), live);
    let wait = async {
        let mut pids = Vec::new();
        for q in queued {
            pids.push(q.await.unwrap());
        }
        pids
    };
    let pids = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the queued requests answered while the successor cannot come");
    assert_eq!(pids, vec![live; 6], "all on the live child's connection");
    assert_eq!(
        *order.lock().unwrap(),
        (0..6).collect::<Vec<_>>(),
        "in the order they queued: none waited for the successor"
    );
}
