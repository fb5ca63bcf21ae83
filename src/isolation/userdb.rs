//! Name → id lookups for many sites at once: the `files` databases
//! (`/etc/passwd`, `/etc/group`) read in one pass and kept while they do not
//! change, so that resolving 10,000 site users costs one read of each file,
//! not 10,000 scans of a 10,000-line file (`getpwnam` reads `/etc/passwd`
//! from the top on every call: 1.3 ms each there; a group that `files`
//! lacks also asks systemd's NSS module: 2.6 ms).
//!
//! Answers are the ones `getpwnam`/`getgrnam` would give:
//! - the snapshot is used only when `/etc/nsswitch.conf` names `files`
//!   first for the database (then the first `files` entry of a name is what
//!   glibc returns), and neither file holds NIS `compat` lines (`+`/`-`);
//! - it is taken again whenever `/etc/passwd`, `/etc/group` or
//!   `/etc/nsswitch.conf` changed (device, inode, size, mtime, ctime: an edit
//!   in place or a new file renamed over it), looked at by the first lookup
//!   [`RECHECK`] after the last look (three `stat`s per lookup were a sixth
//!   of a 2,000-site start-up). A user added meanwhile is found anyway (a
//!   name the snapshot lacks is asked of the system); one removed or
//!   changed is seen at most [`RECHECK`] late;
//! - a name the files do not hold is asked of the system
//!   (`getpwnam`/`getgrnam`: LDAP, systemd, ...), never answered "missing"
//!   from the snapshot; the system's answer is kept for [`ASKED_TTL`] (as
//!   nscd would, for much longer): every site checks that its group is
//!   none of the privileged ones (`wheel`, `docker`, ... most of which a
//!   host lacks), and 10,000 sites would otherwise ask 10,000 times each.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::{Group, User};

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";
const NSSWITCH: &str = "/etc/nsswitch.conf";

/// A user as a site needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub dir: PathBuf,
}

/// How long an answer of the system (for a name the files lack) is kept.
pub const ASKED_TTL: Duration = Duration::from_secs(5);

/// The user named `name`, as `getpwnam` answers.
pub fn user(name: &str) -> nix::Result<Option<UserEntry>> {
    if let Some(found) = snapshot().and_then(|s| s.users.as_ref()?.get(name).cloned()) {
        return Ok(Some(found));
    }
    static ASKED: Asked<Option<UserEntry>> = Asked::new();
    ASKED.get_or_ask(name, || {
        Ok(User::from_name(name)?.map(|u| UserEntry {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            dir: u.dir,
        }))
    })
}

/// The id of the group named `name`, as `getgrnam` answers.
pub fn group_id(name: &str) -> nix::Result<Option<u32>> {
    if let Some(gid) = snapshot().and_then(|s| s.groups.as_ref()?.get(name).copied()) {
        return Ok(Some(gid));
    }
    static ASKED: Asked<Option<u32>> = Asked::new();
    ASKED.get_or_ask(name, || Ok(Group::from_name(name)?.map(|g| g.gid.as_raw())))
}

/// The system's answers by name, each kept for [`ASKED_TTL`]; a failed
/// lookup (out of descriptors, ...) is not kept.
struct Asked<T>(Mutex<Option<HashMap<String, (Instant, T)>>>);

impl<T: Clone> Asked<T> {
    const fn new() -> Self {
        Asked(Mutex::new(None))
    }

    fn get_or_ask(&self, name: &str, ask: impl FnOnce() -> nix::Result<T>) -> nix::Result<T> {
        let now = Instant::now();
        let fresh = |at: &Instant| now.duration_since(*at) < ASKED_TTL;
        {
            let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, answer)) = kept
                .as_ref()
                .and_then(|m| m.get(name))
                .filter(|(at, _)| fresh(at))
            {
                return Ok(answer.clone());
            }
        }
        // Asked without the lock: the system may take its time (LDAP).
        let answer = ask()?;
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let map = kept.get_or_insert_with(HashMap::new);
        if map.len() >= 1024 {
            map.retain(|_, (at, _)| fresh(at));
        }
        map.insert(name.to_owned(), (now, answer.clone()));
        Ok(answer)
    }
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// How long a snapshot is used without looking whether the files changed.
pub const RECHECK: Duration = Duration::from_millis(100);

/// The `files` databases as read at one moment.
struct Snapshot {
    stamps: [Option<Stamp>; 3],
    /// `None`: not answerable from the file (see the module doc).
    users: Option<HashMap<String, UserEntry>>,
    groups: Option<HashMap<String, u32>>,
}

/// The current snapshot: the kept one while the files are unchanged.
fn snapshot() -> Option<Arc<Snapshot>> {
    /// The snapshot, and when its stamps were last found unchanged.
    static KEPT: Mutex<Option<(Instant, Arc<Snapshot>)>> = Mutex::new(None);
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    if let Some((_, s)) = kept
        .as_ref()
        .filter(|(at, _)| now.duration_since(*at) < RECHECK)
    {
        return Some(s.clone());
    }
    let stamps = [
        stamp(Path::new(PASSWD)),
        stamp(Path::new(GROUP)),
        stamp(Path::new(NSSWITCH)),
    ];
    if let Some((at, s)) = kept.as_mut().filter(|(_, s)| s.stamps == stamps) {
        *at = now;
        return Some(s.clone());
    }
    // Stamped before reading: a change during the read makes the next
    // lookup read again.
    let nsswitch = std::fs::read_to_string(NSSWITCH).unwrap_or_default();
    // A file that should be read but cannot be (out of descriptors, ...):
    // this snapshot is not kept, the next lookup reads again.
    let mut failed = false;
    let mut read = |path: &str, db: &str| {
        if !files_first(&nsswitch, db) {
            return None;
        }
        let text = std::fs::read_to_string(path);
        failed |= text.is_err();
        text.ok()
    };
    let users = read(PASSWD, "passwd").and_then(|text| parse_passwd(&text));
    let groups = read(GROUP, "group").and_then(|text| parse_group(&text));
    let snapshot = Arc::new(Snapshot {
        stamps,
        users,
        groups,
    });
    *kept = (!failed).then(|| (now, snapshot.clone()));
    Some(snapshot)
}

/// Whether `nsswitch` (the text of nsswitch.conf) names `files` first for `db`.
fn files_first(nsswitch: &str, db: &str) -> bool {
    nsswitch
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim() == db)
        .is_some_and(|(_, sources)| sources.split_whitespace().next() == Some("files"))
}

/// Every line that glibc's `files` module would read, split into fields;
/// `None` when a NIS `compat` line (`+`, `-`) is there.
fn records(text: &str) -> Option<Vec<Vec<&str>>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('+') || line.starts_with('-') {
            return None;
        }
        out.push(line.split(':').collect());
    }
    Some(out)
}

fn parse_passwd(text: &str) -> Option<HashMap<String, UserEntry>> {
    let mut users = HashMap::new();
    for f in records(text)? {
        let [name, _, uid, gid, _, dir, ..] = f[..] else {
            continue;
        };
        let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse()) else {
            continue;
        };
        // The first entry of a name is the one getpwnam finds.
        users.entry(name.to_owned()).or_insert_with(|| UserEntry {
            name: name.to_owned(),
            uid,
            gid,
            dir: PathBuf::from(dir),
        });
    }
    Some(users)
}

fn parse_group(text: &str) -> Option<HashMap<String, u32>> {
    let mut groups = HashMap::new();
    for f in records(text)? {
        let [name, _, gid, ..] = f[..] else {
            continue;
        };
        if let Ok(gid) = gid.parse() {
            groups.entry(name.to_owned()).or_insert(gid);
        }
    }
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_first_is_answered_from_the_files() {
        let conf =
            "# comment\npasswd:         files systemd\ngroup: sss files # x\nshadow: files\n";
        assert!(files_first(conf, "passwd"));
        assert!(!files_first(conf, "group"));
        assert!(!files_first(conf, "hosts"));
        assert!(!files_first("passwd: compat\n", "passwd"));
    }

    #[test]
    fn the_first_entry_of_a_name_wins_and_bad_lines_are_skipped() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n\nbroken line\nalice:x:1000:1000::/home/alice:/bin/sh\n\
             bob:x:nope:1:::\nalice:x:2000:2000::/elsewhere:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            users["alice"],
            UserEntry {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                dir: "/home/alice".into()
            }
        );
        let groups = parse_group("root:x:0:\nsudo:x:27:alice,bob\nsudo:x:99:\n").unwrap();
        assert_eq!(groups["sudo"], 27);
        assert!(parse_passwd("alice:x:1:1::/:/bin/sh\n+@netgroup::::::\n").is_none());
        assert!(parse_group("-bad\n").is_none());
    }

    #[test]
    fn answers_are_what_the_system_answers() {
        for name in ["root", "nobody", "polyhost-no-such-user"] {
            let ours = user(name).unwrap();
            let system = User::from_name(name).unwrap();
            assert_eq!(
                ours.map(|u| u.uid),
                system.map(|u| u.uid.as_raw()),
                "{name}"
            );
        }
        for name in ["root", "nogroup", "polyhost-no-such-group"] {
            let system = Group::from_name(name).unwrap().map(|g| g.gid.as_raw());
            assert_eq!(group_id(name).unwrap(), system, "{name}");
        }
    }
}
