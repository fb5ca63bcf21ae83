//! What hyper calls for each request of a connection ([`ConnService`]),
//! and where a WebSocket's tunnel goes once hyper let go of it
//! ([`spawn_tunnel`]).
//!
//! Invariants: a request's future is boxed (hyper keeps a slot per
//! connection); an HTTP/2 WebSocket takes a place of its own in the
//! connection limits before it is routed and holds it until its tunnel
//! ends (`503` when none is left); an HTTP/1 tunnel holds the place of its
//! connection instead.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::refusal::refusal_limit;
use super::Shared;
use crate::router::conn::{last_request, Activity, GuardedBody, ReadToEnd, Refusal, RequestGuard};
use crate::router::service::{handle, ConnInfo};
use crate::router::tunnel::{self, AcceptedSlot};
use crate::router::LoggedBody;
use crate::sendfile::FileQueue;

/// What hyper calls for each request of a connection. The request's future
/// is boxed: hyper keeps a slot for it per connection, which would otherwise
/// be as large as the whole request path's state even while idle.
///
/// A WebSocket's `101` carries its tunnel (`router::tunnel::AcceptedSlot`),
/// taken here and left in `handoff` for the connection's task, which, once
/// hyper has sent the `101`, spawns it in a task of its own on the same
/// lane and ends: on the socket hyper hands back (an HTTP/1 connection that
/// parks, `parking::Upgraded`), or on the connection `hyper::upgrade::on`
/// gives (one served by hyper-util's auto builder, h2c: [`spawn_tunnel`]).
#[derive(Clone)]
pub(super) struct ConnService {
    pub(super) conn: ConnInfo,
    pub(super) activity: Arc<Activity>,
    pub(super) shared: Arc<Shared>,
    /// Where a `101` leaves its tunnel for the connection's task to run
    /// (so the tunnel keeps the connection's place in the limits).
    pub(super) handoff: AcceptedSlot,
    /// The connection upgrades by hand (`parking`: hyper's plain HTTP/1
    /// connection hands the socket back); else through hyper's `OnUpgrade`.
    pub(super) manual: bool,
    /// Plain HTTP/1: the queue its file bodies hand ranges to `sendfile` by.
    pub(super) files: Option<FileQueue>,
}

type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<GuardedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, mut req: Request<Incoming>) -> ServiceFuture {
        let guard = self
            .activity
            .request_started(!req.body().is_end_stream(), last_request(&req));
        let on_upgrade = match self.manual {
            false => req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>(),
            true => None,
        };
        let req = req.map(|body| ReadToEnd::new(body, self.activity.clone()));
        let shared = self.shared.clone();
        let (handoff, manual) = (self.handoff.clone(), self.manual);
        let http2 = req.version() == http::Version::HTTP_2;
        // An HTTP/2 WebSocket is a connection of its own to the limits: a
        // client may not hold more tunnels than connections by
        // multiplexing them.
        let stream_place = match http2 && is_extended_connect(&req) {
            false => None,
            true => match self
                .shared
                .limiter
                .try_acquire(self.conn.who, self.conn.trusted)
            {
                Ok(permit) => Some(permit),
                Err(why) => {
                    return Box::pin(std::future::ready(Ok(self.refuse_stream(why, guard))))
                }
            },
        };
        // The router's part now; the future holds only what waits for the
        // upstream (`Routed`).
        let mut routed = handle(
            req,
            self.conn,
            self.files.clone(),
            &self.shared.table.load(),
            &self.shared.options,
        );
        Box::pin(async move {
            let mut resp = routed.respond().await;
            let accepted = resp
                .extensions_mut()
                .remove::<AcceptedSlot>()
                .and_then(|slot| slot.take());
            if let Some((accepted, _)) = accepted {
                match (on_upgrade, http2) {
                    // The connection serves other streams meanwhile.
                    (Some(on_upgrade), true) => {
                        spawn_tunnel(on_upgrade, accepted, &shared, stream_place)
                    }
                    (on_upgrade, _) if manual || on_upgrade.is_some() => {
                        handoff.put((accepted, on_upgrade))
                    }
                    _ => {
                        // Cannot happen (a 101 answers only an HTTP/1.1
                        // upgrade request, which hyper gives an OnUpgrade).
                        resp = crate::upstream::plain_response(
                            http::StatusCode::BAD_GATEWAY,
                            "Bad Gateway",
                        )
                        .map(LoggedBody::plain);
                    }
                }
            }
            if !http2 && shared.stopping.is_raised() {
                close_after(&mut resp);
            }
            Ok(resp.map(|inner| GuardedBody::new(inner, guard)))
        })
    }
}

impl ConnService {
    /// The answer to an HTTP/2 WebSocket beyond the connection limits:
    /// `503`, as a connection beyond them gets, logged at most once a second.
    fn refuse_stream(&self, why: Refusal, guard: RequestGuard) -> Response<GuardedBody> {
        if let Some(left_out) = self.shared.refused_log.allow() {
            tracing::warn!(client = %self.conn.client, counted_as = %self.conn.who, limit = refusal_limit(why), open = self.shared.limiter.open(), also_refused = left_out, "HTTP/2 WebSocket refused: connection limit reached");
        }
        let resp = crate::upstream::plain_response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
        );
        resp.map(|inner| GuardedBody::new(LoggedBody::plain(inner), guard))
    }
}

/// Says the connection closes after this HTTP/1 response (the router
/// stops): hyper then closes it once the response is sent, and the client
/// sends its next request on a new connection (to the next polyhost after
/// an upgrade), never into a connection closing under it. A `101` keeps its
/// `Connection: upgrade`.
fn close_after<B>(resp: &mut Response<B>) {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

/// An HTTP/2 extended CONNECT for a WebSocket (RFC 8441).
fn is_extended_connect<B>(req: &Request<B>) -> bool {
    matches!(
        crate::router::proxy::websocket_ask(req),
        Some(crate::router::proxy::WebSocketAsk::ExtendedConnect)
    )
}

/// Runs a WebSocket's tunnel upgraded by hyper in a task of its own on this
/// lane, once hyper has sent the `101` (or, HTTP/2, RFC 8441, the 200: its
/// connection serves other streams meanwhile). Tracked, so the shutdown
/// waits for it (and its grace ends it). `place`: what the connection held
/// for its life, when the tunnel outlives its task (HTTP/1: the limits,
/// the lane's count, the open-connection metric), held until it ends.
pub(super) fn spawn_tunnel<P: Send + 'static>(
    on_upgrade: hyper::upgrade::OnUpgrade,
    accepted: tunnel::Accepted,
    shared: &Arc<Shared>,
    place: P,
) {
    let shared = shared.clone();
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let send_timeout = shared.options.front.limits.send_timeout;
                let io = TokioIo::new(upgraded);
                tunnel::run(io, accepted, send_timeout, shared.force.wait()).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade not completed"),
        }
        drop(place); // after the tunnel's log line, as the connection's end
    });
}
