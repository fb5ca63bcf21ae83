//! How much of what polyhost wrote into a connected Unix stream socket its
//! peer has not read yet (`SIOCOUTQ`): the PHP pool learns from it that a
//! php-fpm child has accepted a connection opened ahead of need (see
//! `upstream::php::warm`). Here because it is an `ioctl` (no crate offers it
//! safely: nix and rustix do not wrap `SIOCOUTQ`), and only `isolation` may
//! hold `unsafe` code.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Bytes written to `socket` (a connected `AF_UNIX` stream socket) that the
/// peer has not read yet; 0 also when the peer closed it (its queue is
/// freed then: ask the socket whether it is still open).
pub fn unread_by_peer(socket: impl AsFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `socket` is an open descriptor for the whole call (borrowed);
    // SIOCOUTQ writes one `int` through the pointer, which points to
    // `queued`, alive and writable for the call.
    let rc = unsafe {
        libc::ioctl(
            socket.as_fd().as_raw_fd(),
            libc::TIOCOUTQ, // == SIOCOUTQ on Linux
            &mut queued as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn counts_what_the_peer_has_not_read() {
        let (mut ours, mut peer) = UnixStream::pair().unwrap();
        assert_eq!(unread_by_peer(&ours).unwrap(), 0);
        ours.write_all(&[0; 8]).unwrap();
        assert!(unread_by_peer(&ours).unwrap() > 0, "8 bytes not read yet");
        peer.read_exact(&mut [0; 8]).unwrap();
        assert_eq!(unread_by_peer(&ours).unwrap(), 0, "read: nothing left");
        ours.write_all(&[0; 8]).unwrap();
        drop(peer);
        assert_eq!(
            unread_by_peer(&ours).unwrap(),
            0,
            "the peer closed: its queue was freed"
        );
        let file = tempfile::tempfile().unwrap();
        assert!(unread_by_peer(&file).is_err(), "not a socket");
    }
}
