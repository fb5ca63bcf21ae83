//! Why an upstream could not answer, classified by who failed, and the one
//! place that turns that into an HTTP status ([`UpstreamError::status`]).
//!
//! Invariants:
//! - Every [`UpstreamError`] has one [`Fault`]: the client, the site (its
//!   process or application), polyhost itself, or the site's configuration.
//!   A client fault is a 4xx; every other fault is a 5xx; a site process
//!   that broke its connection or answered garbage is a 502, never a 500.
//! - No `std::io::Error` becomes an [`UpstreamError`] by `?`: an I/O error
//!   says nothing about whose I/O it was, so each caller names the fault
//!   (a runtime's socket: [`UpstreamError::BadGateway`]; polyhost's own
//!   files: [`UpstreamError::LocalIo`]).
//! - A request body the router cut ([`BodyError`], made by
//!   `router::service::LimitedBody`) is recognised by its type wherever the
//!   body is read ([`UpstreamError::from_body`]), never by its message.

use std::time::Duration;

use http::StatusCode;

use super::BoxError;
use crate::docroot::ResolveError;

/// Who failed, which decides the class of the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client asked for something it may not have, sent something
    /// malformed or too large, or stopped sending: 4xx.
    Client,
    /// The site's process or application: it is unavailable, busy, slow,
    /// broke its connection or its protocol, or failed to load: 5xx
    /// (503, 504, 502; 500 for the application's own failure).
    Site,
    /// polyhost itself (a bug, its own files, the host's file system): 500.
    Polyhost,
    /// The site's configuration does not hold on this host (its document
    /// root cannot be opened): 500.
    Config,
}

/// Why an upstream could not produce a response, grouped by [`Fault`].
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    // --- the client (Fault::Client) ---
    /// The client asked for something it may not have (traversal, dotfile, ...).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Nothing there.
    #[error("not found")]
    NotFound,
    /// The method is not allowed for this resource.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body was larger than the site allows.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client sent something malformed, or broke off its request body.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client stopped sending the request body (`limits.body_timeout`).
    #[error("request body timed out after {0:?}")]
    RequestTimeout(Duration),
    /// The client went away while the response was being made: nobody
    /// receives this answer; it ends the work done for it.
    #[error("the client went away")]
    ClientGone,

    // --- the site's process or application (Fault::Site) ---
    /// The site's runtime is not available (starting failed, crash loop, stopped).
    #[error("site unavailable: {0}")]
    Unavailable(String),
    /// The request waited too long for a free worker.
    #[error("queue timeout after {0:?}")]
    QueueTimeout(Duration),
    /// The runtime did not answer in time.
    #[error("upstream timeout after {0:?}")]
    Timeout(Duration),
    /// The runtime broke the connection or answered garbage.
    #[error("bad gateway: {0}")]
    BadGateway(String),
    /// The site's application is broken (e.g. its WSGI app fails to import):
    /// the site owner's fault, answered like an application exception.
    #[error("application error: {0}")]
    AppFailed(String),

    // --- polyhost itself (Fault::Polyhost) ---
    /// Our own fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// polyhost's own I/O failed: a spool file, the file system under a
    /// document root (never a runtime's socket: that is `BadGateway`).
    #[error("i/o error: {0}")]
    LocalIo(#[source] std::io::Error),

    // --- the site's configuration (Fault::Config) ---
    /// The site's configuration does not hold on this host.
    #[error("site misconfigured: {0}")]
    Misconfigured(String),
}

impl UpstreamError {
    /// Who failed.
    pub fn fault(&self) -> Fault {
        use UpstreamError::*;
        match self {
            Forbidden(_)
            | NotFound
            | MethodNotAllowed
            | BodyTooLarge { .. }
            | BadRequest(_)
            | RequestTimeout(_)
            | ClientGone => Fault::Client,
            Unavailable(_) | QueueTimeout(_) | Timeout(_) | BadGateway(_) | AppFailed(_) => {
                Fault::Site
            }
            Internal(_) | LocalIo(_) => Fault::Polyhost,
            Misconfigured(_) => Fault::Config,
        }
    }

    /// The one place that maps an upstream failure to an HTTP status: by
    /// who failed, then by what failed.
    pub fn status(&self) -> StatusCode {
        use UpstreamError::*;
        match (self.fault(), self) {
            (Fault::Polyhost | Fault::Config, _) => StatusCode::INTERNAL_SERVER_ERROR,
            (_, Forbidden(_)) => StatusCode::FORBIDDEN,
            (_, NotFound) => StatusCode::NOT_FOUND,
            (_, MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            (_, BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            (_, RequestTimeout(_)) => StatusCode::REQUEST_TIMEOUT,
            (Fault::Client, _) => StatusCode::BAD_REQUEST,
            (_, Unavailable(_) | QueueTimeout(_)) => StatusCode::SERVICE_UNAVAILABLE,
            (_, Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            (_, AppFailed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            (Fault::Site, _) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A request body's read error, by type: the router's [`BodyError`]
    /// keeps its meaning (413, 408), and so does the overrun of a bare
    /// `http_body_util::Limited` at `limit` (the layer the router's body is
    /// made of); anything else is the client breaking off or sending a
    /// malformed body (400).
    pub fn from_body(e: BoxError, limit: u64) -> UpstreamError {
        if let Some(cut) = e.downcast_ref::<BodyError>() {
            return (*cut).into();
        }
        if e.is::<http_body_util::LengthLimitError>() {
            return UpstreamError::BodyTooLarge { limit };
        }
        UpstreamError::BadRequest(format!("reading the request body failed: {e}"))
    }
}

/// Why the router cut a request body. `router::service::LimitedBody` puts it
/// in the body's error; upstreams recognise it with
/// [`UpstreamError::from_body`], and the router answers with it whatever
/// error the upstream made of the cut body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// More than `limits.body` bytes.
    #[error("request body larger than {limit} bytes (limits.body)")]
    TooLarge { limit: u64 },
    /// No bytes for this long (`limits.body_timeout`, or the runtime's
    /// shorter `request_timeout`).
    #[error("request body: no data within {0:?}")]
    Stalled(Duration),
}

impl From<BodyError> for UpstreamError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => UpstreamError::BodyTooLarge { limit },
            BodyError::Stalled(after) => UpstreamError::RequestTimeout(after),
        }
    }
}

/// A document root's verdict on a request path ([`crate::docroot::Refusal::verdict`])
/// or its file system's failure.
impl From<ResolveError> for UpstreamError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::BadRequest(why) => UpstreamError::BadRequest(why.to_owned()),
            ResolveError::Forbidden(why) => UpstreamError::Forbidden(why.to_owned()),
            ResolveError::NotFound => UpstreamError::NotFound,
            ResolveError::Io(e) => UpstreamError::LocalIo(e),
            ResolveError::Root(e) => UpstreamError::Misconfigured(e.to_string()),
        }
    }
}

/// A runtime that gave no lease (see `supervisor::lease`) answers 503, or
/// 500 when the site's application itself is broken. The one place a
/// lease failure becomes an upstream error.
impl From<crate::supervisor::LeaseError> for UpstreamError {
    fn from(e: crate::supervisor::LeaseError) -> Self {
        use crate::supervisor::LeaseError;
        match e {
            LeaseError::AppBroken { .. } => UpstreamError::AppFailed(e.to_string()),
            LeaseError::Stopped { .. }
            | LeaseError::Failed { .. }
            | LeaseError::StartTimedOut { .. } => UpstreamError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<UpstreamError> {
        use UpstreamError::*;
        let d = Duration::from_secs(1);
        vec![
            Forbidden("x".into()),
            NotFound,
            MethodNotAllowed,
            BodyTooLarge { limit: 1 },
            BadRequest("x".into()),
            RequestTimeout(d),
            ClientGone,
            Unavailable("x".into()),
            QueueTimeout(d),
            Timeout(d),
            BadGateway("x".into()),
            AppFailed("x".into()),
            Internal("x".into()),
            LocalIo(std::io::Error::other("x")),
            Misconfigured("x".into()),
        ]
    }

    #[test]
    fn the_client_gets_4xx_and_every_other_fault_5xx() {
        for e in every_kind() {
            let status = e.status();
            match e.fault() {
                Fault::Client => assert!(status.is_client_error(), "{e:?}: {status}"),
                Fault::Site => assert!(status.is_server_error(), "{e:?}: {status}"),
                Fault::Polyhost | Fault::Config => {
                    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{e:?}")
                }
            }
        }
    }

    #[test]
    fn statuses_by_kind() {
        let got: Vec<u16> = every_kind().iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(
            got,
            [403, 404, 405, 413, 400, 408, 400, 503, 503, 504, 502, 500, 500, 500, 500]
        );
    }

    #[tokio::test]
    async fn a_cut_body_is_known_by_its_type() {
        use http_body_util::BodyExt;
        let cut = |e: BodyError| UpstreamError::from_body(Box::new(e), 9).status().as_u16();
        assert_eq!(cut(BodyError::TooLarge { limit: 5 }), 413);
        assert_eq!(cut(BodyError::Stalled(Duration::from_secs(1))), 408);
        let overrun = http_body_util::Limited::new(http_body_util::Full::new(&b"abc"[..]), 1)
            .frame()
            .await
            .unwrap()
            .unwrap_err();
        let bare = UpstreamError::from_body(overrun, 9);
        assert!(
            matches!(bare, UpstreamError::BodyTooLarge { limit: 9 }),
            "{bare:?}"
        );
        let other = UpstreamError::from_body("connection reset".into(), 9);
        assert_eq!(other.status().as_u16(), 400);
        // A message that looks like a limit is still the client's broken body.
        let lookalike = UpstreamError::from_body("length limit exceeded".into(), 9);
        assert!(matches!(lookalike, UpstreamError::BadRequest(_)));
    }
}
