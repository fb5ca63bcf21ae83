//! The stop signals (SIGTERM, SIGINT): a handler writes a byte to a pipe,
//! and the main thread waits for it.
//!
//! A handler rather than a blocked mask and `sigwait`: a blocked mask is
//! inherited by every thread and by every process the app spawns
//! (`subprocess`), whose children would then ignore SIGTERM. The handler
//! only does async-signal-safe work: one `write(2)`, `errno` preserved.
//! Serving threads see `EINTR` now and then and retry.

use std::io;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The write end of the pipe, for the handler; it is never closed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

#[allow(unsafe_code)] // write(2) on a raw descriptor, from a signal handler.
extern "C" fn on_stop(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let saved = Errno::last_raw();
        // SAFETY: write(2) is async-signal-safe; `fd` is the pipe's write end,
        // which stays open for the life of the process; the buffer is a live
        // one-byte array. A full pipe (non-blocking) just drops the byte: a
        // stop is already pending then.
        unsafe {
            libc::write(fd, [1u8].as_ptr().cast(), 1);
        }
        Errno::set_raw(saved);
    }
}

/// Waits for SIGTERM or SIGINT (the read end of the pipe).
pub struct StopSignal {
    read: OwnedFd,
}

/// Installs the handlers. Call before the socket is bound, so a stop
/// requested right after "ready" is never lost.
#[allow(unsafe_code)] // sigaction(2).
pub fn install() -> io::Result<StopSignal> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    WAKE_FD.store(write.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: `on_stop` only calls async-signal-safe functions (an atomic
        // load, write(2), errno access) and touches no other state.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(StopSignal { read })
}

impl StopSignal {
    /// The pipe's read end: readable once a stop signal came (for an event loop).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.read.as_raw_fd()
    }

    /// Blocks until a stop signal arrives.
    pub fn wait(&self) -> io::Result<()> {
        let mut byte = [0u8];
        loop {
            match nix::unistd::read(&self.read, &mut byte) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
