//! The cgroup v2 backend: one directory per site under `<own>/<parent>/`.
//!
//! Files written: the parents' `cgroup.subtree_control` (+memory +pids +cpu),
//! and per site `memory.max`, `memory.high` (90 % of max), `memory.swap.max`
//! (0), `memory.oom.group` (1: an OOM kills the whole site, not a random
//! process of it), `pids.max`, `cpu.max`. Read: `memory.current`,
//! `memory.events`, `pids.current`, `pids.max`. Killing uses `cgroup.kill` (in `mod.rs`).

use std::path::{Path, PathBuf};

use super::discover::controller_list;
use super::files::{io_err, keyed_value, make_dir, read_file, read_pids_max, read_u64, write_file};
use super::{CgroupError, Limits, Result, Usage};

/// The controllers polyhost uses, in the order they are enabled.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// `cpu.max` period in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Enables the controllers for `<own>/<parent_name>` and creates it; returns its path.
pub(super) fn setup_parent(own: &Path, parent_name: &str) -> Result<PathBuf> {
    // Already in the leaf a polyhost made (this is the new binary of an
    // upgrade, started by the old one from there): the parent is beside it.
    let leaf_name = format!("{parent_name}-supervisor");
    let own = match own.parent() {
        Some(up) if own.file_name().is_some_and(|n| *n == *leaf_name) => up,
        _ => own,
    };
    let wanted = missing_in_subtree(own);
    if !wanted.is_empty() {
        let control = own.join("cgroup.subtree_control");
        match write_file(&control, &plus(&wanted)) {
            Ok(()) => {}
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                // "No internal processes": our cgroup holds polyhost itself.
                // Move polyhost into a leaf of its own, then enable.
                let leaf = own.join(format!("{parent_name}-supervisor"));
                make_dir(&leaf)?;
                write_file(&leaf.join("cgroup.procs"), "0")?;
                tracing::info!(leaf = %leaf.display(), "moved polyhost into a leaf cgroup to delegate controllers to sites");
                write_file(&control, &plus(&wanted))?;
            }
            Err(e) => return Err(e),
        }
    }
    let parent = own.join(parent_name);
    make_dir(&parent)?;
    let wanted = missing_in_subtree(&parent);
    if !wanted.is_empty() {
        write_file(&parent.join("cgroup.subtree_control"), &plus(&wanted))?;
    }
    Ok(parent)
}

/// Controllers we want that `dir` offers but does not pass on to its children yet.
fn missing_in_subtree(dir: &Path) -> Vec<&'static str> {
    let available = controller_list(dir, "cgroup.controllers");
    let enabled = controller_list(dir, "cgroup.subtree_control");
    CONTROLLERS
        .into_iter()
        .filter(|c| available.iter().any(|a| a == c) && !enabled.iter().any(|e| e == c))
        .collect()
}

fn plus(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn write_limits(dir: &Path, limits: &Limits) -> Result<()> {
    let has = |file: &str| dir.join(file).exists();
    let missing = |controller| CgroupError::ControllerMissing {
        controller,
        dir: dir.to_path_buf(),
    };
    match limits.memory {
        Some(max) => {
            if !has("memory.max") {
                return Err(missing("memory"));
            }
            write_file(&dir.join("memory.max"), &max.to_string())?;
            // Reclaim (and throttle) before the hard limit OOM-kills.
            write_file(&dir.join("memory.high"), &(max - max / 10).to_string())?;
            if has("memory.swap.max") {
                write_file(&dir.join("memory.swap.max"), "0")?;
            }
            if has("memory.oom.group") {
                write_file(&dir.join("memory.oom.group"), "1")?;
            }
        }
        None => {
            if has("memory.max") {
                write_file(&dir.join("memory.max"), "max")?;
                write_file(&dir.join("memory.high"), "max")?;
            }
        }
    }
    match limits.processes {
        Some(_) if !has("pids.max") => return Err(missing("pids")),
        Some(n) => write_file(&dir.join("pids.max"), &n.to_string())?,
        None if has("pids.max") => write_file(&dir.join("pids.max"), "max")?,
        None => {}
    }
    match limits.cpu {
        Some(_) if !has("cpu.max") => return Err(missing("cpu")),
        Some(cores) => write_file(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD}", cpu_quota(cores)),
        )?,
        None if has("cpu.max") => write_file(&dir.join("cpu.max"), &format!("max {CPU_PERIOD}"))?,
        None => {}
    }
    Ok(())
}

/// Quota in microseconds per [`CPU_PERIOD`] for `cores` (at least 1 ms, the kernel minimum).
pub(super) fn cpu_quota(cores: f64) -> u64 {
    ((cores * CPU_PERIOD as f64).round() as u64).max(1000)
}

pub(super) fn usage(dir: &Path) -> Result<Usage> {
    if !dir.exists() {
        return Err(io_err("read", dir)(std::io::ErrorKind::NotFound.into()));
    }
    let opt_u64 = |file: &str| -> Result<Option<u64>> {
        let path = dir.join(file);
        if path.exists() {
            read_u64(&path).map(Some)
        } else {
            Ok(None)
        }
    };
    let memory_limit = match std::fs::read_to_string(dir.join("memory.max")) {
        Ok(text) if text.trim() == "max" => None,
        Ok(text) => text.trim().parse().ok(),
        Err(_) => None,
    };
    let events = dir.join("memory.events");
    let oom_kills = if events.exists() {
        keyed_value(&read_file(&events)?, "oom_kill").unwrap_or(0)
    } else {
        0
    };
    Ok(Usage {
        memory_current: opt_u64("memory.current")?,
        memory_limit,
        oom_kills,
        pids_current: opt_u64("pids.current")?,
        pids_limit: read_pids_max(&dir.join("pids.max"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{CgroupKind, CgroupRoot};
    use super::*;
    use std::fs;

    /// Builds what the kernel would show: a v2 cgroup dir with its control files.
    fn fake_cgroup(dir: &Path, controllers: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        for file in [
            "memory.max",
            "memory.high",
            "memory.swap.max",
            "memory.oom.group",
            "memory.current",
            "memory.events",
            "pids.max",
            "pids.current",
            "cpu.max",
        ] {
            fs::write(dir.join(file), "").unwrap();
        }
    }

    fn read(path: PathBuf) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn v2_backend_against_fake_tree_writes_limits_and_enables_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("own");
        fake_cgroup(&own, "cpuset cpu io memory hugetlb pids rdma");
        fake_cgroup(&own.join("polyhost"), "cpu memory pids");
        fake_cgroup(&own.join("polyhost/blog"), "cpu memory pids");

        let root = CgroupRoot::v2_at(&own, "polyhost").unwrap();
        assert_eq!(
            root.kind(),
            &CgroupKind::V2 {
                dir: own.join("polyhost")
            }
        );
        assert_eq!(
            read(own.join("cgroup.subtree_control")),
            "+memory +pids +cpu"
        );
        assert_eq!(
            read(own.join("polyhost/cgroup.subtree_control")),
            "+memory +pids +cpu"
        );

        let limits = Limits {
            memory: Some(64 << 20),
            processes: Some(20),
            cpu: Some(1.5),
        };
        let site = root.site("blog", &limits).unwrap();
        let dir = own.join("polyhost/blog");
        assert_eq!(site.procs_files(), vec![dir.join("cgroup.procs")]);
        assert_eq!(read(dir.join("memory.max")), "67108864");
        assert_eq!(
            read(dir.join("memory.high")),
            (67108864 - 6710886).to_string()
        );
        assert_eq!(read(dir.join("memory.swap.max")), "0");
        assert_eq!(read(dir.join("memory.oom.group")), "1");
        assert_eq!(read(dir.join("pids.max")), "20");
        assert_eq!(read(dir.join("cpu.max")), "150000 100000");

        // Reuse with no limits resets them to unlimited.
        root.site("blog", &Limits::default()).unwrap();
        assert_eq!(read(dir.join("memory.max")), "max");
        assert_eq!(read(dir.join("memory.high")), "max");
        assert_eq!(read(dir.join("pids.max")), "max");
        assert_eq!(read(dir.join("cpu.max")), "max 100000");
    }

    #[test]
    fn v2_backend_against_fake_tree_parses_usage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("blog");
        fake_cgroup(&dir, "memory pids");
        fs::write(dir.join("memory.current"), "12345678\n").unwrap();
        fs::write(dir.join("memory.max"), "67108864\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 12\nmax 40\noom 3\noom_kill 2\noom_group_kill 1\n",
        )
        .unwrap();
        fs::write(dir.join("pids.current"), "7\n").unwrap();
        fs::write(dir.join("pids.max"), "32\n").unwrap();
        assert_eq!(
            usage(&dir).unwrap(),
            Usage {
                memory_current: Some(12345678),
                memory_limit: Some(64 << 20),
                oom_kills: 2,
                pids_current: Some(7),
                pids_limit: Some(32),
            }
        );
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(dir.join("pids.max"), "max\n").unwrap();
        let usage = usage(&dir).unwrap();
        assert_eq!((usage.memory_limit, usage.pids_limit), (None, None));
    }

    #[test]
    fn v2_backend_against_fake_tree_refuses_limits_it_cannot_enforce() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("own");
        // Only pids is delegated: a memory limit must fail, not be ignored.
        fs::create_dir_all(own.join("polyhost/blog")).unwrap();
        fs::write(own.join("cgroup.controllers"), "pids").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "pids").unwrap();
        fs::write(own.join("polyhost/cgroup.controllers"), "pids").unwrap();
        fs::write(own.join("polyhost/cgroup.subtree_control"), "pids").unwrap();
        fs::write(own.join("polyhost/blog/pids.max"), "").unwrap();
        let root = CgroupRoot::v2_at(&own, "polyhost").unwrap();
        let err = root
            .site(
                "blog",
                &Limits {
                    memory: Some(1 << 30),
                    ..Limits::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::ControllerMissing {
                    controller: "memory",
                    ..
                }
            ),
            "{err}"
        );
        let site = root
            .site(
                "blog",
                &Limits {
                    processes: Some(5),
                    ..Limits::default()
                },
            )
            .unwrap();
        assert_eq!(read(own.join("polyhost/blog/pids.max")), "5");
        assert_eq!(site.name(), "blog");
    }

    #[test]
    fn cpu_quota_rounds_and_has_a_floor() {
        assert_eq!(cpu_quota(1.0), 100_000);
        assert_eq!(cpu_quota(0.25), 25_000);
        assert_eq!(cpu_quota(0.001), 1000);
        assert_eq!(cpu_quota(2.5), 250_000);
    }
}
