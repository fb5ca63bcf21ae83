//! Site cgroups: one interface ([`CgroupRoot`], [`SiteCgroup`]) over the
//! cgroup v2 and cgroup v1 backends, detected once at start.
//!
//! Owns every directory polyhost creates under `/sys/fs/cgroup` and every
//! cgroup file it writes. Invariants:
//! - everything lives under `<our own cgroup>/<parent>/` (`parent` is
//!   normally `polyhost`), never at a hierarchy root;
//! - no process is ever placed in `<parent>/` itself (v2 needs it to be an
//!   inner node to enable controllers for the sites);
//! - a limit that was asked for but cannot be written is an error, never a
//!   silent no-op (fail closed);
//! - a site cgroup is removed only after everything in it was killed.
//!
//! Layout and fallback are described in `docs/isolation.md`.
//!
//! # Layout
//! - this file: the shared types ([`Limits`], [`Usage`], [`CgroupKind`],
//!   [`CgroupError`]) and the rule for cgroup names;
//! - `root`: [`CgroupRoot`], detection, site creation, stale clean-up;
//! - `site`: [`SiteCgroup`], one site's cgroup: usage, processes, kill, remove;
//! - `files`: reading and writing cgroup files, listing and removing directories;
//! - `discover`: finding our own cgroup in `/proc/self`; `v1`, `v2`: each
//!   backend's limit and usage files.

mod discover;
mod files;
mod root;
mod site;
mod v1;
mod v2;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use root::CgroupRoot;
pub use site::SiteCgroup;

/// Resource limits of one site. `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory (RAM) in bytes; swap is not allowed on top of it.
    pub memory: Option<u64>,
    /// Number of processes (tasks, threads included) in the site.
    pub processes: Option<u64>,
    /// CPU time in cores (1.5 = one and a half cores).
    pub cpu: Option<f64>,
}

/// A snapshot of what a site uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes charged to the site now.
    pub memory_current: Option<u64>,
    /// The memory limit in force (`None`: unlimited or unknown).
    pub memory_limit: Option<u64>,
    /// Processes the kernel's OOM killer killed in this cgroup so far.
    pub oom_kills: u64,
    /// Tasks in the site now.
    pub pids_current: Option<u64>,
    /// The task limit in force (`None`: unlimited, or no pids controller).
    pub pids_limit: Option<u64>,
}

/// Which cgroup backend this host gives us. The paths are the `<parent>`
/// directories (e.g. `/sys/fs/cgroup/system.slice/polyhost.service/polyhost`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupKind {
    V2 {
        dir: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// No usable cgroup: sites are limited by rlimits only (see `docs/isolation.md`).
    Unavailable {
        reason: String,
    },
}

/// What can go wrong with cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroups are not available ({0}): sites run with rlimits only")]
    Unavailable(String),
    #[error("`{0}` cannot name a cgroup: use letters, digits, `-`, `_` and `.` (not first)")]
    InvalidName(String),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {controller} controller is not available in {}: a {controller} limit cannot be enforced (on v2, enable it in the parent's cgroup.subtree_control; under systemd set Delegate=yes)", dir.display())]
    ControllerMissing {
        controller: &'static str,
        dir: PathBuf,
    },
    #[error("{} still has processes after killing them for {timeout:?}", path.display())]
    StillBusy { path: PathBuf, timeout: Duration },
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// Site and sub-cgroup names become directory names: keep them boring.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        // cgroup v1 and v2 reserve names with these prefixes for their files.
        && !name.starts_with("cgroup.");
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["blog", "shop-2", "a_b.c", "x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "cgroup.procs",
            "sp ace",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
