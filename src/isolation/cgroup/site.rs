//! [`SiteCgroup`]: the cgroup of one site (or of one of its processes) on
//! whichever backend is in use: its sub-cgroups, usage, processes, and
//! killing everything in it before it is removed.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::files::{make_dir, procs_recursive, remove_tree, write_file};
#[cfg(doc)]
use super::CgroupRoot;
use super::{check_name, v1, v2, CgroupError, Limits, Result, Usage};

/// How long [`SiteCgroup::kill_all`] keeps killing before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup of one site (or one process of a site, see [`SiteCgroup::child`]).
///
/// Cheap to clone: it is a set of paths. A [`crate::isolation::SiteProcess`]
/// started in it treats it as its own: stopping the process kills everything
/// in the cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteCgroup {
    pub(super) name: String,
    pub(super) backend: Backend,
    /// A site cgroup made on demand ([`CgroupRoot::site_on_demand`]): its
    /// directories and limits, made by the first [`SiteCgroup::child`].
    pub(super) pending: Option<Arc<Pending>>,
}

/// The limits a cgroup made on demand gets, and whether it was made.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) limits: Limits,
    pub(super) made: Mutex<bool>,
}

/// One set-up's cgroup is one `Pending`: equal only to itself.
impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Pending {}

/// Where a site cgroup lives: one directory on v2, one per hierarchy on v1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Backend {
    V2 {
        dir: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
}

impl Backend {
    /// The cgroup `name` below this one, in every hierarchy.
    pub(super) fn join(&self, name: &str) -> Backend {
        match self {
            Backend::V2 { dir } => Backend::V2 {
                dir: dir.join(name),
            },
            Backend::V1 { memory, pids, cpu } => Backend::V1 {
                memory: memory.join(name),
                pids: pids.as_ref().map(|p| p.join(name)),
                cpu: cpu.as_ref().map(|p| p.join(name)),
            },
        }
    }

    /// Makes (or reuses) the directories and writes `limits` (all of
    /// them, also `None` ones as "unlimited", so a reused cgroup does not
    /// keep old limits).
    pub(super) fn make(&self, limits: &Limits) -> Result<()> {
        for dir in self.dirs() {
            make_dir(dir)?;
        }
        match self {
            Backend::V2 { dir } => v2::write_limits(dir, limits),
            Backend::V1 { memory, pids, cpu } => {
                v1::write_limits(memory, pids.as_deref(), cpu.as_deref(), limits)
            }
        }
    }

    pub(super) fn dirs(&self) -> Vec<&Path> {
        match self {
            Backend::V2 { dir } => vec![dir],
            Backend::V1 { memory, pids, cpu } => std::iter::once(memory.as_path())
                .chain(pids.as_deref())
                .chain(cpu.as_deref())
                .collect(),
        }
    }
}

impl fmt::Display for SiteCgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dirs: Vec<String> = self
            .backend
            .dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        write!(f, "{}", dirs.join(", "))
    }
}

impl SiteCgroup {
    /// The site (or sub-cgroup) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directories of this cgroup (one on v2, one per hierarchy on v1).
    pub fn dirs(&self) -> Vec<&Path> {
        self.backend.dirs()
    }

    /// The `cgroup.procs` files a new process must join (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Creates (or reuses) a sub-cgroup without limits of its own: the
    /// site's limits still apply to it as a whole. Use one per process when a
    /// site runs several (e.g. Python workers), so stopping one process kills
    /// only its own tree. On v2 the site cgroup then must not hold processes
    /// itself.
    ///
    /// A site cgroup made on demand is made first, with its limits.
    pub fn child(&self, name: &str) -> Result<SiteCgroup> {
        check_name(name)?;
        self.make()?;
        let backend = self.backend.join(name);
        for dir in backend.dirs() {
            make_dir(dir)?;
        }
        Ok(SiteCgroup {
            name: format!("{}/{name}", self.name),
            backend,
            pending: None,
        })
    }

    /// Makes (or reuses) the directories of a cgroup made on demand and
    /// writes its limits, once per set-up.
    fn make(&self) -> Result<()> {
        let Some(pending) = &self.pending else {
            return Ok(());
        };
        let mut made = pending.made.lock().unwrap_or_else(|p| p.into_inner());
        if *made {
            return Ok(());
        }
        self.backend.make(&pending.limits)?;
        *made = true;
        Ok(())
    }

    /// Whether its directories exist (a cgroup made on demand: once its
    /// first process started).
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    /// What the site uses now (memory, OOM kills, tasks).
    pub fn usage(&self) -> Result<Usage> {
        match &self.backend {
            Backend::V2 { dir } => v2::usage(dir),
            Backend::V1 { memory, pids, .. } => v1::usage(memory, pids.as_deref()),
        }
    }

    /// Every process in this cgroup and its sub-cgroups (sorted, no duplicates).
    pub fn procs(&self) -> Result<Vec<i32>> {
        let mut all = BTreeSet::new();
        for dir in self.dirs() {
            procs_recursive(dir, &mut all)?;
        }
        Ok(all.into_iter().collect())
    }

    /// Kills every process in the cgroup (and sub-cgroups) with SIGKILL, until
    /// none is left. v2 uses `cgroup.kill` where the kernel has it (5.14+);
    /// v1 (and older v2) signal every listed pid, again and again, until the
    /// cgroup is empty (a fork bomb is bounded by the pids limit).
    ///
    /// Returns every pid seen in the cgroup while killing, so that the
    /// caller can reap those that were reparented to polyhost.
    pub fn kill_all(&self) -> Result<Vec<i32>> {
        let mut seen = BTreeSet::new();
        if let Backend::V2 { dir } = &self.backend {
            let kill_file = dir.join("cgroup.kill");
            if kill_file.exists() {
                procs_recursive(dir, &mut seen)?;
                write_file(&kill_file, "1")?;
            }
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let now = self.procs()?;
            if now.is_empty() {
                return Ok(seen.into_iter().collect());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::StillBusy {
                    path: self.dirs()[0].to_path_buf(),
                    timeout: KILL_TIMEOUT,
                });
            }
            for pid in now {
                seen.insert(pid);
                // ESRCH: it is already gone.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills everything in the cgroup and removes it (and its sub-cgroups),
    /// retrying `rmdir` briefly while the kernel drains. A cgroup that is
    /// already gone is fine.
    pub fn remove(&self) -> Result<()> {
        if self.dirs().iter().all(|d| !d.exists()) {
            return Ok(());
        }
        let seen = self.kill_all()?;
        crate::isolation::reap::reap_adopted(&seen);
        for dir in self.dirs() {
            remove_tree(dir)?;
        }
        Ok(())
    }
}
