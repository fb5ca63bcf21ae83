//! A small HTTP/1.1 client of our own for the `[app]` upstream: one
//! request at a time on one connection ([`Link`]), driven by the request's
//! own task — the head (written into the link's buffer by `super::head`)
//! sent with a small spooled body in one write, the response head read and parsed
//! with `httparse` ([`response`]), the body decoded as the router's server
//! polls it ([`decode`]: `Content-Length`, chunked, to the end of the
//! connection).
//!
//! Why by hand: hyper's client (`hyper::client::conn::http1`) runs a task
//! per connection and hands each request over through an mpsc channel, a
//! oneshot and a `want` signal, takes the request head as a `HeaderMap`
//! (so a retry needs a clone of it) and feeds the body through a channel.
//! For a proxy that sends one request at a time on a pooled connection all
//! of that is hand-off; here the request's task reads and writes the
//! socket itself, and the bytes written are what a retry sends again.
//! Measured on Node hello (docs/performance.md, "app-h1"; side by side,
//! medians of 8 rounds): the router's CPU per request 31.1 → 24.6 µs at
//! c = 16 and 27.0 → 23.3 µs at c = 64 (user time 14.6 → 9.8 and 13.5 →
//! 9.7 µs), allocator calls 17 → 10 per request, system calls the same
//! (4.3 per request).
//!
//! Owns: the wire format both ways and the limits on a response head
//! ([`MAX_FIELDS`] fields, [`MAX_HEAD`] bytes). Not owned: which
//! connection a request uses (`super::pool`), what the head says
//! (`super::head`), what a failure means for the request (`super`).
//!
//! Invariants:
//! - A malformed response (a head `httparse` rejects, a head over the
//!   limits, conflicting `Content-Length`s, a bad chunk) is a [`Failure`]
//!   that says why; nothing here panics on what an app sends.
//! - A [`Failure`] says whether any byte of a response was read
//!   ([`Failure::silent`]): only a silent one may be sent again.
//! - A link is reusable only when its last response was read to its end
//!   and nothing more arrived ([`Link::idle_usable`]).

mod conn;
mod decode;
mod response;

pub(super) use conn::Link;
pub(super) use decode::{Decoder, Framing};
pub(super) use response::ResponseHead;

/// Response header fields: hyper's default limit, which this client
/// replaced (parsed on the stack; 101 is a 502).
pub(super) const MAX_FIELDS: usize = 100;
/// A response head's bytes at most (the workers' limit).
pub(super) const MAX_HEAD: usize = polyhost_protocol::limits::MAX_RESPONSE_HEAD;

/// Why an exchange on a link failed.
#[derive(Debug)]
pub(super) struct Failure {
    /// No byte of a response was read: the app may have closed the
    /// connection as the request went out.
    pub(super) silent: bool,
    pub(super) why: String,
}

impl Failure {
    pub(super) fn new(silent: bool, why: impl Into<String>) -> Failure {
        Failure {
            silent,
            why: why.into(),
        }
    }
}

#[cfg(test)]
mod tests;
