//! One site cannot take the router away from the others by exhausting what
//! they share: client connections (a site's code may bind any of 127/8 as
//! its source, so local clients are counted by the user owning their socket)
//! and file descriptors (the admin and metrics TCP listeners are capped;
//! `max_connections` is fitted under `RLIMIT_NOFILE`; at EMFILE a spare
//! descriptor lets the router accept and refuse). Each test runs the real
//! binary; attacks run as a site's user (a Python process started with the
//! site user's uid and gid) and stay on loopback.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{get_as, Binary, TestConfig, TestUser, NOBODY};
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
struct Attacker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Attacker {
    /// Starts [`ATTACKER`] as `user` (its uid, its primary group).
    fn start(user: &TestUser, args: &[&str]) -> Attacker {
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
    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the attacker reports within 60 s")
            .unwrap()
            .expect("the attacker printed a line")
    }

    /// Closes its connections: kills it and waits for it.
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `key=N` of an attacker's report.
fn count(report: &str, key: &str) -> usize {
    common::field(report, key)
        .parse()
        .unwrap_or_else(|_| panic!("no {key} in {report:?}"))
}

/// polyhost started as `prlimit --nofile=N:N polyhost serve` (when `nofile`
/// is given; `prlimit` execs polyhost, so the child is polyhost itself), with
/// its router and metrics addresses read from its log.
async fn start(cfg: &TestConfig, nofile: Option<u64>) -> (Binary, Option<SocketAddr>) {
    match nofile {
        Some(n) => start_under(cfg, &["prlimit", &format!("--nofile={n}:{n}"), "--"]).await,
        None => start_under(cfg, &[]).await,
    }
}

/// [`start`] with `wrapper` (a program and its arguments, which execs the
/// rest of its command line) before `polyhost serve`.
async fn start_under(cfg: &TestConfig, wrapper: &[&str]) -> (Binary, Option<SocketAddr>) {
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
fn two_sites(cfg: &TestConfig, user: &TestUser, main_extra: &str) {
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
const SMALL_LIMITS: &str = "[limits]\nmax_connections = 40\nmax_connections_per_ip = 10";

/// Polls until the site `attacker` answers (its worker is up).
async fn wait_for_attacker_site(addr: SocketAddr, log: &Binary) {
    let up = common::eventually(Duration::from_secs(30), || async {
        status(addr, "attacker.test").await == 200
    })
    .await;
    assert!(up, "the Python site never answered; log:\n{}", log.log());
}

/// One GET for `other.test` from root, within 5 s.
async fn other_site_answers(addr: SocketAddr) -> u16 {
    status(addr, "other.test").await
}

/// The status of one GET for `host` on a fresh connection; 0 when refused
/// without an answer, reset, or not answered within 5 s.
async fn status(addr: SocketAddr, host: &str) -> u16 {
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
async fn finish(polyhost: Binary, user: &TestUser) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_opening_connections_from_many_loopback_addresses_cannot_take_the_router() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    two_sites(&cfg, &user, "");
    cfg.main_extra(SMALL_LIMITS);
    let (polyhost, _) = start(&cfg, None).await;
    let addr = polyhost.addr;
    wait_for_attacker_site(addr, &polyhost).await;

    // 60 connections from 60 addresses: before, 40 of them took every slot.
    let port = addr.port().to_string();
    let mut attacker = Attacker::start(&user, &["get", &port, "60", "other.test", "-"]);
    let report = attacker.line().await;
    assert_eq!(
        count(&report, "hung"),
        0,
        "every connection answered: {report}"
    );
    assert!(
        count(&report, "served") <= 10,
        "one local user is one client whatever its addresses: {report}"
    );
    // While it holds them: root and another local user are other clients.
    assert_eq!(other_site_answers(addr).await, 200, "{report}");
    let r = get_as(NOBODY, "127.0.0.2", addr, "other.test", "/").await;
    assert_eq!(r.status, 200, "another local user is served: {report}");
    attacker.stop().await;
    finish(polyhost, &user).await;
}

/// One of this host's own IPv4 addresses that is not loopback.
fn host_ipv4() -> std::net::Ipv4Addr {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|a| !a.is_loopback())
        .expect("this test needs a non-loopback IPv4 address on the host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_is_known_by_its_user_from_ipv4_mapped_and_host_addresses() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // A load balancer on the host's network is a trusted proxy; the
    // host's own address is in that network.
    let host = host_ipv4();
    two_sites(&cfg, &user, &format!("trusted_proxies = [\"{host}/24\"]"));
    cfg.main_extra(SMALL_LIMITS);
    let (polyhost, _) = start(&cfg, None).await;
    let addr = polyhost.addr;
    wait_for_attacker_site(addr, &polyhost).await;
    let port = addr.port().to_string();

    // 1. An IPv6 socket bound to the host's address, IPv4-mapped. Before,
    // the kernel's answer (AF_INET6, mapped addresses) did not match the
    // question: the site was the remote host, a trusted proxy: believed,
    // exempt, and its 60 connections took all 40 places.
    let src = format!("mapped-{host}");
    let mut mapped_host = Attacker::start(
        &user,
        &["get", &port, "60", "other.test", "attacker.test", &src],
    );
    let probe = mapped_host.line().await;
    assert!(
        probe.contains(&format!("remote={host} ")) && !probe.contains("203.0.113.9"),
        "a site's own X-Forwarded-For is not believed: {probe}"
    );
    let report = mapped_host.line().await;
    assert_eq!(count(&report, "hung"), 0, "{report}");
    assert!(
        count(&report, "served") <= 10,
        "the site is one local client, not an exempt proxy: {report}; log:\n{}",
        polyhost.log()
    );
    assert_eq!(other_site_answers(addr).await, 200, "{report}");
    mapped_host.stop().await;
    idle(addr).await;

    // 2. While it holds its share from 127.77.x.y: IPv4-mapped loopback
    // addresses. Before, they were "local, owner unknown", a second share
    // for the site (which it took from every client of that kind).
    let mut plain = Attacker::start(&user, &["get", &port, "60", "other.test", "-"]);
    let first = plain.line().await;
    assert_eq!(count(&first, "served"), 10, "{first}");
    let mut mapped_lo =
        Attacker::start(&user, &["get", &port, "60", "other.test", "-", "mapped-lo"]);
    let second = mapped_lo.line().await;
    assert_eq!(count(&second, "hung"), 0, "{second}");
    assert_eq!(
        count(&second, "served"),
        0,
        "no second share from IPv4-mapped loopback addresses: {second} (first: {first})"
    );
    assert_eq!(other_site_answers(addr).await, 200, "{second}");
    mapped_lo.stop().await;
    plain.stop().await;
    finish(polyhost, &user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_local_trusted_proxy_a_site_is_neither_exempt_nor_believed() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // A HAProxy or nginx on this host in front of polyhost: every loopback
    // address is a trusted proxy, so a site could borrow one.
    two_sites(&cfg, &user, "trusted_proxies = [\"127.0.0.0/8\"]");
    cfg.main_extra(SMALL_LIMITS);
    let (polyhost, _) = start(&cfg, None).await;
    let addr = polyhost.addr;
    wait_for_attacker_site(addr, &polyhost).await;

    let port = addr.port().to_string();
    let mut attacker = Attacker::start(&user, &["get", &port, "60", "other.test", "attacker.test"]);
    let probe = attacker.line().await;
    assert!(
        probe.contains("remote=127.77.") && !probe.contains("203.0.113.9"),
        "a site's own X-Forwarded-For is not believed: {probe}"
    );
    let report = attacker.line().await;
    assert_eq!(count(&report, "hung"), 0, "{report}");
    assert!(
        count(&report, "served") <= 10,
        "the site is not exempt: {report}"
    );

    // The proxy itself (here: root) is exempt from the per-client limit and
    // believed: 20 keep-alive connections, more than 10, all served.
    let mut proxy = Vec::new();
    for _ in 0..20 {
        let mut c = common::Client::connect(addr).await;
        assert_eq!(c.get("other.test", "/").await.status, 200, "{report}");
        proxy.push(c);
    }
    let mut c = common::Client::connect(addr).await;
    let req = http::Request::builder()
        .uri("/")
        .header("host", "attacker.test")
        .header("x-forwarded-for", "203.0.113.9")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert!(r.text().contains("remote=203.0.113.9"), "{}", r.text());
    drop((proxy, c));
    attacker.stop().await;
    finish(polyhost, &user).await;
}

/// The client address the Python site `attacker` saw for a request that
/// carried `X-Forwarded-For: 203.0.113.9`, sent from 127.0.0.2 by a socket
/// of `uid`.
async fn seen_remote(uid: u32, addr: SocketAddr) -> String {
    let s = common::connect_as(uid, "127.0.0.2", addr).await;
    let req = b"GET / HTTP/1.1\r\nHost: attacker.test\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n";
    let reply = common::raw_on(s, req, Duration::from_secs(5)).await;
    let remote = common::field(&reply, "remote");
    assert!(!remote.is_empty(), "no answer from the site: {reply}");
    remote.to_owned()
}

/// Opens `n` keep-alive connections owned by `uid`, one GET each; how many
/// were served, and the connections (to hold them).
async fn hold_as(uid: u32, addr: SocketAddr, n: usize) -> (usize, Vec<TcpStream>) {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = common::connect_as(uid, "127.0.0.2", addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await;
        if matches!(read, Ok(Ok(_))) && head.starts_with(b"HTTP/1.1 200") {
            held.push(s);
        }
    }
    (held.len(), held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_local_trusted_proxy_only_root_and_the_listed_users_are_trusted() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // The user a local HAProxy runs as; it runs no site.
    let proxy = TestUser::new();
    two_sites(
        &cfg,
        &user,
        &format!(
            "trusted_proxies = [\"127.0.0.0/8\"]\ntrusted_proxy_users = [\"{}\"]",
            proxy.name
        ),
    );
    cfg.main_extra(SMALL_LIMITS);
    let (polyhost, _) = start(&cfg, None).await;
    let addr = polyhost.addr;
    wait_for_attacker_site(addr, &polyhost).await;

    // Another local user that runs no site (an SSH user, cron, a removed
    // site's last process): before, trusted for not being a site's user.
    assert_eq!(
        seen_remote(NOBODY, addr).await,
        "127.0.0.2",
        "nobody's X-Forwarded-For is not believed"
    );
    let (served, held) = hold_as(NOBODY, addr, 20).await;
    assert_eq!(served, 10, "nobody is not exempt from the per-client limit");
    drop(held);
    idle(addr).await;
    // The listed user and root are the proxy: believed and exempt.
    assert_eq!(seen_remote(proxy.uid, addr).await, "203.0.113.9");
    assert_eq!(seen_remote(0, addr).await, "203.0.113.9", "root");
    let (served, held) = hold_as(proxy.uid, addr, 20).await;
    assert_eq!(served, 20, "the listed proxy user is exempt");
    drop(held);
    let log = polyhost.log();
    assert!(
        log.contains("not in trusted_proxy_users"),
        "the unlisted local user is named in the log:\n{log}"
    );
    finish(polyhost, &user).await;
}

/// Runs its arguments (a program and its own) under a seccomp filter that
/// refuses NETLINK_SOCK_DIAG sockets (EPERM), as a hardened service unit or
/// a container might: libseccomp through ctypes, then exec.
const NO_SOCK_DIAG: &str = r#"
import ctypes, errno, os, sys
lib = ctypes.CDLL("libseccomp.so.2")
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x7fff0000)  # SCMP_ACT_ALLOW
assert lib.seccomp_attr_set(ctx, 3, 0) == 0  # SCMP_FLTATR_CTL_NNP off
EQ = 4
# socket(AF_NETLINK, any type, NETLINK_SOCK_DIAG) -> EPERM
rule = (Cmp * 2)(Cmp(0, EQ, 16, 0), Cmp(2, EQ, 4, 0))
nr = lib.seccomp_syscall_resolve_name(b"socket")
assert lib.seccomp_rule_add_array(ctx, 0x00050000 | errno.EPERM, nr, 2, rule) == 0
assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sock_diag_polyhost_says_at_start_that_local_clients_are_one() {
    let cfg = TestConfig::new();
    cfg.static_site("other", &["other.test"], "");
    let (polyhost, _) = start_under(&cfg, &["/usr/bin/python3", "-c", NO_SOCK_DIAG]).await;
    // Logged as the router starts, around its "listening" line.
    let common::Shown(log) = common::wait_for(
        "the warning",
        Duration::from_secs(10),
        async || common::Shown(polyhost.log()),
        |log| log.0.contains("cannot tell local clients apart"),
    )
    .await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot tell local clients apart"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning at start:\n{log}");
    for named in [
        "NETLINK_SOCK_DIAG",
        "one client of max_connections_per_ip",
        "no local connection is a trusted proxy",
    ] {
        assert!(warnings[0].contains(named), "{named}: {}", warnings[0]);
    }
    // It still serves, counting local clients as one.
    assert_eq!(other_site_answers(polyhost.addr).await, 200, "{log}");
    assert!(polyhost.terminate().await.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_the_metrics_port_leaves_the_router_its_descriptors() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    two_sites(&cfg, &user, "");
    cfg.main_extra("[metrics]\nlisten = \"127.0.0.1:0\"");
    // 256 descriptors: 300 held metrics connections would take them all.
    let (polyhost, metrics) = start(&cfg, Some(256)).await;
    let addr = polyhost.addr;
    let metrics = metrics.expect("metrics address");
    wait_for_attacker_site(addr, &polyhost).await;

    let port = metrics.port().to_string();
    let mut attacker = Attacker::start(&user, &["hold", &port, "300", "-", "-"]);
    let report = attacker.line().await;
    // The connections over the cap are closed right after accept.
    let closed_soon = common::eventually(Duration::from_secs(5), || async {
        open_fds(&polyhost) < 200
    })
    .await;
    assert!(
        closed_soon,
        "metrics connections held: {} fds open; {report}",
        open_fds(&polyhost)
    );
    for i in 0..20 {
        let status = other_site_answers(addr).await;
        assert_eq!(
            status,
            200,
            "request {i} of another site during the flood; {report}; log:\n{}",
            polyhost.log()
        );
    }
    attacker.stop().await;
    let m = common::get(metrics, "x", "/metrics").await;
    assert_eq!(m.status, 200, "metrics answer once the flood is over");
    finish(polyhost, &user).await;
}

/// Waits (bounded) until the router holds no connection on `addr` (each
/// closed by the router, not only by its client): their places are free.
async fn idle(addr: SocketAddr) {
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

/// What a GET of `/metrics` on a fresh connection to `addr` got back (with
/// `Authorization: Bearer token` when given, `Connection: close` when
/// `close`), read to its end; empty when refused, reset, or not ended
/// within 5 s.
async fn scrape(addr: SocketAddr, token: Option<&str>, close: bool) -> String {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut req = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
        if let Some(t) = token {
            req += &format!("Authorization: Bearer {t}\r\n");
        }
        if close {
            req += "Connection: close\r\n";
        }
        s.write_all(format!("{req}\r\n").as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.ok()?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_holding_metrics_connections_does_not_lock_the_scraper_out() {
    use std::os::unix::fs::PermissionsExt;
    let cfg = TestConfig::new();
    let user = TestUser::new();
    two_sites(&cfg, &user, "");
    cfg.main_extra("[metrics]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"metrics.token\"");
    let token = cfg.write("metrics.token", "scrape-s3cret\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (polyhost, metrics) = start(&cfg, None).await;
    let metrics = metrics.expect("metrics address");
    wait_for_attacker_site(polyhost.addr, &polyhost).await;

    // Without the token, a kept-alive request gets its 401 and the
    // connection is closed (before: kept open for the next try).
    let refused = scrape(metrics, None, false).await;
    assert_eq!(common::raw_status(&refused), 401, "{refused:?}");
    assert!(
        refused.to_ascii_lowercase().contains("connection: close"),
        "{refused}"
    );

    // The site's code holds 100 connections to the metrics port. Before,
    // its first 32 took every place and the scraper's connection was
    // closed at once; now it holds 4.
    let port = metrics.port().to_string();
    let mut attacker = Attacker::start(&user, &["hold", &port, "100", "-", "-"]);
    let report = attacker.line().await;
    let scraped = scrape(metrics, Some("scrape-s3cret"), true).await;
    assert_eq!(
        common::raw_status(&scraped),
        200,
        "root's authorised scrape while the site holds connections ({report}): {scraped:?}; log:\n{}",
        polyhost.log()
    );
    assert!(scraped.contains("polyhost_requests_total"), "{scraped}");
    attacker.stop().await;
    finish(polyhost, &user).await;
}

/// Descriptors polyhost holds.
fn open_fds(polyhost: &Binary) -> usize {
    let pid = polyhost.child.id().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What one client saw: its GET answered 200, refused (503, or closed or
/// reset without an answer), another answer, or nothing within 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Served,
    Refused,
    Other,
    Hung,
}

/// Opens `n` connections at once, each sends a GET for `www.test`; returns
/// what each saw and the connections that were served (held open).
async fn clients(addr: SocketAddr, n: usize) -> (Vec<Seen>, Vec<TcpStream>) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
            else {
                return (Seen::Hung, None);
            };
            if s.write_all(b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n")
                .await
                .is_err()
            {
                return (Seen::Refused, None);
            }
            let mut head = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await {
                Err(_) => (Seen::Hung, None),
                Ok(Ok(n)) if head[..n].starts_with(b"HTTP/1.1 200") => (Seen::Served, Some(s)),
                Ok(Ok(n)) if n == 0 || head[..n].starts_with(b"HTTP/1.1 503") => {
                    (Seen::Refused, None)
                }
                Ok(Ok(_)) => (Seen::Other, None),
                Ok(Err(_)) => (Seen::Refused, None),
            }
        }));
    }
    let mut seen = Vec::new();
    let mut held = Vec::new();
    for t in tasks {
        let (s, conn) = t.await.unwrap();
        seen.push(s);
        held.extend(conn);
    }
    (seen, held)
}

fn tally(seen: &[Seen], what: Seen) -> usize {
    seen.iter().filter(|s| **s == what).count()
}

fn summary(seen: &[Seen]) -> String {
    [Seen::Served, Seen::Refused, Seen::Other, Seen::Hung]
        .map(|w| format!("{w:?}={}", tally(seen, w)))
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_descriptor_limit_clients_get_503_and_the_router_recovers() {
    let cfg = TestConfig::new();
    common::edge::site(&cfg);
    // max_connections stays 10000: far more than 256 descriptors hold.
    let (polyhost, _) = start(&cfg, Some(256)).await;
    let addr = polyhost.addr;
    let started = Instant::now();

    // 1. More clients than descriptors. Before, accept failed with EMFILE
    // (logged every 50 ms) and the clients past it waited unanswered; now
    // max_connections is fitted under the limit: 256 - 128 admitted.
    let (seen, held) = clients(addr, 300).await;
    assert_eq!(
        (tally(&seen, Seen::Served), tally(&seen, Seen::Refused)),
        (128, 172),
        "{}; log:\n{}",
        summary(&seen),
        polyhost.log()
    );
    drop(held);
    let recovered = common::eventually(Duration::from_secs(10), || async {
        status(addr, "www.test").await == 200
    })
    .await;
    assert!(recovered, "served again once the clients left");
    assert!(
        polyhost.log().contains("RLIMIT_NOFILE"),
        "{}",
        polyhost.log()
    );

    // 2. The limit lowered under polyhost's feet: accept hits EMFILE, and
    // the spare descriptor still answers 503.
    // Once most of phase 1's connections are closed (about 30 descriptors
    // remain at rest): 20 to spare, or up to 20 more as the last ones close;
    // fewer than the 80 clients either way.
    let closed = common::eventually(Duration::from_secs(10), || async {
        open_fds(&polyhost) <= 50
    })
    .await;
    assert!(closed, "{} descriptors open", open_fds(&polyhost));
    let pid = polyhost.child.id().unwrap().to_string();
    let low = open_fds(&polyhost) + 20;
    // The soft limit only: raising a hard limit needs CAP_SYS_RESOURCE.
    let set = |n: usize| {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:256")])
            .output()
            .unwrap();
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    set(low);
    let (seen, held) = clients(addr, 80).await;
    let log = polyhost.log();
    assert_eq!(
        tally(&seen, Seen::Hung),
        0,
        "{}; log:\n{log}",
        summary(&seen)
    );
    assert!(tally(&seen, Seen::Refused) > 0, "{}", summary(&seen));
    assert!(
        polyhost.log().contains("out of file descriptors"),
        "{}",
        polyhost.log()
    );
    drop(held);
    set(256);
    let recovered = common::eventually(Duration::from_secs(10), || async {
        status(addr, "www.test").await == 200
    })
    .await;
    assert!(recovered, "served again; log:\n{}", polyhost.log());
    assert!(started.elapsed() < Duration::from_secs(60));
    let log = polyhost.log();
    assert!(
        !log.contains("accept failed"),
        "no accept error loop:\n{log}"
    );
    assert!(polyhost.terminate().await.success(), "{log}");
}
