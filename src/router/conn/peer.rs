//! Who is at the other end of a connection made from this host: the user
//! that owns the client's socket, asked of the kernel (`sock_diag`, the
//! interface `ss` uses) by the connection's four addresses.
//!
//! Addresses say nothing about a local client: any process may bind any of
//! the 16 million addresses of 127/8 (and the host's own) as its source, so
//! the connection limits count local clients by the user that owns their
//! socket instead (`conn::client::Client`). The question costs one netlink
//! round trip (two system calls: 0.9 µs when nothing is found, 1.3 µs when
//! a socket is, in a release build here) on the accepting thread;
//! the kernel answers from its connection hash table while the request is
//! sent, so the receive never waits (`MSG_DONTWAIT` all the same).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};

/// "Any socket with these addresses" (`INET_DIAG_NOCOOKIE`).
const NO_COOKIE: [u8; 8] = [0xff; 8];

thread_local! {
    /// One netlink socket per router thread, made on first use and remade
    /// after an error.
    static DIAG: RefCell<Option<(OwnedFd, u32)>> = const { RefCell::new(None) };
}

/// The uid owning the client end of the TCP connection `client` → `local`,
/// when that end is a socket on this host (in polyhost's network
/// namespace) that a process still holds. `None`: the client is elsewhere,
/// or its socket is already closed, or the kernel could not be asked.
pub fn local_owner(client: SocketAddr, local: SocketAddr) -> Option<u32> {
    DIAG.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = open().ok().map(|fd| (fd, 0));
        }
        let (fd, seq) = slot.as_mut()?;
        *seq = seq.wrapping_add(1);
        match ask(fd, *seq, client, local) {
            Ok(uid) => uid,
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag lookup failed; reopening the netlink socket");
                *slot = None;
                None
            }
        }
    })
}

/// Whether the kernel answers the question [`local_owner`] asks: a
/// connection made for the purpose, looked up. `Err` says why not. A
/// listener of its own rather than the router's: the same kernel interface
/// in the same network namespace, without a stray connection in the
/// router's counts and logs.
pub fn check() -> Result<(), String> {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .or_else(|_| TcpListener::bind((Ipv6Addr::LOCALHOST, 0)))
        .map_err(|e| format!("cannot open a loopback listener to try it: {e}"))?;
    let server = listener
        .local_addr()
        .map_err(|e| format!("cannot read the test listener's address: {e}"))?;
    let client = TcpStream::connect(server)
        .map_err(|e| format!("cannot connect to the test listener: {e}"))?;
    let me = client
        .local_addr()
        .map_err(|e| format!("cannot read the test connection's address: {e}"))?;
    let fd = open().map_err(|e| format!("cannot open a NETLINK_SOCK_DIAG socket: {e}"))?;
    let euid = nix::unistd::geteuid().as_raw();
    match ask(&fd, 1, me, server) {
        Ok(Some(uid)) if uid == euid => Ok(()),
        Ok(Some(uid)) => Err(format!(
            "the kernel names uid {uid}, not {euid}, as the owner of a test connection"
        )),
        Ok(None) => Err(
            "the kernel does not find a test connection (is the tcp_diag module missing?)".into(),
        ),
        Err(e) => Err(format!("the kernel refused the question: {e}")),
    }
}

/// The host's own addresses as last read, and when.
struct OwnAddresses {
    read: Instant,
    addrs: Vec<IpAddr>,
}

/// How old the snapshot may be before an address missing from it makes it
/// be read again: an address added to an interface is known within this.
const OWN_ADDRESSES_FRESH: Duration = Duration::from_secs(1);

static OWN_ADDRESSES: LazyLock<ArcSwap<OwnAddresses>> =
    LazyLock::new(|| ArcSwap::from_pointee(read_own_addresses(Vec::new())));

/// Held by the thread that rereads the snapshot.
static REREADING: Mutex<()> = Mutex::new(());

/// Whether `ip` is one of this host's own addresses (any interface's, in
/// polyhost's network namespace): an address a process on this host can
/// bind as its source. Read from a snapshot (`getifaddrs`, the netlink dump
/// `ip addr` shows), read again when an address is not in it and it is older
/// than [`OWN_ADDRESSES_FRESH`]: a remote client costs a lookup in a short
/// list, and the snapshot is read at most once a second. Local routes that
/// are no interface's address (`ip route add local 10.9.0.0/16 dev lo`) are
/// not in it.
pub fn is_own_address(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    let snapshot = OWN_ADDRESSES.load();
    if snapshot.addrs.contains(&ip) {
        return true;
    }
    if snapshot.read.elapsed() < OWN_ADDRESSES_FRESH {
        return false;
    }
    // One thread rereads; the others answer from the snapshot they have.
    let Ok(_rereading) = REREADING.try_lock() else {
        return false;
    };
    let fresh = read_own_addresses(snapshot.addrs.clone());
    let found = fresh.addrs.contains(&ip);
    OWN_ADDRESSES.store(Arc::new(fresh));
    found
}

/// Every interface's addresses; `previous` when they cannot be read.
fn read_own_addresses(previous: Vec<IpAddr>) -> OwnAddresses {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(list) => {
            let mut addrs: Vec<IpAddr> = list
                .filter_map(|i| i.address)
                .filter_map(|a| {
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        a.as_sockaddr_in6().map(|v6| canonical(IpAddr::V6(v6.ip())))
                    }
                })
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            addrs
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this host's addresses (getifaddrs); keeping the last list");
            previous
        }
    };
    OwnAddresses {
        read: Instant::now(),
        addrs,
    }
}

fn open() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkSockDiag,
    )
}

/// An address in one spelling: IPv4-mapped IPv6 (`::ffff:a.b.c.d`: a
/// dual-stack listener's view of an IPv4 client, or what the kernel reports
/// for an IPv6 socket that connected to an IPv4 address) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

fn ask(fd: &OwnedFd, seq: u32, client: SocketAddr, local: SocketAddr) -> nix::Result<Option<u32>> {
    let (client, local) = (unmapped(client), unmapped(local));
    let family = match (client.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
        _ => return Ok(None),
    };
    // The client's socket: its source is the client address, its
    // destination ours.
    let wanted = SocketId {
        source_port: client.port(),
        destination_port: local.port(),
        source_address: client.ip(),
        destination_address: local.ip(),
        interface_id: 0,
        cookie: NO_COOKIE,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: wanted.clone(),
        })
        .into(),
    );
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    send(fd.as_raw_fd(), &out, MsgFlags::MSG_DONTWAIT)?;
    let mut buf = [0u8; 1024];
    // Answers to earlier questions that were not read (after an error) are
    // skipped by their sequence number.
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)?;
        let Ok(msg) = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n]) else {
            return Ok(None);
        };
        if msg.header.sequence_number != seq {
            continue;
        }
        return Ok(match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let id = &r.header.socket_id;
                // An exact lookup falls back to a listener on the source
                // address; only the connected socket itself counts. An
                // IPv6 socket connected to an IPv4 address is found by its
                // IPv4 addresses but reported as AF_INET6, with the
                // addresses IPv4-mapped: compared in one spelling.
                let same = id.source_port == wanted.source_port
                    && id.destination_port == wanted.destination_port
                    && canonical(id.source_address) == wanted.source_address
                    && canonical(id.destination_address) == wanted.destination_address;
                // No inode: no process holds the socket any more (closed,
                // orphaned); a TIME_WAIT or closed FIN_WAIT2 socket even
                // reports uid 0, which would pass for root's.
                (same && r.header.inode != 0).then_some(r.header.uid)
            }
            // ENOENT: no such socket here.
            _ => None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn the_check_finds_its_own_connection() {
        assert_eq!(check(), Ok(()));
    }

    #[test]
    fn finds_the_owner_of_a_local_client_and_nothing_for_others() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(local_owner(peer, server), Some(me));
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", peer.port())
            .parse()
            .unwrap();
        assert_eq!(local_owner(mapped, server), Some(me), "IPv4-mapped");
        // No socket with this source port (the server's own is a listener).
        assert_eq!(
            local_owner(server, server),
            None,
            "a listener does not count"
        );
        let elsewhere: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(local_owner(elsewhere, server), None);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(local_owner(peer, server), Some(me));
        }
        eprintln!("one lookup (found): {:?}", started.elapsed() / 1000);
        drop(client);
        assert_eq!(
            local_owner(peer, server),
            None,
            "a closed client socket (FIN_WAIT2 or TIME_WAIT, uid 0) has no owner"
        );
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(local_owner(elsewhere, server), None);
        }
        eprintln!("one lookup (not found): {:?}", started.elapsed() / 1000);
    }
}
