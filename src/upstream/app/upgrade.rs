//! A WebSocket upgrade to an app instance: the client's `GET` with its
//! upgrade headers goes on a new connection (never a pooled one, never
//! pooled afterwards); a `101` makes that connection (taken back from hyper,
//! with the bytes hyper read past the head) a [`Tunnel`] the router relays,
//! holding the request's lease and admission place until it ends. Any other
//! answer is relayed as a response, and the connection closed after it.
//! The handshake's checks and all framing are the app's.

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::body::Done;
use super::pool::{Conn, Io};
use super::AppUpstream;
use crate::supervisor::RuntimeLease;
use crate::upstream::admission::Permit;
use crate::upstream::{ResponseBody, Tunnel, TunnelSlot, TunnelStream, UpstreamError};

impl AppUpstream {
    /// The answer to an upgrade request; a `101` carries the connection as
    /// a [`TunnelSlot`] extension.
    pub(super) async fn upgraded(
        &self,
        mut response: Response<Incoming>,
        conn: Conn,
        lease: RuntimeLease,
        permit: Permit,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let done = Done {
                conn: None,
                lease,
                permit,
                pool: self.pool.clone(),
            };
            return Ok(self.relay(response, done));
        }
        let pid = lease.endpoint().pid;
        let on = hyper::upgrade::on(&mut response);
        let upgraded = match tokio::time::timeout(self.request_timeout, on).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => {
                return Err(UpstreamError::BadGateway(format!(
                    "app instance pid {pid} answered 101 but its connection could not be taken over: {e}"
                )))
            }
            Err(_) => return Err(UpstreamError::Timeout(self.request_timeout)),
        };
        drop(conn);
        let (stream, read_ahead): (Box<dyn TunnelStream>, _) = match upgraded.downcast::<Io>() {
            Ok(parts) => (Box::new(parts.io.into_inner().into_inner()), parts.read_buf),
            // Not the stream the pool made (cannot happen): relayed through hyper's wrapper.
            Err(upgraded) => (Box::new(TokioIo::new(upgraded)), bytes::Bytes::new()),
        };
        let (mut parts, _) = response.into_parts();
        crate::upstream::hop::strip_hop_by_hop(&mut parts.headers);
        parts.extensions.insert(TunnelSlot::new(Tunnel {
            stream,
            read_ahead,
            hold: Box::new((lease, permit)),
        }));
        Ok(Response::from_parts(parts, crate::upstream::empty_body()))
    }
}
