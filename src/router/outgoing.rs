//! A response on its way out to the client: the body ([`LoggedBody`],
//! what hyper is handed, unboxed) that has the access log line written when
//! the body is done (with the bytes really sent; the line itself is
//! `access_log::LogFacts`) and keeps a body to the `Content-Length` its
//! upstream declared ([`Declared`]; the decision itself is
//! `proxy::response_framing`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};

use super::access_log::{LogFacts, SiteLogs};
use super::proxy::ResponseFraming;
use crate::upstream::{BoxError, ResponseBody};

/// Wraps the response body so the access log line (`facts`) is written when
/// the body is done (or dropped by a client that went away), with the bytes
/// really sent, and so a body sent under a declared length keeps to it.
pub(super) fn wrap(
    resp: Response<ResponseBody>,
    facts: LogFacts,
    framing: ResponseFraming,
    start: Instant,
    logs: Arc<SiteLogs>,
) -> Response<LoggedBody> {
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = LoggedBody {
        inner: body,
        bytes: 0,
        declared: match framing {
            ResponseFraming::Declared(n) => Some(Declared {
                owed: n,
                held: None,
                state: DeclaredState::Streaming,
            }),
            _ => None,
        },
        pending: Some((facts, status, start, logs)),
    };
    Response::from_parts(parts, body)
}

/// A response body on its way to the client: counts the bytes for the
/// access log and, under a declared `Content-Length`, keeps the body to
/// exactly that length. A response that reached no site (refused before
/// routing) goes out through one too, [`plain`](Self::plain): no line.
pub struct LoggedBody {
    inner: ResponseBody,
    bytes: u64,
    /// `Some` when the upstream declared the length of a streamed body.
    declared: Option<Declared>,
    pending: Option<(LogFacts, u16, Instant, Arc<SiteLogs>)>,
}

/// A body sent under the `Content-Length` its upstream declared. The bytes
/// that complete the declared length are held back until the upstream's
/// body ends: hyper stops reading a body once its length is reached and
/// would keep the connection open, so a longer body must be found out
/// before that. A body that turns out longer or shorter ends in an error
/// instead: hyper then closes the connection, and the client sees a
/// response shorter than its head said, never bytes past it.
struct Declared {
    /// Bytes still to be passed on (the held ones included).
    owed: u64,
    /// The last bytes of the declared length, waiting for the body's end.
    held: Option<Bytes>,
    state: DeclaredState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DeclaredState {
    /// Reading the upstream's body.
    Streaming,
    /// The upstream's body ended (with nothing beyond the held bytes).
    Ended,
    /// Ended, or cut: nothing more is read or sent.
    Done,
}

impl LoggedBody {
    /// `body` as it is: no access log line, no declared length to keep.
    pub fn plain(body: ResponseBody) -> Self {
        LoggedBody {
            inner: body,
            bytes: 0,
            declared: None,
            pending: None,
        }
    }

    /// The next frame under a declared length (see [`Declared`]).
    fn poll_declared(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(d) = self.declared.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match d.state {
                DeclaredState::Done => return Poll::Ready(None),
                DeclaredState::Ended => {
                    d.state = DeclaredState::Done;
                    return Poll::Ready(d.held.take().map(|data| {
                        d.owed = 0;
                        Ok(Frame::data(data))
                    }));
                }
                DeclaredState::Streaming => {}
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if d.owed == d.held.as_ref().map_or(0, |h| h.len() as u64) => {
                    d.state = DeclaredState::Ended;
                    continue;
                }
                Poll::Ready(None) => {
                    let sent = self.bytes;
                    let declared = sent + d.owed;
                    return Poll::Ready(Some(Err(self.cut(format!(
                        "the response body ended after {sent} of the {declared} bytes its Content-Length declared"
                    )))));
                }
                Poll::Ready(Some(Err(e))) => {
                    d.state = DeclaredState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => data,
                // Trailers: hyper does not send them under a length.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let len = data.len() as u64;
            let room = d.owed - d.held.as_ref().map_or(0, |h| h.len() as u64);
            if len > room {
                let sent = self.bytes;
                let declared = sent + d.owed;
                return Poll::Ready(Some(Err(self.cut(format!(
                    "the response body is longer than the {declared} bytes its Content-Length declared"
                )))));
            }
            if len == room {
                d.held = Some(data);
                continue; // sent once the body is seen to end here
            }
            d.owed -= len;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    /// Ends a body that broke its declared length: logged once to the
    /// site's error log; the error makes hyper close the connection.
    fn cut(&mut self, why: String) -> BoxError {
        if let Some(d) = self.declared.as_mut() {
            d.state = DeclaredState::Done;
            d.held = None;
        }
        if let Some((facts, _, _, logs)) = &self.pending {
            logs.error(&format!(
                "{} {}: {why}: response cut, connection closed",
                facts.method, facts.uri
            ));
            tracing::warn!(method = %facts.method, uri = %facts.uri, error = %why, "response cut, connection closed");
        }
        why.into()
    }

    fn finish(&mut self) {
        if let Some((facts, status, start, logs)) = self.pending.take() {
            facts.write(&logs, status, self.bytes, start);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = if this.declared.is_some() {
            this.poll_declared(cx)
        } else {
            Pin::new(&mut this.inner).poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.declared {
            None => self.inner.is_end_stream(),
            Some(d) => {
                d.state == DeclaredState::Done
                    || (d.state == DeclaredState::Ended && d.held.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.declared {
            None => self.inner.size_hint(),
            Some(d) => SizeHint::with_exact(d.owed),
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of the given chunks, streamed (no length known ahead).
    fn streamed(chunks: &[&'static str]) -> ResponseBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    /// What a body declared to be `declared` bytes long passes on: its data,
    /// and whether it ended cleanly.
    async fn send(chunks: &[&'static str], declared: u64) -> (String, bool) {
        let mut body = LoggedBody {
            inner: streamed(chunks),
            bytes: 0,
            declared: Some(Declared {
                owed: declared,
                held: None,
                state: DeclaredState::Streaming,
            }),
            pending: None,
        };
        assert_eq!(body.size_hint().exact(), Some(declared));
        let mut out = String::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.push_str(std::str::from_utf8(&f.into_data().unwrap()).unwrap()),
                Err(_) => return (out, false),
            }
            if body.is_end_stream() {
                break;
            }
        }
        assert!(body.frame().await.is_none(), "nothing after the end");
        (out, true)
    }

    #[tokio::test]
    async fn a_declared_length_is_kept_exactly_or_the_body_is_cut() {
        let cases: &[(&[&str], u64, (&str, bool))] = &[
            (&["ab", "cd"], 4, ("abcd", true)),
            (&["ab", "", "cd"], 4, ("abcd", true)),
            (&[], 0, ("", true)),
            // Longer: the bytes that would complete the length are never
            // sent when more follows them, nor any past it.
            (&["ok", "HTTP/1.1 200 OK"], 2, ("", false)),
            (&["ab", "cdef"], 4, ("ab", false)),
            (&["abcdef"], 4, ("", false)),
            (&["x"], 0, ("", false)),
            // Shorter: what there is, then the cut.
            (&["ab"], 4, ("ab", false)),
            (&[], 4, ("", false)),
        ];
        for (chunks, declared, want) in cases {
            let (out, clean) = send(chunks, *declared).await;
            assert_eq!((out.as_str(), clean), *want, "{chunks:?} under {declared}");
        }
    }
}
