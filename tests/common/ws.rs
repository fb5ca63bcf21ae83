//! A WebSocket client over a raw socket for the tests: the opening
//! handshake, and (for tests against the real worker) RFC 6455 frames,
//! masked as a client must. Written by hand rather than taken from a crate:
//! the tests must send what a well-behaved library never would (and read
//! exactly what came), and the opening handshake is a few lines.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client's key (any 16 bytes, base64) and the accept value the worker
/// must answer with: `base64(sha1(key + GUID))`, precomputed.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The opening handshake's request for `path` on `host`.
pub fn upgrade_request(host: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}\r\n\r\n"
    )
}

/// A connection after its upgrade request: the response head, and what
/// came after it so far.
pub struct Upgraded {
    pub stream: TcpStream,
    pub status: u16,
    pub head: String,
    pub rest: Vec<u8>,
}

/// Connects, sends the opening handshake (and `extra` right behind it, in
/// the same write) and reads the response head (bounded: 10 s).
pub async fn open(addr: SocketAddr, host: &str, path: &str, extra: &[u8]) -> Upgraded {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = upgrade_request(host, path).into_bytes();
    out.extend_from_slice(extra);
    stream.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no response head within 10 s; got {buf:?}"))
            .unwrap();
        assert!(
            n > 0,
            "closed before a response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Upgraded {
        stream,
        status,
        head,
        rest: buf[end..].to_vec(),
    }
}

impl Upgraded {
    /// A response header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Reads until `want` bytes have come after the head (bounded: 10 s).
    pub async fn read_exactly(&mut self, want: usize) -> Vec<u8> {
        while self.rest.len() < want {
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!("only {:?} within 10 s", String::from_utf8_lossy(&self.rest))
                })
                .unwrap_or(0);
            assert!(
                n > 0,
                "closed after {:?}",
                String::from_utf8_lossy(&self.rest)
            );
            self.rest.extend_from_slice(&chunk[..n]);
        }
        self.rest.drain(..want).collect()
    }

    /// Reads until the peer closes (bounded by `within`); what came.
    pub async fn read_to_close(&mut self, within: Duration) -> Option<Vec<u8>> {
        let mut all = std::mem::take(&mut self.rest);
        tokio::time::timeout(within, async {
            let mut chunk = [0u8; 65536];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .ok()?;
        Some(all)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends one client frame (FIN set, masked): opcode 1 text, 2 binary,
    /// 8 close, 9 ping.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send(&frame(opcode, payload)).await;
    }

    /// Reads one server frame (unmasked, as a server must send): its opcode
    /// and payload.
    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let head = self.read_exactly(2).await;
        assert_eq!(head[1] & 0x80, 0, "a server frame must not be masked");
        let len = match head[1] & 0x7f {
            126 => u16::from_be_bytes(self.read_exactly(2).await.try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(self.read_exactly(8).await.try_into().unwrap()) as usize,
            n => n as usize,
        };
        (head[0] & 0x0f, self.read_exactly(len).await)
    }
}

/// A masked client frame with FIN set.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An HTTP/2 connection (h2c, prior knowledge) for WebSockets over RFC 8441.
pub struct H2Ws {
    pub sender: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl H2Ws {
    pub async fn connect(addr: SocketAddr) -> H2Ws {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        H2Ws { sender }
    }

    /// An extended CONNECT for a WebSocket at `http://{host}{path}`: the
    /// response. The server's SETTINGS (extended CONNECT enabled) come with
    /// the handshake; a request sent before the client read them is refused
    /// by the client, so it is tried again (bounded: 1 s).
    pub async fn websocket(
        &mut self,
        host: &str,
        path: &str,
    ) -> http::Response<hyper::body::Incoming> {
        for _ in 0..50 {
            let mut req = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(format!("http://{host}{path}"))
                .header("sec-websocket-version", "13")
                .body(http_body_util::Empty::new())
                .unwrap();
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            self.sender.ready().await.unwrap();
            match self.sender.send_request(req).await {
                Ok(resp) => return resp,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("extended CONNECT never accepted by the client: the server did not enable it");
    }
}
