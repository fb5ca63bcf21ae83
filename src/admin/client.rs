//! The admin API client the CLI uses: one HTTP/1.1 request over the Unix
//! socket. Failures are sorted by what the caller should do: polyhost is
//! not reachable (exit 2), the caller may not use the socket (exit 1), or
//! polyhost answered.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// An answer from polyhost.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach polyhost at {}: is `polyhost serve` running? ({source})", socket.display())]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("permission denied on {}: run this as root or as a member of the [admin] group", socket.display())]
    PermissionDenied { socket: PathBuf },
    #[error("polyhost at {} did not answer within {timeout:?}; it may be busy (a reload waits for new processes to start): check its log", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("polyhost at {} broke off the request: {message}", socket.display())]
    Protocol { socket: PathBuf, message: String },
}

/// Sends `method path` to the API on `socket`.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    call_with_body(socket, method, path, Bytes::new(), timeout).await
}

/// [`call`] with a request body (the cluster endpoints' TOML or JSON).
pub async fn call_with_body(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    match tokio::time::timeout(timeout, call_inner(socket, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            socket: socket.to_path_buf(),
            timeout,
        }),
    }
}

async fn call_inner(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Answer, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| match source.kind() {
            ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                socket: socket.to_path_buf(),
            },
            _ => ClientError::Unreachable {
                socket: socket.to_path_buf(),
                source,
            },
        })?;
    let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol {
        socket: socket.to_path_buf(),
        message: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "polyhost")
        .body(Full::new(body))
        .map_err(|e| protocol(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(&e))?
        .to_bytes();
    Ok(Answer { status, body })
}
