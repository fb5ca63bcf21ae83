//! The admin API's cluster endpoints (`/v1/cluster/...`, issue 26): a real
//! etcd (`common::etcd`), the real polyhost binary as root with
//! `[cluster]`, every request over its admin socket.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::etcd::{free_port, Etcd};
use common::{get, open_up, Binary, TestConfig};
use http::Method;
use polyhost::admin::client::{call_with_body, Answer};
use polyhost::cluster::schema::Keys;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A node's (or, without `etcd`, a plain server's) configuration.
fn config(etcd: Option<&Etcd>, node: &str) -> TestConfig {
    config_on(etcd, node, "127.0.0.1")
}

/// [`config`] listening on `ip` (several nodes on one machine: 127.0.0.x).
fn config_on(etcd: Option<&Etcd>, node: &str, ip: &str) -> TestConfig {
    let cfg = TestConfig::outside_tmp();
    let port = free_port();
    let cluster = etcd.map_or(String::new(), |etcd| {
        format!(
            "[cluster]\netcd = [\"{}\"]\nnode = \"{node}\"\nadvertise = \"{ip}:{port}\"\nlease_ttl = \"3s\"\n",
            etcd.client_url()
        )
    });
    cfg.write(
        "polyhost.toml",
        &format!(
            "listen = [\"{ip}:{port}\"]\nstate_dir = \"state\"\nlog_dir = \"log\"\nshutdown_timeout = \"5s\"\nrouter_threads = 2\n{cluster}"
        ),
    );
    cfg
}

/// The admin socket, once it is there.
async fn socket(cfg: &TestConfig) -> PathBuf {
    let path = cfg.path().join("state/admin.sock");
    common::wait_for(
        &format!("{} to exist", path.display()),
        WAIT,
        async || path.exists(),
        |&there| there,
    )
    .await;
    path
}

async fn api(socket: &Path, method: Method, path: &str, body: &str) -> (u16, Value) {
    let Answer { status, body } = call_with_body(
        socket,
        method,
        path,
        Bytes::from(body.to_owned()),
        // Longer than any move's waits below.
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status.as_u16(), json)
}

async fn stored(etcd: &Etcd, name: &str) -> usize {
    let keys = Keys::new("/polyhost/");
    let got = etcd
        .client()
        .await
        .get(keys.site(name), None)
        .await
        .unwrap();
    got.kvs().len()
}

/// `GET /v1/cluster/status` until `done` holds.
async fn wait_status(socket: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    common::wait_for(
        what,
        WAIT,
        async || api(socket, Method::GET, "/v1/cluster/status", "").await,
        |(status, json)| *status == 200 && done(json),
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_is_put_placed_served_and_removed_through_the_admin_socket() {
    let etcd = Etcd::start().await;
    let cfg = config(Some(&etcd), "web-1");
    cfg.write("www/shop/index.html", "site shop\n");
    let root = cfg.path().join("www/shop");
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    let sock = socket(&cfg).await;

    // Invalid: 422 naming the key, nothing written.
    let bad = format!(
        "hosts = [\"shop.test\"]\nroot = \"{}\"\n[php]\nmax_children = \"lots\"\n",
        root.display()
    );
    let (status, body) = api(&sock, Method::PUT, "/v1/cluster/sites/shop", &bad).await;
    assert_eq!(status, 422, "{body:#}");
    let keys: Vec<&str> = body["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["key"].as_str()).collect())
        .unwrap_or_default();
    assert!(keys.contains(&"php.max_children"), "{body:#}");
    assert!(
        body["errors"][0]["file"]
            .as_str()
            .unwrap_or("")
            .contains("sites/shop"),
        "{body:#}"
    );
    assert_eq!(
        stored(&etcd, "shop").await,
        0,
        "an invalid site was written"
    );

    // Valid: stored; placing it on an unknown node is refused.
    let good = format!("hosts = [\"shop.test\"]\nroot = \"{}\"\n", root.display());
    let (status, body) = api(&sock, Method::PUT, "/v1/cluster/sites/shop", &good).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(stored(&etcd, "shop").await, 1);
    let place = "/v1/cluster/sites/shop/place";
    let (status, body) = api(&sock, Method::POST, place, r#"{"node": "web-9"}"#).await;
    assert_eq!(status, 409, "{body:#}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("web-9"),
        "{body:#}"
    );

    // Placed on this node (once it registered): served, and the status
    // says ready.
    wait_status(&sock, "web-1 registered", |s| {
        s["nodes"].get("web-1").is_some()
    })
    .await;
    let (status, body) = api(&sock, Method::POST, place, r#"{"node": "web-1"}"#).await;
    assert_eq!(status, 200, "{body:#}");
    let served = common::wait_for(
        "shop.test served by the node",
        WAIT,
        async || {
            let r = get(bin.addr, "shop.test", "/").await;
            (r.status, r.text())
        },
        |(s, t)| *s == 200 && t.contains("site shop"),
    )
    .await;
    assert_eq!(served.0, 200);
    let status_json = wait_status(&sock, "web-1 reporting shop ready", |s| {
        s["nodes"].get("web-1").is_some()
            && s["sites"]["shop"]["node"] == "web-1"
            && s["sites"]["shop"]["reports"]["web-1"]["state"] == "ready"
    })
    .await;
    assert_eq!(status_json["sites"]["shop"]["stored"], true);

    // A move to where it is changes nothing; a drain with no other node
    // to go to is refused, site by site.
    let (status, body) = api(
        &sock,
        Method::POST,
        "/v1/cluster/sites/shop/move",
        r#"{"node": "web-1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("already"),
        "{body:#}"
    );
    let drain = "/v1/cluster/nodes/web-1/drain";
    let (status, body) = api(&sock, Method::POST, drain, "").await;
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(body["sites"][0]["site"], "shop", "{body:#}");
    assert_eq!(body["sites"][0]["moved"], false, "{body:#}");

    // Removed: gone from etcd, from the status, from the node.
    let (status, body) = api(&sock, Method::DELETE, "/v1/cluster/sites/shop", "").await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(stored(&etcd, "shop").await, 0);
    wait_status(&sock, "shop gone from the status", |s| {
        s["sites"].get("shop").is_none()
    })
    .await;
    common::wait_for(
        "shop.test no longer served",
        WAIT,
        async || {
            let r = get(bin.addr, "shop.test", "/").await;
            (r.status, r.text())
        },
        |(s, t)| *s != 200 && !t.contains("site shop"),
    )
    .await;
    let (status, body) = api(&sock, Method::DELETE, "/v1/cluster/sites/shop", "").await;
    assert_eq!(status, 404, "removing it twice: {body:#}");

    // etcd gone: 503, and the node still answers its API.
    let mut etcd = etcd;
    etcd.stop();
    let (status, body) = api(&sock, Method::GET, "/v1/cluster/status", "").await;
    assert_eq!(status, 503, "{body:#}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("etcd"),
        "{body:#}"
    );
    // An invalid site is refused before etcd is asked.
    let (status, body) = api(&sock, Method::PUT, "/v1/cluster/sites/shop", &bad).await;
    assert_eq!(status, 422, "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_cluster_answers_404_saying_so() {
    let cfg = config(None, "");
    open_up(cfg.path());
    let _bin = Binary::start(&cfg.main(), &[]).await;
    let (status, body) = api(&socket(&cfg).await, Method::GET, "/v1/cluster/status", "").await;
    assert_eq!(status, 404, "{body:#}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("[cluster]"),
        "{body:#}"
    );
}

/// Waits until `bin` answers `shop.test` with `status`.
async fn wait_answer(bin: &Binary, status: u16) {
    common::wait_for(
        &format!("shop.test answered {status} by {}", bin.addr),
        WAIT,
        async || get(bin.addr, "shop.test", "/").await.status,
        |s| *s == status,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_and_a_drain_through_the_admin_socket_answer_once_done() {
    let etcd = Etcd::start().await;
    let (a, b) = (
        config_on(Some(&etcd), "web-a", "127.0.0.2"),
        config_on(Some(&etcd), "web-b", "127.0.0.3"),
    );
    // The site's files at one path for both nodes (shared storage).
    let www = TestConfig::outside_tmp();
    www.write("shop/index.html", "site shop\n");
    let text = format!(
        "hosts = [\"shop.test\"]\nroot = \"{}\"\n",
        www.path().join("shop").display()
    );
    for dir in [www.path(), a.path(), b.path()] {
        open_up(dir);
    }
    let (node_a, node_b) = (
        Binary::start(&a.main(), &[]).await,
        Binary::start(&b.main(), &[]).await,
    );
    let sock = socket(&a).await;
    wait_status(&sock, "both nodes registered", |s| {
        s["nodes"].get("web-a").is_some() && s["nodes"].get("web-b").is_some()
    })
    .await;
    let (status, body) = api(&sock, Method::PUT, "/v1/cluster/sites/shop", &text).await;
    assert_eq!(status, 200, "{body:#}");
    let place = "/v1/cluster/sites/shop/place";
    let (status, body) = api(&sock, Method::POST, place, r#"{"node": "web-a"}"#).await;
    assert_eq!(status, 200, "{body:#}");
    wait_answer(&node_a, 200).await;

    // The move answers once web-b serves it and web-a let it go.
    let to_b = r#"{"node": "web-b", "ready_timeout": 60}"#;
    let (status, body) = api(&sock, Method::POST, "/v1/cluster/sites/shop/move", to_b).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        body["message"], "moved shop from web-a to web-b",
        "{body:#}"
    );
    assert_eq!(get(node_b.addr, "shop.test", "/").await.status, 200);
    wait_answer(&node_a, 421).await;

    // A drain of web-b (asked on web-a's socket) puts it back on web-a.
    let drain = "/v1/cluster/nodes/web-b/drain";
    let (status, body) = api(&sock, Method::POST, drain, r#"{"ready_timeout": 60}"#).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["sites"][0]["moved"], true, "{body:#}");
    assert_eq!(get(node_a.addr, "shop.test", "/").await.status, 200);
    wait_answer(&node_b, 421).await;
    let status_json = wait_status(&sock, "shop on web-a", |s| {
        s["sites"]["shop"]["node"] == "web-a"
    })
    .await;
    assert_eq!(
        status_json["sites"]["shop"]["draining"],
        serde_json::json!([])
    );
}
