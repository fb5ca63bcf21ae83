//! [`CgroupRoot`]: the backend detected at start (v2, v1 or none) and
//! polyhost's parent cgroup in it; creates site cgroups with their limits
//! and removes those a previous run left behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::files::{rmdir_retrying, sub_dirs};
use super::site::{Backend, Pending, SiteCgroup};
use super::{check_name, discover, v1, v2, CgroupError, CgroupKind, Limits, Result};

/// The detected cgroup backend plus the name of polyhost's parent cgroup.
#[derive(Clone, Debug)]
pub struct CgroupRoot {
    kind: CgroupKind,
}

impl CgroupRoot {
    /// Detects the backend and creates `<own cgroup>/<parent_name>` in it.
    ///
    /// v2 is used when our v2 cgroup offers the memory and pids controllers;
    /// otherwise v1 when a memory hierarchy is mounted; otherwise the result is
    /// [`CgroupKind::Unavailable`] with the reason (never an error: the caller
    /// reports it and runs sites with rlimits only).
    ///
    /// On v2 this enables `+memory +pids +cpu` in our own cgroup's
    /// `cgroup.subtree_control`. The kernel only allows that when our cgroup has
    /// no processes, so if it has (polyhost itself), polyhost first moves itself
    /// into a leaf `<own>/<parent_name>-supervisor`. Under systemd the unit needs
    /// `Delegate=yes` for any of this to be allowed.
    pub fn detect(parent_name: &str) -> CgroupRoot {
        let kind = match Self::try_detect(parent_name) {
            Ok(kind) => kind,
            Err(reason) => CgroupKind::Unavailable { reason },
        };
        CgroupRoot { kind }
    }

    /// No cgroups, by the operator's choice (`cgroups = "off"`).
    pub fn disabled(reason: &str) -> CgroupRoot {
        CgroupRoot {
            kind: CgroupKind::Unavailable {
                reason: reason.to_owned(),
            },
        }
    }

    fn try_detect(parent_name: &str) -> std::result::Result<CgroupKind, String> {
        check_name(parent_name).map_err(|e| e.to_string())?;
        let (members, mounts) =
            discover::read_self().map_err(|e| format!("cannot read /proc/self: {e}"))?;
        let mut notes = Vec::new();
        if let Some(own) = discover::v2_dir(&members, &mounts) {
            let available = discover::controller_list(&own, "cgroup.controllers");
            if available.iter().any(|c| c == "memory") && available.iter().any(|c| c == "pids") {
                match v2::setup_parent(&own, parent_name) {
                    Ok(dir) => return Ok(CgroupKind::V2 { dir }),
                    Err(e) => notes.push(format!("v2: {e}")),
                }
            } else {
                notes.push(format!(
                    "v2 at {} offers no memory+pids controllers",
                    own.display()
                ));
            }
        }
        if let Some(memory_own) = discover::v1_dir("memory", &members, &mounts) {
            match v1::setup_parent(
                &memory_own,
                discover::v1_dir("pids", &members, &mounts).as_deref(),
                discover::v1_dir("cpu", &members, &mounts).as_deref(),
                parent_name,
            ) {
                Ok(kind) => return Ok(kind),
                Err(e) => notes.push(format!("v1: {e}")),
            }
        } else {
            notes.push("no v1 memory hierarchy mounted".to_owned());
        }
        Err(notes.join("; "))
    }

    /// Uses the v2 directory `own_dir` (a cgroup we may write, e.g. our own)
    /// instead of detecting; creates `<own_dir>/<parent_name>` and enables
    /// there whatever of memory, pids and cpu `own_dir` offers.
    pub fn v2_at(own_dir: &Path, parent_name: &str) -> Result<CgroupRoot> {
        check_name(parent_name)?;
        let dir = v2::setup_parent(own_dir, parent_name)?;
        Ok(CgroupRoot {
            kind: CgroupKind::V2 { dir },
        })
    }

    /// The backend in use.
    pub fn kind(&self) -> &CgroupKind {
        &self.kind
    }

    /// Whether site cgroups can be created at all.
    pub fn is_available(&self) -> bool {
        !matches!(self.kind, CgroupKind::Unavailable { .. })
    }

    /// One line for the status output and the start-up log.
    pub fn describe(&self) -> String {
        match &self.kind {
            CgroupKind::V2 { dir } => format!("cgroup v2 at {}", dir.display()),
            CgroupKind::V1 { memory, pids, cpu } => {
                let opt = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map_or("unavailable".to_owned(), |p| p.display().to_string())
                };
                format!(
                    "cgroup v1 (memory at {}, pids at {}, cpu at {})",
                    memory.display(),
                    opt(pids),
                    opt(cpu)
                )
            }
            CgroupKind::Unavailable { reason } => format!(
                "no cgroups ({reason}): memory is enforced by RSS polling and processes by RLIMIT_NPROC only"
            ),
        }
    }

    /// Creates (or reuses) the cgroup of site `name` and writes `limits`
    /// (all of them, also `None` ones as "unlimited", so a reused cgroup
    /// does not keep old limits).
    pub fn site(&self, name: &str, limits: &Limits) -> Result<SiteCgroup> {
        check_name(name)?;
        let backend = self
            .parent_backend()
            .map_err(|reason| CgroupError::Unavailable(reason.to_owned()))?
            .join(name);
        backend.make(limits)?;
        Ok(SiteCgroup {
            name: name.to_owned(),
            backend,
            pending: None,
        })
    }

    /// The cgroup of site `name`, made (or reused) with `limits` only when
    /// its first process starts in it ([`SiteCgroup::child`]): a site that
    /// runs nothing (idle, started on demand) has no cgroup directory.
    /// Until then [`SiteCgroup::usage`] fails (nothing to measure) and
    /// [`SiteCgroup::remove`] has nothing to do.
    pub fn site_on_demand(&self, name: &str, limits: &Limits) -> Result<SiteCgroup> {
        check_name(name)?;
        let backend = self
            .parent_backend()
            .map_err(|reason| CgroupError::Unavailable(reason.to_owned()))?
            .join(name);
        Ok(SiteCgroup {
            name: name.to_owned(),
            backend,
            pending: Some(std::sync::Arc::new(Pending {
                limits: *limits,
                made: std::sync::Mutex::new(false),
            })),
        })
    }

    /// Removes site cgroups left by a previous run (e.g. after polyhost was
    /// SIGKILLed), killing whatever still runs in them. Sites named in `keep`
    /// are left alone. Returns the names removed.
    pub fn cleanup_stale(&self, keep: &[&str]) -> Result<Vec<String>> {
        self.cleanup_stale_where(|name| !keep.contains(&name))
    }

    /// Removes the site cgroups whose names `remove` accepts (during a
    /// binary upgrade: only one instance's), killing whatever runs in them.
    pub fn cleanup_stale_where(&self, remove: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for parent in self.parent_dirs() {
            for name in sub_dirs(parent)? {
                if remove(&name) {
                    names.insert(name);
                }
            }
        }
        for name in &names {
            self.handle(name).remove()?;
        }
        Ok(names.into_iter().collect())
    }

    /// Removes every site cgroup and then `<parent>` itself (at shutdown, and
    /// in tests). On v2 the `-supervisor` leaf polyhost may sit in is kept.
    ///
    /// Every hierarchy is tried even when one fails (a failure in `pids`
    /// must not leave `cpu` behind too), and a parent that is still busy
    /// gets its site cgroups swept once more (one made while the first
    /// sweep ran: a process started during the stop). The first error is
    /// returned.
    pub fn remove_all(&self) -> Result<()> {
        let mut first_error = None;
        for _sweep in 0..2 {
            first_error = self.cleanup_stale(&[]).err();
            let mut busy = false;
            for parent in self.parent_dirs() {
                if let Err(e) = rmdir_retrying(parent) {
                    busy = true;
                    first_error.get_or_insert(e);
                }
            }
            if !busy {
                return first_error.map_or(Ok(()), Err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes polyhost's parent cgroups if nothing is left in them (no site
    /// cgroup, no process): what a polyhost that never stopped its sites
    /// cleanly (a test, a panic) would otherwise leave behind. Never kills,
    /// never waits: `rmdir` refuses a cgroup that is in use.
    pub fn remove_parents_if_empty(&self) {
        for parent in self.parent_dirs() {
            let _ = std::fs::remove_dir(parent);
        }
    }

    fn parent_dirs(&self) -> Vec<&Path> {
        match &self.kind {
            CgroupKind::V2 { dir } => vec![dir],
            CgroupKind::V1 { memory, pids, cpu } => std::iter::once(memory.as_path())
                .chain(pids.as_deref())
                .chain(cpu.as_deref())
                .collect(),
            CgroupKind::Unavailable { .. } => vec![],
        }
    }

    /// `<parent>` as a backend, the base of every site cgroup; the reason
    /// when there are no cgroups.
    fn parent_backend(&self) -> std::result::Result<Backend, &str> {
        match &self.kind {
            CgroupKind::V2 { dir } => Ok(Backend::V2 { dir: dir.clone() }),
            CgroupKind::V1 { memory, pids, cpu } => Ok(Backend::V1 {
                memory: memory.clone(),
                pids: pids.clone(),
                cpu: cpu.clone(),
            }),
            CgroupKind::Unavailable { reason } => Err(reason),
        }
    }

    /// A handle on an existing site cgroup, without touching its limits.
    fn handle(&self, name: &str) -> SiteCgroup {
        let backend = self.parent_backend().map_or_else(
            |_| Backend::V1 {
                memory: PathBuf::new(),
                pids: None,
                cpu: None,
            },
            |parent| parent.join(name),
        );
        SiteCgroup {
            name: name.to_owned(),
            backend,
            pending: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_says_why_and_refuses_sites() {
        let root = CgroupRoot::detect("../escape");
        assert!(!root.is_available());
        assert!(
            matches!(root.kind(), CgroupKind::Unavailable { reason } if reason.contains("../escape"))
        );
        assert!(
            root.describe().starts_with("no cgroups ("),
            "{}",
            root.describe()
        );
        let err = root.site("blog", &Limits::default()).unwrap_err();
        assert!(matches!(err, CgroupError::Unavailable(_)), "{err}");
        assert_eq!(root.cleanup_stale(&[]).unwrap(), Vec::<String>::new());
    }
}
