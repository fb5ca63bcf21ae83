//! Real ASGI frameworks from PyPI in the worker (the test virtualenv made
//! by `scripts/setup.sh`, `$TEST_PYTHON_VENV`, default
//! `/var/tmp/polyhost-test-venv`, which also has uvloop: these tests run on
//! uvloop, the others on asyncio's own loop): Starlette and FastAPI with
//! lifespan state, a streaming response, server-sent events and a
//! WebSocket; Django's ASGI handler with an async view and the admin
//! login page under a mount.

mod common;

use std::path::PathBuf;

use common::ws::Ws;
use common::{empty, full, request, Worker};
use http::StatusCode;

fn venv() -> PathBuf {
    let v = std::env::var_os("TEST_PYTHON_VENV")
        .map_or_else(|| "/var/tmp/polyhost-test-venv".into(), PathBuf::from);
    assert!(
        v.join("bin/python").exists(),
        "the test virtualenv {} is missing: run ./scripts/setup.sh",
        v.display()
    );
    v
}

async fn framework(app: &str) -> Worker {
    let home = venv();
    let w = Worker::start(
        app,
        &["--interface", "asgi", "--lifespan", "on", "--home", home.to_str().unwrap()],
    )
    .await;
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", w.child.id())).unwrap();
    assert!(maps.contains("uvloop"), "uvloop from the venv is not in use");
    w
}

#[tokio::test]
async fn starlette_lifespan_state_streaming_sse_and_a_websocket() {
    let w = framework("asgi_starlette:app").await;
    let r = w
        .send(
            request("GET", "/shop/")
                .header("x-polyhost-script-name", "/shop")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "hello from lifespan path=/shop/ root=/shop");
    let r = w.get("/stream").await;
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\n");
    let r = w.get("/sse").await;
    assert_eq!(
        r.headers["content-type"].to_str().unwrap(),
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(r.text().matches("event: tick").count(), 3, "{}", r.text());
    let r = w
        .send(request("POST", "/upload").body(full(vec![b'u'; 300_000])).unwrap())
        .await;
    assert_eq!(r.text(), "got 300000");
    let mut ws = Ws::open(&w, "/ws").await;
    ws.frame(true, 1, b"hi").await;
    assert_eq!(ws.read_frame().await.unwrap(), (true, 1, b"echo: hi".to_vec()));
    ws.frame(true, 8, &[0x03, 0xe8]).await;
    assert_eq!(ws.close_frame().await.0, 1000);
    w.assert_clean_log();
}

#[tokio::test]
async fn fastapi_path_params_lifespan_state_and_a_websocket_close_code() {
    let w = framework("asgi_starlette:api").await;
    let r = w.get("/items/7?q=x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"item_id": 7, "q": "x", "greeting": "hello from lifespan"})
    );
    assert_eq!(w.get("/items/nope").await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut ws = Ws::open(&w, "/ws").await;
    ws.frame(true, 1, br#"{"a": 1}"#).await;
    let (_, _, p) = ws.read_frame().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&p).unwrap(),
        serde_json::json!({"got": {"a": 1}})
    );
    assert_eq!(ws.close_frame().await.0, 4000);
    w.assert_clean_log();
}

#[tokio::test]
async fn django_asgi_view_and_admin_login_under_a_mount() {
    let home = venv();
    let w = Worker::start(
        "asgi_django:application",
        &["--interface", "asgi", "--home", home.to_str().unwrap()],
    )
    .await;
    let mounted = |path: &str| {
        request("GET", path)
            .header("x-polyhost-script-name", "/app")
            .body(empty())
            .unwrap()
    };
    let r = w.send(mounted("/app/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "django async index link=/app/other/ script=/app");
    let r = w.send(mounted("/app/admin/login/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let page = r.text();
    assert!(page.contains("csrfmiddlewaretoken"), "{page}");
    assert!(page.contains("action=\"/app/admin/login/\""), "the form posts under the mount: {page}");
    assert!(r.headers.get("set-cookie").is_some(), "the CSRF cookie");
    // The admin index redirects an anonymous user to the login, under the mount.
    let r = w.send(mounted("/app/admin/")).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "/app/admin/login/?next=/app/admin/");
    w.assert_clean_log();
}
