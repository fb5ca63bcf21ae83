//! The admin API and the CLI against an in-process polyhost: who may use
//! the socket, status reflecting crashes, OOM kills and scale to zero,
//! stop/start, metrics that move and parse, stale sockets, and garbage on
//! the socket.

mod admin_support;
mod common;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use admin_support::{cli, python_site, Served, TestGroup};
use common::{eventually, get, open_up, TestConfig, TestUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn status_table_and_json_and_the_socket_is_root_only() {
    let cfg = TestConfig::new();
    cfg.static_site("www", &["www.test"], "");
    let served = Served::start(&cfg).await;
    let meta = std::fs::metadata(&served.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    assert_eq!(get(served.addr, "www.test", "/").await.status, 200);
    let table = cli(&served.socket, &["status"], None).await;
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[1].starts_with("SITE "), "{}", table.stdout);
    assert!(lines[2].starts_with("www "), "{}", table.stdout);
    assert!(lines[2].contains(" static "), "{}", table.stdout);

    let status = served.status().await;
    assert_eq!(status.sites.len(), 1);
    assert_eq!(status.sites[0].requests, 1);
    let one = cli(&served.socket, &["status", "www"], None).await;
    assert!(one.stdout.contains("hosts      www.test"), "{one:?}");

    let missing = cli(&served.socket, &["status", "nope"], None).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no site named \"nope\""),
        "{missing:?}"
    );
    let restart = cli(&served.socket, &["restart", "nope"], None).await;
    assert_eq!(restart.code, 1, "{restart:?}");
    served.stop().await;

    // Nobody listening any more: exit 2 with what to check.
    let gone = cli(&cfg.path().join("state/admin.sock"), &["status"], None).await;
    assert_eq!(gone.code, 2, "{gone:?}");
    assert!(
        gone.stderr.contains("is `polyhost serve` running?"),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_stranger_is_refused_and_a_member_of_the_admin_group_is_let_in() {
    let cfg = TestConfig::new();
    let group = TestGroup::new();
    let (member, stranger) = (TestUser::new(), TestUser::new());
    group.add(&member);
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    cfg.write(
        "polyhost.toml",
        &format!("{main}[admin]\ngroup = \"{}\"\n", group.name),
    );
    cfg.static_site("www", &["www.test"], "");
    open_up(cfg.path());
    let served = Served::start(&cfg).await;
    let meta = std::fs::metadata(&served.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name(&group.name)
        .unwrap()
        .unwrap()
        .gid;
    assert_eq!(meta.gid(), gid.as_raw());

    let ok = cli(&served.socket, &["status"], Some(&member.name)).await;
    assert_eq!(ok.code, 0, "a member of the admin group: {ok:?}");

    // First gate, the file mode: the stranger cannot open the socket (exit 1, refused).
    let denied = cli(&served.socket, &["status"], Some(&stranger.name)).await;
    assert_eq!(denied.code, 1, "{denied:?}");
    assert!(denied.stderr.contains("permission denied on"), "{denied:?}");

    // Second gate, the peer's credentials: with the mode opened up, still 403 (exit 1).
    std::fs::set_permissions(&served.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let forbidden = cli(&served.socket, &["reload"], Some(&stranger.name)).await;
    assert_eq!(forbidden.code, 1, "{forbidden:?}");
    assert!(
        forbidden.stderr.contains(&format!(
            "refused: permission denied: uid {} may not use the admin API",
            stranger.uid
        )),
        "{forbidden:?}"
    );
    assert_eq!(
        served.status().await.reloads,
        0,
        "the refused reload did nothing"
    );
    served.stop().await;
}

#[tokio::test]
async fn status_shows_a_crash_an_oom_kill_and_a_site_scaled_to_zero() {
    let cfg = TestConfig::new();
    let (u1, u2, u3) = (TestUser::new(), TestUser::new(), TestUser::new());
    python_site(&cfg, "crashy", &u1, "1", "");
    python_site(&cfg, "hog", &u2, "1", "[limits]\nmemory = \"96M\"");
    python_site(&cfg, "sleepy", &u3, "1", "");
    let sleepy = std::fs::read_to_string(cfg.path().join("vhosts/sleepy.toml")).unwrap();
    cfg.write(
        "vhosts/sleepy.toml",
        &format!("{sleepy}idle_timeout = \"1s\"\n"),
    );
    let served = Served::start(&cfg).await;
    let addr = served.addr;

    assert_eq!(get(addr, "crashy.test", "/").await.status, 200);
    assert_eq!(get(addr, "crashy.test", "/crash").await.status, 502);
    let restarted = eventually(Duration::from_secs(10), || async {
        served.site("crashy").await.restarts >= 1
    })
    .await;
    let crashy = served.site("crashy").await;
    assert!(restarted, "{crashy:?}");
    let err = crashy.last_error.unwrap_or_default();
    assert!(err.contains("exited unexpectedly: exit status 3"), "{err}");

    assert_eq!(get(addr, "hog.test", "/").await.status, 200);
    let hog = get(addr, "hog.test", "/hog?mb=400").await;
    assert_eq!(hog.status, 502, "{}", hog.text());
    let oom = eventually(Duration::from_secs(10), || async {
        served.site("hog").await.oom_kills >= 1
    })
    .await;
    let hog = served.site("hog").await;
    assert!(oom, "{hog:?}");
    assert_eq!(hog.memory_limit_bytes, Some(96 << 20));
    assert!(hog.last_error.unwrap_or_default().contains("OOM"));

    assert_eq!(get(addr, "sleepy.test", "/").await.status, 200);
    assert_eq!(served.site("sleepy").await.processes, 1);
    let idle = eventually(Duration::from_secs(10), || async {
        let s = served.site("sleepy").await;
        s.state == "idle" && s.processes == 0
    })
    .await;
    assert!(idle, "{:?}", served.site("sleepy").await);

    let table = cli(&served.socket, &["status"], None).await.stdout;
    let hog_line = table.lines().find(|l| l.starts_with("hog ")).unwrap();
    assert!(hog_line.contains("/96M"), "{table}");
    served.stop().await;
}

#[tokio::test]
async fn stop_and_start_a_site() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "py", &user, "1", "");
    let served = Served::start(&cfg).await;
    assert_eq!(get(served.addr, "py.test", "/").await.status, 200);
    let stop = cli(&served.socket, &["stop", "py"], None).await;
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.stdout.starts_with("py: stopped"), "{stop:?}");
    assert_eq!(get(served.addr, "py.test", "/").await.status, 503);
    let s = served.site("py").await;
    assert_eq!((s.state.as_str(), s.processes), ("stopped", 0));
    assert!(common::pids_of_uid(user.uid).is_empty());
    let start = cli(&served.socket, &["start", "py"], None).await;
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(get(served.addr, "py.test", "/").await.status, 200);
    served.stop().await;
}

/// A strict reading of the Prometheus text format: every sample belongs to
/// a family announced by `# TYPE`, names and labels are well formed, values
/// are numbers. Returns `name{labels}` → value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(matches!(kind, "HELP" | "TYPE"), "comment: {line}");
            assert!(name_ok(name), "name in {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    matches!(t, "counter" | "gauge" | "histogram" | "summary" | "untyped"),
                    "{line}"
                );
                types.insert(name.to_owned(), t.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels in {line}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(name_ok(k), "label name in {line}");
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(
            types.contains_key(family) || types.contains_key(name),
            "sample without # TYPE: {line}"
        );
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate {line}"
        );
    }
    out
}

#[tokio::test]
async fn metrics_move_with_traffic_and_parse_as_prometheus_text() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    cfg.static_site("www", &["www.test"], "");
    python_site(&cfg, "py", &user, "1", "");
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    cfg.write(
        "polyhost.toml",
        &format!("{main}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    );
    // A file holding a token must be private (tests/tenant_config.rs).
    std::fs::set_permissions(cfg.main(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = cfg.load();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listeners = polyhost::admin::bind(&config.server).await.unwrap();
    let (admin_tcp, metrics_tcp) = (
        listeners.tcp_addr().unwrap(),
        listeners.metrics_addr().unwrap(),
    );
    let socket = listeners.socket().to_path_buf();
    let server = polyhost::app::Server::start(config).await.unwrap();
    let admin = polyhost::admin::serve(listeners, server.clone(), shutdown.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let task = tokio::spawn(polyhost::app::serve_with(
        server,
        vec![tcp],
        shutdown.clone(),
    ));

    let scrape = || async {
        let a = polyhost::admin::client::call(
            &socket,
            http::Method::GET,
            "/metrics",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200);
        parse_prometheus(&String::from_utf8_lossy(&a.body))
    };
    assert_eq!(get(addr, "py.test", "/").await.status, 200);
    let before = scrape().await;
    for _ in 0..10 {
        assert_eq!(get(addr, "www.test", "/").await.status, 200);
        assert_eq!(get(addr, "py.test", "/").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(addr, "www.test", "/missing").await.status, 404);
    }
    let after = scrape().await;
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(f64::NAN) - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        delta(r#"polyhost_requests_total{site="www",class="2xx"}"#),
        10.0
    );
    assert_eq!(
        delta(r#"polyhost_requests_total{site="www",class="4xx"}"#),
        3.0
    );
    assert_eq!(
        delta(r#"polyhost_requests_total{site="py",class="2xx"}"#),
        10.0
    );
    assert_eq!(
        delta(r#"polyhost_request_duration_seconds_count{site="www"}"#),
        13.0
    );
    assert_eq!(
        delta(r#"polyhost_queue_wait_seconds_count{site="py"}"#),
        10.0
    );
    assert!(delta("polyhost_connections_accepted_total") >= 23.0);
    assert_eq!(after[r#"polyhost_worker_threads_total{site="py"}"#], 4.0);
    assert_eq!(after[r#"polyhost_worker_threads_busy{site="py"}"#], 0.0);
    assert_eq!(after[r#"polyhost_processes{site="py"}"#], 1.0);
    assert!(after[r#"polyhost_memory_bytes{site="py"}"#] > 0.0);
    assert_eq!(
        after[r#"polyhost_site_state{site="py",state="running"}"#],
        1.0
    );
    assert_eq!(after[r#"polyhost_site_config_not_applied{site="py"}"#], 0.0);
    assert_eq!(after[r#"polyhost_reloads_total{result="ok"}"#], 0.0);
    assert_eq!(after[r#"polyhost_requests_in_flight{site="www"}"#], 0.0);

    // TCP: metrics only on [metrics] listen; the admin API only with the token.
    let m = get(metrics_tcp, "x", "/metrics").await;
    assert_eq!(m.status, 200);
    parse_prometheus(&m.text());
    assert_eq!(get(metrics_tcp, "x", "/v1/status").await.status, 404);
    assert_eq!(get(admin_tcp, "x", "/v1/status").await.status, 401);
    let mut c = common::Client::connect(admin_tcp).await;
    let mut req = common::request("GET", "x", "/v1/status");
    req.headers_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let ok = c.send(req).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    shutdown.cancel();
    task.await.unwrap().unwrap();
    admin.await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced_a_live_one_refuses_a_second_polyhost() {
    let cfg = TestConfig::new();
    cfg.static_site("www", &["www.test"], "");
    let config = cfg.load();
    let socket = config.server.admin.socket.clone();
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket left by a polyhost that died: nothing answers.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let served = Served::start(&cfg).await;
    assert_eq!(served.api("GET", "/v1/status").await.0, 200);

    let second = polyhost::admin::bind(&config.server).await;
    let err = second.err().expect("refused").to_string();
    assert!(err.contains("another polyhost is running"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert_eq!(
        served.api("GET", "/v1/status").await.0,
        200,
        "the first one still serves"
    );
    served.stop().await;

    std::fs::write(&socket, "not a socket").unwrap();
    let err = polyhost::admin::bind(&config.server)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
}

#[tokio::test]
async fn anything_on_the_socket_gets_a_json_answer_never_a_panic() {
    let cfg = TestConfig::new();
    cfg.static_site("www", &["www.test"], "");
    let served = Served::start(&cfg).await;
    for (method, path, status) in [
        ("GET", "/", 404),
        ("GET", "/v1", 404),
        ("DELETE", "/v1/status", 405),
        ("GET", "/v1/reload", 405),
        ("POST", "/v1/sites/www/explode", 404),
        ("GET", "/v1/sites/..%2F..", 404),
        ("POST", "/v1/sites/%00/restart", 404),
        ("GET", &format!("/v1/sites/{}", "a".repeat(5000)), 404),
        ("GET", "/v1/sites/www/", 200),
    ] {
        let (got, body) = served.api(method, path).await;
        assert_eq!(got, status, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status != 200 {
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
    }
    for garbage in [
        &b"\x00\x01\x02 garbage\r\n\r\n"[..],
        b"GET /v1/status HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut s = tokio::net::UnixStream::connect(&served.socket)
            .await
            .unwrap();
        s.write_all(garbage).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    }
    assert_eq!(
        served.api("GET", "/v1/status").await.0,
        200,
        "still serving"
    );
    served.stop().await;
}

#[test]
fn admin_listen_without_a_token_is_a_config_error() {
    let cfg = TestConfig::new();
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    cfg.write(
        "polyhost.toml",
        &format!("{main}[admin]\nlisten = \"127.0.0.1:9090\"\n[metrics]\nlisten = \"nowhere\"\n"),
    );
    let errors = polyhost::config::load(&cfg.main()).unwrap_err().to_string();
    let errors = errors.replace(&cfg.path().display().to_string(), "$DIR");
    expect_test::expect![[r#"
        $DIR/polyhost.toml: metrics.listen: "nowhere" is not an address:port (e.g. "127.0.0.1:9090")
        $DIR/polyhost.toml: admin.token: required when admin.listen is set: a long random string that clients send as `Authorization: Bearer TOKEN` (or admin.token_file, a file holding it)"#]]
    .assert_eq(&errors);
}

#[tokio::test]
async fn nothing_is_started_once_shutdown_began() {
    let cfg = TestConfig::new();
    cfg.static_site("www", &["www.test"], "");
    let served = Served::start(&cfg).await;
    served.server.shutdown().await;
    cfg.static_site("late", &["late.test"], "");
    let (status, body) = served.api("POST", "/v1/reload").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let r = cli(&served.socket, &["start", "www"], None).await;
    assert_eq!(r.code, 1, "{r:?}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_answer_while_a_reload_waits_for_a_slow_start() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "py", &user, "1", "");
    let served = Served::start(&cfg).await;
    assert_eq!(get(served.addr, "py.test", "/").await.status, 200);
    let before = served.site("py").await;
    let py = std::fs::read_to_string(cfg.path().join("vhosts/py.toml")).unwrap();
    cfg.write(
        "vhosts/py.toml",
        &py.replace(
            "APP_VERSION = \"1\"",
            "APP_VERSION = \"2\", IMPORT_DELAY = \"3\"",
        ),
    );
    let socket = served.socket.clone();
    let reload = tokio::spawn(async move { cli(&socket, &["reload"], None).await });
    // The reload holds the control lock while the new generation imports.
    let started = eventually(Duration::from_secs(5), || async {
        common::pids_of_uid(user.uid).len() == 2
    })
    .await;
    assert!(started, "the new generation is starting");
    let t = std::time::Instant::now();
    let during = served.site("py").await;
    let (code, metrics) = served.api("GET", "/metrics").await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered in {:?}",
        t.elapsed()
    );
    assert_eq!(code, 200);
    assert!(
        metrics.contains("polyhost_processes{site=\"py\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        during.generation, before.generation,
        "the old generation serves"
    );
    assert!(!reload.is_finished(), "the reload was still waiting");
    let r = reload.await.unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    let after = served.site("py").await;
    assert!(after.generation > before.generation);
    assert!(get(served.addr, "py.test", "/")
        .await
        .text()
        .starts_with("version=2"));
    served.stop().await;
}
