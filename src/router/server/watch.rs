//! Drives one hyper connection and enforces its clocks
//! (`router::conn::clocks`): closes it when a request head is late, when
//! the client takes nothing of a response, or asks it to close gracefully
//! when idle or at shutdown (one with no request yet: once its first
//! started, `server::first_request_at_stop`), and drops it after the
//! grace; reports how it
//! ended (closed, or parked between HTTP/1 requests: `parking`).
//!
//! Invariant: one timer and one wait per signal per connection, made once
//! ([`watch`]); the request path never wakes this loop (which, stopping
//! with no request yet, looks every [`FIRST_REQUEST_LOOK`] instead).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;

use super::{Proto, Shared};
use crate::router::conn::{Activity, Expiry};
use crate::router::service::ConnInfo;
use crate::upstream::BoxError;

/// How often a connection stopping with no request yet looks whether its
/// first request started (then it is asked to close after it).
const FIRST_REQUEST_LOOK: Duration = Duration::from_millis(10);

/// How a watched connection ended.
pub(super) enum Ended {
    /// Done: closed by either side, or dropped after a timeout.
    Closed,
    /// HTTP/1 between requests: its HTTP state can be dropped, the socket kept.
    Parked,
    /// HTTP/1 between requests, its state dropped to move the socket to
    /// another lane (`parking`).
    Moves,
    /// HTTP/1 after a WebSocket's `101`: the socket is the tunnel's.
    Upgraded,
}

/// A hyper connection as [`watch`] drives it.
pub(super) trait Served {
    fn poll_served(&mut self, cx: &mut Context<'_>) -> Poll<Result<Ended, BoxError>>;
    fn graceful_shutdown(&mut self);
}

/// HTTP/2 (ALPN `h2`) and h2c-capable connections: hyper-util's, never parked.
impl<C> Served for Pin<Box<C>>
where
    C: GracefulConnection,
    C::Error: Into<BoxError>,
{
    fn poll_served(&mut self, cx: &mut Context<'_>) -> Poll<Result<Ended, BoxError>> {
        self.as_mut()
            .poll(cx)
            .map(|r| r.map(|()| Ended::Closed).map_err(Into::into))
    }

    fn graceful_shutdown(&mut self) {
        GracefulConnection::graceful_shutdown(self.as_mut());
    }
}

/// Drives a connection and keeps its clocks until it ends (`None`: dropped
/// after a timeout or the shutdown grace, or failed) or parks.
pub(super) async fn watch<C: Served>(
    served: &mut C,
    conn: &ConnInfo,
    proto: Proto,
    activity: &Activity,
    shared: &Shared,
) -> Option<Ended> {
    let limits = &shared.options.front.limits;
    let mut graceful = false;
    let mut closing_since: Option<Instant> = None;
    // Stopping, with no request yet: until when its first may start (then
    // the connection is asked to close like the others, or dropped).
    let mut first_request_due: Option<Instant> = None;
    // Every deadline is set by a change of the connection's state, from the
    // time of that change, at least the shortest timeout ahead; so a clock
    // that looks again within the shortest timeout sees each deadline in
    // time, and state changes (several per request) need not wake this loop.
    let horizon = limits
        .header_timeout
        .min(limits.keepalive_timeout)
        .min(limits.send_timeout);
    // Made once per connection: each one made anew registers with (and
    // then leaves) a shared wait list or the timer wheel.
    let shutdown = shared.stopping.wait();
    let force = shared.force.wait();
    let sleep = tokio::time::sleep(horizon);
    tokio::pin!(shutdown, force, sleep);
    loop {
        let look_again = Instant::now() + horizon;
        let next = match (closing_since, first_request_due) {
            (Some(t), _) => Some(t + limits.header_timeout),
            // Looks often: the request path does not wake this loop.
            (None, Some(_)) => Some(Instant::now() + FIRST_REQUEST_LOOK),
            (None, None) => activity
                .deadline(
                    limits.header_timeout,
                    limits.keepalive_timeout,
                    limits.send_timeout,
                )
                .map(|(t, _)| t),
        };
        sleep
            .as_mut()
            .reset(next.map_or(look_again, |t| t.min(look_again)).into());
        tokio::select! {
            result = std::future::poll_fn(|cx| served.poll_served(cx)) => {
                return match result {
                    Ok(ended) => Some(ended),
                    Err(e) => {
                        log_connection_error(conn, &*e, shared);
                        None
                    }
                };
            }
            _ = &mut shutdown, if !graceful && first_request_due.is_none() => {
                if activity.fresh() && proto != Proto::Http2 {
                    // hyper would close it at once (see `server`'s docs).
                    let grace = super::first_request_at_stop(limits.header_timeout);
                    first_request_due = Some(Instant::now() + grace);
                } else {
                    graceful = true;
                    served.graceful_shutdown();
                }
            }
            _ = &mut force => return None,
            _ = &mut sleep => {
                let now = Instant::now();
                if let Some(due) = first_request_due {
                    if !activity.fresh() {
                        first_request_due = None;
                        graceful = true;
                        served.graceful_shutdown();
                    } else if now >= due {
                        return None; // stopping, and no request came
                    }
                    continue;
                }
                if closing_since.is_some_and(|t| now >= t + limits.header_timeout) {
                    return None; // asked to close and did not: drop it
                }
                match activity.deadline(limits.header_timeout, limits.keepalive_timeout, limits.send_timeout) {
                    Some((t, Expiry::Send)) if now >= t => {
                        tracing::info!(client = %conn.client, timeout = ?limits.send_timeout, "closing connection: the client took nothing of the response within send_timeout");
                        return None;
                    }
                    Some((t, Expiry::Header)) if now >= t => {
                        if let Some(left_out) = shared.timeout_log.allow() {
                            tracing::info!(client = %conn.client, also_closed = left_out, timeout = ?limits.header_timeout, "closing connection: no complete request head within header_timeout");
                        }
                        if proto != Proto::Http2 {
                            return None;
                        }
                        if !graceful {
                            graceful = true;
                            served.graceful_shutdown();
                        }
                        closing_since.get_or_insert(now);
                    }
                    Some((t, Expiry::Idle)) if now >= t => {
                        tracing::debug!(client = %conn.client, "closing idle keep-alive connection");
                        if !graceful {
                            graceful = true;
                            served.graceful_shutdown();
                        }
                        closing_since.get_or_insert(now);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn log_connection_error(
    conn: &ConnInfo,
    e: &(dyn std::error::Error + Send + Sync + 'static),
    shared: &Shared,
) {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => {
            if let Some(left_out) = shared.malformed_log.allow() {
                tracing::info!(client = %conn.client, also = left_out, "request head larger than max_header_size or more than max_headers fields: 431");
            }
        }
        Some(h) if h.is_parse() => {
            if let Some(left_out) = shared.malformed_log.allow() {
                tracing::info!(client = %conn.client, also = left_out, error = %h, "malformed request: 400");
            }
        }
        _ => tracing::debug!(client = %conn.client, error = %e, "connection ended with an error"),
    }
}
