//! Support for the tests of what sites share at the front door
//! (tests/local_clients.rs: who a local client is, who is a trusted proxy;
//! tests/exhaustion.rs: descriptors, the admin and metrics TCP listeners):
//! polyhost started as a binary (under a wrapper such as `prlimit`), a
//! static site beside a Python site run by a test user, and the attacker, a
//! Python process with that user's uid and gid that opens connections from
//! any loopback address or the host's own.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, Binary, TestConfig, TestUser};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The attacker: opens `n` connections, each from its own 127.77.x.y
/// address, to `port`, one GET for `host` on each, and keeps those that
/// were served open (keep-alive) until its stdin closes. With `xff` it first
/// sends one request to `xff` (a host) carrying `X-Forwarded-For:
/// 203.0.113.9` and prints the body. `mode=hold` just connects and holds
/// (for listeners that wait for a request). The optional `src` says where
/// from: `lo` (the default, 127.77.x.y), an address of this host, or
/// `mapped-lo` / `mapped-ADDRESS`: the same from an IPv6 socket, bound to
/// `::ffff:…` and connecting to `::ffff:127.0.0.1` (the kernel reports such
/// a socket as IPv6 even when asked by IPv4 addresses).
const ATTACKER: &str = r#"
import socket, sys
mode, port, n, host, xff = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
src = sys.argv[6] if len(sys.argv) > 6 else "lo"
def connect(i):
    lo = "127.77.%d.%d" % (i // 250, i % 250 + 1)
    if src.startswith("mapped-"):
        ip = src[len("mapped-"):]
        s = socket.socket(socket.AF_INET6)
        s.bind(("::ffff:" + (lo if ip == "lo" else ip), 0))
        dest = ("::ffff:127.0.0.1", port)
    else:
        s = socket.socket()
        s.bind((lo if src == "lo" else src, 0))
        dest = ("127.0.0.1", port)
    s.settimeout(10)
    s.connect(dest)
    return s
if xff != "-":
    s = connect(9999)
    s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n" % xff).encode())
    reply = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        reply += b
    s.close()
    print("xff-probe " + reply.decode(errors="replace").split("\r\n\r\n", 1)[-1], flush=True)
held, served, refused, hung = [], 0, 0, 0
for i in range(n):
    try:
        s = connect(i)
    except OSError:
        refused += 1
        continue
    if mode == "hold":
        held.append(s)
        continue
    try:
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
        head = s.recv(4096)
    except socket.timeout:
        hung += 1
        continue
    except OSError:
        refused += 1
        continue
    if head.startswith(b"HTTP/1.1 200"):
        served += 1
        held.append(s)
    else:
        refused += 1
        s.close()
print("served=%d refused=%d hung=%d held=%d" % (served, refused, hung, len(held)), flush=True)
sys.stdin.read()
"#;

/// A running attacker process (killed on drop).
pub struct Attacker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Attacker {
    /// Starts [`ATTACKER`] as `user` (its uid, its primary group).
    pub fn start(user: &TestUser, args: &[&str]) -> Attacker {
        let gid = nix::unistd::User::from_name(&user.name)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(ATTACKER)
            .args(args)
            .uid(user.uid)
            .gid(gid)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the attacker");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Attacker { child, lines }
    }

    /// The next line it prints (within 60 s).
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the attacker reports within 60 s")
            .unwrap()
            .expect("the attacker printed a line")
    }

    /// Closes its connections: kills it and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `key=N` of an attacker's report.
pub fn count(report: &str, key: &str) -> usize {
    common::field(report, key)
        .parse()
        .unwrap_or_else(|_| panic!("no {key} in {report:?}"))
}

/// polyhost started as `prlimit --nofile=N:N polyhost serve` (when `nofile`
/// is given; `prlimit` execs polyhost, so the child is polyhost itself), with
/// its router and metrics addresses read from its log.
pub async fn start(cfg: &TestConfig, nofile: Option<u64>) -> (Binary, Option<SocketAddr>) {
    match nofile {
        Some(n) => start_under(cfg, &["prlimit", &format!("--nofile={n}:{n}"), "--"]).await,
        None => start_under(cfg, &[]).await,
    }
}

/// [`start`] with `wrapper` (a program and its arguments, which execs the
/// rest of its command line) before `polyhost serve`.
pub async fn start_under(cfg: &TestConfig, wrapper: &[&str]) -> (Binary, Option<SocketAddr>) {
    let bin = env!("CARGO_BIN_EXE_polyhost");
    let mut cmd = match wrapper {
        [program, args @ ..] => {
            let mut c = tokio::process::Command::new(program);
            c.args(args).arg(bin);
            c
        }
        [] => tokio::process::Command::new(bin),
    };
    cmd.arg("serve").arg("--config").arg(cfg.main());
    cmd.stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn polyhost");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // "listening addr=…" (the router), "metrics listening … addr=…"
            // (with or without a token, the warning's text in between).
            if let Some(rest) = line
                .contains("listening")
                .then(|| line.rsplit(" addr=").next())
                .flatten()
                .filter(|_| line.contains(" addr="))
            {
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send((line.contains("metrics listening"), addr));
            }
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let wants_metrics = std::fs::read_to_string(cfg.main())
        .unwrap()
        .contains("[metrics]");
    let (mut http, mut metrics) = (None, None);
    while http.is_none() || (wants_metrics && metrics.is_none()) {
        let (is_metrics, addr) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("polyhost did not start; log:\n{}", log.lock().unwrap()));
        let addr: SocketAddr = addr.parse().unwrap();
        if is_metrics {
            metrics = Some(addr);
        } else {
            http = Some(addr);
        }
    }
    let binary = Binary::adopt(child, http.unwrap(), log, &cfg.main());
    (binary, metrics)
}

/// A static site `other` and a Python site `attacker` run by `user`.
pub fn two_sites(cfg: &TestConfig, user: &TestUser, main_extra: &str) {
    cfg.static_site("other", &["other.test"], "");
    common::python_test_site(
        cfg,
        "attacker",
        user,
        "pyapp",
        "",
        "processes = 1\nthreads = 1",
    );
    let main = std::fs::read_to_string(cfg.main()).unwrap();
    // Top-level keys before any table of the main file.
    cfg.write("polyhost.toml", &format!("{main_extra}\n{main}"));
}

/// Few connections, so the tests open few: 40 in all, 10 per client.
pub const SMALL_LIMITS: &str = "[limits]\nmax_connections = 40\nmax_connections_per_ip = 10";

/// Polls until the site `attacker` answers (its worker is up).
pub async fn wait_for_attacker_site(addr: SocketAddr, log: &Binary) {
    let up = common::eventually(Duration::from_secs(30), || async {
        status(addr, "attacker.test").await == 200
    })
    .await;
    assert!(up, "the Python site never answered; log:\n{}", log.log());
}

/// One GET for `other.test` from root, within 5 s.
pub async fn other_site_answers(addr: SocketAddr) -> u16 {
    status(addr, "other.test").await
}

/// The status of one GET for `host` on a fresh connection; 0 when refused
/// without an answer, reset, or not answered within 5 s.
pub async fn status(addr: SocketAddr, host: &str) -> u16 {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.ok()?;
        Some(common::raw_status(&String::from_utf8_lossy(&reply)))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Stops polyhost, checks it exits cleanly, and that nothing of `user` runs.
pub async fn finish(polyhost: Binary, user: &TestUser) {
    let log = polyhost.log();
    assert!(
        !log.contains("accept failed"),
        "no failed accepts in the log:\n{log}"
    );
    let status = polyhost.terminate().await;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    let left = common::eventually(Duration::from_secs(10), || async {
        common::pids_of_uid(user.uid).is_empty()
    })
    .await;
    assert!(
        left,
        "processes of {} left: {:?}",
        user.name,
        common::pids_of_uid(user.uid)
    );
}

/// Waits (bounded) until the router holds no connection on `addr` (each
/// closed by the router, not only by its client): their places are free.
pub async fn idle(addr: SocketAddr) {
    let filter = format!("( sport = :{} )", addr.port());
    common::wait_for(
        "the router to close every connection",
        Duration::from_secs(10),
        async || {
            let out = std::process::Command::new("ss")
                .args([
                    "-Htn",
                    "state",
                    "established",
                    "state",
                    "close-wait",
                    &filter,
                ])
                .output()
                .expect("run ss");
            common::Shown(String::from_utf8_lossy(&out.stdout).into_owned())
        },
        |seen| seen.0.trim().is_empty(),
    )
    .await;
}
