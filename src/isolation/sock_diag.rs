//! Who owns a TCP socket on this host, asked of the kernel by its
//! connection's four addresses (`sock_diag`, the interface `ss` uses).
//!
//! Two questions use it: which user's socket a local client connected from
//! (the router's connection limits count local clients by user:
//! `router::conn::peer`), and which user's listener took a connection
//! polyhost made to a loopback port (`[app] listen = "port"`: a port is not
//! private, any local user may bind it once its owner let it go, so the
//! owner is checked on every new connection: [`listener_owner`]).
//!
//! One question costs one netlink round trip (two system calls: 0.9 µs
//! when nothing is found, 1.3 µs when a socket is, in a release build
//! here) on the calling thread; the kernel answers from its connection hash
//! table while the request is sent, so the receive never waits
//! (`MSG_DONTWAIT` all the same).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};

/// "Any socket with these addresses" (`INET_DIAG_NOCOOKIE`).
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// TCP states as the kernel reports them (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

thread_local! {
    /// One netlink socket per thread that asks, made on first use and
    /// remade after an error.
    static DIAG: RefCell<Option<(OwnedFd, u32)>> = const { RefCell::new(None) };
}

/// The socket the kernel found for a pair of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its TCP state (`TCP_ESTABLISHED`, ...).
    pub state: u8,
    /// Its owner: the user that made it, or, for a connection a listener
    /// took, the listener's owner (an accepted socket is a copy of it).
    pub uid: u32,
    /// Its inode: 0 when no process holds it (closed, or still waiting in
    /// its listener's accept queue).
    pub inode: u32,
}

/// The TCP socket on this host (in polyhost's network namespace) whose own
/// address is `source` and whose peer is `destination`. `None`: there is
/// none here, or the kernel could not be asked.
pub fn lookup(source: SocketAddr, destination: SocketAddr) -> Option<Found> {
    DIAG.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = open().ok().map(|fd| (fd, 0));
        }
        let (fd, seq) = slot.as_mut()?;
        *seq = seq.wrapping_add(1);
        match ask(fd, *seq, source, destination) {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag lookup failed; reopening the netlink socket");
                *slot = None;
                None
            }
        }
    })
}

/// The uid owning the client end of the TCP connection `client` → `local`,
/// when that end is a socket on this host that a process still holds.
/// `None`: the client is elsewhere, or its socket is already closed, or the
/// kernel could not be asked.
pub fn client_owner(client: SocketAddr, local: SocketAddr) -> Option<u32> {
    // No inode: no process holds the socket any more (closed, orphaned); a
    // TIME_WAIT or closed FIN_WAIT2 socket even reports uid 0, which would
    // pass for root's.
    lookup(client, local)
        .filter(|f| f.inode != 0)
        .map(|f| f.uid)
}

/// The uid owning the listener that took the connection this host made
/// from `local` to `server`: its accepted end carries the listener's
/// owner, whether the program accepted it yet or it waits in the accept
/// queue. `None`: that end is not a full socket (yet: the handshake's last
/// ACK may still be on its way; or any more), or the kernel could not be
/// asked.
pub fn listener_owner(server: SocketAddr, local: SocketAddr) -> Option<u32> {
    lookup(server, local)
        .filter(|f| f.state == TCP_ESTABLISHED || f.state == TCP_CLOSE_WAIT)
        .map(|f| f.uid)
}

/// Whether the kernel answers the questions asked here: a connection made
/// for the purpose, looked up. `Err` says why not. A listener of its own
/// rather than the router's: the same kernel interface in the same network
/// namespace, without a stray connection in the router's counts and logs.
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
        Ok(Some(found)) if found.uid == euid => Ok(()),
        Ok(Some(found)) => Err(format!(
            "the kernel names uid {}, not {euid}, as the owner of a test connection",
            found.uid
        )),
        Ok(None) => Err(
            "the kernel does not find a test connection (is the tcp_diag module missing?)".into(),
        ),
        Err(e) => Err(format!("the kernel refused the question: {e}")),
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

fn ask(
    fd: &OwnedFd,
    seq: u32,
    source: SocketAddr,
    destination: SocketAddr,
) -> nix::Result<Option<Found>> {
    let (source, destination) = (unmapped(source), unmapped(destination));
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
        _ => return Ok(None),
    };
    let wanted = SocketId {
        source_port: source.port(),
        destination_port: destination.port(),
        source_address: source.ip(),
        destination_address: destination.ip(),
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
                same.then_some(Found {
                    state: r.header.state,
                    uid: r.header.uid,
                    inode: r.header.inode,
                })
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
        assert_eq!(client_owner(peer, server), Some(me));
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", peer.port())
            .parse()
            .unwrap();
        assert_eq!(client_owner(mapped, server), Some(me), "IPv4-mapped");
        // No socket with this source port (the server's own is a listener).
        assert_eq!(
            client_owner(server, server),
            None,
            "a listener does not count"
        );
        let elsewhere: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(client_owner(elsewhere, server), None);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(client_owner(peer, server), Some(me));
        }
        eprintln!("one lookup (found): {:?}", started.elapsed() / 1000);
        drop(client);
        assert_eq!(
            client_owner(peer, server),
            None,
            "a closed client socket (FIN_WAIT2 or TIME_WAIT, uid 0) has no owner"
        );
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(client_owner(elsewhere, server), None);
        }
        eprintln!("one lookup (not found): {:?}", started.elapsed() / 1000);
    }

    #[test]
    fn a_listeners_owner_is_found_before_and_after_it_accepts() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let local = client.local_addr().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // Queued for accept: no process holds that end yet (inode 0), and
        // it is the listener's all the same.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let queued = loop {
            match lookup(server, local) {
                Some(f) if f.state == TCP_ESTABLISHED => break f,
                seen => assert!(
                    std::time::Instant::now() < deadline,
                    "the queued connection's end was never found: {seen:?}"
                ),
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!((queued.uid, queued.inode), (me, 0), "{queued:?}");
        assert_eq!(listener_owner(server, local), Some(me));
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(listener_owner(server, local), Some(me));
        // A listener on the same port is not the connection's end.
        assert_eq!(listener_owner(server, "127.0.0.1:1".parse().unwrap()), None);
        drop(accepted);
        drop(client);
    }
}
