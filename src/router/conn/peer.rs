//! Who is at the other end of a connection made from this host: the user
//! that owns the client's socket, asked of the kernel
//! (`isolation::sock_diag`) by the connection's four addresses; and
//! whether an address is one of this host's own.
//!
//! Addresses say nothing about a local client: any process may bind any of
//! the 16 million addresses of 127/8 (and the host's own) as its source, so
//! the connection limits count local clients by the user that owns their
//! socket instead (`conn::client::Client`). The question costs one netlink
//! round trip on the accepting thread (about a microsecond).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use crate::isolation::sock_diag::{canonical, check};

/// The uid owning the client end of the TCP connection `client` → `local`,
/// when that end is a socket on this host (in polyhost's network
/// namespace) that a process still holds. `None`: the client is elsewhere,
/// or its socket is already closed, or the kernel could not be asked.
pub fn local_owner(client: SocketAddr, local: SocketAddr) -> Option<u32> {
    crate::isolation::sock_diag::client_owner(client, local)
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
