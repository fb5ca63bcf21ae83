//! Test harness: starts the real `polyhost-python` binary on a temp socket,
//! waits until the socket is connectable (retrying, never sleeping a fixed
//! time), and speaks HTTP/1.1 to it with hyper's client connection API, or
//! byte by byte ([`RawConn`]) where the exact wire matters.
#![allow(dead_code)]

pub mod ws;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

pub type ClientBody = BoxBody<Bytes, Infallible>;

pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

pub fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).boxed()
}

pub fn empty() -> ClientBody {
    Empty::new().boxed()
}

/// A running worker; killed (and its stderr shown on failure) when dropped.
pub struct Worker {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Worker {
    /// Spawns the worker with `--socket` in a fresh temp dir and `--path tests/apps`.
    pub fn spawn(app: &str, extra: &[&str]) -> Worker {
        Self::spawn_in(tempfile::tempdir().unwrap(), app, extra)
    }

    /// Spawns with the socket at `dir/worker.sock`.
    pub fn spawn_in(dir: tempfile::TempDir, app: &str, extra: &[&str]) -> Worker {
        let socket = dir.path().join("worker.sock");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_polyhost-python"));
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill
        // the worker if the test thread that spawned it dies (no orphans when
        // a test run is killed).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .env_clear()
            .env("MARKER_DIR", dir.path())
            .current_dir(dir.path())
            .arg("--socket")
            .arg(&socket)
            .arg("--app")
            .arg(app)
            .arg("--path")
            .arg(apps_dir())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Worker {
            child,
            dir,
            socket,
            stderr_path,
        }
    }

    /// Spawns and waits until ready.
    pub async fn start(app: &str, extra: &[&str]) -> Worker {
        let mut w = Self::spawn(app, extra);
        w.wait_ready().await;
        w
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "worker exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready after 30 s:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits until the app has written the marker `name`. `within` only
    /// bounds a hang (many times what the event needs), it is no speed goal.
    pub async fn wait_marker(&self, name: &str, within: Duration) -> PathBuf {
        let marker = self.marker(name);
        let appeared = async {
            while !marker.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(within, appeared).await.is_err() {
            panic!("marker {name:?} never appeared:\n{}", self.stderr());
        }
        marker
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Opens a new HTTP/1.1 connection to the worker.
    pub async fn connect(&self) -> SendRequest<ClientBody> {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    /// One request on a new connection.
    pub async fn send(&self, req: Request<ClientBody>) -> Reply {
        let mut sender = self.connect().await;
        send_on(&mut sender, req).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(request("GET", path).body(empty()).unwrap()).await
    }

    /// Fails if the error log shows a validator complaint or a traceback.
    pub fn assert_clean_log(&self) {
        let log = self.stderr();
        for bad in [
            "AssertionError",
            "Warning",
            "Traceback",
            "Exception ignored",
        ] {
            assert!(!log.contains(bad), "stderr mentions {bad}:\n{log}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- worker stderr ---\n{}", self.stderr());
        }
    }
}

pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test")
}

pub async fn send_on(sender: &mut SendRequest<ClientBody>, req: Request<ClientBody>) -> Reply {
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A raw HTTP/1.1 connection, for what a client library would hide:
/// pipelining, partial heads, interim responses, exact framing, EOF.
pub struct RawConn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// A response as read off a [`RawConn`]: the head lowercased, the body decoded.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

const RAW_TIMEOUT: Duration = Duration::from_secs(15);

impl RawConn {
    pub async fn connect(w: &Worker) -> RawConn {
        RawConn {
            stream: UnixStream::connect(&w.socket).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends what the worker may refuse half-way (it answers, then closes).
    pub async fn send_some(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads more bytes into the buffer; false at EOF (or a reset).
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(RAW_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("no answer from the worker")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn take_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "EOF in the middle of a line");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF in the middle of a body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response head (status line and fields, lowercased).
    pub async fn read_head(&mut self) -> (u16, String) {
        let status_line = String::from_utf8(self.take_line().await).unwrap();
        let status = status_line[9..12].parse().unwrap();
        let mut head = status_line.to_ascii_lowercase() + "\r\n";
        loop {
            let line = String::from_utf8(self.take_line().await).unwrap();
            if line.is_empty() {
                return (status, head);
            }
            head.push_str(&line.to_ascii_lowercase());
            head.push_str("\r\n");
        }
    }

    /// Reads one whole response; `head_request`: no body follows.
    pub async fn read_response(&mut self, head_request: bool) -> RawReply {
        let (status, head) = self.read_head().await;
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
        };
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else if field("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let size = String::from_utf8(self.take_line().await).unwrap();
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    assert_eq!(self.take_line().await, b"", "trailers");
                    break body;
                }
                body.extend(self.take(size).await);
                assert_eq!(self.take_line().await, b"", "chunk end");
            }
        } else if let Some(len) = field("content-length") {
            self.take(len.parse().unwrap()).await
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        RawReply { status, head, body }
    }

    /// The raw bytes up to and including `end` (e.g. a chunked body with its trailers).
    pub async fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(end.len()).position(|w| w == end) {
                return self.buf.drain(..i + end.len()).collect();
            }
            assert!(
                self.fill().await,
                "EOF before {end:?}: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// True if the worker closed the connection (nothing more to read).
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// Waits (at most 5 s) until the byte count an app writes to its marker
/// file `counter` has not grown for ten polls in a row (its sends wait on a
/// client that reads nothing) and returns it; fails if it never stops.
pub async fn sends_stalled_at(counter: &Path) -> u64 {
    let (mut last, mut still) = (0u64, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now: u64 = std::fs::read_to_string(counter)
            .unwrap()
            .parse()
            .unwrap_or(0);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 10 {
            return last;
        }
    }
    panic!("the app's sends never stopped ({last} bytes sent)");
}
