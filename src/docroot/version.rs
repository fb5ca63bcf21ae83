//! Which file, in which state: what tells that a path still names the very
//! file an earlier lookup opened and admitted, unchanged since.
//!
//! A [`Version`] is taken from the `fstat` of a file opened through
//! [`super::DocRoot`] ([`Version::of`]) and compared, later, with a `statx`
//! of the same relative path beneath the root's handle of the moment
//! ([`super::DocRoot::version_of`]). Equal versions mean the same inode
//! (device and inode number) with the same size, type and permission bits,
//! owner, group, link count, modification and change times.
//!
//! Invariants:
//! - Every change that could alter a file's bytes or whether the site's
//!   user may read it sets the inode's change time (`ctime`): a write or
//!   truncation, `chmod`, `chown`, an ACL set (`setxattr`), a link made or
//!   removed, a rename. The kernel sets `ctime` itself, from its clock; no
//!   call lets a user choose it. So an unchanged version is an unchanged
//!   file, except within the clock tick of a change ([`Version::settled`]).
//! - `version_of` follows symlinks without `RESOLVE_BENEATH` (`statx` has
//!   no such flag); that is sound only because a match names the same
//!   inode the fenced open admitted: reaching it by another way changes
//!   nothing about its bytes or its permissions.
//! - `version_of` asks the file system for fresh attributes
//!   (`AT_STATX_FORCE_SYNC`: a network file system revalidates, as an
//!   `open` would; local ones answer from the inode).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Statx, StatxFlags};

use super::{DocRoot, Wait};

/// How long after its last change a file's version is trusted to name its
/// bytes: file times come from a coarse clock (a tick of up to 10 ms here,
/// 2 s on FAT), so a file read within the tick of a change may change
/// again without a new time.
pub const SETTLE: Duration = Duration::from_secs(2);

/// One file in one state (see the module's invariants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl Version {
    /// The version an open file's `fstat` describes.
    pub fn of(meta: &Metadata) -> Version {
        Version {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            nlink: meta.nlink(),
            mtime: (meta.mtime(), nsec(meta.mtime_nsec())),
            ctime: (meta.ctime(), nsec(meta.ctime_nsec())),
        }
    }

    fn of_statx(st: &Statx) -> Version {
        Version {
            dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mode: u32::from(st.stx_mode),
            uid: st.stx_uid,
            gid: st.stx_gid,
            nlink: u64::from(st.stx_nlink),
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        }
    }

    /// Whether the file's last change is at least [`SETTLE`] before `now`:
    /// only then may what was read of it stand for this version.
    pub fn settled(&self, now: SystemTime) -> bool {
        let changed = match u64::try_from(self.ctime.0) {
            Ok(secs) => UNIX_EPOCH + Duration::new(secs, self.ctime.1),
            Err(_) => return false,
        };
        now.duration_since(changed).is_ok_and(|age| age >= SETTLE)
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

fn nsec(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

impl DocRoot {
    /// The version of what `rel` (a checked relative path) names now,
    /// beneath the root's handle of the moment, symlinks followed. `None`
    /// when nothing is there, the root's handle is not kept (a lookup that
    /// would have to reopen it), or the file system fails: the caller then
    /// opens the path the ordinary way.
    pub fn version_of(&self, rel: &str) -> Option<Version> {
        if rel.is_empty() {
            return None;
        }
        let root = self.inner.current.get(Wait::CachedOnly).ok()?;
        let st = rustix::fs::statx(
            &root,
            rel,
            AtFlags::STATX_FORCE_SYNC | AtFlags::NO_AUTOMOUNT,
            StatxFlags::BASIC_STATS,
        )
        .ok()?;
        Some(Version::of_statx(&st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn root() -> (tempfile::TempDir, DocRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = DocRoot::open(dir.path(), super::super::Reader::Anyone).unwrap();
        (dir, root)
    }

    fn opened(root: &DocRoot, rel: &str) -> Version {
        Version::of(root.resolve_relative(rel).unwrap().metadata())
    }

    #[test]
    fn the_same_file_unchanged_has_the_same_version() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("a.txt"), b"one").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b.txt"), b"two").unwrap();
        // The root's handle is kept from the first open on: before it,
        // there is nothing to look beneath without a blocking open.
        assert_eq!(root.version_of("a.txt"), None);
        let (a, b) = (opened(&root, "a.txt"), opened(&root, "d/b.txt"));
        assert_eq!(root.version_of("a.txt"), Some(a));
        assert_eq!(root.version_of("d/b.txt"), Some(b));
        assert_eq!(root.version_of("missing.txt"), None);
        assert_eq!(root.version_of(""), None);
    }

    /// A change made to the test's file, by name.
    type Change<'a> = Box<dyn Fn() + 'a>;

    #[test]
    fn every_change_that_matters_changes_the_version() {
        let (dir, root) = root();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"one").unwrap();
        let mut before = opened(&root, "a.txt");
        let changes: [(&str, Change); 4] = [
            (
                "rewritten, same size",
                Box::new(|| {
                    // Past the file times' clock tick (up to 10 ms): a
                    // rewrite within the tick is what `settled` rules out.
                    std::thread::sleep(Duration::from_millis(50));
                    std::fs::write(&path, b"two").unwrap()
                }),
            ),
            (
                "chmod",
                Box::new(|| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap()
                }),
            ),
            (
                "hard link made",
                Box::new(|| std::fs::hard_link(&path, dir.path().join("link")).unwrap()),
            ),
            (
                "replaced by another file",
                Box::new(|| {
                    std::fs::write(dir.path().join("new"), b"one").unwrap();
                    std::fs::rename(dir.path().join("new"), &path).unwrap();
                }),
            ),
        ];
        for (what, change) in changes {
            change();
            let now = root.version_of("a.txt").expect("the file is there");
            assert_ne!(now, before, "{what}: the version did not change");
            before = now;
        }
    }

    #[test]
    fn a_file_is_settled_only_a_while_after_its_last_change() {
        let (dir, root) = root();
        std::fs::write(dir.path().join("a.txt"), b"one").unwrap();
        let v = opened(&root, "a.txt");
        let now = SystemTime::now();
        assert!(!v.settled(now), "a file changed just now is not settled");
        assert!(v.settled(now + SETTLE + Duration::from_millis(100)));
        assert!(
            !v.settled(UNIX_EPOCH),
            "a change in the future is not settled"
        );
    }
}
