//! Descriptors a process inherited at known numbers: `polyhost router`
//! receives the link to its supervisor and the listening sockets at 3, 4,
//! ... (`privsep`), and takes each over once, as an owned descriptor.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Descriptor numbers taken so far: each is owned once.
static TAKEN: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// Takes over descriptor `fd`, inherited from the parent: it must be open,
/// above stderr and not taken before. It is made close-on-exec (nothing the
/// router could start inherits it).
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::other(format!(
            "descriptor {fd} is stdin, stdout or stderr, not an inherited socket"
        )));
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if taken.contains(&fd) {
        return Err(io::Error::other(format!(
            "descriptor {fd} was taken over already"
        )));
    }
    // SAFETY: fcntl(F_GETFD) reads the flags of a descriptor number, open
    // or not; it touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!("descriptor {fd} was not inherited (it is not open)"),
        ));
    }
    // SAFETY: as above, on an open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    taken.insert(fd);
    // SAFETY: `fd` is open (checked above) and owned by nothing else in
    // this process: it was inherited at this number (the parent's contract)
    // and is taken over at most once (`TAKEN`), before any other code could
    // have opened it (the caller takes its inherited descriptors at start).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::take_inherited;

    #[test]
    fn a_descriptor_is_taken_once_and_only_if_open() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let n = a.into_raw_fd();
        let owned = take_inherited(n).unwrap();
        assert_eq!(owned.as_raw_fd(), n);
        assert!(take_inherited(n)
            .unwrap_err()
            .to_string()
            .contains("already"));
        assert!(take_inherited(1).is_err());
        assert!(take_inherited(100_000)
            .unwrap_err()
            .to_string()
            .contains("not open"));
    }
}
