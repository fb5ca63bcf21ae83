//! Whose permissions a document root's files are served with.
//!
//! polyhost opens a site's files as root, so without a check of its own it
//! would serve anything a site owner can place under the site's root: a
//! root-only file copied there, a hard link to `/etc/shadow` (where
//! `fs.protected_hardlinks` is off), another site's file linked in. So a
//! file is served only if the site's own user could read it, decided on the
//! *open* descriptor (its `fstat` and its ACL), never on the path:
//!
//! - [`Reader::User`]: the uid and the group the site's processes run with
//!   (they get no supplementary groups: `isolation::spawn` calls
//!   `setgroups([gid])`), so static files follow the same rule as the
//!   site's own code. The owner's bits for the owner; otherwise the POSIX
//!   ACL when there is one (evaluated as the kernel does), else the group's
//!   bits for a member of the file's group, else the others' bits.
//! - [`Reader::Anyone`]: a site without a user (a static site and no
//!   `default_user`): only files every user may read (the others' bits).
//! - A file with more than one hard link is served only to the user who owns
//!   it: a link is a second name for a file, made wherever its maker could
//!   write, and need not say whose it is. [`Reader::Anyone`] owns nothing.
//!
//! Directories are not checked (a directory's search bits are not
//! evaluated along the path): only the file served is.
//!
//! Cost on the hot path: nothing beyond the `fstat` already made for the
//! response, except one `fgetxattr` for a file the site's user does not own
//! whose group bits are not all clear (the only files an ACL can apply to),
//! and not even that for a file already found without an ACL ([`no_acl`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ResolveError;

/// Whose read permission a file must grant to be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    /// No site user: only world-readable files, and no file with more than
    /// one hard link.
    Anyone,
    /// The site's user: its uid and the groups its processes have.
    User { uid: u32, gids: Box<[u32]> },
}

/// The one answer for a file the reader may not read: 403, like a web
/// server whose worker user cannot open the file (the file's existence is
/// no secret from the site's owner, who put it there).
const DENIED: ResolveError = ResolveError::Forbidden("the site's user may not read this file");
const FOREIGN_LINK: ResolveError =
    ResolveError::Forbidden("a hard link to a file the site's user does not own");
const BAD_ACL: ResolveError = ResolveError::Forbidden("the file's ACL cannot be evaluated");

/// `MAY_READ`, and the read bit of `ACL_READ` / a mode triplet.
const READ: u32 = 4;

impl Reader {
    /// A site user with exactly these credentials.
    pub fn user(uid: u32, gids: &[u32]) -> Reader {
        Reader::User {
            uid,
            gids: gids.into(),
        }
    }

    /// Whether `file` (with `meta`, its `fstat`) may be served to this reader.
    pub(super) fn check(&self, file: &File, meta: &Metadata) -> Result<(), ResolveError> {
        let facts = Facts {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
            nlink: meta.nlink(),
        };
        self.decide(&facts, || read_acl_cached(file, meta))
    }

    /// The decision, with the ACL read on demand (`Ok(None)`: none).
    fn decide(
        &self,
        f: &Facts,
        acl: impl FnOnce() -> io::Result<Option<Vec<u8>>>,
    ) -> Result<(), ResolveError> {
        let (uid, gids) = match self {
            Reader::Anyone if f.nlink > 1 => return Err(FOREIGN_LINK),
            Reader::Anyone => return allow(f.mode & READ),
            Reader::User { uid, gids } => (*uid, gids),
        };
        if f.uid == uid {
            // As the kernel: the owner gets the owner's bits, ACL or not.
            return allow((f.mode >> 6) & READ);
        }
        if f.nlink > 1 {
            return Err(FOREIGN_LINK);
        }
        // The kernel consults an ACL only when the group class bits (with an
        // ACL: its mask) grant something.
        if f.mode & 0o070 != 0 {
            if let Some(acl) = acl().map_err(ResolveError::Io)? {
                return match acl_permits(&acl, uid, gids, f.gid) {
                    Some(true) => Ok(()),
                    Some(false) => Err(DENIED),
                    None => Err(BAD_ACL),
                };
            }
        }
        let bits = if gids.contains(&f.gid) {
            f.mode >> 3
        } else {
            f.mode
        };
        allow(bits & READ)
    }
}

fn allow(read_bit: u32) -> Result<(), ResolveError> {
    if read_bit != 0 {
        Ok(())
    } else {
        Err(DENIED)
    }
}

/// What the decision needs from `fstat`.
struct Facts {
    uid: u32,
    gid: u32,
    mode: u32,
    nlink: u64,
}

/// [`read_acl`], unless this thread already found no ACL on the file at its
/// present change time ([`no_acl`]).
fn read_acl_cached(file: &File, meta: &Metadata) -> io::Result<Option<Vec<u8>>> {
    let key = no_acl::Key::of(meta);
    if no_acl::known(&key) {
        return Ok(None);
    }
    let acl = read_acl(file)?;
    if acl.is_none() {
        no_acl::remember(key, SystemTime::now());
    }
    Ok(acl)
}

/// Files found without an ACL, so the next request for one makes no
/// `fgetxattr` (nginx makes none: this was the one system call per static
/// file it does not make).
///
/// Invariant: an answer kept here is exactly what `fgetxattr` would say
/// now. It is kept per file (`st_dev`, `st_ino`) with the file's change
/// time (`st_ctime`, to the nanosecond), and the kernel sets the change time
/// to the current time whenever an ACL is set or removed (as on any
/// `chmod`, `chown`, link count or xattr change), and nobody can set it
/// back (`utimensat` sets only the access and modification times). So a
/// file whose ACL changed no longer matches its entry. One race is closed
/// by when an answer is kept: only for a file whose change time is at least
/// [`no_acl::SETTLED`] in the past, since the change time has the coarse
/// clock's granularity (a tick): an ACL set within the same tick as an
/// earlier change would leave the time as it was. An inode number reused
/// by a new file comes with that file's own (later) change time. Per
/// thread (no lock on the request path) and bounded ([`no_acl::KEPT`]).
mod no_acl {
    use super::*;

    /// How old a file's change time must be for its answer to be kept.
    pub(super) const SETTLED: Duration = Duration::from_secs(2);
    /// Entries per thread; all are forgotten when it is full.
    pub(super) const KEPT: usize = 4096;

    thread_local! {
        static NO_ACL: RefCell<HashMap<(u64, u64), (i64, i64)>> = RefCell::new(HashMap::new());
    }

    /// A file and its change time.
    pub(super) struct Key {
        pub(super) file: (u64, u64),
        pub(super) ctime: (i64, i64),
    }

    impl Key {
        pub(super) fn of(meta: &Metadata) -> Key {
            Key {
                file: (meta.dev(), meta.ino()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            }
        }
    }

    /// Whether the file was found without an ACL at this change time.
    pub(super) fn known(key: &Key) -> bool {
        NO_ACL.with_borrow(|m| m.get(&key.file) == Some(&key.ctime))
    }

    /// The file has no ACL (just read); kept if its change time is settled at `now`.
    pub(super) fn remember(key: Key, now: SystemTime) {
        let settled = now
            .checked_sub(SETTLED)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|t| key.ctime < (t.as_secs() as i64, i64::from(t.subsec_nanos())));
        if !settled {
            return;
        }
        NO_ACL.with_borrow_mut(|m| {
            if m.len() >= KEPT {
                m.clear();
            }
            m.insert(key.file, key.ctime);
        });
    }

    #[cfg(test)]
    pub(super) fn forget_all() {
        NO_ACL.with_borrow_mut(HashMap::clear);
    }
}

/// The largest ACL evaluated: 4 + 8 × 128 bytes. A file with a larger one
/// is refused (ERANGE) rather than read with a growing buffer.
const ACL_BUF: usize = 4 + 8 * 128;

/// The file's access ACL (`system.posix_acl_access`), if it has one. A file
/// system without ACLs (`EOPNOTSUPP`) has none.
fn read_acl(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; ACL_BUF];
    match rustix::fs::fgetxattr(file, "system.posix_acl_access", &mut buf[..]) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => Ok(None),
        // Too large to evaluate here: an empty ACL is refused as malformed.
        Err(rustix::io::Errno::RANGE) => Ok(Some(Vec::new())),
        Err(e) => Err(e.into()),
    }
}

// Tags of the POSIX ACL xattr format (linux/posix_acl_xattr.h).
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_XATTR_VERSION: u32 = 2;

/// Evaluates a `system.posix_acl_access` value for read access by a user
/// who does not own the file, as the kernel's `posix_acl_permission` does.
/// `None`: the value is malformed (then nothing is served).
///
/// Written by hand: the crates that handle ACLs link libacl, and the value
/// is a 4-byte version followed by 8-byte entries (tag, perm, id; little
/// endian), already validated and sorted by the kernel when it was set.
fn acl_permits(acl: &[u8], uid: u32, gids: &[u32], file_gid: u32) -> Option<bool> {
    let (version, entries) = acl.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != ACL_XATTR_VERSION || entries.len() % 8 != 0 {
        return None;
    }
    let entries: Vec<(u16, u32, u32)> = entries
        .chunks_exact(8)
        .map(|e| {
            (
                u16::from_le_bytes([e[0], e[1]]),
                u32::from(u16::from_le_bytes([e[2], e[3]])),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    let mask = entries
        .iter()
        .find(|(tag, _, _)| *tag == ACL_MASK)
        .map_or(7, |(_, perm, _)| *perm);
    let masked = |perm: u32| perm & mask & READ != 0;
    let mut found_group = false;
    for &(tag, perm, id) in &entries {
        match tag {
            // The owner never gets here (decided by the mode's owner bits).
            ACL_USER_OBJ | ACL_MASK => {}
            ACL_USER if id == uid => return Some(masked(perm)),
            ACL_USER => {}
            ACL_GROUP_OBJ | ACL_GROUP => {
                let gid = if tag == ACL_GROUP_OBJ { file_gid } else { id };
                if gids.contains(&gid) {
                    found_group = true;
                    if perm & READ != 0 {
                        return Some(masked(perm));
                    }
                }
            }
            ACL_OTHER => return Some(!found_group && perm & READ != 0),
            _ => return None,
        }
    }
    // No ACL_OTHER entry: the kernel answers EIO.
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(uid: u32, gid: u32, mode: u32, nlink: u64) -> Facts {
        Facts {
            uid,
            gid,
            mode,
            nlink,
        }
    }

    fn no_acl() -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// An ACL xattr value from (tag, perm, id) entries.
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut out = ACL_XATTR_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(perm.to_le_bytes());
            out.extend(id.to_le_bytes());
        }
        out
    }

    const SITE: u32 = 1000;
    const SITE_GROUP: u32 = 1000;
    const OTHER_USER: u32 = 2000;
    const OTHER_GROUP: u32 = 2000;

    fn site() -> Reader {
        Reader::user(SITE, &[SITE_GROUP])
    }

    #[test]
    fn mode_bits_decide_without_an_acl() {
        // (owner, group, mode, nlink) → may the site read it?
        let cases = [
            ((SITE, SITE_GROUP, 0o600, 1), true),
            ((SITE, OTHER_GROUP, 0o400, 1), true),
            // The owner gets the owner's bits, even when others may read.
            ((SITE, SITE_GROUP, 0o044, 1), false),
            ((0, 0, 0o600, 1), false),
            ((0, 0, 0o644, 1), true),
            ((OTHER_USER, SITE_GROUP, 0o640, 1), true),
            ((OTHER_USER, SITE_GROUP, 0o600, 1), false),
            // A member of the file's group gets the group's bits, not the others'.
            ((OTHER_USER, SITE_GROUP, 0o604, 1), false),
            ((OTHER_USER, OTHER_GROUP, 0o640, 1), false),
            ((OTHER_USER, OTHER_GROUP, 0o604, 1), true),
            // Hard links: served only to their owner.
            ((SITE, SITE_GROUP, 0o600, 2), true),
            ((0, 0, 0o644, 2), false),
            ((OTHER_USER, SITE_GROUP, 0o640, 3), false),
        ];
        for ((uid, gid, mode, nlink), want) in cases {
            let got = site().decide(&facts(uid, gid, mode, nlink), no_acl).is_ok();
            assert_eq!(got, want, "uid {uid} gid {gid} mode {mode:o} nlink {nlink}");
        }
    }

    #[test]
    fn without_a_user_only_world_readable_single_link_files() {
        let cases = [
            ((0, 0, 0o644, 1), true),
            ((SITE, SITE_GROUP, 0o604, 1), true),
            ((SITE, SITE_GROUP, 0o640, 1), false),
            ((0, 0, 0o600, 1), false),
            ((0, 0, 0o644, 2), false),
        ];
        for ((uid, gid, mode, nlink), want) in cases {
            let got = Reader::Anyone
                .decide(&facts(uid, gid, mode, nlink), || {
                    panic!("no ACL is read for Anyone")
                })
                .is_ok();
            assert_eq!(got, want, "uid {uid} gid {gid} mode {mode:o} nlink {nlink}");
        }
    }

    #[test]
    fn acls_are_evaluated_as_the_kernel_does() {
        let base = |extra: &[(u16, u16, u32)], mask: u16, other: u16| {
            let mut e = vec![(ACL_USER_OBJ, 6, 0)];
            e.extend(extra.iter().filter(|(t, _, _)| *t == ACL_USER));
            e.push((ACL_GROUP_OBJ, 0, 0));
            e.extend(extra.iter().filter(|(t, _, _)| *t == ACL_GROUP));
            e.push((ACL_MASK, mask, 0));
            e.push((ACL_OTHER, other, 0));
            acl(&e)
        };
        // (ACL, file group) → may the site read a root-owned file with it?
        let cases = [
            // A named entry for the site's user grants it...
            (base(&[(ACL_USER, 4, SITE)], 4, 0), 0, true),
            // ...within the mask.
            (base(&[(ACL_USER, 4, SITE)], 0, 0), 0, false),
            // A named entry without read denies, even if others may read.
            (base(&[(ACL_USER, 0, SITE)], 7, 4), 0, false),
            // A named entry for someone else changes nothing.
            (base(&[(ACL_USER, 4, OTHER_USER)], 4, 0), 0, false),
            (base(&[(ACL_USER, 4, OTHER_USER)], 4, 4), 0, true),
            // Named group of the site: granted within the mask.
            (base(&[(ACL_GROUP, 4, SITE_GROUP)], 4, 0), 0, true),
            (base(&[(ACL_GROUP, 4, SITE_GROUP)], 0, 0), 0, false),
            // A matching group without read: others' entry does not apply.
            (base(&[(ACL_GROUP, 0, SITE_GROUP)], 4, 4), 0, false),
            // The owning group (GROUP_OBJ, perm 0 here) of the site's group.
            (base(&[], 4, 4), SITE_GROUP, false),
            (base(&[], 4, 4), OTHER_GROUP, true),
        ];
        for (i, (value, gid, want)) in cases.into_iter().enumerate() {
            let got = site()
                .decide(&facts(0, gid, 0o640, 1), || Ok(Some(value.clone())))
                .is_ok();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn the_acl_is_read_only_when_it_can_matter() {
        let never = || -> io::Result<Option<Vec<u8>>> { panic!("ACL read") };
        // The owner, a foreign hard link, and clear group bits decide alone.
        assert!(site().decide(&facts(SITE, 0, 0o600, 1), never).is_ok());
        assert!(site().decide(&facts(0, 0, 0o644, 2), never).is_err());
        assert!(site().decide(&facts(0, 0, 0o604, 1), never).is_ok());
    }

    #[test]
    fn no_acl_is_remembered_for_a_settled_change_time_only() {
        no_acl::forget_all();
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = file.as_file().metadata().unwrap();
        let changed = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        // Changed less than SETTLED ago: an ACL set in the same clock tick
        // would leave the change time as it is, so nothing is kept.
        no_acl::remember(no_acl::Key::of(&meta), changed + no_acl::SETTLED / 2);
        assert!(!no_acl::known(&no_acl::Key::of(&meta)));
        no_acl::remember(
            no_acl::Key::of(&meta),
            changed + no_acl::SETTLED + Duration::from_nanos(1),
        );
        assert!(no_acl::known(&no_acl::Key::of(&meta)));
        // Any later change time (an ACL set, a chmod) or another file: unknown.
        let mut later = no_acl::Key::of(&meta);
        later.ctime.1 += 1;
        assert!(!no_acl::known(&later));
        let mut other = no_acl::Key::of(&meta);
        other.file.1 += 1;
        assert!(!no_acl::known(&other));
    }

    #[test]
    fn the_remembered_files_are_bounded() {
        no_acl::forget_all();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for ino in 0..=no_acl::KEPT as u64 {
            no_acl::remember(
                no_acl::Key {
                    file: (1, ino),
                    ctime: (1, 0),
                },
                now,
            );
        }
        let last = no_acl::Key {
            file: (1, no_acl::KEPT as u64),
            ctime: (1, 0),
        };
        assert!(no_acl::known(&last));
        let first = no_acl::Key {
            file: (1, 0),
            ctime: (1, 0),
        };
        assert!(!no_acl::known(&first), "a full table is forgotten");
    }

    #[test]
    fn malformed_acls_are_refused() {
        for value in [
            vec![],
            vec![2, 0, 0],
            acl(&[(ACL_USER_OBJ, 6, 0)]), // no ACL_OTHER
            acl(&[(0x40, 4, 0), (ACL_OTHER, 4, 0)]),
            {
                let mut v = acl(&[(ACL_OTHER, 4, 0)]);
                v[0] = 1; // version
                v
            },
            {
                let mut v = acl(&[(ACL_OTHER, 4, 0)]);
                v.push(0);
                v
            },
        ] {
            let got = site().decide(&facts(0, 0, 0o644, 1), || Ok(Some(value.clone())));
            assert!(
                matches!(got, Err(ResolveError::Forbidden(why)) if why.contains("ACL")),
                "{value:?}: {got:?}"
            );
        }
    }
}
