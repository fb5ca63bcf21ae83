//! Recycled php-fpm children under load (`max_requests`), against a real
//! php-fpm master with the config polyhost generates: no request fails,
//! each child serves at most `max_requests` requests, and a kept-alive
//! connection whose child is retiring is never sent a request when the
//! pool's count of it is exact (the sequential phase); under concurrency,
//! with POSTs closing idle connections, the one retry covers the rest.
//! No timing is asserted.

mod php_fpm;

use std::collections::HashMap;
use std::sync::Arc;

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
    // found closed and no request is ever sent into a closing one.
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
    assert_eq!(
        h.upstream.pool_stats(),
        PoolStats {
            reused: 40,
            retired: 20,
            found_closed: 0,
            resent: 0,
        },
        "every third response retires its connection; none is sent to a closing child"
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
    assert!(stats.retired > 20, "{stats:?}");
    assert_eq!(
        h.runtime.done.load(std::sync::atomic::Ordering::SeqCst),
        260
    );
}
