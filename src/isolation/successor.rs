//! Starting a successor polyhost (binary upgrade, `privsep::upgrade`) and
//! passing descriptors to it over a Unix socket (`SCM_RIGHTS`).
//!
//! The successor is the binary polyhost was started from, run with the same
//! arguments and environment as root; it inherits one end of a socket pair
//! at descriptor 3 ([`SUCCESSOR_FD`]) and nothing else beyond stdio. It is
//! registered as polyhost's own child (the orphan sweep never reaps it).

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Where the successor finds its end of the socket pair.
pub const SUCCESSOR_FD: RawFd = 3;

/// Most descriptors one message carries (listeners: HTTP, HTTPS, admin).
pub const MAX_FDS: usize = 64;

/// A started successor. Dropping it does not kill it; it is registered as
/// polyhost's own child (the orphan sweep never reaps it) until waited for.
pub type Successor = super::reap::OwnChild;

/// Starts `program args` with `link` at [`SUCCESSOR_FD`], in a process
/// group of its own (a signal to the predecessor's group is not its), with
/// this process's environment plus `env`, minus `env_remove`.
pub fn spawn_successor(
    program: &Path,
    args: &[OsString],
    env: &[(String, String)],
    env_remove: &[&str],
    link: BorrowedFd<'_>,
) -> io::Result<Successor> {
    // A duplicate above the target, so that dup2 never overwrites a source.
    // SAFETY: F_DUPFD_CLOEXEC on a borrowed open descriptor; the result is
    // owned right away.
    let dup = unsafe { libc::fcntl(link.as_raw_fd(), libc::F_DUPFD_CLOEXEC, SUCCESSOR_FD + 1) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` was just returned by fcntl and is owned by no one else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    let source = dup.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    for name in env_remove {
        cmd.env_remove(name);
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: dup2 is async-signal-safe and works on integers prepared
    // before the fork; nothing allocates or locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(source, SUCCESSOR_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(dup);
    Ok(Successor::new(child))
}

/// Sends `bytes` with `fds` attached, in one message.
pub fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(bytes)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    if sent != bytes.len() {
        return Err(io::Error::other("the handover message was cut short"));
    }
    Ok(())
}

/// Receives one message sent by [`send_with_fds`] (at most `max` bytes):
/// its bytes and the descriptors it carried, owned (close-on-exec).
pub fn recv_with_fds(sock: &UnixStream, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, raw) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut raw = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    // SAFETY: the kernel just installed these descriptors in this process
    // for this message (SCM_RIGHTS); nothing else owns them.
    let fds = raw
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    buf.truncate(n);
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut x, y) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"hello", &[y.as_fd()]).unwrap();
        drop(y);
        let (bytes, fds) = recv_with_fds(&b, 1024).unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(fds.len(), 1);
        let mut y = UnixStream::from(fds.into_iter().next().unwrap());
        x.write_all(b"through").unwrap();
        let mut got = [0u8; 7];
        y.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through");
    }
}
