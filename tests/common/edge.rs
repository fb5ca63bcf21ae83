//! Helpers shared by the tests of polyhost's front door against hostile or
//! malformed clients (`tests/limits.rs`, `tests/proxy.rs`).

use super::{get, TestConfig};

/// The plain static site the front-door tests talk to: `www.test`.
pub fn site(cfg: &TestConfig) {
    cfg.static_site("www", &["www.test"], "");
}

/// A normal client is still served by that site.
pub async fn still_serving(addr: std::net::SocketAddr) {
    let r = get(addr, "www.test", "/").await;
    assert_eq!((r.status, r.text().trim()), (200, "site www"));
}

/// A chunked request with `total` bytes of body in 300-byte chunks.
pub fn chunked(method: &str, host: &str, path: &str, total: usize) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let mut left = total;
    while left > 0 {
        let n = left.min(300);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'b', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
