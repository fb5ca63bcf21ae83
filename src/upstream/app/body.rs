//! A response body streamed from an app instance to the router, frame by
//! frame as the client takes them (the connection is read only when the
//! router asks for a frame, `h1::Decoder`: backpressure through the
//! sockets, nothing buffered whole). What the request holds ([`Done`]: its connection, lease and
//! admission place) is let go when the body ends: the connection back to
//! the pool if the body ended cleanly, else closed.
//!
//! A body that brings no bytes for `request_timeout` is cut (an error: the
//! router ends the response and the client's connection), as nginx's
//! `proxy_read_timeout` does between two reads; a long stream that keeps
//! sending (server-sent events with heartbeats) runs as long as it sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::h1::Decoder;
use super::pool::{Conn, Pool};
use crate::supervisor::RuntimeLease;
use crate::upstream::admission::Permit;
use crate::upstream::BoxError;

/// What a request holds until its response has been read.
pub(super) struct Done {
    /// The connection the body is read from.
    pub(super) conn: Conn,
    /// It may serve another request after this response (neither side
    /// closes it).
    pub(super) keep: bool,
    pub(super) lease: RuntimeLease,
    pub(super) permit: Permit,
    pub(super) pool: Arc<Pool>,
}

impl Done {
    /// Lets go: the connection back to the pool if the response was read
    /// to its end (`clean`), the admission place, then the lease (which
    /// counts the request served, and may recycle at `max_requests`).
    pub(super) fn finish(self, clean: bool) {
        let Done {
            conn,
            keep,
            lease,
            permit,
            pool,
        } = self;
        drop(permit);
        if clean && keep {
            pool.checkin(lease.endpoint().id, conn);
        } else {
            drop(conn);
        }
        drop(lease);
    }
}

pub(super) struct AppBody {
    decoder: Decoder,
    done: Option<Done>,
    stall: Duration,
    /// Armed at the first wait; pushed back at every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

impl AppBody {
    pub(super) fn new(decoder: Decoder, done: Done, stall: Duration) -> Self {
        AppBody {
            decoder,
            done: Some(done),
            stall,
            timer: None,
        }
    }

    fn finish(&mut self, clean: bool) {
        if let Some(done) = self.done.take() {
            done.finish(clean);
        }
    }

    fn pid(&self) -> i32 {
        self.done.as_ref().map_or(0, |d| d.lease.endpoint().pid)
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(done) = this.done.as_mut() else {
            return Poll::Ready(None);
        };
        match this.decoder.poll_frame(&mut done.conn.link, cx) {
            Poll::Ready(Ok(Some(frame))) => {
                if this.decoder.is_done() {
                    this.finish(true);
                } else if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(Instant::now() + this.stall);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Err(e)) => {
                let why = format!(
                    "app instance pid {} broke off its response: {e}",
                    this.pid()
                );
                tracing::debug!("{why}");
                this.finish(false);
                Poll::Ready(Some(Err(why.into())))
            }
            Poll::Ready(Ok(None)) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let stall = this.stall;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let why = format!(
                    "app instance pid {} sent nothing of its response for {stall:?} (request_timeout)",
                    this.pid()
                );
                this.finish(false);
                Poll::Ready(Some(Err(why.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}
