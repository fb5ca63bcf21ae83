//! Opening a connection ahead of need and knowing when a php-fpm child has
//! it. A Unix-socket `connect` completes as soon as the connection is in
//! the listen backlog, long before a child accepts it: a request sent on it
//! waits there until a child is free, and when every other child is pinned
//! by a kept-alive connection that means until the master has forked one.
//!
//! So a successor connection carries a probe first: one empty `FCGI_STDIN`
//! record, which php-fpm reads and skips before a request
//! (`fcgi_read_request` skips empty STDIN records: the end of a previous
//! request's input); it does not count as a request and leaves the child
//! waiting for the next record, as on any kept-alive connection. Once the
//! peer has read it (`isolation::unread_by_peer` is 0) and the connection
//! is still open, a live child holds it: it can go into the pool.
//!
//! An `ondemand` php-fpm forks a child when a connection arrives and no
//! child waits in `accept`; with kept-alive connections that can leave one
//! in the backlog for good: the master saw a child in `accept`, that child
//! took another connection and stays with it, and no new connection comes
//! to wake the master again. So in such pools every fresh connection is
//! watched ([`watch`]): while no child reads what was written to it, the
//! pool *nudges* the master with a connection of its own, closed at once
//! (a new event on the listening socket: the master forks if no child is in
//! `accept`; the child that takes the closed connection later reads its end
//! and goes back to `accept`). A connection left in the backlog is first in
//! line for the child forked.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::pool::is_open;

/// The probe: `FCGI_STDIN`, request id 1, no content.
const PROBE: [u8; 8] = [1, super::fcgi::STDIN, 0, 1, 0, 0, 0, 0];

/// Longest pause between two looks at the probe when no wake-up came (the
/// peer's read wakes the writer; this only bounds a missed one).
const RECHECK: Duration = Duration::from_millis(1);

/// The first look at a fresh connection (`watch`) comes after this; each
/// next one after twice the pause before: a fork takes milliseconds.
const WATCH_FIRST: Duration = Duration::from_millis(4);

/// Looks at a fresh connection before `watch` gives up: 4 ms doubling,
/// about 2 s in all (a connection still unread then waits for a child
/// that is busy, as any request beyond the children does).
const WATCH_LOOKS: u32 = 9;

/// Connects to `socket` (served by `uid`, when given), sends the probe and
/// returns once a php-fpm child has read it. The caller bounds the wait.
/// `on_demand`: php-fpm forks on demand; the connection is watched.
pub async fn open(socket: &Path, uid: Option<u32>, on_demand: bool) -> io::Result<UnixStream> {
    let mut stream = crate::upstream::connect_runtime(socket, uid).await?;
    stream.write_all(&PROBE).await?;
    if on_demand {
        watch(&stream, socket);
    }
    let mut cleared = false;
    loop {
        if crate::isolation::unread_by_peer(&stream)? == 0 {
            // Read, or dropped unread by a closed peer (listener gone).
            if !is_open(&stream) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "php-fpm closed the connection before a child took it",
                ));
            }
            if cleared {
                // Registered anew, so tokio sees it writable again (the
                // readiness we cleared would make the request's first
                // write wait for an edge that never comes).
                stream = UnixStream::from_std(stream.into_std()?)?;
            }
            return Ok(stream);
        }
        // Forget the writability seen so far: the peer's read of the probe
        // frees our send buffer and wakes the next `writable()`. Look again
        // after clearing, so a read in between is not missed.
        let _ = stream.try_io(Interest::WRITABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        cleared = true;
        if crate::isolation::unread_by_peer(&stream)? == 0 {
            continue;
        }
        tokio::select! {
            w = stream.writable() => w?,
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Watches `stream`, just connected to `socket` with bytes written: while
/// no php-fpm child reads from it, nudges the master (module doc). A task
/// of its own holds a duplicate of the descriptor until a child has read
/// (or the peer closed, or the looks ran out); nothing when all was read.
pub fn watch(stream: impl AsFd, socket: &Path) {
    let Ok(mut last) = crate::isolation::unread_by_peer(&stream) else {
        return;
    };
    if last == 0 {
        return; // a child has it already (the usual case)
    }
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return;
    };
    let socket = socket.to_owned();
    tokio::spawn(async move {
        let mut pause = WATCH_FIRST;
        for _ in 0..WATCH_LOOKS {
            tokio::time::sleep(pause).await;
            match crate::isolation::unread_by_peer(&fd) {
                // Nothing read since the last look (more may have been written).
                Ok(unread) if unread > 0 && unread >= last => last = unread,
                _ => return, // read (a child has it), closed, or gone
            }
            nudge(&socket).await;
            pause *= 2;
        }
    });
}

/// A connection to `socket` closed at once: wakes an `ondemand` master.
async fn nudge(socket: &Path) {
    drop(UnixStream::connect(socket).await);
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    use super::*;

    /// Ready only once the peer accepted and read the probe; an error when
    /// the listener closes without accepting.
    #[tokio::test]
    async fn ready_once_accepted_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let opening = tokio::spawn({
            let path = path.clone();
            async move { open(&path, None, false).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!opening.is_finished(), "ready before any accept");
        let (mut child, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!opening.is_finished(), "ready before the probe was read");
        let mut got = [0u8; 8];
        child.read_exact(&mut got).await.unwrap();
        assert_eq!(got, PROBE);
        let stream = tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .expect("ready within 10 s of the read")
            .unwrap()
            .unwrap();
        assert!(is_open(&stream));
        let mut stream = stream;
        tokio::time::timeout(Duration::from_secs(10), stream.write_all(b"request"))
            .await
            .expect("a ready connection takes a write at once")
            .unwrap();
        let mut got = [0u8; 7];
        child.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");

        // Never accepted: the listener closes with the connection queued.
        let path2 = dir.path().join("t.sock");
        let listener = UnixListener::bind(&path2).unwrap();
        let opening = tokio::spawn(async move { open(&path2, None, false).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(listener);
        let got = tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .expect("gave up within 10 s of the close")
            .unwrap();
        assert!(got.is_err(), "a connection nobody accepted is not ready");
    }
}
