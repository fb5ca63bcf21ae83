//! systemd's service notifications (`Type=notify`) from the real binary run
//! as root (split), received on a `NOTIFY_SOCKET` datagram socket the test
//! binds (issue 24): in order, READY=1 once it serves; RELOADING=1 with
//! MONOTONIC_USEC= then READY=1 around an accepted reload and around a
//! refused one; STOPPING=1 on SIGTERM; STATUS= with each; WATCHDOG=1 pings
//! when WATCHDOG_USEC is set.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::{open_up, wait_for, Binary, TestConfig};

/// Every datagram received so far, one per message, in order.
fn drain(sock: &UnixDatagram, into: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

/// The messages without the watchdog's pings, each as its `KEY=` names in
/// order (`MONOTONIC_USEC=123` → `MONOTONIC_USEC`; `STATUS=` kept whole).
fn shape(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.trim() != "WATCHDOG=1")
        .map(|m| {
            m.lines()
                .map(|l| match l.split_once('=') {
                    Some(("MONOTONIC_USEC", v)) if v.parse::<u64>().is_ok() => {
                        "MONOTONIC_USEC=<now>".to_owned()
                    }
                    Some(("STATUS", _)) => "STATUS=…".to_owned(),
                    _ => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

async fn polyhost(main: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .arg("--config")
        .arg(main)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn start_reloads_and_stop_are_notified_in_order() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "runs polyhost split, as root"
    );
    common::router_uid();
    let cfg = TestConfig::new();
    cfg.static_site("st", &["st.test"], "");
    open_up(cfg.path());
    let socket_path = cfg.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    sock.set_nonblocking(true).unwrap();
    let notify = socket_path.to_str().unwrap().to_owned();
    let bin = Binary::start(
        &cfg.main(),
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    )
    .await;
    let mut got = Vec::new();
    let seen = wait_for(
        "READY=1 after start",
        Duration::from_secs(20),
        async || {
            drain(&sock, &mut got);
            got.clone()
        },
        |m| m.iter().any(|m| m.contains("READY=1")),
    )
    .await;
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=serving 1 site(s)"), "{ready:?}");
    // The router serves by then.
    let resp = common::get(bin.addr, "st.test", "/").await;
    assert_eq!(resp.status, 200);

    // An accepted reload (a site added), then a refused one.
    cfg.static_site("two", &["two.test"], "");
    let ok = polyhost(&cfg.main(), &["reload"]).await;
    assert!(ok.status.success(), "{ok:?}");
    cfg.write("vhosts/bad.toml", "hosts = [\"bad.test\"]\nroot = 12\n");
    let refused = polyhost(&cfg.main(), &["reload"]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let seen = wait_for(
        "READY=1 after each of the two reloads",
        Duration::from_secs(20),
        async || {
            drain(&sock, &mut got);
            got.clone()
        },
        |m| m.iter().filter(|m| m.contains("READY=1")).count() >= 3,
    )
    .await;
    let last = seen.iter().rev().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        last.contains("STATUS=serving 2 site(s)") && last.contains("reload refused"),
        "{last:?}"
    );

    let status = bin.terminate().await;
    assert!(status.success(), "{status:?}");
    drain(&sock, &mut got);
    assert_eq!(
        shape(&got),
        [
            "READY=1 STATUS=…",
            "RELOADING=1 MONOTONIC_USEC=<now>",
            "READY=1 STATUS=…",
            "RELOADING=1 MONOTONIC_USEC=<now>",
            "READY=1 STATUS=…",
            "STOPPING=1 STATUS=…",
        ],
        "all messages: {got:?}"
    );
    let pings = got.iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    assert!(pings >= 1, "no WATCHDOG=1 with WATCHDOG_USEC set: {got:?}");
}
