//! The pool's bounds: connections kept per instance, and idle ones
//! dropped (after their keep time, or when the app closed them).

use super::*;

#[tokio::test]
async fn an_instance_keeps_at_most_max_concurrency_connections() {
    let (open, gate) = watch::channel(false);
    let app = FakeApp::start(move |_| Answer::ReplyWhenOpen(gate.clone(), OK));
    // Two instances' worth of places, all leased on one instance (as when
    // only one of two is ready): four connections while they are busy.
    let s = setup(&app, |c| {
        c.processes = 2;
        c.max_concurrency = 2;
    });
    let busy: Vec<_> = (0..4).map(|_| s.spawn_get("/app/")).collect();
    until("four requests at the app", || app.seen().len() == 4).await;
    open.send(true).unwrap();
    for request in busy {
        assert_eq!(request.await.unwrap(), (200, Bytes::from("ok")));
    }
    until("two connections closed", || app.closed() == 2).await;
    for _ in 0..2 {
        assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    }
    assert_eq!(app.connections(), 4, "the two kept were reused");
    assert_eq!(app.closed(), 2);
    s.all_released().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_its_keep_time() {
    let app = FakeApp::start(|_| Answer::Reply(OK));
    let mut s = setup(&app, |_| {});
    Arc::get_mut(&mut s.upstream).unwrap().pool =
        Pool::with_idle_keep(4, Duration::from_millis(50));
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    until("the idle connection closed", || app.closed() == 1).await;
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    assert_eq!(
        app.connections(),
        2,
        "a new connection after the idle one was dropped"
    );
    s.all_released().await;
}

#[tokio::test]
async fn concurrent_requests_to_a_real_server_share_at_most_max_concurrency_connections() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("echo.sock");
    let connections = echo_server(UnixListener::bind(&socket).unwrap());
    let app = FakeApp {
        socket,
        tcp: None,
        log: Arc::default(),
        _dir: dir,
    };
    let s = setup(&app, |c| c.max_concurrency = 8);
    let tasks: Vec<_> = (0..16)
        .map(|client| {
            let (upstream, ctx) = (s.upstream.clone(), s.ctx.clone());
            tokio::spawn(async move {
                for n in 0..25 {
                    let text = format!("client {client} request {n}");
                    let req = Request::post("/app/echo")
                        .header("content-length", text.len())
                        .body(full_body(text.clone()))
                        .unwrap();
                    let resp = upstream.handle(req, &ctx).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                    assert_eq!(body(resp).await.unwrap(), text);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for 400 requests"
    );
    s.all_released().await;
}

#[tokio::test]
async fn an_idle_connection_the_app_closed_leaves_the_pool_before_its_keep_time() {
    // Its driver task sees the close; the sweeper drops it.
    let (close, gate) = watch::channel(false);
    let app = FakeApp::start(move |n| match n {
        0 => Answer::ReplyThenCloseWhenOpen(gate.clone(), OK),
        _ => Answer::Reply(OK),
    });
    let mut s = setup(&app, |_| {});
    Arc::get_mut(&mut s.upstream).unwrap().pool = Pool::with_idle_keep(4, Duration::from_secs(600));
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    assert_eq!(s.upstream.pool.idle(), 1, "the connection was pooled");
    close.send(true).unwrap();
    until("the app closed the connection", || app.closed() == 1).await;
    until("the closed connection left the pool", || {
        s.upstream.pool.idle() == 0
    })
    .await;
    assert_eq!(body(s.get("/app/").await.unwrap()).await.unwrap(), "ok");
    assert_eq!(app.connections(), 2, "a new connection for the second");
    assert_eq!(app.seen().len(), 2, "each request sent once");
    s.all_released().await;
}
