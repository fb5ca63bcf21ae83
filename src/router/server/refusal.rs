//! Refusing connections without failing: the one-write `503` a plain
//! connection gets when a limit is reached ([`refuse`]), `max_connections`
//! fitted under polyhost's file-descriptor limit
//! ([`admissible_connections`]), and, should descriptors run out anyway,
//! the spare one that lets an accept loop still accept and refuse
//! ([`Spare`], [`accept_failed`]); the key a refusal names ([`refusal_limit`]).

use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::Shared;
use crate::router::conn::Refusal;

/// Sent, in one non-blocking write, to a plain connection refused by a limit.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// `max_connections`, or fewer when polyhost's file-descriptor limit
/// (`RLIMIT_NOFILE`) could not hold that many: a quarter of the descriptors
/// (at least 128) stay for everything else (listeners, logs, upstream
/// sockets, files being sent), so past the limit a client gets a `503`
/// rather than an accept that fails.
pub(super) fn admissible_connections(configured: usize) -> usize {
    let Some(nofile) = crate::isolation::nofile_limit() else {
        return configured;
    };
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let fit = fit_under(nofile);
    if fit < configured {
        tracing::warn!(max_connections = configured, nofile, admitted = fit, "limits.max_connections is more than polyhost's file-descriptor limit (RLIMIT_NOFILE) can hold: admitting at most {fit} connections; raise the limit (LimitNOFILE= in a systemd unit, ulimit -n) to allow more");
    }
    fit.min(configured)
}

/// Descriptors kept out of `max_connections` at least.
const FD_RESERVE: usize = 128;

/// Connections that fit under `nofile` descriptors: all but a quarter, or
/// but [`FD_RESERVE`]; at least one.
fn fit_under(nofile: usize) -> usize {
    nofile.saturating_sub((nofile / 4).max(FD_RESERVE)).max(1)
}

/// A failed accept. Out of file descriptors (EMFILE, ENFILE): the waiting
/// connection is taken with the spare descriptor's place and refused with a
/// `503`, so clients get an answer rather than a hang and the listener does
/// not stay readable (an accept loop spinning on the same error). Other
/// errors (and no spare): back off a little. Logged at most once a second.
pub(super) async fn accept_failed(
    e: &std::io::Error,
    listener: &TcpListener,
    spare: &mut Spare,
    plain: bool,
    shared: &Shared,
) {
    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
    if out_of_fds && spare.refuse_one(listener, plain) {
        if let Some(left_out) = shared.accept_log.allow() {
            tracing::warn!(open = shared.limiter.open(), also_refused = left_out, "connection refused: polyhost is out of file descriptors (RLIMIT_NOFILE); lower limits.max_connections or raise the limit");
        }
        return;
    }
    if let Some(left_out) = shared.accept_log.allow() {
        tracing::warn!(error = %e, also_failed = left_out, "accept failed");
    }
    // No spare (another thread took the descriptor it left): try again for one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if out_of_fds {
        spare.reopen();
    }
}

/// A descriptor kept open for the moment the process runs out: closing it
/// makes room to accept (and refuse) one connection. The well-known remedy
/// for accept loops at EMFILE (libev's and nginx's).
pub(super) struct Spare(Option<std::fs::File>);

impl Spare {
    pub(super) fn open() -> Spare {
        let mut s = Spare(None);
        s.reopen();
        s
    }

    fn reopen(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }

    /// Frees the spare, accepts one waiting connection and refuses it
    /// (plain: with the one-write `503`), then takes the spare back.
    /// `false` when there was no spare.
    fn refuse_one(&mut self, listener: &TcpListener, plain: bool) -> bool {
        if self.0.take().is_none() {
            return false;
        }
        // The listener is still readable (the failed accept did not clear
        // its readiness): poll it once, without waiting.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Ok((stream, _))) = listener.poll_accept(&mut cx) {
            if plain {
                refuse(&stream);
            }
        }
        self.reopen();
        true
    }
}

/// Sends [`REFUSED`] in one non-blocking write, straight to the socket:
/// tokio's `try_write` answers from the event loop's readiness, which has
/// not seen a socket accepted a moment ago (it would always refuse to write).
pub(super) fn refuse(stream: &TcpStream) {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let _ = send(
        stream.as_raw_fd(),
        REFUSED,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// The configuration key a refusal names.
pub(super) fn refusal_limit(why: Refusal) -> &'static str {
    match why {
        Refusal::Total => "max_connections",
        Refusal::PerIp => "max_connections_per_ip",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_under_the_descriptor_limit() {
        for (nofile, fit) in [(100, 1), (256, 128), (1024, 768), (20_000, 15_000)] {
            assert_eq!(fit_under(nofile), fit, "{nofile}");
        }
    }
}
