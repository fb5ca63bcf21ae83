//! The lifecycle of `[app]` sites against the real binary run as root: a
//! rolling restart (a reload that changes `[app.env]`) under load with no
//! failed request, scale to zero after `idle_timeout` and a cold start on
//! the next request, recycling by `max_requests` without a failed request,
//! and `request_timeout` → 504.

mod admin_support;
mod app_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use admin_support::{failures, version, Load};
use app_support::{
    admin_socket, app_site, express_site, field, reload, status, stop_clean, try_get, wait_serving,
    STUBBORN,
};
use common::{get, pids_of_uid, Binary, TestConfig, TestUser};

const START: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_reload_with_a_changed_env_restarts_under_load_without_a_failed_request() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    let site = |v: &str| {
        express_site(
            &cfg,
            "roll",
            &user,
            "processes = 2\nready = \"/healthz\"",
            &[("APP_VERSION", v)],
            "",
        )
    };
    site("v1");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let body = wait_serving(&bin, &cfg, "roll.test", "/", START).await;
    assert_eq!(version(&body), "v1");
    let before = common::wait_for(
        "two processes",
        START,
        async || status(&cfg, "roll").await.pids,
        |p| p.len() == 2,
    )
    .await;

    let load = Load::start(bin.addr, &["roll.test"], 4);
    load.wait_for(100).await;
    site("v2");
    reload(&cfg).await;
    common::wait_for(
        "v2 answering",
        START,
        async || get(bin.addr, "roll.test", "/").await.text(),
        |t| version(t) == "v2",
    )
    .await;
    load.wait_for(200).await;
    let seen = load.stop().await;

    let hosts = vec!["roll.test".to_owned()];
    let failed = failures(&hosts, &seen, &["roll.test"]);
    let total: usize = seen.iter().map(Vec::len).sum();
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {failed:?}",
        failed.len()
    );
    let answered: BTreeSet<&str> = seen.iter().flatten().map(|s| version(&s.body)).collect();
    assert_eq!(
        answered,
        BTreeSet::from(["v1", "v2"]),
        "the load spanned the restart"
    );
    // Each client saw v1, then v2, never v1 again once v2 answered it.
    for client in &seen {
        let versions: Vec<&str> = client.iter().map(|s| version(&s.body)).collect();
        let first_v2 = versions.iter().position(|v| *v == "v2");
        if let Some(i) = first_v2 {
            assert!(
                versions[i..].iter().all(|v| *v == "v2"),
                "v1 after v2: {versions:?}"
            );
        }
    }
    let after = common::wait_for(
        "two new processes, the old ones gone",
        START,
        async || status(&cfg, "roll").await.pids,
        |p| p.len() == 2 && p.iter().all(|pid| !before.contains(pid)),
    )
    .await;
    let alive = pids_of_uid(user.uid);
    assert!(
        before.iter().all(|p| !alive.contains(p)),
        "old processes still alive: {before:?} (now {after:?}, alive {alive:?})"
    );
    stop_clean(bin, &cfg, &[&user]).await;
}

#[tokio::test]
async fn an_idle_app_scales_to_zero_and_the_next_request_starts_it() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    express_site(
        &cfg,
        "sleepy",
        &user,
        "start = \"on_demand\"\nidle_timeout = \"2s\"\nready = \"/healthz\"",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    assert!(
        pids_of_uid(user.uid).is_empty(),
        "started on demand, not before"
    );
    let first = wait_serving(&bin, &cfg, "sleepy.test", "/", START).await;
    assert!(!pids_of_uid(user.uid).is_empty());
    common::wait_for(
        "no process of sleepy after idle_timeout",
        Duration::from_secs(60),
        async || pids_of_uid(user.uid),
        |p| p.is_empty(),
    )
    .await;
    // The status follows once the supervisor has seen the exit (its
    // snapshot may still list the process a moment after it is gone).
    common::wait_for(
        "sleepy idle, with no process, in the status",
        Duration::from_secs(30),
        async || status(&cfg, "sleepy").await,
        |idle| (idle.state.as_str(), idle.pids.len()) == ("idle", 0),
    )
    .await;
    // The cold start: the request that finds no process waits for one.
    let (code, cold) = try_get(bin.addr, "sleepy.test", "/").await;
    assert_eq!(code, 200, "{cold}");
    assert_ne!(field(&cold, "pid"), field(&first, "pid"));
    stop_clean(bin, &cfg, &[&user]).await;
}

#[tokio::test]
async fn max_requests_recycles_without_a_failed_request() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    express_site(
        &cfg,
        "recycled",
        &user,
        "processes = 2\nmax_requests = 10\nready = \"/healthz\"",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "recycled.test", "/healthz", START).await;
    // Requests go on until two replacements have served (bounded by time,
    // not by a count: on a busy machine a replacement takes a while to be
    // ready, and the old instances serve on meanwhile). None may fail.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut pids = BTreeSet::new();
    let mut served = 0;
    while pids.len() < 4 && std::time::Instant::now() < deadline {
        let (code, body) = try_get(bin.addr, "recycled.test", "/").await;
        assert_eq!(code, 200, "request {served} failed: {body}");
        pids.insert(field(&body, "pid").to_owned());
        served += 1;
        if served % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        pids.len() >= 4,
        "recycled: {pids:?} after {served} requests in 90 s"
    );
    stop_clean(bin, &cfg, &[&user]).await;
}

#[tokio::test]
async fn a_request_past_request_timeout_gets_504_and_the_site_serves_on() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    express_site(
        &cfg,
        "slow",
        &user,
        "request_timeout = \"2s\"\nready = \"/healthz\"",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "slow.test", "/healthz", START).await;
    let (code, body) = try_get(bin.addr, "slow.test", "/slow?ms=60000").await;
    assert_eq!(code, 504, "{body}");
    wait_serving(&bin, &cfg, "slow.test", "/", START).await;
    stop_clean(bin, &cfg, &[&user]).await;
}

#[tokio::test]
async fn stop_kills_a_program_that_ignores_sigterm_and_the_child_that_left_its_group() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(
        &cfg,
        "stubborn",
        &user,
        &[("stubborn.py", STUBBORN)],
        "command = [\"/usr/bin/python3\", \"stubborn.py\"]",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "stubborn.test", "/", START).await;
    let running = common::wait_for(
        "the program and its escaped child",
        START,
        async || pids_of_uid(user.uid),
        |p| p.len() >= 2,
    )
    .await;
    let out = admin_support::cli(&admin_socket(&cfg), &["stop", "stubborn"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    common::wait_for(
        &format!("no process of the site after `polyhost stop` (had {running:?})"),
        Duration::from_secs(60),
        async || pids_of_uid(user.uid),
        |p| p.is_empty(),
    )
    .await;
    let (code, _) = try_get(bin.addr, "stubborn.test", "/").await;
    assert_eq!(code, 503, "a stopped site");
    let out = admin_support::cli(&admin_socket(&cfg), &["start", "stubborn"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_serving(&bin, &cfg, "stubborn.test", "/", START).await;
    stop_clean(bin, &cfg, &[&user]).await;
}
