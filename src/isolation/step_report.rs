//! How a child between `fork` and `exec` says which of its set-up steps
//! failed: one byte (the step's number) over a close-on-exec pipe to its
//! parent, the errno through std's own pipe. Shared by site processes
//! (`spawn::child`) and the router process (`router_process`).
//!
//! Invariant: [`StepReport`] makes one async-signal-safe `write(2)` and
//! reads `errno` before it, so it is sound in a forked child.

use std::io;
use std::os::fd::RawFd;

/// The child's end of the report pipe.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepReport {
    fd: RawFd,
}

impl StepReport {
    pub(crate) fn new(fd: RawFd) -> Self {
        StepReport { fd }
    }

    /// `step` failed with the current `errno`: reports it, returns the error.
    pub(crate) fn fail(self, step: u8) -> io::Error {
        // Read errno first: the report write may change it.
        let err = io::Error::last_os_error();
        self.report(step);
        err
    }

    /// `step` failed with `errno`: reports it, returns the error.
    pub(crate) fn fail_with(self, step: u8, errno: i32) -> io::Error {
        self.report(step);
        io::Error::from_raw_os_error(errno)
    }

    /// Reports `step` alone (the caller has its error already).
    pub(crate) fn report(self, step: u8) {
        let byte = [step];
        // SAFETY: write(2) of one byte from a stack buffer to a descriptor
        // the child holds; async-signal-safe. Its result does not matter:
        // the parent falls back to "exec" when the byte is missing.
        unsafe { libc::write(self.fd, byte.as_ptr().cast(), 1) };
    }
}
