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

mod discover;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// How long [`SiteCgroup::kill_all`] keeps killing before it gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`SiteCgroup::remove`] retries `rmdir` while the kernel drains.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(3);

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
        let backend = match &self.kind {
            CgroupKind::V2 { dir } => Backend::V2 {
                dir: dir.join(name),
            },
            CgroupKind::V1 { memory, pids, cpu } => Backend::V1 {
                memory: memory.join(name),
                pids: pids.as_ref().map(|p| p.join(name)),
                cpu: cpu.as_ref().map(|p| p.join(name)),
            },
            CgroupKind::Unavailable { reason } => {
                return Err(CgroupError::Unavailable(reason.clone()))
            }
        };
        for dir in backend.dirs() {
            make_dir(dir)?;
        }
        match &backend {
            Backend::V2 { dir } => v2::write_limits(dir, limits)?,
            Backend::V1 { memory, pids, cpu } => {
                v1::write_limits(memory, pids.as_deref(), cpu.as_deref(), limits)?
            }
        }
        Ok(SiteCgroup {
            name: name.to_owned(),
            backend,
        })
    }

    /// Removes site cgroups left by a previous run (e.g. after polyhost was
    /// SIGKILLed), killing whatever still runs in them. Sites named in `keep`
    /// are left alone. Returns the names removed.
    pub fn cleanup_stale(&self, keep: &[&str]) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for parent in self.parent_dirs() {
            for name in sub_dirs(parent)? {
                if !keep.contains(&name.as_str()) {
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
    pub fn remove_all(&self) -> Result<()> {
        self.cleanup_stale(&[])?;
        for parent in self.parent_dirs() {
            rmdir_retrying(parent)?;
        }
        Ok(())
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

    /// A handle on an existing site cgroup, without touching its limits.
    fn handle(&self, name: &str) -> SiteCgroup {
        let backend = match &self.kind {
            CgroupKind::V2 { dir } => Backend::V2 {
                dir: dir.join(name),
            },
            CgroupKind::V1 { memory, pids, cpu } => Backend::V1 {
                memory: memory.join(name),
                pids: pids.as_ref().map(|p| p.join(name)),
                cpu: cpu.as_ref().map(|p| p.join(name)),
            },
            CgroupKind::Unavailable { .. } => Backend::V1 {
                memory: PathBuf::new(),
                pids: None,
                cpu: None,
            },
        };
        SiteCgroup {
            name: name.to_owned(),
            backend,
        }
    }
}

/// The cgroup of one site (or one process of a site, see [`SiteCgroup::child`]).
///
/// Cheap to clone: it is a set of paths. A [`crate::isolation::SiteProcess`]
/// started in it treats it as its own: stopping the process kills everything
/// in the cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteCgroup {
    name: String,
    backend: Backend,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Backend {
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
    fn dirs(&self) -> Vec<&Path> {
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
    pub fn child(&self, name: &str) -> Result<SiteCgroup> {
        check_name(name)?;
        let backend = match &self.backend {
            Backend::V2 { dir } => Backend::V2 {
                dir: dir.join(name),
            },
            Backend::V1 { memory, pids, cpu } => Backend::V1 {
                memory: memory.join(name),
                pids: pids.as_ref().map(|p| p.join(name)),
                cpu: cpu.as_ref().map(|p| p.join(name)),
            },
        };
        for dir in backend.dirs() {
            make_dir(dir)?;
        }
        Ok(SiteCgroup {
            name: format!("{}/{name}", self.name),
            backend,
        })
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

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

fn make_dir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// Writes a cgroup file in one `write` (cgroup files take one value per write).
/// Never creates the file: a missing control file is an error.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", path))
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err("read", path))
}

/// Reads a file holding one number.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let text = read_file(path)?;
    text.trim().parse().map_err(|_| CgroupError::Io {
        op: "parse",
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// A `pids.max` file's value: `max` (or no file: no pids controller) is
/// no limit. Like `memory.max`, a value that does not parse reads as none
/// rather than failing the whole [`Usage`] (which also counts OOM kills).
pub(crate) fn read_pids_max(path: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// `key value` lines (memory.events, memory.oom_control, memory.stat).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn sub_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn procs_recursive(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
    let file = dir.join("cgroup.procs");
    match std::fs::read_to_string(&file) {
        Ok(text) => out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &file)(e)),
    }
    for sub in sub_dirs(dir)? {
        procs_recursive(&dir.join(sub), out)?;
    }
    Ok(())
}

/// rmdir of the sub-cgroups (deepest first), then of `dir`.
fn remove_tree(dir: &Path) -> Result<()> {
    for sub in sub_dirs(dir)? {
        remove_tree(&dir.join(sub))?;
    }
    rmdir_retrying(dir)
}

fn rmdir_retrying(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("remove", dir)(e)),
        }
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

    #[test]
    fn keyed_values() {
        let events = "low 0\nhigh 3\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(2));
        assert_eq!(keyed_value(events, "nope"), None);
    }
}
