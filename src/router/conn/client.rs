//! Who a client is ([`Client`]) and how many connections it may hold:
//! admission against `max_connections` and `max_connections_per_ip`
//! ([`ConnLimiter`]). A remote client is its address (an IPv4 address, an
//! IPv6 /64); a client on this host is the user owning its socket
//! (`conn::peer`), since any local process may bind any loopback address.
//! Which clients are trusted proxies ([`is_trusted_proxy`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use super::Throttle;
use crate::config::FrontConfig;
use crate::router::table::RoutingTable;

/// Why a connection was refused right after accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

/// Whom `max_connections_per_ip` counts as one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// A client elsewhere: an IPv4 address or an IPv6 /64 ([`Client::remote`]).
    Remote(IpAddr),
    /// A client on this host, by the uid owning its socket: its source
    /// address proves nothing (any process may bind any of 127/8, ::1 and
    /// the host's own addresses), its user does (`conn::peer`).
    LocalUser(u32),
    /// A client on this host (a loopback address or one of the host's own)
    /// whose socket's owner could not be found (it closed at once, or the
    /// kernel could not be asked): all such clients together are one
    /// client, never a trusted proxy.
    Local,
}

impl Client {
    /// A remote client's unit: an IPv4 address, or an IPv6 /64 (one
    /// subscriber usually holds a whole /64, so counting /128s would let one
    /// client take every connection).
    pub fn remote(ip: IpAddr) -> Client {
        Client::Remote(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(std::net::Ipv6Addr::from(
                    u128::from(v6) & !((1u128 << 64) - 1),
                )),
            },
            v4 => v4,
        })
    }

    /// Who connected from `peer` to our `local` address: the owner of the
    /// client socket when it is on this host ([`super::peer::local_owner`]);
    /// [`Client::Local`] when it is not found but the address is this
    /// host's (a site's code can bind any of them); else the address.
    pub fn of(peer: SocketAddr, local: SocketAddr) -> Client {
        match super::peer::local_owner(peer, local) {
            Some(uid) => Client::LocalUser(uid),
            None if on_this_host(peer.ip(), local.ip()) => Client::Local,
            None => Client::remote(peer.ip()),
        }
    }

    pub fn is_local(&self) -> bool {
        !matches!(self, Client::Remote(_))
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Remote(ip) => write!(f, "{ip}"),
            Client::LocalUser(uid) => write!(f, "local uid {uid}"),
            Client::Local => f.write_str("local, owner unknown"),
        }
    }
}

/// Whether a connection from `peer`, counted as `who`, is a trusted proxy
/// (exempt from `max_connections_per_ip`, its `X-Forwarded-*` believed):
/// its address is in `trusted_proxies` and, on this host, its socket
/// belongs to root or to one of `trusted_proxy_users`, and to no user that
/// runs a site's code. Local trust is an allowlist: a connection of any
/// other local user (a site, which can bind any loopback address, a local
/// proxy's too; a shell user; cron; a removed site's last processes) or of
/// an owner not found is not trusted.
pub fn is_trusted_proxy(
    front: &FrontConfig,
    table: &RoutingTable,
    peer: SocketAddr,
    who: Client,
) -> bool {
    if !front.is_trusted_proxy(peer.ip()) {
        return false;
    }
    match who {
        Client::Remote(_) => true,
        Client::LocalUser(uid) if table.is_site_user(uid) => false,
        Client::LocalUser(uid) => {
            let trusted = front.is_trusted_proxy_user(uid);
            if !trusted {
                static UNLISTED: LazyLock<Throttle> = LazyLock::new(Throttle::new);
                // By uid: a user name lookup (NSS, perhaps LDAP) could
                // block the accepting thread.
                if let Some(left_out) = UNLISTED.allow() {
                    tracing::warn!(client = %peer, uid, also_seen = left_out, "a connection from a trusted_proxies address by a local user not in trusted_proxy_users: not trusted (its X-Forwarded-* headers are replaced, it counts as one client); if it is your front proxy, add its user (getent passwd UID) to trusted_proxy_users");
                }
            }
            trusted
        }
        Client::Local => false,
    }
}

/// Whether `peer` is an address of this host: loopback (127/8, ::1, in
/// either spelling), the address it connected to, or one of the host's own.
fn on_this_host(peer: IpAddr, local: IpAddr) -> bool {
    let peer = super::peer::canonical(peer);
    peer.is_loopback() || peer == super::peer::canonical(local) || super::peer::is_own_address(peer)
}

/// Counts open connections, in total and per [`Client`].
pub struct ConnLimiter {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<Client, usize>>,
}

impl ConnLimiter {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(ConnLimiter {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `client`; `exempt_per_client` for trusted
    /// proxies, which carry many clients' connections.
    pub fn try_acquire(
        self: &Arc<Self>,
        client: Client,
        exempt_per_client: bool,
    ) -> Result<ConnPermit, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_client.entry(client).or_insert(0);
        if *n >= self.max_per_client && !exempt_per_client {
            if *n == 0 {
                per_client.remove(&client);
            }
            drop(per_client);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            client,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// The most connections admitted in total.
    pub fn max_total(&self) -> usize {
        self.max_total
    }
}

/// One admitted connection; released on drop.
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    client: Client,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_client = self
            .limiter
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
        drop(per_client);
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Client {
        Client::remote(s.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let l = ConnLimiter::new(100, 2);
        let _p1 = l.try_acquire(ip("2001:db8:1:2::1"), false).unwrap();
        let _p2 = l.try_acquire(ip("2001:db8:1:2:ffff::9"), false).unwrap();
        assert_eq!(
            l.try_acquire(ip("2001:db8:1:2::77"), false).err(),
            Some(Refusal::PerIp)
        );
        assert!(
            l.try_acquire(ip("2001:db8:1:3::1"), false).is_ok(),
            "another /64 is another client"
        );
        assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
    }

    #[test]
    fn limiter_counts_total_and_per_client() {
        let l = ConnLimiter::new(3, 2);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let p1 = l.try_acquire(a, false).unwrap();
        let _p2 = l.try_acquire(a, false).unwrap();
        assert_eq!(l.try_acquire(a, false).err(), Some(Refusal::PerIp));
        let _p3 = l.try_acquire(b, false).unwrap();
        assert_eq!(l.try_acquire(b, false).err(), Some(Refusal::Total));
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.try_acquire(ip("::ffff:192.0.2.1"), false).unwrap();
        assert_eq!(l.try_acquire(a, true).err(), Some(Refusal::Total));
    }

    #[test]
    fn exempt_peers_skip_the_per_client_limit() {
        let l = ConnLimiter::new(10, 1);
        let a = ip("10.0.0.1");
        let _p = l.try_acquire(a, true).unwrap();
        let _q = l.try_acquire(a, true).unwrap();
        assert!(l.try_acquire(a, false).is_err());
    }

    #[tokio::test]
    async fn local_clients_are_counted_by_their_user_whatever_their_address() {
        use std::net::SocketAddr;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        for src in ["127.0.0.1", "127.3.4.5", "127.200.0.9"] {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(src.parse().unwrap(), 0))
                .unwrap();
            let _client = socket.connect(server).await.unwrap();
            let (_accepted, peer) = listener.accept().await.unwrap();
            assert_eq!(Client::of(peer, server), Client::LocalUser(me), "{src}");
        }
        // An IPv6 socket connected to the IPv4 listener: the kernel reports
        // it as AF_INET6 with IPv4-mapped addresses.
        let socket = tokio::net::TcpSocket::new_v6().unwrap();
        socket
            .bind("[::ffff:127.0.0.2]:0".parse().unwrap())
            .unwrap();
        let mapped_server: SocketAddr = format!("[::ffff:127.0.0.1]:{}", server.port())
            .parse()
            .unwrap();
        let _client = socket.connect(mapped_server).await.unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        assert_eq!(
            Client::of(peer, server),
            Client::LocalUser(me),
            "IPv6 socket, IPv4-mapped"
        );
        let v6 = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let v6_server = v6.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(v6_server).await.unwrap();
        let (_accepted, peer) = v6.accept().await.unwrap();
        assert_eq!(Client::of(peer, v6_server), Client::LocalUser(me), "::1");
        let gone: SocketAddr = "127.9.9.9:1".parse().unwrap();
        assert_eq!(
            Client::of(gone, server),
            Client::Local,
            "loopback, owner unknown"
        );
        let remote: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        assert_eq!(Client::of(remote, server), ip("198.51.100.7"));
    }

    /// One of this host's own addresses that is not loopback, if it has one.
    fn own_address() -> Option<IpAddr> {
        nix::ifaddrs::getifaddrs()
            .unwrap()
            .filter_map(|i| i.address?.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())))
            .find(|a| !a.is_loopback())
    }

    #[tokio::test]
    async fn a_client_on_this_host_without_an_owner_is_local_never_remote() {
        use std::net::SocketAddr;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let mut sources = vec![IpAddr::from([127, 0, 0, 9])];
        sources.extend(own_address());
        for src in sources {
            // Sends and closes before the accept: no process holds its
            // socket when the router asks.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(src, 0)).unwrap();
            let mut client = socket.connect(server).await.unwrap();
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            drop(client);
            let (_accepted, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), src);
            assert_eq!(Client::of(peer, server), Client::Local, "from {src}");
        }
        let own = own_address().expect("this test needs a non-loopback IPv4 address on the host");
        assert!(super::super::peer::is_own_address(own));
        let mapped = match own {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        assert!(super::super::peer::is_own_address(mapped), "{mapped}");
        assert!(!super::super::peer::is_own_address(
            "198.51.100.7".parse().unwrap()
        ));
    }
}
