//! Binary upgrade against the real binary run as root (split), issue 24:
//! `polyhost upgrade` hands the listeners to the binary polyhost was
//! started from. A broken new binary (exits at once) and a slow one (never
//! ready) are stopped and the old polyhost serves on; a real one takes over
//! under load (static, PHP and Python sites, kept-alive connections, long
//! requests and a WebSocket in flight) with no failed request, and the old one exits
//! after its requests finished; the service manager is told the new main
//! pid; a second upgrade (SIGUSR2) goes back to the first instance's names.
//!
//! The load's clients behave as HTTP clients must (RFC 9112 §9.3.1): a
//! kept-alive connection the server closed is replaced, and a GET whose
//! connection closed before any byte of its response is sent again on a
//! new one (counted as `retried`). Everything else is a failure: a refused
//! connection, a status other than 200, a wrong body, a response cut short.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;

use common::{open_up, python_test_site, wait_for, ws, Binary, TestConfig, TestUser};

/// Puts `content` at `path` as a package manager does: a new file renamed
/// over the old one (the running binary keeps its deleted inode).
fn install(path: &Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, content).unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

fn alive(pid: i32) -> bool {
    // A zombie has exited: its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// SIGKILLs a polyhost the test did not start itself (the new supervisor)
/// if the test ends without stopping it.
struct KillOnDrop(Arc<Mutex<Option<i32>>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = *self.0.lock().unwrap() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// One GET on `conn` (a new connection when there is none or it closed);
/// sent again, once, on a new connection when the old one closed before any
/// byte of the response (`retried` counts it).
async fn get_retrying(
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    retried: &AtomicUsize,
) -> Result<(u16, String), String> {
    for attempt in 0..2 {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (sender, driver) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(driver);
            *conn = Some(sender);
        }
        let sender = conn.as_mut().unwrap();
        if sender.ready().await.is_err() {
            *conn = None;
            continue;
        }
        let req = common::request("GET", host, path);
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("{host}{path}: body cut short: {e}"))?
                    .to_bytes();
                return Ok((status, String::from_utf8_lossy(&body).into_owned()));
            }
            Err(e) if attempt == 0 && (e.is_incomplete_message() || e.is_canceled()) => {
                retried.fetch_add(1, Ordering::SeqCst);
                *conn = None;
            }
            Err(e) => return Err(format!("{host}{path}: {e}")),
        }
    }
    Err(format!(
        "{host}{path}: no response on a new connection either"
    ))
}

#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    retried: AtomicUsize,
    failed: Mutex<Vec<String>>,
    stop: AtomicBool,
}

const TARGETS: [(&str, &str, &str); 3] = [
    ("st.test", "/a.txt", "static file"),
    ("php.test", "/", "php ok"),
    ("py.test", "/", "pid="),
];

async fn load_client(addr: SocketAddr, load: Arc<Load>, first: usize) {
    let mut conn = None;
    let mut i = first;
    while !load.stop.load(Ordering::SeqCst) {
        let (host, path, want) = TARGETS[i % TARGETS.len()];
        i += 1;
        match get_retrying(&mut conn, addr, host, path, &load.retried).await {
            Ok((200, body)) if body.contains(want) => {
                load.ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, body)) => load
                .failed
                .lock()
                .unwrap()
                .push(format!("{host}{path}: {status} {body:?}")),
            Err(e) => load.failed.lock().unwrap().push(e),
        }
    }
}

fn setup() -> (TestConfig, [TestUser; 3], PathBuf) {
    common::router_uid();
    let cfg = TestConfig::new();
    cfg.write(
        "polyhost.toml",
        "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nshutdown_timeout = \"20s\"\nrouter_threads = 2\n",
    );
    cfg.static_site("st", &["st.test"], "");
    cfg.write("www/st/a.txt", "static file\n");
    let user = TestUser::new();
    cfg.write("www/php/index.php", "<?php echo 'php ok';");
    cfg.write(
        "www/php/slow.php",
        "<?php touch($_GET['mark']); sleep((int)$_GET['s']); echo 'slow php done';",
    );
    cfg.write(
        "vhosts/php.toml",
        &format!(
            "hosts = [\"php.test\"]\nroot = \"www/php\"\nuser = \"{}\"\n[php]\nmax_children = 4\n",
            user.name
        ),
    );
    let py_user = TestUser::new();
    python_test_site(&cfg, "py", &py_user, "pyapp:application", "", "threads = 4");
    let ws_user = TestUser::new();
    cfg.write("apps/asgiapp.py", include_str!("apps/asgiapp.py"));
    python_test_site(
        &cfg,
        "ws",
        &ws_user,
        "asgiapp:app",
        "",
        "interface = \"asgi\"",
    );
    // The binary polyhost is started from: the test replaces it as a
    // package upgrade would.
    let program = cfg.path().join("bin/polyhost");
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    install(
        &program,
        &std::fs::read(env!("CARGO_BIN_EXE_polyhost")).unwrap(),
    );
    // A marker directory the site user may write into.
    let marks = cfg.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::create_dir_all(marks.join("py")).unwrap();
    // PHP may write only beneath its root (open_basedir).
    let php_marks = cfg.path().join("www/php/marks");
    std::fs::create_dir_all(&php_marks).unwrap();
    std::os::unix::fs::chown(&php_marks, Some(user.uid), Some(user.gid())).unwrap();
    std::os::unix::fs::chown(marks.join("py"), Some(py_user.uid), Some(py_user.gid())).unwrap();
    open_up(&marks);
    open_up(cfg.path());
    for dir in ["bin", "www", "apps"] {
        open_up(&cfg.path().join(dir));
    }
    (cfg, [user, py_user, ws_user], program)
}

async fn all_sites_serve(addr: SocketAddr, log: impl Fn() -> String) {
    for (host, path, want) in TARGETS {
        let r = get_retrying(&mut None, addr, host, path, &AtomicUsize::new(0)).await;
        assert!(
            matches!(&r, Ok((200, body)) if body.contains(want)),
            "{host}{path}: {r:?}\nlog:\n{}",
            log()
        );
    }
}

async fn echo(socket: &mut ws::Upgraded, text: &str) {
    socket.send_frame(1, text.as_bytes()).await;
    let (op, payload) = socket.read_frame().await;
    assert_eq!((op, String::from_utf8_lossy(&payload).as_ref()), (1, text));
}

/// The pid in "(pid N)" of a message.
fn pid_in(text: &str) -> Option<i32> {
    text.split("(pid ").nth(1)?.split(')').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_or_slow_binary_changes_nothing_and_a_real_one_takes_over_under_load() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs polyhost split, as root"
    );
    let (cfg, users, program) = setup();
    let main = cfg.main();
    // The service manager's socket: the main pid must follow the upgrade.
    let notify_path = cfg.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let notify_env = notify_path.to_str().expect("a UTF-8 path");
    let bin = Binary::start_program(&program, &main, &[("NOTIFY_SOCKET", notify_env)]).await;
    let addr = bin.addr;
    let old_pid = bin.child.id().unwrap() as i32;
    all_sites_serve(addr, || bin.log()).await;

    // A broken binary: it exits at once.
    install(&program, b"#!/bin/sh\nexit 3\n");
    let (code, stdout, stderr) = common::polyhost_cli(&main, &["upgrade", "--timeout", "60"]).await;
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("it exited"),
        "{stderr}\nlog:\n{}",
        bin.log()
    );
    assert!(alive(old_pid), "the old polyhost exited:\n{}", bin.log());
    all_sites_serve(addr, || bin.log()).await;

    // A slow binary: it never says it is ready.
    install(&program, b"#!/bin/sh\nexec sleep 600\n");
    let (code, stdout, stderr) = common::polyhost_cli(&main, &["upgrade", "--timeout", "2"]).await;
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("did not say it was ready"),
        "{stderr}\nlog:\n{}",
        bin.log()
    );
    let slow = pid_in(&stderr).expect("the slow binary's pid in the message");
    wait_for(
        "the slow binary to be stopped",
        Duration::from_secs(30),
        async || alive(slow),
        |a| !a,
    )
    .await;
    assert!(alive(old_pid), "the old polyhost exited:\n{}", bin.log());
    all_sites_serve(addr, || bin.log()).await;
    let py_before = get_retrying(&mut None, addr, "py.test", "/", &AtomicUsize::new(0))
        .await
        .unwrap()
        .1;

    // The real binary, under load.
    install(
        &program,
        &std::fs::read(env!("CARGO_BIN_EXE_polyhost")).unwrap(),
    );
    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..6)
        .map(|i| tokio::spawn(load_client(addr, load.clone(), i)))
        .collect();
    // Kept-alive connections, idle across the upgrade.
    let mut idle = Vec::new();
    for (host, path, _) in TARGETS.iter().cycle().take(6) {
        let mut conn = None;
        let first = get_retrying(&mut conn, addr, host, path, &load.retried).await;
        assert_eq!(first.map(|r| r.0), Ok(200));
        idle.push((conn, *host, *path));
    }
    // Long requests in flight on the old polyhost when it hands over.
    let marks = cfg.path().join("marks");
    let php_mark = cfg.path().join("www/php/marks/m");
    let long = |host: &'static str, path: String| {
        tokio::spawn(async move {
            let mut conn = None;
            get_retrying(&mut conn, addr, host, &path, &AtomicUsize::new(0)).await
        })
    };
    let long_py = long(
        "py.test",
        format!("/slow?s=4&mark={}", marks.join("py/m").display()),
    );
    let long_php = long(
        "php.test",
        format!("/slow.php?s=4&mark={}", php_mark.display()),
    );
    wait_for(
        "both long requests to reach their apps",
        Duration::from_secs(20),
        async || (marks.join("py/m").exists(), php_mark.exists()),
        |&(a, b)| a && b,
    )
    .await;
    wait_for(
        "some load before the upgrade",
        Duration::from_secs(30),
        async || load.ok.load(Ordering::SeqCst),
        |&n| n >= 100,
    )
    .await;

    // A WebSocket open across the upgrade, on the old polyhost.
    let mut socket = ws::open(addr, "ws.test", "/echo", b"").await;
    assert_eq!(socket.status, 101, "{}", socket.head);
    echo(&mut socket, "before").await;

    let new_pid = Arc::new(Mutex::new(None));
    let _kill_new = KillOnDrop(new_pid.clone());
    let asked = std::time::Instant::now();
    let (code, stdout, stderr) = common::polyhost_cli(&main, &["upgrade", "--timeout", "60"]).await;
    // Reported, never asserted on.
    let took = asked.elapsed();
    assert_eq!(
        code,
        0,
        "stdout: {stdout}\nstderr: {stderr}\nlog:\n{}",
        bin.log()
    );
    let new = pid_in(&stdout).expect("the new pid in the answer");
    *new_pid.lock().unwrap() = Some(new);
    assert_ne!(new, old_pid);
    let at_upgrade = load.ok.load(Ordering::SeqCst);
    // The WebSocket still works, then ends with the client's close.
    echo(&mut socket, "after").await;
    socket.send_frame(8, &1000u16.to_be_bytes()).await;
    let (op, _) = socket.read_frame().await;
    assert_eq!(op, 8, "the close answered");

    // The long requests finish on the old polyhost, which then exits.
    assert_eq!(
        long_py.await.unwrap().map(|r| r.0),
        Ok(200),
        "{}",
        bin.log()
    );
    let php = long_php.await.unwrap();
    assert!(
        matches!(&php, Ok((200, body)) if body.contains("slow php done")),
        "{php:?}\n{}",
        bin.log()
    );
    for (mut conn, host, path) in idle {
        let r = get_retrying(&mut conn, addr, host, path, &load.retried).await;
        assert_eq!(r.map(|r| r.0), Ok(200), "{host}{path}\n{}", bin.log());
    }
    wait_for(
        "the old polyhost to exit",
        Duration::from_secs(60),
        async || alive(old_pid),
        |a| !a,
    )
    .await;
    wait_for(
        "load served by the new polyhost alone",
        Duration::from_secs(30),
        async || load.ok.load(Ordering::SeqCst),
        |&n| n >= at_upgrade + 300,
    )
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failed = load.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed request(s) of {}: {failed:?}\nlog:\n{}",
        failed.len(),
        load.ok.load(Ordering::SeqCst) + failed.len(),
        bin.log()
    );
    eprintln!(
        "upgrade under load: {} requests ok, 0 failed, {} sent again after their kept-alive connection closed; polyhost upgrade answered after {took:?}",
        load.ok.load(Ordering::SeqCst),
        load.retried.load(Ordering::SeqCst)
    );

    // The new polyhost serves every site with its own processes, on its own
    // sockets, and the admin socket the old one left.
    assert!(alive(new), "{}", bin.log());
    all_sites_serve(addr, || bin.log()).await;
    let py_after = get_retrying(&mut None, addr, "py.test", "/", &AtomicUsize::new(0))
        .await
        .unwrap()
        .1;
    assert_ne!(
        common::field(&py_before, "pid"),
        common::field(&py_after, "pid"),
        "the Python worker is the new polyhost's"
    );
    let sockets: Vec<String> = std::fs::read_dir(cfg.path().join("state/sockets/py"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !sockets.is_empty() && sockets.iter().all(|s| s.starts_with("python-b")),
        "{sockets:?}"
    );
    let (code, stdout, stderr) = common::polyhost_cli(&main, &["status"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    let mut told = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        told.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        told.iter()
            .any(|m| m.lines().any(|l| l == format!("MAINPID={new}"))),
        "no MAINPID={new} among {told:?}"
    );

    // And upgrades again on SIGUSR2 (the next instance names things as the
    // first did), after which the sockets in use are the plain ones.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let third = wait_for(
        "MAINPID= of a third polyhost after SIGUSR2",
        Duration::from_secs(60),
        async || {
            while let Ok(n) = notify.recv(&mut buf) {
                told.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            told.iter()
                .flat_map(|m| m.lines())
                .filter_map(|l| l.strip_prefix("MAINPID=")?.parse::<i32>().ok())
                .find(|&p| p != new)
        },
        Option::is_some,
    )
    .await
    .unwrap();
    *new_pid.lock().unwrap() = Some(third);
    wait_for(
        "the second polyhost to exit",
        Duration::from_secs(60),
        async || alive(new),
        |a| !a,
    )
    .await;
    all_sites_serve(addr, || bin.log()).await;
    let sockets = wait_for(
        "only the third polyhost's runtime sockets",
        Duration::from_secs(20),
        async || -> Vec<String> {
            std::fs::read_dir(cfg.path().join("state/sockets/py"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        },
        |s| !s.is_empty() && s.iter().all(|s| !s.starts_with("python-b")),
    )
    .await;
    assert!(
        sockets.iter().all(|s| s.starts_with("python-")),
        "{sockets:?}"
    );
    let new = third;

    // It stops as any polyhost does.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(
        "the new polyhost to exit after SIGTERM",
        Duration::from_secs(60),
        async || alive(new),
        |a| !a,
    )
    .await;
    *new_pid.lock().unwrap() = None;
    wait_for(
        "no process of the site user left",
        Duration::from_secs(20),
        async || {
            let mut pids = common::pids_of_uid(users[0].uid);
            pids.extend(common::pids_of_uid(users[1].uid));
            pids.extend(common::pids_of_uid(users[2].uid));
            pids
        },
        |p| p.is_empty(),
    )
    .await;
    assert!(
        !cfg.path().join("state/admin.sock").exists(),
        "the last polyhost removes the admin socket"
    );
    // No runtime socket and no cgroup of any of the three left.
    common::check_hygiene(&cfg.path().join("state"));
}
