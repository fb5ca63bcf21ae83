//! Upstreams: the things a mounted path hands a request to.
//!
//! PHP (FastCGI to php-fpm), Python (the worker protocol to `polyhost-python`),
//! any HTTP app (`[app]`: an HTTP/1.1 reverse proxy) and static files are
//! peers behind one [`Upstream`] trait. The router picks an upstream by host and longest mount prefix and
//! calls [`Upstream::handle`]; the upstream owns everything after that.
//!
//! Invariant: no hyper type crosses the [`Upstream`] trait; requests and
//! responses are plain `http` types with boxed bodies ([`RequestBody`],
//! [`ResponseBody`]). (`app` uses hyper's *client* connections inside; the
//! server side stays the router's.)

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};

pub use error::{BodyError, Fault, UpstreamError};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
pub use tunnel::{Tunnel, TunnelSlot, TunnelStream, Upgrade};

use crate::config::SiteConfig;
use crate::sendfile::FileQueue;

/// Any error a body stream can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of a request as an upstream receives it.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;
/// Body of a response as an upstream produces it.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Scheme the client used to reach polyhost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the router knows about a request besides the request itself.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The site the request was routed to.
    pub site: Arc<SiteConfig>,
    /// The client's address (the real client once trusted proxies are handled).
    pub client: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    pub scheme: Scheme,
    /// The host name as the client sent it, lower-cased, without port or trailing dot.
    pub host: String,
    /// The mount prefix that matched, without trailing slash ("" for `/`).
    /// Becomes SCRIPT_NAME for Python apps.
    pub mount_prefix: Arc<str>,
    /// The connection's queue of file ranges to send with `sendfile`
    /// (plain HTTP/1 only; see [`crate::sendfile`]).
    pub files: Option<FileQueue>,
}

/// One kind of backend a mount can point at.
pub trait Upstream: Send + Sync + 'static {
    /// Short name for logs and status ("static", "php", "python").
    fn kind(&self) -> &'static str;

    /// How long the upstream lets a request run (its runtime's
    /// `request_timeout`); `None` for upstreams that run no site code. The
    /// router also cuts a request body that stalls longer than this (408),
    /// when it is shorter than `limits.body_timeout`.
    fn request_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether this upstream carries WebSocket upgrades (`tunnel`): the
    /// router then keeps a request's upgrade headers and marks it with
    /// [`Upgrade`]. Every other upstream gets upgrade requests as plain
    /// requests, without their `Connection`/`Upgrade` headers.
    fn tunnels(&self) -> bool {
        false
    }

    /// Produce the response for one request. `ctx.mount_prefix` is the mount
    /// that matched, and the request's path starts with it: the URI is the
    /// client's, unchanged, or, when only the decoded path starts with the
    /// prefix (`/%61pi/x` at `/api`), that decoded path (`router::mount`).
    fn handle<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>>;

    /// Produce the response for a request whose path another upstream
    /// already decoded and opened beneath the site's document root (PHP's
    /// script resolution, for what it does not execute), so the path is
    /// decoded and opened once. The static upstream answers from `opened`;
    /// any other answers as [`Upstream::handle`] would.
    fn handle_opened<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
        opened: crate::docroot::Opened,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        drop(opened);
        self.handle(req, ctx)
    }
    /// Produce the response for a request whose path another upstream found
    /// to name a small file the static upstream keeps, unchanged
    /// ([`static_files::hot`]). The static upstream answers from `kept`;
    /// any other answers as [`Upstream::handle`] would.
    fn handle_kept<'a>(
        &'a self,
        req: Request<RequestBody>,
        ctx: &'a RequestContext,
        kept: Arc<static_files::hot::Entry>,
    ) -> BoxFuture<'a, Result<Response<ResponseBody>, UpstreamError>> {
        drop(kept);
        self.handle(req, ctx)
    }
    /// The document root this upstream serves from, if it serves files: the
    /// PHP upstream looks static assets up beneath the same kept handle.
    fn docroot(&self) -> Option<&crate::docroot::DocRoot> {
        None
    }
}

/// Connects to a runtime's Unix socket and, when `uid` is given, checks
/// that the process that listens on it runs as that user (`SO_PEERCRED`).
/// Sockets live in root's own directory (`supervisor::sockets`), so no site
/// can swap one for another's; the check is a second line behind that.
pub async fn connect_runtime(
    socket: &std::path::Path,
    uid: Option<u32>,
) -> std::io::Result<tokio::net::UnixStream> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    if let Some(uid) = uid {
        let peer = stream.peer_cred()?.uid();
        if peer != uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is served by uid {peer}, not the site's uid {uid}",
                    socket.display()
                ),
            ));
        }
    }
    Ok(stream)
}

/// Connects to a runtime's loopback port (`[app] listen = "port"`) and,
/// when `uid` is given, checks that the listener that took this very
/// connection is that user's. A loopback port is not private: any local
/// user may bind it once its owner lets it go (a crashed or OOM-killed
/// app's, before its death is noticed; an app that closes its listener),
/// and would then get the site's requests, cookies and all. The readiness
/// check (`supervisor::port::check_owner`) covers the start; this covers
/// every connection after it. The owner is asked of the kernel for the
/// connection's own addresses (`isolation::sock_diag`); where it cannot
/// tell (no sock_diag here, or the handshake's last ACK not yet in), the
/// port's listeners are read from `/proc/net/tcp` instead: read after the
/// connect, so a listener that took it is among them.
pub async fn connect_runtime_tcp(
    addr: std::net::SocketAddr,
    uid: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let Some(uid) = uid else {
        return Ok(stream);
    };
    let (local, server) = (stream.local_addr()?, stream.peer_addr()?);
    let owner = crate::isolation::sock_diag::listener_owner(server, local);
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    match owner {
        Some(owner) if owner == uid => Ok(stream),
        Some(owner) => Err(refused(format!(
            "{addr} is listened on by uid {owner}, not the site's uid {uid}: another local user took the port"
        ))),
        None => crate::supervisor::port::check_owner(addr.port(), uid)
            .map(|()| stream)
            .map_err(refused),
    }
}

/// [`connect_runtime`] for a request whose first bytes are ready in
/// `head`: connects without waiting on the reactor (a Unix socket's
/// `connect(2)` completes at once, or fails at once when the listener's
/// backlog is full, as `connect_runtime`'s does) and writes what the socket
/// takes of `head` before the socket is registered, then removes it from
/// `head`. Registered sockets are writable only once the reactor has said
/// so: `connect_runtime` waits one turn of it for that, which a busy router
/// lane runs only after every task ahead of it, while the php-fpm child
/// that could run the request sits idle.
pub fn connect_runtime_sending(
    socket: &std::path::Path,
    uid: Option<u32>,
    head: &mut bytes::BytesMut,
) -> std::io::Result<tokio::net::UnixStream> {
    use std::io::Write as _;
    let stream = connect_nonblocking(socket)?;
    if let Some(uid) = uid {
        check_peer(&stream, socket, uid)?;
    }
    match (&stream).write(head) {
        Ok(n) => bytes::Buf::advance(head, n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixStream::from_std(stream)
}

/// A non-blocking Unix stream connected to `path`.
fn connect_nonblocking(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    loop {
        match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
            Ok(()) => return Ok(fd.into()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the process listening on `socket` runs as `uid` (`SO_PEERCRED`).
fn check_peer(
    stream: &std::os::unix::net::UnixStream,
    socket: &std::path::Path,
    uid: u32,
) -> std::io::Result<()> {
    let peer =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?.uid();
    if peer != uid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is served by uid {peer}, not the site's uid {uid}",
                socket.display()
            ),
        ));
    }
    Ok(())
}

/// A body with nothing in it.
pub fn empty_body() -> ResponseBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `bytes` whole.
pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short plain-text response, used for errors the router or an upstream answers itself.
pub fn plain_response(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut body = String::with_capacity(text.len() + 1);
    body.push_str(text);
    body.push('\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(full_body(body))
        .expect("static headers are valid")
}
pub mod admission;
pub mod app;
pub mod client_ip;
mod error;
pub mod gate;
pub mod hop;
pub mod php;
pub mod php_source;
pub mod python;
pub mod spool;
pub mod static_files;
#[cfg(test)]
pub(crate) mod tests_support;
pub mod tunnel;

/// Removes the newest of the pooled `entries` that `prefer` picks (one
/// opened on the calling router lane), else the newest of all.
pub(crate) fn take_newest<T>(entries: &mut Vec<T>, prefer: impl Fn(&T) -> bool) -> Option<T> {
    match entries.iter().rposition(prefer) {
        Some(i) => Some(entries.remove(i)),
        None => entries.pop(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_runtime_socket_served_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert!(super::connect_runtime(&path, Some(me)).await.is_ok());
        assert!(super::connect_runtime(&path, None).await.is_ok());
        let err = super::connect_runtime(&path, Some(me + 4242))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("not the site's uid"), "{err}");
    }

    /// The request goes out with the connect; the peer reads it whole, and
    /// the same checks hold as for `connect_runtime`.
    #[tokio::test]
    async fn a_request_is_sent_as_the_socket_connects() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let mut head = bytes::BytesMut::from(&b"a request"[..]);
        let _stream = super::connect_runtime_sending(&path, Some(me), &mut head).unwrap();
        assert!(head.is_empty(), "{} bytes left unsent", head.len());
        let (mut peer, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a request");

        let mut head = bytes::BytesMut::from(&b"not sent"[..]);
        let err = super::connect_runtime_sending(&path, Some(me + 4242), &mut head).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            &head[..],
            b"not sent",
            "nothing goes to a socket of another user"
        );
        drop(listener);
        let err = super::connect_runtime_sending(&dir.path().join("none.sock"), None, &mut head)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
