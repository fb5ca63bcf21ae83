//! Sealed files: contents polyhost hands to a site process that the site
//! can read but never change, and that nobody else can reach.
//!
//! A sealed file is a `memfd` (a file in memory, on no file system) whose
//! writes, size changes and further seal changes are forbidden by the kernel
//! (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`). The process
//! inherits its descriptor and reads it as `/proc/self/fd/N`; the path is
//! only usable by that process (and what it forks), as another user cannot
//! follow another process's `/proc/<pid>/fd` links. php-fpm reads its
//! generated config this way: the site's code cannot rewrite it (a
//! SIGUSR2 to its own master re-reads it, so a writable file would let it
//! lift its `php_admin_value` limits), and a site that shares a group with
//! it cannot read the secrets in it.

use std::io::{self, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, SealFlags};

/// A sealed, close-on-exec file holding `contents`. `name` shows in
/// `/proc/<pid>/fd` as `/memfd:<name>`.
pub fn sealed_file(name: &str, contents: &[u8]) -> io::Result<OwnedFd> {
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // Not executable either, where the kernel knows how (Linux 6.3+).
    let fd = match rustix::fs::memfd_create(name, base | MemfdFlags::NOEXEC_SEAL) {
        Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, base)?,
        other => other?,
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn sealed_files_read_back_and_refuse_every_change() {
        let fd = sealed_file("test.conf", b"secret=1\n").unwrap();
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret=1\n");
        // Opened again for writing (as a site could, through /proc/self/fd).
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(w.write_all(b"secret=2").is_err(), "write");
        assert!(w.set_len(0).is_err(), "truncate");
        assert!(w.set_len(100).is_err(), "grow");
        assert!(
            rustix::fs::fcntl_add_seals(&w, SealFlags::empty()).is_err(),
            "seals are sealed"
        );
        let mut again = String::new();
        let mut file = std::fs::File::from(fd);
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_string(&mut again).unwrap();
        assert_eq!(again, "secret=1\n");
    }
}
