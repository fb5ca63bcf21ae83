//! Python sites end to end, in process: real `polyhost-python` workers under
//! real test users in real cgroups, behind the router. Covers the supervisor
//! through its first runtime: on-demand start, crash → 502 → restart,
//! queue_timeout, request_timeout with recycling, max_requests recycling
//! without failed requests, scale to zero, and separation of two sites.

mod common;

use std::time::{Duration, Instant};

use common::{
    field, file_text, get, marker_dir, pids_of_uid, wait_for_marker, InProcess, TestConfig,
    TestUser,
};

fn python_site(cfg: &TestConfig, name: &str, user: &TestUser, python: &str) {
    common::python_test_site(cfg, name, user, "pyapp", "", python);
}

#[tokio::test]
async fn python_app_served_at_root_and_at_a_mount_with_script_name() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "py", &user, "threads = 2");
    let u2 = TestUser::new();
    python_site(&cfg, "mounted", &u2, "mount = \"/app\"");
    let server = InProcess::start(&cfg).await;

    let r = get(server.addr, "py.test", "/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(field(&r.text(), "script"), "");
    assert_eq!(field(&r.text(), "path"), "/hello");
    assert_eq!(field(&r.text(), "uid"), user.uid.to_string());
    assert_eq!(field(&r.text(), "remote"), "127.0.0.1");
    assert_eq!(field(&r.text(), "host"), "py.test");

    let r = get(server.addr, "mounted.test", "/app/x/y").await;
    assert_eq!(
        (field(&r.text(), "script"), field(&r.text(), "path")),
        ("/app", "/x/y"),
        "{}",
        r.text()
    );
    // Outside the mount: the site's static files.
    let r = get(server.addr, "mounted.test", "/static.txt").await;
    assert_eq!((r.status, r.text().as_str()), (200, "static file\n"));
    server.stop().await;
    assert!(
        pids_of_uid(user.uid).is_empty() && pids_of_uid(u2.uid).is_empty(),
        "no worker survives the stop"
    );
}

#[tokio::test]
async fn a_crash_gives_502_for_its_request_and_the_next_request_succeeds() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "crashy", &user, "");
    let server = InProcess::start(&cfg).await;
    let first = get(server.addr, "crashy.test", "/").await;
    assert_eq!(first.status, 200);
    let crash = get(server.addr, "crashy.test", "/crash").await;
    assert_eq!(crash.status, 502, "{}", crash.text());
    let ok = common::eventually(Duration::from_secs(10), || async {
        get(server.addr, "crashy.test", "/").await.status == 200
    })
    .await;
    assert!(ok, "the worker was restarted");
    let again = get(server.addr, "crashy.test", "/").await;
    assert_ne!(
        field(&again.text(), "pid"),
        field(&first.text(), "pid"),
        "a new process"
    );
    // The router's error log is flushed every half second.
    let log = cfg.path().join("log/crashy.error.log");
    common::wait_for(
        "the 502 in the site's error log",
        Duration::from_secs(10),
        async || file_text(&log),
        |log| log.0.contains("502"),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn queue_timeout_gives_503_and_request_timeout_gives_504_and_replaces_the_worker() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(
        &cfg,
        "busy",
        &user,
        "threads = 1\nqueue_timeout = \"1s\"\nrequest_timeout = \"2s\"",
    );
    let server = InProcess::start(&cfg).await;
    let first = get(server.addr, "busy.test", "/").await;
    let addr = server.addr;
    // One slow request holds the only thread; the next waits 1 s in the queue → 503.
    let marker = marker_dir(cfg.path(), &user).join("slow");
    let path = format!("/slow?s=1.8&mark={}", marker.display());
    let slow = tokio::spawn(async move { get(addr, "busy.test", &path).await });
    wait_for_marker(&marker).await;
    let t = Instant::now();
    let queued = get(server.addr, "busy.test", "/").await;
    assert_eq!(queued.status, 503, "{}", queued.text());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited the queue_timeout"
    );
    assert_eq!(slow.await.unwrap().status, 200);

    // A request past request_timeout → 504, and its process is replaced.
    let stuck = get(server.addr, "busy.test", "/slow?s=30").await;
    assert_eq!(stuck.status, 504);
    let replaced = common::eventually(Duration::from_secs(15), || async {
        let r = get(addr, "busy.test", "/").await;
        r.status == 200 && field(&r.text(), "pid") != field(&first.text(), "pid")
    })
    .await;
    assert!(replaced, "the stuck worker was replaced");
    server.stop().await;
}

#[tokio::test]
async fn max_requests_recycles_without_a_failed_request() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(
        &cfg,
        "recycled",
        &user,
        "processes = 2\nthreads = 2\nmax_requests = 10",
    );
    let server = InProcess::start(&cfg).await;
    // A steady stream of requests until several generations of workers served.
    let mut pids = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = 0;
    while pids.len() < 5 && Instant::now() < deadline {
        let r = get(server.addr, "recycled.test", "/").await;
        assert_eq!(r.status, 200, "request {served} failed: {}", r.text());
        pids.insert(field(&r.text(), "pid").to_owned());
        served += 1;
    }
    assert!(
        pids.len() >= 5,
        "workers were recycled: {pids:?} after {served} requests"
    );
    server.stop().await;
}

#[tokio::test]
async fn idle_site_scales_to_zero_and_the_next_request_starts_it() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "sleepy", &user, "idle_timeout = \"1s\"");
    let server = InProcess::start(&cfg).await;
    assert!(
        pids_of_uid(user.uid).is_empty(),
        "started on demand, not before"
    );
    assert_eq!(get(server.addr, "sleepy.test", "/").await.status, 200);
    assert!(!pids_of_uid(user.uid).is_empty());
    let zero = common::eventually(Duration::from_secs(10), || async {
        pids_of_uid(user.uid).is_empty()
    })
    .await;
    assert!(zero, "no process after idle_timeout");
    let r = get(server.addr, "sleepy.test", "/").await;
    assert_eq!(r.status, 200, "served after scale to zero");
    server.stop().await;
}

#[tokio::test]
async fn two_sites_run_as_their_own_users_and_cannot_read_each_others_files() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    python_site(&cfg, "site-a", &ua, "");
    python_site(&cfg, "site-b", &ub, "");
    let secret = cfg.write("www/site-b/secret.txt", "b's secret");
    std::os::unix::fs::chown(&secret, Some(ub.uid), None).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let server = InProcess::start(&cfg).await;
    let path = format!("/read?f={}", secret.display());
    let a = get(server.addr, "site-a.test", &path).await;
    assert_eq!(a.text(), "denied: PermissionError");
    let b = get(server.addr, "site-b.test", &path).await;
    assert_eq!(b.text(), "b's secret");
    server.stop().await;
}

#[tokio::test]
async fn a_segfault_or_a_sigkilled_worker_gives_502_and_the_next_request_succeeds() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "fragile", &user, "threads = 2");
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "fragile.test", "/").await.status, 200);
    let segv = get(server.addr, "fragile.test", "/segv").await;
    assert_eq!(segv.status, 502, "{}", segv.text());
    let back = common::eventually(Duration::from_secs(10), || async {
        get(server.addr, "fragile.test", "/").await.status == 200
    })
    .await;
    assert!(back, "served again after the segfault");

    // SIGKILL the worker while it serves a slow request.
    let pid: i32 = field(&get(server.addr, "fragile.test", "/").await.text(), "pid")
        .parse()
        .unwrap();
    let addr = server.addr;
    let marker = marker_dir(cfg.path(), &user).join("slow");
    let path = format!("/slow?s=5&mark={}", marker.display());
    let slow = tokio::spawn(async move { get(addr, "fragile.test", &path).await });
    wait_for_marker(&marker).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(slow.await.unwrap().status, 502);
    let back = common::eventually(Duration::from_secs(10), || async {
        get(server.addr, "fragile.test", "/").await.status == 200
    })
    .await;
    assert!(back, "served again after SIGKILL");
    let status = server.site("fragile").await;
    assert!(status.restarts >= 2, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn slow_requests_on_one_site_do_not_block_another_site() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    python_site(&cfg, "slow", &ua, "threads = 2");
    python_site(&cfg, "fast", &ub, "");
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "fast.test", "/").await.status, 200);
    let addr = server.addr;
    let marks = marker_dir(cfg.path(), &ua);
    let markers: Vec<_> = (0..2).map(|i| marks.join(format!("slow-{i}"))).collect();
    let slow: Vec<_> = markers
        .iter()
        .map(|m| {
            let path = format!("/slow?s=3&mark={}", m.display());
            tokio::spawn(async move { get(addr, "slow.test", &path).await })
        })
        .collect();
    for m in &markers {
        wait_for_marker(m).await;
    }
    let t = Instant::now();
    assert_eq!(get(server.addr, "fast.test", "/").await.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the third site answered while the first was busy"
    );
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
    server.stop().await;
}

/// A client that sends a request head and then stalls its body held the
/// request past the site's `request_timeout` (the body is read before any
/// worker's clock starts, and `body_timeout` is 60 s by default): it is cut
/// at the earlier of the two, with 408.
#[tokio::test]
async fn a_stalled_request_body_is_cut_at_request_timeout_with_408() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "stall", &user, "request_timeout = \"2s\"");
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "stall.test", "/").await.status, 200);
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let t = Instant::now();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"POST /echo HTTP/1.1\r\nHost: stall.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let mut seen = String::new();
    // Bounded well below body_timeout (60 s): only request_timeout can end it.
    common::read_until_count(
        &mut s,
        &mut seen,
        "HTTP/1.1 408",
        1,
        Duration::from_secs(10),
    )
    .await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(8),
        "cut after {waited:?}: {seen}"
    );
    // The site itself is unharmed.
    assert_eq!(get(server.addr, "stall.test", "/").await.status, 200);
    server.stop().await;
}

/// A WSGI app that answers with an interim (1xx) status: the router waited
/// for a final head until request_timeout and then recycled the worker. The
/// worker refuses the status: a 500 at once, the app's error logged once
/// with the site and the request, and the same worker serves on.
#[tokio::test]
async fn a_wsgi_app_answering_1xx_gets_500_at_once_and_the_worker_lives_on() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    python_site(&cfg, "interim", &user, "request_timeout = \"30s\"");
    let server = InProcess::start(&cfg).await;
    let before = get(server.addr, "interim.test", "/").await;
    assert_eq!(before.status, 200);
    let t = Instant::now();
    let r = get(server.addr, "interim.test", "/interim").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "after {:?}",
        t.elapsed()
    );
    let after = get(server.addr, "interim.test", "/").await;
    assert_eq!(
        field(&after.text(), "pid"),
        field(&before.text(), "pid"),
        "the worker lives on"
    );
    let log_path = cfg.path().join("log/interim.error.log");
    let logged = common::eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("is informational")
    })
    .await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(logged, "{log}");
    assert_eq!(
        log.matches("error in the application for GET /interim")
            .count(),
        1,
        "logged once, naming the request: {log}"
    );
    assert!(log.contains("site interim"), "names the site: {log}");
    assert_eq!(log.matches("is informational").count(), 1, "{log}");
    server.stop().await;
}
