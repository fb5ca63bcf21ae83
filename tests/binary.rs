//! End to end: the real `polyhost` binary, started on an ephemeral port,
//! serving two sites on different host names, refusing traversal over a real
//! socket, and stopping gracefully on SIGTERM with a request in flight;
//! `router_threads` router lanes sharing one pool of worker connections.

mod common;

use std::time::Duration;

use common::{
    eventually, field, get, pids_of_uid, raw, raw_status, Binary, Client, TestConfig, TestUser,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn real_binary_serves_two_sites_by_host_name() {
    let cfg = TestConfig::new();
    cfg.static_site("alpha", &["alpha.test"], "");
    cfg.static_site("beta", &["beta.test", "*.beta.test"], "");
    cfg.write("www/alpha/secret/.env", "TOKEN=alpha-secret");
    cfg.write("www/beta/private.txt", "beta-private");
    let bin = Binary::start(&cfg.main(), &[]).await;

    let a = get(bin.addr, "alpha.test", "/").await;
    assert_eq!(
        (a.status, a.text().trim()),
        (200, "site alpha"),
        "{}",
        bin.log()
    );
    let b = get(bin.addr, "www.beta.test", "/").await;
    assert_eq!((b.status, b.text().trim()), (200, "site beta"));
    assert_eq!(get(bin.addr, "gamma.test", "/").await.status, 421);

    // Traversal over a real socket: alpha cannot reach beta's files, nor dotfiles.
    for target in [
        "/../beta/private.txt",
        "/%2e%2e/beta/private.txt",
        "/..%2fbeta%2fprivate.txt",
        "/secret/.env",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n");
        let reply = raw(bin.addr, req.as_bytes()).await;
        let status = raw_status(&reply);
        assert!(matches!(status, 400 | 403 | 404), "{target}: {reply}");
        assert!(
            !reply.contains("beta-private") && !reply.contains("alpha-secret"),
            "{target}: {reply}"
        );
    }

    let status = bin.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let access = std::fs::read_to_string(cfg.path().join("log/alpha.access.log")).unwrap();
    assert!(access.contains("\"GET / HTTP/1.1\" 200 11"), "{access}");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_download_finish_then_exits_zero() {
    let cfg = TestConfig::new();
    cfg.static_site("big", &["big.test"], "");
    let file = std::fs::File::create(cfg.path().join("www/big/big.bin")).unwrap();
    let size: u64 = 64 << 20;
    file.set_len(size).unwrap();
    let bin = Binary::start(&cfg.main(), &[]).await;

    let mut s = tokio::net::TcpStream::connect(bin.addr).await.unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: big.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let first = s.read(&mut buf).await.unwrap();
    assert!(first > 0);
    let head_end = buf[..first]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head in first read")
        + 4;
    let mut body = (first - head_end) as u64;

    // Stop while the download is in flight, then read the rest slowly.
    let terminate = tokio::spawn(bin.terminate());
    // A new connection is refused once the listener is closed (waited for:
    // SIGTERM is sent by the task just spawned).
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(s.peer_addr().unwrap())
                .await
                .is_err()
        })
        .await
    );
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        body += n as u64;
        if body >= size {
            break;
        }
    }
    assert_eq!(body, size, "the in-flight download completed");
    let status = terminate.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn invalid_configuration_refuses_to_start_with_file_and_key() {
    let cfg = TestConfig::new();
    cfg.write(
        "vhosts/bad.toml",
        "hosts = [\"bad.test\"]\nroot = \"www\"\n[limits]\nbody = \"huge\"\n",
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_polyhost"))
        .arg("serve")
        .arg("--config")
        .arg(cfg.main())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vhosts/bad.toml: limits.body: \"huge\" is not a size"),
        "{stderr}"
    );
}

/// Names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Sockets process `pid` holds open.
fn sockets_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn router_threads_run_that_many_lanes_and_each_reuses_its_worker_connection() {
    let cfg = TestConfig::new();
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    cfg.write(
        "polyhost.toml",
        &main.replace("router_threads = 2", "router_threads = 4"),
    );
    let user = TestUser::new();
    common::python_test_site(&cfg, "py", &user, "pyapp", "", "processes = 1\nthreads = 1");
    let bin = Binary::start(&cfg.main(), &[]).await;
    // As root, the lanes run in the router process (`privsep`).
    let supervisor = bin.child.id().unwrap();
    let mut pid = supervisor;
    if nix::unistd::geteuid().is_root() {
        eventually(Duration::from_secs(10), || async {
            common::router_process_of(supervisor as i32).is_some()
        })
        .await;
        pid = common::router_process_of(supervisor as i32)
            .unwrap_or_else(|| panic!("no router process:\n{}", bin.log())) as u32;
    }
    let lanes = || {
        thread_names(pid)
            .into_iter()
            .filter(|n| {
                n.strip_prefix("router-")
                    .is_some_and(|id| id.parse::<u32>().is_ok())
            })
            .count()
    };
    // The lanes start right after the "listening" line; a thread names itself once it runs.
    eventually(Duration::from_secs(10), || async { lanes() >= 4 }).await;
    assert_eq!(lanes(), 4, "{:?}", thread_names(pid));

    let first = get(bin.addr, "py.test", "/").await;
    assert_eq!(first.status, 200, "{}", bin.log());
    let worker = pids_of_uid(user.uid);
    assert_eq!(worker.len(), 1, "one worker process: {worker:?}");
    let sockets = sockets_of(worker[0]);
    // Forty client connections, one after the other, accepted by whichever
    // lane is first: worker connections are pooled per lane, so each lane
    // opens at most one for these sequential requests and reuses it (the
    // first lane's is among `sockets` already), not one per request.
    for i in 0..40 {
        let r = get(bin.addr, "py.test", &format!("/n{i}")).await;
        assert_eq!(
            (r.status, field(&r.text(), "path")),
            (200, format!("/n{i}").as_str())
        );
    }
    let after = sockets_of(worker[0]);
    assert!(
        (sockets..=sockets + 3).contains(&after),
        "at most one worker connection per lane: {sockets} sockets before, {after} after"
    );

    // A burst of kept-alive connections: the lane that accepts them hands
    // some to the others (re-registered there); every one is served, twice.
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(Client::connect(bin.addr).await);
    }
    for round in 0..2 {
        for (i, c) in clients.iter_mut().enumerate() {
            let path = format!("/c{i}r{round}");
            let r = tokio::time::timeout(Duration::from_secs(10), c.get("py.test", &path))
                .await
                .expect("answered within 10s");
            assert_eq!((r.status, field(&r.text(), "path")), (200, path.as_str()));
        }
    }
    assert!(bin.terminate().await.success());
}
