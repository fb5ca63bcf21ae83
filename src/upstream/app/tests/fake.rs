//! The fake app the tests talk to: scripted bytes per request on a Unix
//! socket or a loopback port, and a real (hyper) echo server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

/// What the fake app does with one request.
#[derive(Clone)]
pub(super) enum Answer {
    /// Writes these bytes and reads the next request on the connection.
    Reply(&'static [u8]),
    /// Writes these bytes, then closes the connection.
    ReplyAndClose(&'static [u8]),
    /// Closes the connection without a byte (an app closing an idle
    /// keep-alive connection as the request arrives).
    Close,
    /// Never answers (the connection stays open).
    Hang,
    /// Answers once the gate opens.
    ReplyWhenOpen(watch::Receiver<bool>, &'static [u8]),
    /// Writes these bytes, then closes the connection once the gate opens
    /// (an app closing an idle keep-alive connection).
    ReplyThenCloseWhenOpen(watch::Receiver<bool>, &'static [u8]),
    /// Writes these bytes (a `101` head and what follows it), then echoes
    /// whatever comes.
    Upgrade(&'static [u8]),
}

/// A request as the fake app read it.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) head: String,
    pub(super) body: Vec<u8>,
}

impl Seen {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

#[derive(Default)]
pub(super) struct AppLog {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Connections that ended (the upstream closed them, or the script).
    closed: AtomicUsize,
}

type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

pub(super) struct FakeApp {
    pub(super) socket: PathBuf,
    pub(super) tcp: Option<std::net::SocketAddr>,
    pub(super) log: Arc<AppLog>,
    pub(super) _dir: tempfile::TempDir,
}

impl FakeApp {
    /// Listens on a fresh Unix socket; `script(n)` answers the n-th request
    /// (from 0, over all connections).
    pub(super) fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> FakeApp {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("app.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (log, serve) = server(script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serve(stream);
            }
        });
        FakeApp {
            socket,
            tcp: None,
            log,
            _dir: dir,
        }
    }

    /// The same on a loopback port (`listen = "port"`).
    pub(super) async fn start_tcp(
        script: impl Fn(usize) -> Answer + Send + Sync + 'static,
    ) -> FakeApp {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (log, serve) = server(script);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serve(stream);
            }
        });
        FakeApp {
            socket: dir.path().join("unused.sock"),
            tcp: Some(addr),
            log,
            _dir: dir,
        }
    }

    pub(super) fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    pub(super) fn closed(&self) -> usize {
        self.log.closed.load(Ordering::SeqCst)
    }

    /// The requests it read so far.
    pub(super) fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }
}

/// The log, and what serves one accepted connection.
fn server<S>(
    script: impl Fn(usize) -> Answer + Send + Sync + 'static,
) -> (Arc<AppLog>, impl Fn(S) + Send + 'static)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let log = Arc::new(AppLog::default());
    let script: Script = Arc::new(script);
    let served = Arc::new(AtomicUsize::new(0));
    let accept_log = log.clone();
    let serve = move |stream: S| {
        accept_log.connections.fetch_add(1, Ordering::SeqCst);
        let (log, script, served) = (accept_log.clone(), script.clone(), served.clone());
        tokio::spawn(async move {
            serve_connection(stream, &log, &script, &served).await;
            log.closed.fetch_add(1, Ordering::SeqCst);
        });
    };
    (log, serve)
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    log: &AppLog,
    script: &Script,
    served: &AtomicUsize,
) {
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buf).await {
        log.seen.lock().unwrap().push(seen);
        let (bytes, close) = match script(served.fetch_add(1, Ordering::SeqCst)) {
            Answer::Reply(bytes) => (bytes, false),
            Answer::ReplyAndClose(bytes) => (bytes, true),
            Answer::Close => return,
            Answer::Hang => {
                let _ = stream.read(&mut [0u8; 1]).await; // until the router closes
                return;
            }
            Answer::ReplyWhenOpen(mut gate, bytes) => {
                let _ = gate.wait_for(|open| *open).await;
                (bytes, false)
            }
            Answer::ReplyThenCloseWhenOpen(mut gate, bytes) => {
                if stream.write_all(bytes).await.is_ok() {
                    let _ = gate.wait_for(|open| *open).await;
                }
                return;
            }
            Answer::Upgrade(bytes) => {
                if stream.write_all(bytes).await.is_ok() {
                    echo(&mut stream).await;
                }
                return;
            }
        };
        if stream.write_all(bytes).await.is_err() || close {
            return;
        }
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let mut chunk = [0u8; 1024];
    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
        if stream.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and `content-length` body); `None` once the
/// upstream closed the connection.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Seen> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
    let mut seen = Seen { head, body: vec![] };
    let len: usize = seen
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while buf.len() < len {
        fill(stream, buf).await?;
    }
    seen.body = buf.drain(..len).collect();
    Some(seen)
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 64 << 10];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

pub(super) const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A real HTTP server (hyper's) that echoes a POST's body, counting its
/// connections.
pub(super) fn echo_server(listener: UnixListener) -> Arc<AtomicUsize> {
    use hyper::service::service_fn;
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let echo = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let bytes = req.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(bytes)))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), echo),
            );
        }
    });
    connections
}
