//! A site's code cannot pass for another client of the router: local
//! clients are counted by the user owning their socket, whatever address
//! they bind (any of 127/8, IPv4-mapped on an IPv6 socket, the host's own),
//! and a local connection is a trusted proxy only for root and
//! `trusted_proxy_users`. Each test runs the real binary; attacks run as a
//! site's user (tests/exhaustion_support: the attacker).

mod common;
mod exhaustion_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{get_as, TestConfig, TestUser, NOBODY};
use exhaustion_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
