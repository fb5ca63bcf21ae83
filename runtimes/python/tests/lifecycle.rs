//! The worker's lifecycle and thread model against the real binary: import
//! failure, graceful stop, virtualenvs, overlapping requests, close() on disconnect.

mod common;

use std::time::{Duration, Instant};

use common::{empty, request, Worker};
use http::StatusCode;
use http_body_util::BodyExt;

#[tokio::test]
async fn import_failure_exits_3_with_traceback() {
    let mut w = Worker::spawn("broken", &[]);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "{}", w.stderr());
    let log = w.stderr();
    assert!(log.contains("Traceback"), "{log}");
    assert!(log.contains("import-time-boom"), "{log}");
    assert!(!w.socket.exists(), "no socket may appear for a broken app");

    let mut w = Worker::spawn("plain:no_such_callable", &[]);
    assert_eq!(w.wait_exit(Duration::from_secs(30)).await.code(), Some(3));
    assert!(w.stderr().contains("no_such_callable"), "{}", w.stderr());
}

#[tokio::test]
async fn check_mode() {
    let run = |app: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_polyhost-python"))
            .env_clear()
            .args(["--check", "--app", app, "--path"])
            .arg(common::apps_dir())
            .output()
            .unwrap()
    };
    let ok = run("plain");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = run("broken");
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("import-time-boom"));
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_polyhost-python"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("polyhost-python "));
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file is in place");
    let mut w = Worker::spawn_in(dir, "plain", &[]);
    w.wait_ready().await;
    assert_eq!(w.get("/env").await.status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish() {
    let mut w = Worker::start("plain", &["--threads", "2"]).await;
    let mut conn = w.connect().await;
    conn.ready().await.unwrap();
    let pending = conn.send_request(request("GET", "/sleep?1.0").body(empty()).unwrap());
    let pending = tokio::spawn(pending);
    // Wait until the app is running the request.
    w.wait_marker("started", Duration::from_secs(10)).await;
    w.signal(libc::SIGTERM);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slept");
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert!(
        !w.socket.exists(),
        "the socket file must be removed on exit"
    );
}

#[tokio::test]
async fn graceful_timeout_bounds_the_drain() {
    let mut w = Worker::start("plain", &["--graceful-timeout", "1"]).await;
    let mut conn = w.connect().await;
    conn.ready().await.unwrap();
    let pending =
        tokio::spawn(conn.send_request(request("GET", "/sleep?30").body(empty()).unwrap()));
    w.wait_marker("started", Duration::from_secs(10)).await;
    let t0 = Instant::now();
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(w.stderr().contains("still running"), "{}", w.stderr());
    assert!(
        pending.await.unwrap().is_err(),
        "the cut request must not look complete"
    );
}

#[tokio::test]
async fn sigint_on_an_idle_worker_exits_0() {
    let mut w = Worker::start("plain", &[]).await;
    let _idle = w.connect().await;
    w.signal(libc::SIGINT);
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await.code(), Some(0));
    assert!(!w.socket.exists());
}

#[tokio::test]
async fn two_slow_requests_overlap_on_two_threads() {
    let w = Worker::start("plain", &["--threads", "2"]).await;
    const SLEEP: f64 = 1.0;
    let path = format!("/sleep?{SLEEP}");
    // Warm up both connections first so only the sleeps are measured.
    let mut a = w.connect().await;
    let mut b = w.connect().await;
    let t0 = Instant::now();
    let (ra, rb) = tokio::join!(
        common::send_on(&mut a, request("GET", &path).body(empty()).unwrap()),
        common::send_on(&mut b, request("GET", &path).body(empty()).unwrap()),
    );
    let took = t0.elapsed().as_secs_f64();
    assert_eq!((ra.status, rb.status), (StatusCode::OK, StatusCode::OK));
    assert!(
        took < 1.8 * SLEEP,
        "two {SLEEP}s requests took {took:.2}s: no overlap"
    );
}

#[tokio::test]
async fn close_is_called_when_the_client_goes_away_mid_stream() {
    let w = Worker::start("plain", &["--threads", "1"]).await;
    {
        let mut conn = w.connect().await;
        conn.ready().await.unwrap();
        let resp = conn
            .send_request(request("GET", "/slowstream").body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        // Dropping the body and the connection closes the socket.
    }
    let marker = w.wait_marker("closed", Duration::from_secs(15)).await;
    let chunks: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        chunks < 2000,
        "the stream ran to its end ({chunks}) instead of stopping"
    );
    assert!(!w.stderr().contains("Traceback"), "{}", w.stderr());
    // The single thread is free again.
    assert_eq!(w.get("/env").await.status, StatusCode::OK);
}

#[tokio::test]
async fn virtualenv_via_home() {
    let venv = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("/usr/bin/python3.11")
        .args(["-m", "venv", "--without-pip"])
        .arg(venv.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let site = venv.path().join("lib/python3.11/site-packages");
    std::fs::write(site.join("venvmod.py"), "VALUE = 'from-the-venv'\n").unwrap();
    let home = venv.path().to_str().unwrap();
    let w = Worker::start("venvapp", &["--home", home]).await;
    let r = w.get("/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", w.stderr());
    let text = r.text();
    let parts: Vec<&str> = text.split('|').collect();
    assert_eq!(parts[0], "from-the-venv");
    assert_eq!(parts[1], home);
    assert_eq!(parts[2], format!("{home}/bin/python"));
}

/// polyhost's way: the socket is bound by someone else (in a directory only
/// root reaches) and inherited, not listening; the worker listens once the
/// app is imported, keeps the descriptor to itself and leaves the file alone.
#[tokio::test]
async fn an_inherited_bound_socket_is_listened_on_once_the_app_is_imported() {
    serve_on_an_inherited_socket("plain", &[], "/env", 1).await;
}

/// ASGI: the same, once lifespan startup is done. The event loop serves a
/// duplicate of the descriptor (close-on-exec too), so the worker holds it twice.
#[tokio::test]
async fn an_asgi_worker_listens_on_the_inherited_socket_after_lifespan_startup() {
    serve_on_an_inherited_socket(
        "asgi_conformance:app",
        &["--interface", "asgi"],
        "/scope",
        2,
    )
    .await;
}

async fn serve_on_an_inherited_socket(app: &str, extra: &[&str], get: &str, copies: usize) {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bound.sock");
    // Not close-on-exec: the worker inherits it at the same number.
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    assert_eq!(
        std::os::unix::net::UnixStream::connect(&path)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::ConnectionRefused,
        "bound, not listening: refused"
    );
    let stderr_path = dir.path().join("stderr.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_polyhost-python"))
        .env_clear()
        .env("MARKER_DIR", dir.path())
        .current_dir(dir.path())
        .arg("--socket-fd")
        .arg(fd.as_raw_fd().to_string())
        .args(["--app", app])
        .args(extra)
        .arg("--path")
        .arg(common::apps_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let link = format!("socket:[{}]", nix::sys::stat::fstat(&fd).unwrap().st_ino);
    drop(fd); // the worker's copy is the only one left
    let mut w = Worker {
        child,
        dir,
        socket: path.clone(),
        stderr_path,
    };
    w.wait_ready().await;
    assert_eq!(w.get(get).await.status, StatusCode::OK);
    // Close-on-exec in the worker: the app's own children do not get it.
    let pid = w.child.id();
    let flags: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == link))
        .filter_map(|e| {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            Some(info.lines().find(|l| l.starts_with("flags:"))?.to_owned())
        })
        .collect();
    assert_eq!(
        flags.len(),
        copies,
        "the worker holds the socket {copies} time(s): {flags:?}"
    );
    for f in &flags {
        let octal = f.trim_start_matches("flags:").trim();
        let bits = u32::from_str_radix(octal, 8).unwrap();
        assert_ne!(bits & libc::O_CLOEXEC as u32, 0, "close-on-exec: {octal}");
    }
    w.signal(libc::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", w.stderr());
    assert!(path.exists(), "the socket file is its owner's to remove");
}

#[tokio::test]
async fn a_socket_fd_that_is_not_a_socket_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polyhost-python"))
        .args(["--socket-fd", "1000", "--app", "plain", "--path"])
        .arg(common::apps_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on inherited descriptor 1000"),
        "{err}"
    );
}
