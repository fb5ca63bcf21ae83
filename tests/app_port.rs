//! `listen = "port"` against the real binary run as root: a program that can
//! only bind `$HOST:$PORT` (no inherited socket) is served, each of its
//! processes on its own loopback port that polyhost picked, as the site user.

mod admin_support;
mod app_support;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use app_support::{app_site, field, sockets_of, status, stop_clean, wait_serving, PORT_ONLY};
use common::{get, Binary, TestConfig, TestUser};

#[tokio::test]
async fn a_program_that_only_binds_port_is_served_on_loopback_ports() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    app_site(
        &cfg,
        "porty",
        &user,
        &[("port_only.py", PORT_ONLY)],
        "command = [\"/usr/bin/python3\", \"port_only.py\"]\nlisten = \"port\"\nprocesses = 2",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let body = wait_serving(&bin, &cfg, "porty.test", "/p?x=1", Duration::from_secs(60)).await;
    assert_eq!(field(&body, "uid"), user.uid.to_string(), "{body}");
    assert_eq!(field(&body, "path"), "/p?x=1", "{body}");
    common::wait_for(
        "two running processes",
        Duration::from_secs(60),
        async || status(&cfg, "porty").await.pids,
        |pids| pids.len() == 2,
    )
    .await;

    // Every answer names the port its process was given (never 0), where
    // that process answers directly too.
    let mut ports = BTreeSet::new();
    for _ in 0..20 {
        let r = get(bin.addr, "porty.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let port: u16 = field(&r.text(), "port").parse().unwrap();
        assert_ne!(port, 0);
        let direct = common::get(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "porty.test",
            "/",
        )
        .await;
        assert_eq!(field(&direct.text(), "port"), port.to_string());
        ports.insert(port);
    }
    assert!(!ports.is_empty());
    // No Unix socket was bound for it.
    let state = cfg.path().join("state");
    let sockets = sockets_of(&state, "porty");
    assert!(sockets.is_empty(), "{sockets:?}");
    stop_clean(bin, &cfg, &[&user]).await;
}
