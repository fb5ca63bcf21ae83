//! A request's body on its way to an upstream: its size and its pauses
//! bounded ([`LimitedBody`]), its trailer section dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};

use crate::upstream::{BodyError, BoxError};

/// The request body as upstreams read it: at most `limits.body` bytes, and
/// no wait longer than `body_timeout` for the next bytes (a slow upload
/// cannot hold a connection forever). Either failure is the body's error, a
/// [`BodyError`] that upstreams recognise by type, and is kept in `cut`, so
/// whatever error the upstream makes of it, the client gets 413 or 408.
///
/// A request's trailer section (chunked HTTP/1.1, HTTP/2) is dropped here,
/// whole: no runtime has a place for trailer fields (WSGI and FastCGI know
/// only the head), and a trailer's `Content-Length`, `Host` or
/// `Transfer-Encoding` (RFC 9110 §6.5.1) must never reach a runtime as if the
/// head had said it. hyper hands the fields on unfiltered.
pub(super) struct LimitedBody<B> {
    inner: Pin<Box<Limited<B>>>,
    /// `limits.body`, which `inner` enforces.
    limit: u64,
    /// Why the router cut the body, once it did.
    cut: Arc<OnceLock<BodyError>>,
    timeout: Duration,
    /// Armed while the body is waiting for the client.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> LimitedBody<B> {
    /// `body`, cut past `limit` bytes or after `timeout` without any;
    /// why is kept in `cut`.
    pub(super) fn new(
        body: B,
        limit: u64,
        cut: Arc<OnceLock<BodyError>>,
        timeout: Duration,
    ) -> Self {
        LimitedBody {
            inner: Box::pin(Limited::new(
                body,
                usize::try_from(limit).unwrap_or(usize::MAX),
            )),
            limit,
            cut,
            timeout,
            timer: None,
        }
    }

    /// Remembers why the body was cut and makes it the body's error.
    fn cut(&self, why: BodyError) -> BoxError {
        let _ = self.cut.set(why);
        Box::new(why)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut polled = self.inner.as_mut().poll_frame(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_trailers()) {
            // The last frame; what follows is the body's end.
            polled = self.inner.as_mut().poll_frame(cx);
        }
        match &polled {
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(self.cut(BodyError::Stalled(timeout)))));
                }
            }
            Poll::Ready(Some(Err(e))) if e.is::<LengthLimitError>() => {
                let limit = self.limit;
                return Poll::Ready(Some(Err(self.cut(BodyError::TooLarge { limit }))));
            }
            Poll::Ready(_) => self.timer = None,
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
