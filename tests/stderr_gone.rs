//! polyhost whose stderr has no reader any more (a panel's or a process
//! manager's log pipe closed, `polyhost serve 2>&1 | logger` with the
//! logger gone), against the real binary run as root (split: supervisor
//! and router share that stderr). A log line it cannot write is lost;
//! nothing else may change: the supervisor serves and stops on SIGTERM, and
//! when it is killed its router still notices and exits. (Each of them
//! logs as it stops; a failed write once made the logging task panic
//! before it stopped anything, and a killed supervisor left its router
//! serving, orphaned.)

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, router_process_of, Binary, TestConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

fn static_site(cfg: &TestConfig) {
    common::router_uid();
    cfg.write(
        "polyhost.toml",
        "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nshutdown_timeout = \"5s\"\n",
    );
    cfg.static_site("st", &["st.test"], "");
    cfg.write("www/st/a.txt", "static file\n");
    common::open_up(cfg.path());
}

/// Starts `polyhost serve`, reads its stderr up to the listening line,
/// then closes the pipe's only read end: every later write to its stderr
/// (the supervisor's and the router's) fails with EPIPE.
async fn start_with_stderr_gone(main: &Path) -> (Binary, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .arg("serve")
        .arg("--config")
        .arg(main)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn polyhost");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.split("listening addr=").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("polyhost did not start; its stderr:\n{seen}"));
    drop(lines); // the read end: closed
    let addr: SocketAddr = addr.parse().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    (Binary::adopt(child, addr, log, main), seen)
}

/// Waits (bounded) for the process `pid` to be gone (or a zombie its new
/// parent has not reaped yet).
async fn gone(pid: i32) -> bool {
    eventually(Duration::from_secs(20), || async move {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    })
    .await
}

async fn router_of(bin: &Binary, seen: &str) -> i32 {
    let supervisor = bin.child.id().unwrap() as i32;
    let mut router = None;
    eventually(Duration::from_secs(20), || {
        router = router_process_of(supervisor);
        let found = router.is_some();
        async move { found }
    })
    .await;
    router.unwrap_or_else(|| panic!("no router under polyhost {supervisor}; its stderr:\n{seen}"))
}

#[tokio::test]
async fn with_its_stderr_gone_polyhost_serves_and_stops_on_sigterm() {
    let cfg = TestConfig::new();
    static_site(&cfg);
    let (bin, seen) = start_with_stderr_gone(&cfg.main()).await;
    let router = router_of(&bin, &seen).await;
    let got = common::get(bin.addr, "st.test", "/a.txt").await;
    assert_eq!(
        (got.status, &got.body[..]),
        (200, &b"static file\n"[..]),
        "served with its stderr gone; its stderr before:\n{seen}"
    );
    // `terminate` waits (bounded) for the exit after SIGTERM.
    let status = bin.terminate().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(gone(router).await, "router {router} outlived polyhost");
}

#[tokio::test]
async fn with_its_stderr_gone_a_killed_supervisors_router_exits() {
    let cfg = TestConfig::new();
    static_site(&cfg);
    let (mut bin, seen) = start_with_stderr_gone(&cfg.main()).await;
    let router = router_of(&bin, &seen).await;
    bin.child.start_kill().unwrap();
    let _ = bin.child.wait().await;
    let exited = gone(router).await;
    if !exited {
        // Not left behind for the next test.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(router),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        exited,
        "router {router} outlived its killed supervisor (serving, orphaned)"
    );
}
