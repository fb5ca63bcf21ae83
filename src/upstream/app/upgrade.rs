//! A WebSocket upgrade to an app instance: the client's `GET` with its
//! upgrade headers goes on a new connection (never a pooled one, never
//! pooled afterwards); a `101` makes that connection (with the bytes read
//! past the head) a [`Tunnel`] the router relays, holding the request's
//! lease and admission place until it ends. Any other answer is relayed as
//! a response, and the connection closed after it. The handshake's checks
//! and all framing are the app's.

use http::{Response, StatusCode};

use super::body::Done;
use super::h1::ResponseHead;
use super::pool::Conn;
use super::AppUpstream;
use crate::supervisor::RuntimeLease;
use crate::upstream::admission::Permit;
use crate::upstream::{ResponseBody, Tunnel, TunnelSlot};

impl AppUpstream {
    /// The answer to an upgrade request; a `101` carries the connection as
    /// a [`TunnelSlot`] extension.
    pub(super) fn upgraded(
        &self,
        response: ResponseHead,
        conn: Conn,
        lease: RuntimeLease,
        permit: Permit,
    ) -> Response<ResponseBody> {
        if response.parts.status != StatusCode::SWITCHING_PROTOCOLS {
            let done = Done {
                conn,
                keep: false,
                lease,
                permit,
                pool: self.pool.clone(),
            };
            return self.relay(response, done);
        }
        // The connection no longer counts as one of the instance's.
        let (stream, read_ahead) = conn.link.into_tunnel();
        let mut parts = response.parts;
        crate::upstream::hop::strip_hop_by_hop(&mut parts.headers);
        parts.extensions.insert(TunnelSlot::new(Tunnel {
            stream: Box::new(stream),
            read_ahead,
            hold: Box::new((lease, permit)),
        }));
        Response::from_parts(parts, crate::upstream::empty_body())
    }
}
