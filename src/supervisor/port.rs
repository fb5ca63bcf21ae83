//! Loopback ports for processes that bind their own TCP listener
//! ([`Listen::Port`](super::Listen::Port), `[app] listen = "port"`): a free
//! port picked per process start, and who listens on it, read from the
//! kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`).
//!
//! A loopback port is not private the way a socket in a root-only
//! directory is: any local user may bind a free port first, or connect to
//! it. So before a process is ready, every listener that takes
//! connections to `127.0.0.1:port` must be the site user's; otherwise
//! another user took the port and the start fails with that reason.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A loopback address whose port is free now: bound, read and closed. Not
/// reserved: the process binds it later, and the ownership check says
/// whether it got it.
pub fn pick_loopback_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// The uids of the listening sockets that accept connections to
/// `127.0.0.1:port` (bound to it, to `0.0.0.0`, to `::` or to
/// `::ffff:127.0.0.1`), from this network namespace's tables.
pub fn loopback_listeners(port: u16) -> Vec<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| listeners_in(&text, port))
        .collect()
}

/// Why `port` is not (only) `uid`'s, if it is not: nobody listens, or
/// another user does.
pub fn check_owner(port: u16, uid: u32) -> Result<(), String> {
    let uids = loopback_listeners(port);
    if uids.is_empty() {
        return Err(format!("nothing listens on 127.0.0.1:{port}"));
    }
    match uids.iter().find(|u| **u != uid) {
        Some(other) => Err(format!(
            "127.0.0.1:{port} is listened on by uid {other}, not the site's uid {uid}: another local user took the port"
        )),
        None => Ok(()),
    }
}

/// Parses one `/proc/net/tcp{,6}` table: the uids of its LISTEN sockets
/// (state `0A`) on `port` whose local address takes loopback connections.
fn listeners_in(table: &str, port: u16) -> Vec<u32> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, uid) = (fields.get(1)?, fields.get(3)?, fields.get(7)?);
            let (addr, p) = local.split_once(':')?;
            let listening = *state == "0A" && u16::from_str_radix(p, 16).ok()? == port;
            (listening && takes_loopback(addr)).then(|| uid.parse().ok())?
        })
        .collect()
}

/// Whether a table's hex local address accepts connections to 127.0.0.1.
fn takes_loopback(addr: &str) -> bool {
    const V4: [&str; 2] = ["0100007F", "00000000"];
    match addr.len() {
        8 => V4.contains(&addr),
        // IPv6 in four host-order 32-bit words: any (::), or v4-mapped
        // (::ffff:a.b.c.d, third word 0000FFFF → "FFFF0000") loopback or any.
        32 => {
            addr.chars().all(|c| c == '0')
                || (addr.starts_with("0000000000000000FFFF0000") && V4.contains(&&addr[24..]))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1002        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1003        0 3 1 0000000000000000 100 0 0 10 0
   3: 0A00000F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1004        0 4 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1005        0 5 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F94 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1006        0 6 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F95 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1007        0 7 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_that_take_loopback_connections_count() {
        let check = |table: &str, port: u16| listeners_in(table, port);
        // 127.0.0.1:8080 listening (the connected one of uid 1003 is not a listener).
        assert_eq!(check(TCP, 0x1F90), [1001]);
        assert_eq!(
            check(TCP, 0x1F91),
            [1002],
            "0.0.0.0 takes loopback connections"
        );
        assert!(check(TCP, 0x1F92).is_empty(), "10.0.0.15 does not");
        assert_eq!(check(TCP6, 0x1F93), [1005], "::");
        assert_eq!(check(TCP6, 0x1F94), [1006], "::ffff:127.0.0.1");
        assert!(check(TCP6, 0x1F95).is_empty(), "::1 is not 127.0.0.1");
    }

    #[test]
    fn a_port_this_process_listens_on_is_its_own() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(check_owner(port, me), Ok(()));
        let err = check_owner(port, me + 1).unwrap_err();
        assert!(err.contains("another local user took the port"), "{err}");
        drop(listener);
        let err = check_owner(port, me).unwrap_err();
        assert!(err.contains("nothing listens"), "{err}");
    }
}
