//! Whether a file range is in the page cache, without waiting for the disk:
//! one byte read with `preadv2(RWF_NOWAIT)` every [`STRIDE`] bytes and the
//! range's last byte. The kernel reads files ahead and evicts them in runs
//! of pages at least this long, so a range whose probes all hit is, in
//! practice, all there. `mincore` would be exact but needs the file mapped
//! (`unsafe`, and not allowed outside `isolation`); Linux 6.5's `cachestat`
//! is not on every supported kernel.
//!
//! Should a page between two probes have been evicted all the same,
//! `sendfile` reads it from the disk on the async thread: a rare stall of
//! that thread, the price nginx's `sendfile on` pays for every uncached file.

use std::fs::File;
use std::io::{self, IoSliceMut};

use rustix::io::{preadv2, Errno, ReadWriteFlags};

/// Distance between two probes: the kernel's default read-ahead window.
const STRIDE: u64 = 128 * 1024;

/// `Ok(true)`: every probe of `len` bytes from `offset` hit the page cache.
/// `Ok(false)`: one missed, or the file ends before the range does.
/// `Err(Unsupported)`: the file system cannot say (no `RWF_NOWAIT`).
pub fn in_page_cache(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let last = offset + len - 1;
    let mut at = offset;
    loop {
        if !probe(file, at)? {
            return Ok(false);
        }
        if at == last {
            return Ok(true);
        }
        at = (at + STRIDE).min(last);
    }
}

/// One byte at `at`, from the page cache only.
fn probe(file: &File, at: u64) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    loop {
        match preadv2(
            file,
            &mut [IoSliceMut::new(&mut byte)],
            at,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => return Ok(n == 1),
            Err(Errno::AGAIN) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                return Err(io::ErrorKind::Unsupported.into())
            }
            Err(e) => return Err(e.into()),
        }
    }
}
