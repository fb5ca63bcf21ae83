//! Privilege separation against the real binary run as root (issue 21):
//! `polyhost serve` is a supervisor (root) and a router process
//! (`router_user`) that holds `CAP_DAC_READ_SEARCH` and nothing else, no
//! admin socket, and is restarted with its listeners kept when it is
//! killed: requests in flight at the kill fail (counted), none is refused,
//! site processes live on. Reloads and sites started from zero (an
//! on-demand PHP pool, a Python site scaled to zero) go through it.

mod admin_support;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, open_up, pids_of_uid, Binary, TestConfig, TestUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The router's user: `router_user`'s default.
const ROUTER_USER: &str = "polyhost";

fn ensure_router_user() -> u32 {
    common::router_uid()
}

fn main_file(cfg: &TestConfig) {
    cfg.write(
        "polyhost.toml",
        "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nshutdown_timeout = \"5s\"\n",
    );
}

/// A static site `st` with `a.txt`, and a PHP site `name` run by `user`.
fn sites(cfg: &TestConfig, php: &str, user: &TestUser, php_extra: &str) {
    cfg.static_site("st", &["st.test"], "");
    cfg.write("www/st/a.txt", "static file\n");
    cfg.write(
        &format!("www/{php}/index.php"),
        "<?php echo 'php pid=' . getmypid();",
    );
    cfg.write(
        &format!("vhosts/{php}.toml"),
        &format!(
            "hosts = [\"{php}.test\"]\nroot = \"www/{php}\"\nuser = \"{}\"\n[php]\nmax_children = 4\n{php_extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
}

/// `(ppid, uid)` of a process.
fn parent_and_uid(pid: i32) -> Option<(i32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Some((value("PPid:")? as i32, value("Uid:")? as u32))
}

fn router_of(supervisor: i32) -> Option<i32> {
    common::router_process_of(supervisor)
}

async fn wait_router(bin: &Binary, not: Option<i32>) -> i32 {
    let supervisor = bin.child.id().unwrap() as i32;
    let found = Arc::new(std::sync::Mutex::new(None));
    eventually(Duration::from_secs(20), || {
        let now = router_of(supervisor).filter(|p| Some(*p) != not);
        *found.lock().unwrap() = now;
        async move { now.is_some() }
    })
    .await;
    let found = *found.lock().unwrap();
    found.unwrap_or_else(|| {
        panic!(
            "no router process (other than {not:?}) under polyhost {supervisor}; log:\n{}",
            bin.log()
        )
    })
}

/// What a GET came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Status(u16, String),
    /// The connection was refused: nobody kept the listener.
    Refused,
    /// Connected, but no whole answer (the router died under it).
    Failed(String),
}

/// One GET on a new connection, fallible (unlike `common::get`).
async fn try_get(addr: SocketAddr, host: &str, path: &str) -> Outcome {
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Outcome::Failed(e.to_string());
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Outcome::Failed(e.to_string()),
        Err(_) => return Outcome::Failed("no answer within 30 s".into()),
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some(status) = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return Outcome::Failed(format!("not an HTTP answer: {text:?}"));
    };
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Outcome::Status(status, body)
}

async fn get_ok(bin: &Binary, host: &str, path: &str) -> String {
    match try_get(bin.addr, host, path).await {
        Outcome::Status(200, body) => body,
        other => panic!("GET {host}{path}: {other:?}\n{}", bin.log()),
    }
}

/// The inode of the Unix socket bound at `path` by process `pid`, from
/// /proc/net/unix, which names it as bound: polyhost binds the admin socket
/// at `.<name>.<pid>.tmp` beside `path` and renames it into place.
fn unix_socket_inode(path: &Path, pid: i32) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let name = path.file_name()?.to_str()?;
    let tmp = path.with_file_name(format!(".{name}.{pid}.tmp"));
    let names = [path.to_str()?, tmp.to_str()?];
    table.lines().skip(1).find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.len() >= 8 && names.contains(&fields[7])).then(|| fields[6].parse().ok())?
    })
}

/// The socket inodes among a process's descriptors.
fn socket_inodes(pid: i32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test]
async fn the_router_runs_as_its_user_with_one_capability_and_no_admin_socket() {
    let router_uid = ensure_router_user();
    let cfg = TestConfig::new();
    let user = TestUser::new();
    main_file(&cfg);
    sites(&cfg, "ph", &user, "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let router = wait_router(&bin, None).await;
    // Serving through it: a static file, a PHP page. (Also: the router has
    // run its own start-up, `harden_self` included, before it serves.)
    assert_eq!(get_ok(&bin, "st.test", "/a.txt").await, "static file\n");
    assert!(get_ok(&bin, "ph.test", "/").await.starts_with("php pid="));

    let status = std::fs::read_to_string(format!("/proc/{router}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{key} missing:\n{status}"))
    };
    let ids = |key| {
        field(key)
            .iter()
            .map(|v| v.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid"), [router_uid; 4], "{status}");
    let router_gid = nix::unistd::User::from_name(ROUTER_USER)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_ne!(router_gid, 0);
    assert_eq!(ids("Gid"), [router_gid; 4], "{status}");
    assert!(
        field("Groups").is_empty(),
        "no supplementary group:\n{status}"
    );
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            field(cap),
            ["0000000000000004"],
            "{cap}: CAP_DAC_READ_SEARCH (bit 2) only\n{status}"
        );
    }
    assert_eq!(field("NoNewPrivs"), ["1"], "{status}");
    // Not dumpable (no core, no ptrace by its own user): its /proc files
    // (but the directory) are then root's. Set by the router itself at
    // start (`isolation::router_process::harden_self`: it does not cross exec).
    use std::os::unix::fs::MetadataExt;
    let proc_owner = std::fs::metadata(format!("/proc/{router}/environ"))
        .unwrap()
        .uid();
    assert_eq!(
        proc_owner, 0,
        "the router is dumpable: it must call isolation::router_process::harden_self() at start"
    );

    // The admin socket is the supervisor's alone.
    let admin = cfg.path().join("state/admin.sock");
    let admin = std::fs::canonicalize(&admin).unwrap_or(admin);
    let supervisor = bin.child.id().unwrap() as i32;
    let admin_inode = unix_socket_inode(&admin, supervisor)
        .unwrap_or_else(|| panic!("{} not in /proc/net/unix", admin.display()));
    assert!(
        socket_inodes(supervisor).contains(&admin_inode),
        "the test finds the admin socket among the supervisor's descriptors"
    );
    let router_sockets = socket_inodes(router);
    assert!(
        !router_sockets.is_empty(),
        "the router holds its listener and link"
    );
    assert!(
        !router_sockets.contains(&admin_inode),
        "the router holds the admin socket: {router_sockets:?}"
    );

    let code = bin.terminate().await;
    assert!(code.success(), "{code}");
    assert!(
        parent_and_uid(router).is_none_or(|(_, uid)| uid != router_uid),
        "the router process exited with polyhost"
    );
}

#[tokio::test]
async fn killing_the_router_under_load_fails_only_requests_in_flight_and_keeps_the_sites() {
    ensure_router_user();
    let cfg = TestConfig::new();
    let user = TestUser::new();
    main_file(&cfg);
    sites(&cfg, "ph", &user, "");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let old_router = wait_router(&bin, None).await;
    get_ok(&bin, "ph.test", "/").await;
    let site_pids = {
        let mut p = pids_of_uid(user.uid);
        p.sort_unstable();
        p
    };
    assert!(!site_pids.is_empty());

    const CLIENTS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (stop, in_flight, served, addr) =
            (stop.clone(), in_flight.clone(), served.clone(), bin.addr);
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (host, path) = if i % 2 == 0 {
                    ("ph.test", "/")
                } else {
                    ("st.test", "/a.txt")
                };
                in_flight.fetch_add(1, Ordering::SeqCst);
                let outcome = try_get(addr, host, path).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if matches!(outcome, Outcome::Status(200, _)) {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                outcomes.push((host, outcome));
            }
            outcomes
        }));
    }
    // Load on before the kill: answers are coming.
    let loaded = eventually(Duration::from_secs(20), || async {
        served.load(Ordering::SeqCst) >= 4 * CLIENTS
    })
    .await;
    assert!(loaded, "no load before the kill:\n{}", bin.log());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_router),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let at_kill = in_flight.load(Ordering::SeqCst);
    let new_router = wait_router(&bin, Some(old_router)).await;
    // Serving resumes: a PHP page and a static file through the new router.
    assert!(get_ok(&bin, "ph.test", "/").await.starts_with("php pid="));
    assert_eq!(get_ok(&bin, "st.test", "/a.txt").await, "static file\n");
    stop.store(true, Ordering::SeqCst);
    let mut ok = 0;
    let mut failed = Vec::new();
    for c in clients {
        for (host, outcome) in c.await.unwrap() {
            match outcome {
                Outcome::Status(200, _) => ok += 1,
                other => failed.push((host, other)),
            }
        }
    }
    assert!(
        !failed.iter().any(|(_, o)| *o == Outcome::Refused),
        "no connection refused (the listeners were kept): {failed:?}\n{}",
        bin.log()
    );
    assert!(
        failed.iter().all(|(_, o)| matches!(o, Outcome::Failed(_))),
        "only cut connections, no error status: {failed:?}"
    );
    // Each client has one request at a time: at most one each was in
    // flight at the kill.
    assert!(
        failed.len() <= CLIENTS,
        "{} requests failed, more than the {CLIENTS} that can be in flight ({at_kill} were when the router was killed): {failed:?}",
        failed.len()
    );
    eprintln!(
        "router {old_router} killed under load: {ok} served, {} failed ({at_kill} in flight at the kill), new router {new_router}",
        failed.len()
    );
    let mut after = pids_of_uid(user.uid);
    after.sort_unstable();
    for pid in &site_pids {
        assert!(
            after.contains(pid),
            "site process {pid} was restarted with the router: before {site_pids:?}, after {after:?}"
        );
    }
    assert!(
        bin.log().contains("the router process died"),
        "the supervisor says the router died:\n{}",
        bin.log()
    );
    // The new router was told the complete state at its Hello; a reload now
    // reaches it as changes to that state.
    cfg.static_site("st", &["st.test", "st2.test"], "");
    cfg.write("www/st/a.txt", "changed\n");
    let socket = cfg.path().join("state/admin.sock");
    let out = admin_support::cli(&socket, &["reload"], None).await;
    assert_eq!(out.code, 0, "{out:?}\n{}", bin.log());
    assert_eq!(get_ok(&bin, "st2.test", "/a.txt").await, "changed\n");
    assert!(get_ok(&bin, "ph.test", "/").await.starts_with("php pid="));
    assert_eq!(
        wait_router(&bin, None).await,
        new_router,
        "the same router serves the reload:\n{}",
        bin.log()
    );
    let code = bin.terminate().await;
    assert!(code.success(), "{code}");
}

#[tokio::test]
async fn reloads_and_sites_started_from_zero_go_through_the_router() {
    ensure_router_user();
    let cfg = TestConfig::new();
    let php_user = TestUser::new();
    let py_user = TestUser::new();
    main_file(&cfg);
    sites(&cfg, "od", &php_user, "start = \"on_demand\"");
    common::python_test_site(&cfg, "py", &py_user, "pyapp", "", "idle_timeout = \"1s\"");
    let bin = Binary::start(&cfg.main(), &[]).await;
    wait_router(&bin, None).await;

    // The on-demand pool has no process until a request asks the supervisor.
    assert!(
        pids_of_uid(php_user.uid).is_empty(),
        "an on-demand pool starts on its first request"
    );
    assert!(get_ok(&bin, "od.test", "/").await.starts_with("php pid="));
    assert!(!pids_of_uid(php_user.uid).is_empty());

    // The Python site scales to zero (no request reported by the router),
    // then the next request starts it again.
    let idle = eventually(Duration::from_secs(20), || async {
        pids_of_uid(py_user.uid).is_empty()
    })
    .await;
    assert!(idle, "the idle Python site stopped:\n{}", bin.log());
    let body = get_ok(&bin, "py.test", "/hello").await;
    assert!(body.contains("path=/hello"), "{body}");

    // A reload that changes a site while the router is up: the new
    // configuration is served.
    cfg.static_site("st", &["st.test", "st2.test"], "");
    cfg.write("www/st/a.txt", "changed\n");
    let socket = cfg.path().join("state/admin.sock");
    let out = admin_support::cli(&socket, &["reload"], None).await;
    assert_eq!(out.code, 0, "{out:?}\n{}", bin.log());
    assert_eq!(get_ok(&bin, "st2.test", "/a.txt").await, "changed\n");
    // The PHP site again, after the reload.
    assert!(get_ok(&bin, "od.test", "/").await.starts_with("php pid="));

    let code = bin.terminate().await;
    assert!(code.success(), "{code}");
    let gone = eventually(Duration::from_secs(10), || async {
        pids_of_uid(php_user.uid).is_empty() && pids_of_uid(py_user.uid).is_empty()
    })
    .await;
    assert!(gone, "site processes stopped with polyhost");
}

/// `polyhost check`: the router's user must exist, and no site that runs
/// code may run as it.
#[tokio::test]
async fn check_refuses_a_missing_router_user_and_a_site_running_as_it() {
    ensure_router_user();
    let cfg = TestConfig::new();
    main_file(&cfg);
    cfg.write("www/ph/index.php", "<?php echo 'php';");
    cfg.write(
        "vhosts/ph.toml",
        &format!("hosts = [\"ph.test\"]\nroot = \"www/ph\"\nuser = \"{ROUTER_USER}\"\n[php]\n"),
    );
    let check = |main: std::path::PathBuf| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
            .args(["check", "--config"])
            .arg(main)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(cfg.main()).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("vhosts/ph.toml: user: site ph would run as user `polyhost`")
            && stderr.contains("the router process's user (router_user)"),
        "{stderr}"
    );

    let missing = "polyhost-no-such-router-user";
    cfg.write(
        "polyhost.toml",
        &format!("listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nrouter_user = \"{missing}\"\n"),
    );
    std::fs::remove_file(cfg.path().join("vhosts/ph.toml")).unwrap();
    let (code, stderr) = check(cfg.main()).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "polyhost.toml: router_user: user `{missing}` does not exist"
        )),
        "{stderr}"
    );
}

/// The supervisor killed (SIGKILL): the router notices (its parent-death
/// signal, its link's end) and exits. (Site processes a SIGKILLed polyhost
/// leaves are its next start's to clean up, as without a router.)
#[tokio::test]
async fn the_router_exits_when_the_supervisor_dies() {
    ensure_router_user();
    let cfg = TestConfig::new();
    let user = TestUser::new();
    main_file(&cfg);
    sites(&cfg, "ph", &user, "");
    let mut bin = Binary::start(&cfg.main(), &[]).await;
    let router = wait_router(&bin, None).await;
    assert!(get_ok(&bin, "ph.test", "/").await.starts_with("php pid="));
    bin.child.start_kill().unwrap();
    let _ = bin.child.wait().await;
    let gone = eventually(Duration::from_secs(20), || async {
        // Gone, or a zombie its new parent has not reaped yet.
        std::fs::read_to_string(format!("/proc/{router}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    })
    .await;
    assert!(
        gone,
        "router {router} outlived the supervisor\n{}",
        bin.log()
    );
}
