//! Who is at the other end of a connection made from this host: the user
//! that owns the client's socket, asked of the kernel (`sock_diag`, the
//! interface `ss` uses) by the connection's four addresses.
//!
//! Addresses say nothing about a local client: any process may bind any of
//! the 16 million addresses of 127/8 (and the host's own) as its source, so
//! the connection limits count local clients by the user that owns their
//! socket instead (`router::client::Client`). The question costs one netlink
//! round trip (two system calls: 0.9 µs when nothing is found, 1.3 µs when
//! a socket is, in a release build here) on the accepting thread;
//! the kernel answers from its connection hash table while the request is
//! sent, so the receive never waits (`MSG_DONTWAIT` all the same).

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

fn open() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkSockDiag,
    )
}

/// Both ends in one family: IPv4-mapped IPv6 addresses (a dual-stack
/// listener's view of an IPv4 client) as IPv4.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
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
                // address; only the connected socket itself counts.
                let same = id.source_port == wanted.source_port
                    && id.destination_port == wanted.destination_port
                    && id.source_address == wanted.source_address
                    && id.destination_address == wanted.destination_address;
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
