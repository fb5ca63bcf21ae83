//! `[app]` sites that fail, against the real binary run as root, and the
//! neighbours that must not notice: a program that never becomes ready
//! (its start fails after `startup_timeout`), a crash loop (visible in
//! `polyhost status` with the program's own last stderr lines), and a
//! memory hog killed by its site's cgroup (only its own requests fail).

mod admin_support;
mod app_support;
mod common;

use std::time::Duration;

use admin_support::{failures, Load};
use app_support::{
    app_site, error_log, express_site, status, status_text, stop_clean, try_get, wait_serving,
    CRASH_AT_START, CRASH_LINE, NEVER_READY,
};
use common::{get, Binary, TestConfig, TestUser};

#[tokio::test]
async fn a_never_ready_app_fails_its_start_and_a_neighbour_keeps_serving() {
    let cfg = TestConfig::new();
    let (stuck, fine) = (TestUser::new(), TestUser::new());
    app_site(
        &cfg,
        "stuck",
        &stuck,
        &[("never_ready.py", NEVER_READY)],
        "command = [\"/usr/bin/python3\", \"never_ready.py\"]\nstartup_timeout = \"2s\"",
        &[],
        "",
    );
    express_site(&cfg, "fine", &fine, "", &[], "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "fine.test", "/healthz", Duration::from_secs(60)).await;

    let load = Load::start(bin.addr, &["fine.test"], 2);
    // The stuck site answers, with an error, and is reported as failing.
    let (code, body) = try_get(bin.addr, "stuck.test", "/").await;
    assert!((500..600).contains(&code), "{code} {body}");
    let site = common::wait_for(
        "stuck's failed start in `polyhost status`",
        Duration::from_secs(60),
        async || status(&cfg, "stuck").await,
        |s| s.last_error.is_some(),
    )
    .await;
    assert_ne!(site.state, "running", "{site:?}");
    // Why, in its own words and the program's (its stderr).
    let why = site.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("did not answer an HTTP request") && why.contains("never-ready: holding"),
        "{why}"
    );
    let (code, body) = try_get(bin.addr, "stuck.test", "/").await;
    assert!((500..600).contains(&code), "{code} {body}");
    load.wait_for(50).await;
    let seen = load.stop().await;
    let hosts = vec!["fine.test".to_owned()];
    let failed = failures(&hosts, &seen, &["fine.test"]);
    assert!(failed.is_empty(), "the neighbour failed: {failed:?}");
    assert_eq!(status(&cfg, "fine").await.state, "running");
    stop_clean(bin, &cfg, &[&stuck, &fine]).await;
}

#[tokio::test]
async fn a_crash_loop_shows_the_programs_stderr_in_polyhost_status() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(
        &cfg,
        "crashy",
        &user,
        &[("crash_at_start.py", CRASH_AT_START)],
        "command = [\"/usr/bin/python3\", \"crash_at_start.py\"]",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let (code, body) = try_get(bin.addr, "crashy.test", "/").await;
    assert!((500..600).contains(&code), "{code} {body}");
    let site = common::wait_for(
        "the program's stderr line in `polyhost status crashy`",
        Duration::from_secs(90),
        async || status(&cfg, "crashy").await,
        |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains(CRASH_LINE))
        },
    )
    .await;
    assert_ne!(site.state, "running", "{site:?}");
    let text = status_text(&cfg, "crashy").await;
    assert!(text.contains(CRASH_LINE), "{text}");
    // Its stderr went to the site's error log.
    common::wait_for(
        "the program's stderr in crashy.error.log",
        Duration::from_secs(10),
        async || error_log(&cfg, "crashy"),
        |t| t.0.contains(CRASH_LINE),
    )
    .await;
    stop_clean(bin, &cfg, &[&user]).await;
}

#[tokio::test]
async fn a_memory_hog_is_killed_by_its_cgroup_and_only_its_requests_fail() {
    let cfg = TestConfig::new();
    let (hog, calm) = (TestUser::new(), TestUser::new());
    express_site(
        &cfg,
        "hog",
        &hog,
        "ready = \"/healthz\"",
        &[],
        "[limits]\nmemory = \"256M\"",
    );
    express_site(&cfg, "calm", &calm, "", &[], "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_serving(&bin, &cfg, "hog.test", "/healthz", Duration::from_secs(60)).await;
    wait_serving(&bin, &cfg, "calm.test", "/healthz", Duration::from_secs(60)).await;
    let first = get(bin.addr, "hog.test", "/").await.text();

    let load = Load::start(bin.addr, &["calm.test"], 2);
    load.wait_for(20).await;
    let (code, body) = try_get(bin.addr, "hog.test", "/hog?mb=1024").await;
    assert!(
        code == 0 || (500..600).contains(&code),
        "the hog survived: {code} {body}"
    );
    let site = common::wait_for(
        "an OOM kill counted for hog",
        Duration::from_secs(30),
        async || status(&cfg, "hog").await,
        |s| s.oom_kills >= 1,
    )
    .await;
    assert!(
        site.memory_limit_bytes.is_some_and(|l| l <= 256 << 20),
        "{site:?}"
    );
    // It is started again and serves, from a new process.
    let again = wait_serving(&bin, &cfg, "hog.test", "/", Duration::from_secs(60)).await;
    assert_ne!(
        common::field(&again, "pid"),
        common::field(&first, "pid"),
        "a new process"
    );
    load.wait_for(20).await;
    let seen = load.stop().await;
    let hosts = vec!["calm.test".to_owned()];
    let failed = failures(&hosts, &seen, &["calm.test"]);
    assert!(failed.is_empty(), "the neighbour failed: {failed:?}");
    assert_eq!(status(&cfg, "calm").await.oom_kills, 0);
    stop_clean(bin, &cfg, &[&hog, &calm]).await;
}
