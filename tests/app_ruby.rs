//! A Rack app on Puma (Debian's `ruby`, `puma`, `ruby-rack`) as an `[app]`
//! site with two processes, against the real binary run as root: each
//! Puma takes the socket polyhost hands it by socket activation
//! (`--bind-to-activated-sockets only`: `LISTEN_FDS`, and `LISTEN_PID` must
//! be Puma's own pid, or Puma ignores the socket), both serve, as the site
//! user, with `[app.env]`.

mod admin_support;
mod app_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use app_support::{app_site, field, need, status, stop_clean, try_get, wait_serving, RACK_APP};
use common::{Binary, TestConfig, TestUser};

#[tokio::test]
async fn a_rack_app_on_puma_by_socket_activation_with_two_processes() {
    need("/usr/bin/puma");
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(
        &cfg,
        "rack",
        &user,
        &[("config.ru", RACK_APP)],
        "command = [\"puma\", \"--bind-to-activated-sockets\", \"only\", \"config.ru\"]\n\
         processes = 2\nmax_concurrency = 1\nready = \"/healthz\"",
        &[("FIXTURE_ENV", "from app.env")],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let body = wait_serving(&bin, &cfg, "rack.test", "/hello", Duration::from_secs(60)).await;
    assert_eq!(field(&body, "uid"), user.uid.to_string(), "{body}");
    assert_eq!(field(&body, "path"), "/hello", "{body}");
    assert!(body.ends_with("env=from app.env"), "{body}");

    let site = common::wait_for(
        "two running processes in `polyhost status rack`",
        Duration::from_secs(60),
        async || status(&cfg, "rack").await,
        |s| s.pids.len() == 2,
    )
    .await;
    assert_eq!(site.runtime, "app", "{site:?}");
    for pid in &site.pids {
        assert!(
            common::pids_of_uid(user.uid).contains(pid),
            "{pid} is not the site user's: {site:?}"
        );
    }

    // One request in flight per process (max_concurrency = 1): two slow
    // requests at once are answered by both Pumas.
    let mut answered_by = BTreeSet::new();
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            try_get(bin.addr, "rack.test", "/slow"),
            try_get(bin.addr, "rack.test", "/slow")
        );
        for (status, body) in [a, b] {
            assert_eq!(status, 200, "{body}");
            answered_by.insert(field(&body, "pid").to_owned());
        }
        if answered_by.len() == 2 {
            break;
        }
    }
    let pids: BTreeSet<String> = site.pids.iter().map(|p| p.to_string()).collect();
    assert_eq!(answered_by, pids, "both processes serve");
    stop_clean(bin, &cfg, &[&user]).await;
}
