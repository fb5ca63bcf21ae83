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

/// Binds `127.0.0.1:PORT` (retrying while the port is still taken) and
/// answers every request `squatted`, noting it in LOG: another local
/// user's program waiting for a site's port.
const SQUATTER: &str = r#"
import http.server, sys, time
port, log = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(log, "a") as f:
            f.write("request " + self.path + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "8")
        self.end_headers()
        self.wfile.write(b"squatted")
    def log_message(self, *args):
        pass
for _ in range(200):
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("squatter: could not bind 127.0.0.1:%d" % port)
with open(log, "a") as f:
    f.write("listening\n")
server.serve_forever()
"#;

#[tokio::test]
async fn a_port_another_user_binds_after_the_app_let_it_go_gets_no_request() {
    let cfg = TestConfig::new();
    let (user, other) = (TestUser::new(), TestUser::new());
    app_site(
        &cfg,
        "porty",
        &user,
        &[("port_only.py", PORT_ONLY)],
        "command = [\"/usr/bin/python3\", \"port_only.py\"]\nlisten = \"port\"",
        &[],
        "",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let body = wait_serving(&bin, &cfg, "porty.test", "/", Duration::from_secs(60)).await;
    let port = field(&body, "port").to_owned();
    // The app lets its port go but lives on (polyhost still counts it
    // ready); another user's program takes the port.
    let r = get(bin.addr, "porty.test", "/close-listener").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = cfg.path().join("squatter");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(other.uid), Some(other.gid())).unwrap();
    let log = dir.join("log");
    let mut squatter = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", SQUATTER, &port, &log.display().to_string()])
            .uid(other.uid)
            .gid(other.gid())
            .spawn()
            .unwrap()
    };
    common::wait_for(
        "the other user's program listening on the site's port",
        Duration::from_secs(30),
        async || common::file_text(&log),
        |t| t.0.contains("listening"),
    )
    .await;
    // Three at once: the kept-alive connections to the app are at most one
    // per router lane (the test config's `router_threads = 2`; the requests
    // so far came one at a time), so one at least needs a new connection,
    // and meets the other user's listener.
    let (a, b, c) = tokio::join!(
        get(bin.addr, "porty.test", "/slow"),
        get(bin.addr, "porty.test", "/slow"),
        get(bin.addr, "porty.test", "/slow"),
    );
    let answers: Vec<(u16, String)> = [a, b, c].iter().map(|r| (r.status, r.text())).collect();
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(
        answers.iter().all(|(_, body)| !body.contains("squatted")),
        "the other user's program answered the site's requests: {answers:?}"
    );
    let seen = common::file_text(&log);
    assert!(!seen.0.contains("request"), "it received them: {seen:?}");
    assert!(
        answers.iter().any(|(status, _)| *status == 502),
        "no request needed a new connection (the check was not reached): {answers:?}"
    );
    common::wait_for(
        "the router's reason in its log",
        Duration::from_secs(10),
        async || common::Shown(bin.log()),
        |t| t.0.contains("another local user took the port"),
    )
    .await;
    stop_clean(bin, &cfg, &[&user, &other]).await;
}
