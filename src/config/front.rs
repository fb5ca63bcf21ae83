//! The router's front door, server-wide: TLS listeners, h2c, trusted proxies
//! and the connection/request limits of the server-level `[limits]` table
//! (`RawFront` → [`FrontConfig`]). A site's own TLS keys live in `config::tls`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use polyhost_protocol::limits::{MAX_CLIENT_FIELDS, MAX_CLIENT_HEAD};
use serde::Deserialize;

use super::error::FileErrors;
use super::types::{parse_count, parse_duration, parse_size, Scalar};

/// Server-level keys of `polyhost.toml` that shape the front door.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrontConfig {
    /// TLS listen addresses (`tls_listen`); empty: no TLS.
    pub tls_listen: Vec<SocketAddr>,
    /// Cleartext HTTP/2 (prior knowledge) on the plain listeners.
    pub h2c: bool,
    /// Threads serving client connections (`router_threads`); `None`: one per CPU.
    pub router_threads: Option<usize>,
    /// Peers whose `X-Forwarded-*` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpCidr>,
    /// Local users (uids, besides root) whose connections from a
    /// `trusted_proxies` address are trusted proxies (`trusted_proxy_users`).
    pub trusted_proxy_users: Vec<u32>,
    pub limits: ServerLimits,
}

impl FrontConfig {
    /// Whether `peer` is one of the configured trusted proxies.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(peer))
    }

    /// Whether a socket of local user `uid` may be a trusted proxy: root or
    /// one of `trusted_proxy_users`.
    pub fn is_trusted_proxy_user(&self, uid: u32) -> bool {
        uid == 0 || self.trusted_proxy_users.contains(&uid)
    }
}

/// Server-wide limits (`[limits]` in `polyhost.toml`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerLimits {
    /// Time from a connection's first byte of a request head (or from accept,
    /// or the TLS handshake) to the complete head; then the connection is closed.
    pub header_timeout: Duration,
    /// An idle keep-alive connection (no request in flight) is closed after this.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next bytes of a request body an upstream reads.
    pub body_timeout: Duration,
    /// Longest time a client may take none of a response (it stopped reading).
    pub send_timeout: Duration,
    /// Largest request head (request line + headers), bytes.
    pub max_header_size: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Longest request target (path + query), bytes.
    pub max_uri_length: usize,
    /// Most open client connections in total.
    pub max_connections: usize,
    /// Most open connections from one client IP address.
    pub max_connections_per_ip: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    pub h2_max_streams: u32,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 << 10;
/// hyper's HTTP/1 reader cannot go below this.
const MIN_HEADER_SIZE: usize = 8 << 10;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_headers: 100,
            max_uri_length: 8192,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            h2_max_streams: 128,
        }
    }
}

/// An IP address or network (`"10.0.0.0/8"`, `"::1"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    pub fn parse(s: &str) -> Result<IpCidr, String> {
        let bad = || {
            format!("{s:?} is not an IP address or network (e.g. \"10.0.0.1\", \"10.0.0.0/8\", \"::1\")")
        };
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpCidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// More router threads than this is a typo, not a machine.
const MAX_ROUTER_THREADS: u64 = 1024;

/// The front-door keys as written in `polyhost.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerLimits {
    pub header_timeout: Option<Scalar>,
    pub keepalive_timeout: Option<Scalar>,
    pub body_timeout: Option<Scalar>,
    pub send_timeout: Option<Scalar>,
    pub max_header_size: Option<Scalar>,
    pub max_headers: Option<Scalar>,
    pub max_uri_length: Option<Scalar>,
    pub max_connections: Option<Scalar>,
    pub max_connections_per_ip: Option<Scalar>,
    pub h2_max_streams: Option<Scalar>,
}

pub(crate) fn validate_front(
    tls_listen: Option<Vec<String>>,
    h2c: Option<bool>,
    router_threads: Option<Scalar>,
    trusted_proxies: Option<Vec<String>>,
    trusted_proxy_users: Option<Vec<String>>,
    limits: Option<RawServerLimits>,
    errs: &mut FileErrors<'_>,
) -> FrontConfig {
    let mut front = FrontConfig {
        h2c: h2c.unwrap_or(false),
        router_threads: router_threads
            .and_then(|v| errs.check("router_threads", parse_count(&v, 1, MAX_ROUTER_THREADS)))
            .map(|n| n as usize),
        ..FrontConfig::default()
    };
    for (i, addr) in tls_listen.unwrap_or_default().iter().enumerate() {
        match addr.parse::<SocketAddr>() {
            Ok(a) => front.tls_listen.push(a),
            Err(_) => errs.add(
                &format!("tls_listen[{i}]"),
                format!("{addr:?} is not an address:port (e.g. \"0.0.0.0:443\" or \"[::]:443\")"),
            ),
        }
    }
    for (i, p) in trusted_proxies.unwrap_or_default().iter().enumerate() {
        if let Some(c) = errs.check(&format!("trusted_proxies[{i}]"), IpCidr::parse(p)) {
            front.trusted_proxies.push(c);
        }
    }
    for (i, name) in trusted_proxy_users.unwrap_or_default().iter().enumerate() {
        if let Some(uid) = errs.check(&format!("trusted_proxy_users[{i}]"), user_id(name)) {
            front.trusted_proxy_users.push(uid);
        }
    }
    let raw = limits.unwrap_or_default();
    let l = &mut front.limits;
    let mut dur = |key: &str, v: Option<Scalar>, into: &mut Duration| {
        if let Some(d) =
            v.and_then(|v| errs.check(key, parse_duration(&v).and_then(nonzero_duration)))
        {
            *into = d;
        }
    };
    dur(
        "limits.header_timeout",
        raw.header_timeout,
        &mut l.header_timeout,
    );
    dur(
        "limits.keepalive_timeout",
        raw.keepalive_timeout,
        &mut l.keepalive_timeout,
    );
    dur("limits.body_timeout", raw.body_timeout, &mut l.body_timeout);
    dur("limits.send_timeout", raw.send_timeout, &mut l.send_timeout);
    let count = |errs: &mut FileErrors<'_>, key: &str, v: Option<Scalar>, min, max| {
        v.and_then(|v| errs.check(key, parse_count(&v, min, max)))
    };
    if let Some(v) = raw.max_header_size.and_then(|v| {
        errs.check(
            "limits.max_header_size",
            parse_size(&v).and_then(|n| {
                if (MIN_HEADER_SIZE as u64..=MAX_CLIENT_HEAD as u64).contains(&n) {
                    Ok(n as usize)
                } else {
                    Err(format!("{v} is outside 8K..1M"))
                }
            }),
        )
    }) {
        l.max_header_size = v;
    }
    if let Some(v) = count(
        errs,
        "limits.max_headers",
        raw.max_headers,
        8,
        MAX_CLIENT_FIELDS as u64,
    ) {
        l.max_headers = v as usize;
    }
    if let Some(v) = count(
        errs,
        "limits.max_uri_length",
        raw.max_uri_length,
        256,
        1 << 20,
    ) {
        l.max_uri_length = v as usize;
    }
    if let Some(v) = count(
        errs,
        "limits.max_connections",
        raw.max_connections,
        1,
        10_000_000,
    ) {
        l.max_connections = v as usize;
    }
    if let Some(v) = count(
        errs,
        "limits.max_connections_per_ip",
        raw.max_connections_per_ip,
        1,
        10_000_000,
    ) {
        l.max_connections_per_ip = v as usize;
    }
    if let Some(v) = count(errs, "limits.h2_max_streams", raw.h2_max_streams, 1, 10_000) {
        l.h2_max_streams = v as u32;
    }
    front
}

/// The uid of the user `name` on this host.
fn user_id(name: &str) -> Result<u32, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!(
            "{name:?} is not a user on this host (the user a local HAProxy or nginx runs as, e.g. \"haproxy\" or \"www-data\")"
        )),
        Err(e) => Err(format!("cannot look up the user {name:?}: {e}")),
    }
}

fn nonzero_duration(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be longer than 0s".into())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = IpCidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        let one = IpCidr::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let any = IpCidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let v6 = IpCidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "x", "10.0.0.0/"] {
            assert!(IpCidr::parse(bad).is_err(), "{bad}");
        }
    }
}
