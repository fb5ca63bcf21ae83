//! The supervisor end to end, as root on this kernel: site users and their
//! separation, memory and process limits in real cgroups, crash loops,
//! recycling by memory, and crash safety when polyhost itself is SIGKILLed.

mod common;

use std::time::Duration;

use common::{field, get, pids_of_uid, Binary, InProcess, TestConfig, TestUser};

fn site(cfg: &TestConfig, name: &str, user: &TestUser, app: &str, extra: &str) {
    common::python_test_site(cfg, name, user, app, extra, "");
}

#[tokio::test]
async fn sites_run_as_their_users_without_root_groups_and_cannot_reach_each_other() {
    let cfg = TestConfig::new();
    let (ua, ub) = (TestUser::new(), TestUser::new());
    site(&cfg, "alpha", &ua, "pyapp:isolation_app", "");
    site(&cfg, "beta", &ub, "pyapp:isolation_app", "");
    let server = InProcess::start(&cfg).await;
    let a = get(server.addr, "alpha.test", "/ids").await.text();
    let b = get(server.addr, "beta.test", "/ids").await.text();
    let gid_a = nix::unistd::User::from_name(&ua.name)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(field(&a, "uid"), ua.uid.to_string(), "{a}");
    assert_eq!(field(&a, "gid"), gid_a.to_string(), "{a}");
    assert_eq!(
        field(&a, "groups"),
        gid_a.to_string(),
        "only the site's own group, none of root's: {a}"
    );
    assert_eq!(field(&b, "uid"), ub.uid.to_string(), "{b}");

    // alpha cannot signal beta's worker, nor connect to beta's socket.
    let pid_b = field(&b, "pid");
    let kill = get(server.addr, "alpha.test", &format!("/kill?pid={pid_b}"))
        .await
        .text();
    assert_eq!(kill, "refused: PermissionError");
    let beta = server.site("beta").await;
    assert_eq!(beta.pids.len(), 1);
    let sock_dir = cfg.path().join("state/sockets/beta");
    let sock = std::fs::read_dir(&sock_dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .expect("beta's socket")
        .path();
    let connect = get(
        server.addr,
        "alpha.test",
        &format!("/connect?path={}", sock.display()),
    )
    .await
    .text();
    assert_eq!(connect, "refused: PermissionError");
    // Nor can beta itself (tests/socket_isolation.rs shows the probe can connect
    // where a socket is within reach).
    let own = get(
        server.addr,
        "beta.test",
        &format!("/connect?path={}", sock.display()),
    )
    .await
    .text();
    assert_eq!(own, "refused: PermissionError");
    server.stop().await;
}

#[tokio::test]
async fn memory_limit_oom_kills_inside_the_site_and_status_shows_it() {
    let cfg = TestConfig::new();
    let (hog, calm) = (TestUser::new(), TestUser::new());
    site(
        &cfg,
        "hog",
        &hog,
        "pyapp:isolation_app",
        "[limits]\nmemory = \"96M\"",
    );
    site(&cfg, "calm", &calm, "pyapp:isolation_app", "");
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "calm.test", "/").await.status, 200);
    let r = get(server.addr, "hog.test", "/alloc?mb=300").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        get(server.addr, "calm.test", "/").await.status,
        200,
        "the other site keeps answering"
    );
    let seen = common::eventually(Duration::from_secs(10), || async {
        server.site("hog").await.oom_kills >= 1
    })
    .await;
    let status = server.site("hog").await;
    assert!(seen, "oom kill in status: {status:?}");
    assert_eq!(status.memory_limit_bytes, Some(96 << 20));
    assert!(
        status.last_error.as_deref().unwrap_or("").contains("OOM"),
        "{status:?}"
    );
    // The site comes back.
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            get(server.addr, "hog.test", "/").await.status == 200
        })
        .await
    );
    server.stop().await;
}

#[tokio::test]
async fn a_fork_bomb_is_held_by_the_process_limit() {
    let cfg = TestConfig::new();
    let (bomb, calm) = (TestUser::new(), TestUser::new());
    site(
        &cfg,
        "bomb",
        &bomb,
        "pyapp:isolation_app",
        "[limits]\nprocesses = 24",
    );
    site(&cfg, "calm", &calm, "pyapp:isolation_app", "");
    let server = InProcess::start(&cfg).await;
    let r = get(server.addr, "bomb.test", "/forkbomb").await;
    let forked: usize = field(&r.text(), "forked").parse().unwrap_or(999);
    assert!(forked < 24, "{}", r.text());
    assert_eq!(
        field(&r.text(), "error"),
        "BlockingIOError",
        "fork failed at the limit: {}",
        r.text()
    );
    assert!(pids_of_uid(bomb.uid).len() <= 24);
    assert_eq!(
        get(server.addr, "calm.test", "/").await.status,
        200,
        "the other site keeps answering"
    );
    server.stop().await;
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            pids_of_uid(bomb.uid).is_empty()
        })
        .await,
        "the bomb's children are gone after stop"
    );
}

#[tokio::test]
async fn an_app_that_fails_to_import_gives_500_is_retried_with_backoff_then_marked_failed() {
    let cfg = TestConfig::new();
    let (user, calm) = (TestUser::new(), TestUser::new());
    site(&cfg, "broken", &user, "broken", "");
    site(&cfg, "calm", &calm, "pyapp:isolation_app", "");
    std::fs::write(
        cfg.path().join("vhosts/broken.toml"),
        std::fs::read_to_string(cfg.path().join("vhosts/broken.toml")).unwrap()
            + "startup_timeout = \"2s\"\n",
    )
    .unwrap();
    let server = InProcess::start(&cfg).await;
    let first = get(server.addr, "broken.test", "/").await;
    assert_eq!(first.status, 500, "an application error: {}", first.text());
    let failed = common::eventually(Duration::from_secs(20), || async {
        let _ = get(server.addr, "broken.test", "/").await;
        server.site("broken").await.state == "failed"
    })
    .await;
    let status = server.site("broken").await;
    assert!(failed, "{status:?}");
    assert!(status.restarts >= 5, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("exit status 3"),
        "{status:?}"
    );
    let t = std::time::Instant::now();
    assert_eq!(get(server.addr, "broken.test", "/").await.status, 500);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a failed site answers at once"
    );
    assert!(pids_of_uid(user.uid).is_empty(), "no process spinning");
    let log = std::fs::read_to_string(cfg.path().join("log/broken.error.log")).unwrap();
    assert!(
        log.contains("this app cannot be imported"),
        "traceback in the site's error log: {log}"
    );
    assert_eq!(get(server.addr, "calm.test", "/").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn memory_per_process_recycles_without_a_failed_request() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    site(&cfg, "grow", &user, "pyapp:isolation_app", "");
    std::fs::write(
        cfg.path().join("vhosts/grow.toml"),
        std::fs::read_to_string(cfg.path().join("vhosts/grow.toml")).unwrap()
            + "memory_per_process = \"80M\"\n",
    )
    .unwrap();
    let server = InProcess::start(&cfg).await;
    let first = get(server.addr, "grow.test", "/").await.text();
    assert_eq!(
        get(server.addr, "grow.test", "/alloc?mb=120").await.status,
        200
    );
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let replaced = common::eventually(Duration::from_secs(15), || async {
        let r = get(server.addr, "grow.test", "/").await;
        if r.status != 200 {
            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r.status == 200 && r.text() != first
    })
    .await;
    assert!(replaced, "the worker above memory_per_process was replaced");
    assert_eq!(failures.into_inner(), 0);
    server.stop().await;
}

#[tokio::test]
async fn sigkill_of_polyhost_leaves_no_site_process_and_the_next_start_is_clean() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    site(&cfg, "orphan", &user, "pyapp:isolation_app", "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    assert_eq!(
        get(bin.addr, "orphan.test", "/").await.status,
        200,
        "{}",
        bin.log()
    );
    assert!(!pids_of_uid(user.uid).is_empty());
    let mut child = bin.child;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let gone = common::eventually(Duration::from_secs(10), || async {
        pids_of_uid(user.uid).is_empty()
    })
    .await;
    assert!(
        gone,
        "site processes died with polyhost: {:?}",
        pids_of_uid(user.uid)
    );
    let stale = std::fs::read_dir(cfg.path().join("state/sockets/orphan"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "sock"));
    assert!(
        stale,
        "a stale socket is left behind for the next start to clean"
    );

    let bin = Binary::start(&cfg.main(), &[]).await;
    let r = get(bin.addr, "orphan.test", "/").await;
    assert_eq!(r.status, 200, "{}", bin.log());
    assert!(bin.terminate().await.success());
    assert!(pids_of_uid(user.uid).is_empty());
}

#[tokio::test]
async fn without_cgroups_memory_is_enforced_by_rss_polling() {
    let cfg = TestConfig::new();
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    cfg.write("polyhost.toml", &format!("{main}cgroups = \"off\"\n"));
    let (hog, calm) = (TestUser::new(), TestUser::new());
    site(
        &cfg,
        "hog",
        &hog,
        "pyapp:isolation_app",
        "[limits]\nmemory = \"96M\"",
    );
    site(&cfg, "calm", &calm, "pyapp:isolation_app", "");
    let server = InProcess::start(&cfg).await;
    let status = server.server.status().await;
    assert!(
        status.limits_backend.contains("RSS polling"),
        "{}",
        status.limits_backend
    );
    let first = get(server.addr, "hog.test", "/").await.text();
    let _ = get(server.addr, "hog.test", "/alloc?mb=200").await;
    let killed = common::eventually(Duration::from_secs(10), || async {
        server.site("hog").await.oom_kills >= 1
    })
    .await;
    let hog_status = server.site("hog").await;
    assert!(killed, "{hog_status:?}");
    assert!(
        hog_status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("above limits.memory"),
        "{hog_status:?}"
    );
    assert_eq!(
        get(server.addr, "calm.test", "/").await.status,
        200,
        "the other site keeps answering"
    );
    let back = common::eventually(Duration::from_secs(10), || async {
        let r = get(server.addr, "hog.test", "/").await;
        r.status == 200 && r.text() != first
    })
    .await;
    assert!(back, "a new process serves the site");
    server.stop().await;
}

#[tokio::test]
async fn a_site_removed_and_added_back_at_once_is_not_killed_by_the_old_cleanup() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    site(&cfg, "flip", &user, "pyapp:isolation_app", "");
    let server = InProcess::start(&cfg).await;
    assert_eq!(get(server.addr, "flip.test", "/").await.status, 200);
    let vhost = cfg.path().join("vhosts/flip.toml");
    let text = std::fs::read_to_string(&vhost).unwrap();
    std::fs::remove_file(&vhost).unwrap();
    server.server.reload().await.unwrap();
    std::fs::write(&vhost, text).unwrap();
    server.server.reload().await.unwrap();
    let first = get(server.addr, "flip.test", "/").await;
    assert_eq!(first.status, 200);
    // Let the removed generation stop and its cleanup run, then check that
    // the new generation still serves from the same process.
    let old_gone = common::eventually(Duration::from_secs(15), || async {
        common::pids_of_uid(user.uid).len() == 1
    })
    .await;
    assert!(old_gone, "{:?}", common::pids_of_uid(user.uid));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = get(server.addr, "flip.test", "/").await;
    assert_eq!(
        (again.status, again.text()),
        (200, first.text()),
        "same process, not killed"
    );
    server.stop().await;
}
