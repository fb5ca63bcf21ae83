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

/// One response as a raw HTTP/1.1 client reads it: framed by its own head
/// (`Content-Length`, chunked, or until close), as a keep-alive client or a
/// pooling proxy would.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, names lower-cased: `("content-length", "2")`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended where its head said (false: the connection closed first).
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw keep-alive HTTP/1.1 connection. Bytes read past one response stay
/// for the next, exactly as a client that trusts the framing keeps them.
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    pub async fn connect(addr: std::net::SocketAddr) -> RawConn {
        RawConn {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            eof: false,
        }
    }

    pub async fn send(&mut self, bytes: &str) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Shuts down the sending side (a FIN): the client sends nothing more
    /// and still reads (`printf ... | nc -N`).
    pub async fn shut_write(&mut self) {
        use tokio::io::AsyncWriteExt;
        self.stream.shutdown().await.unwrap();
    }

    /// Reads more; false at the end of the stream (or a reset). A hang
    /// bound of 10 s, not a speed goal.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 << 10];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.stream.read(&mut chunk),
        )
        .await
        .unwrap_or_else(|_| panic!("nothing for 10 s; have {:?}", self.seen()));
        match read {
            Ok(n) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => {
                self.eof = true;
                false
            }
        }
    }

    /// What was read and not consumed yet, as text.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Whether the server closed the connection with nothing more to read.
    pub async fn closed(&mut self) -> bool {
        while self.fill().await {}
        self.buf.is_empty()
    }

    /// The next response; `None` if the connection ends before a whole head.
    /// `head_request`: the request was HEAD (no body whatever the head says).
    pub async fn response(&mut self, head_request: bool) -> Option<RawResponse> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Some(resp);
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap_or(0);
            while self.buf.len() < len {
                if !self.fill().await {
                    resp.complete = false;
                    resp.body = std::mem::take(&mut self.buf);
                    return Some(resp);
                }
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp.header("transfer-encoding") == Some("chunked") {
            resp.complete = self.read_chunked(&mut resp.body).await;
        } else {
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// A chunked body into `out`; false if the connection ended first.
    async fn read_chunked(&mut self, out: &mut Vec<u8>) -> bool {
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !self.fill().await {
                    return false;
                }
            };
            let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if !self.fill().await {
                    out.append(&mut self.buf);
                    return false;
                }
            }
            out.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return true; // no trailers from polyhost
            }
        }
    }
}
