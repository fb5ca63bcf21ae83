//! A WebSocket upgrade to an ASGI site's worker (`ASGI-CONTRACT`): the
//! client's `GET` with its upgrade headers goes on a new connection (never a
//! pooled one, and never pooled afterwards); a `101` makes that connection a
//! [`Tunnel`] the router relays bytes over, holding the request's lease and
//! admission place until it ends; any other answer (a `403` from an app
//! that closed before accepting, a denial response) is relayed as a normal
//! response.
//!
//! The handshake itself (version, key, `Sec-WebSocket-Accept`) and all
//! framing are the worker's; the router checks only that it answered.

use std::sync::Arc;

use http::Response;

use super::wire::Framing;
use super::{outgoing, pumped, ConnPool, PythonUpstream};
use crate::supervisor::RuntimeLease;
use crate::upstream::admission::Permit;
use crate::upstream::spool::Spooled;
use crate::upstream::{RequestContext, ResponseBody, Tunnel, TunnelSlot, UpstreamError};

impl PythonUpstream {
    /// Sends an upgrade request to the leased worker and returns its answer;
    /// a `101` carries the connection as a [`TunnelSlot`] extension.
    pub(super) async fn upgrade(
        &self,
        parts: &http::request::Parts,
        body: Spooled,
        permit: Permit,
        lease: RuntimeLease,
        ctx: &RequestContext,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let mut conn = self.pool.connect(&lease).await?;
        let mut request = outgoing(parts, body, ctx);
        let exchange = async {
            conn.send(&mut request)
                .await
                .map_err(|e| self.broken(&lease, "broke the connection", e))?;
            conn.read_upgrade_head()
                .await
                .map_err(|e| self.broken(&lease, "broke the connection", e))
        };
        let head = self
            .within_timeout(&lease, "a WebSocket handshake", exchange)
            .await?;
        let mut response = Response::new(());
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        let (mut parts, ()) = response.into_parts();
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let (stream, read_ahead) = conn.into_tunnel();
            parts.extensions.insert(TunnelSlot::new(Tunnel {
                stream: Box::new(stream),
                read_ahead,
                hold: Box::new((lease, permit)),
            }));
            return Ok(Response::from_parts(parts, crate::upstream::empty_body()));
        }
        if matches!(head.framing, Framing::Done) {
            return Ok(Response::from_parts(parts, crate::upstream::empty_body()));
        }
        // Refused (403, or the app's denial response): relayed like any
        // response; the connection is closed after it (a pool of its own
        // that nothing takes from).
        let body = pumped(
            conn,
            head.framing,
            lease,
            permit,
            Arc::new(ConnPool::default()),
        );
        Ok(Response::from_parts(parts, body))
    }
}
