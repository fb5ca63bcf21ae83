//! A WebSocket client over a raw Unix socket, frames written by hand
//! (RFC 6455: masked client frames, 7/16/64-bit lengths), for the tests
//! that must see the exact frames.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::Worker;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
pub const TIMEOUT: Duration = Duration::from_secs(15);

pub struct Ws {
    s: UnixStream,
    buf: Vec<u8>,
}

/// One frame as read: (fin, opcode, payload).
pub type Frame = (bool, u8, Vec<u8>);

impl Ws {
    /// Sends the handshake for `path`; returns the connection and the response head.
    pub async fn handshake(w: &Worker, path: &str, extra: &str) -> (Ws, String) {
        let mut s = UnixStream::connect(&w.socket).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut ws = Ws { s, buf: Vec::new() };
        let head = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(ws.buf[..i + 4].to_vec()).unwrap();
                ws.buf.drain(..i + 4);
                break head.to_ascii_lowercase();
            }
            assert!(ws.fill().await, "EOF before the handshake answer");
        };
        (ws, head)
    }

    pub async fn open(w: &Worker, path: &str) -> Ws {
        let (ws, head) = Self::handshake(w, path, "").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains(&format!("sec-websocket-accept: {}", ACCEPT.to_ascii_lowercase())), "{head}");
        ws
    }

    pub async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(TIMEOUT, self.s.read(&mut chunk))
            .await
            .expect("no frame from the worker")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Writes one masked client frame.
    pub async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.s.write_all(&f).await;
    }

    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b1 & 0x80, 0, "server frames are never masked");
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((b0 & 0x80 != 0, b0 & 0x0f, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next close frame's (code, reason), skipping data frames.
    pub async fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.read_frame().await {
                Some((_, 8, p)) => {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    return (code, String::from_utf8_lossy(&p[2..]).into_owned());
                }
                Some(_) => continue,
                None => panic!("connection closed without a close frame"),
            }
        }
    }

    pub async fn closed(&mut self) -> bool {
        self.buf.clear();
        !self.fill().await
    }
}

