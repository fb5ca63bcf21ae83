//! The cgroups of a polyhost under test: the hygiene check after a clean
//! stop, and the sweep that removes them when a test fails instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the parent cgroup (`polyhost-<hash>`) of the polyhost whose
/// state dir is `state_dir`.
fn parent_name(state_dir: &Path) -> String {
    let canonical = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    polyhost::supervisor::cgroup_parent_name(&canonical)
}

/// After a server stopped: no socket in its state dir, no cgroup of its.
pub fn check_hygiene(state_dir: &Path) {
    for site in ["sites", "sockets"]
        .into_iter()
        .flat_map(|d| std::fs::read_dir(state_dir.join(d)).into_iter().flatten())
        .filter_map(Result::ok)
    {
        for f in std::fs::read_dir(site.path())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            assert!(
                f.path().extension().is_none_or(|e| e != "sock"),
                "socket left behind: {}",
                f.path().display()
            );
        }
    }
    let mut leftover = Vec::new();
    find_dirs(
        Path::new("/sys/fs/cgroup"),
        &parent_name(state_dir),
        6,
        &mut leftover,
    );
    assert!(leftover.is_empty(), "cgroup left behind: {leftover:?}");
}

/// polyhost's parent cgroup directories (`polyhost-<hash>`) of the polyhost
/// whose state dir is `state_dir`, in every hierarchy (one on v2, one per
/// controller on v1).
pub fn polyhost_cgroup_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    find_dirs(
        Path::new("/sys/fs/cgroup"),
        &parent_name(state_dir),
        6,
        &mut found,
    );
    found
}

/// Every directory named `name` below `dir` (at most `depth` levels down;
/// not below a match).
fn find_dirs(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let file_name = e.file_name();
        if file_name.to_str() == Some(name) {
            out.push(e.path());
        } else if !file_name.to_string_lossy().starts_with("polyhost-") {
            // Another polyhost's parent holds only its own sites: not ours.
            find_dirs(&e.path(), name, depth - 1, out);
        }
    }
}

/// Every pid listed in `dir`'s `cgroup.procs` and in its sub-cgroups.
pub fn procs(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(procs(&e.path()));
        }
    }
    out
}

/// rmdir of `dir`'s sub-cgroups, deepest first, then of `dir`.
fn remove_tree(dir: &Path) {
    for e in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Held by a polyhost under test: when it is dropped, SIGKILLs every
/// process left in that polyhost's cgroups (by the pids listed there, until
/// none is left, at most 10 s) and removes the cgroups, its parent ones
/// included, so neither a failed test nor one that ends by killing polyhost
/// (a dropped [`super::Binary`] is SIGKILLed) leaves running site code or
/// cgroups behind. After a clean stop there is nothing left to find
/// ([`check_hygiene`] checks that a clean stop removed them itself).
pub struct CgroupSweep {
    parent: String,
}

impl CgroupSweep {
    pub fn new(state_dir: &Path) -> CgroupSweep {
        CgroupSweep {
            parent: parent_name(state_dir),
        }
    }
}

impl Drop for CgroupSweep {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        find_dirs(Path::new("/sys/fs/cgroup"), &self.parent, 6, &mut dirs);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> = dirs.iter().flat_map(|d| procs(d)).collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in dirs {
            remove_tree(&dir);
        }
    }
}
