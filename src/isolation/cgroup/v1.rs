//! The cgroup v1 backend: one directory per site in each of the memory,
//! pids and cpu hierarchies, under our own cgroup in each.
//!
//! Files written per site: `memory.limit_in_bytes` and, when swap accounting
//! exists, `memory.memsw.limit_in_bytes` (memory + swap = memory: no swap),
//! `pids.max`, `cpu.cfs_period_us` / `cpu.cfs_quota_us`. Read:
//! `memory.usage_in_bytes`, `memory.limit_in_bytes`, the `oom_kill` line of
//! `memory.oom_control` (not `failcnt`, which counts reclaim), `pids.current`,
//! `pids.max`.
//! v1 has no `cgroup.kill`: killing signals every pid until the cgroup is empty.

use std::path::Path;

use super::files::{keyed_value, make_dir, read_file, read_pids_max, read_u64, write_file};
use super::{CgroupError, CgroupKind, Limits, Result, Usage};

/// v1 reports "unlimited" as a huge page-aligned number (2^63 - 4096 here).
const UNLIMITED_FLOOR: u64 = 1 << 60;

/// Creates `<own>/<parent_name>` in each hierarchy. memory is required; a
/// pids or cpu hierarchy we cannot write is reported and left out.
pub(super) fn setup_parent(
    memory_own: &Path,
    pids_own: Option<&Path>,
    cpu_own: Option<&Path>,
    parent_name: &str,
) -> Result<CgroupKind> {
    let memory = memory_own.join(parent_name);
    make_dir(&memory)?;
    let optional = |own: Option<&Path>, controller: &str| {
        let dir = own?.join(parent_name);
        match make_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(controller, error = %e, "cgroup v1 controller not usable; its limits cannot be enforced");
                None
            }
        }
    };
    Ok(CgroupKind::V1 {
        memory,
        pids: optional(pids_own, "pids"),
        cpu: optional(cpu_own, "cpu"),
    })
}

pub(super) fn write_limits(
    memory: &Path,
    pids: Option<&Path>,
    cpu: Option<&Path>,
    limits: &Limits,
) -> Result<()> {
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    // memsw must stay >= limit at every step: open it up first, then set the
    // memory limit, then close memsw down to the same value (no swap).
    if has_memsw {
        write_file(&memsw, "-1")?;
    }
    let value = limits.memory.map_or("-1".to_owned(), |m| m.to_string());
    write_file(&memory.join("memory.limit_in_bytes"), &value)?;
    if has_memsw && limits.memory.is_some() {
        write_file(&memsw, &value)?;
    }

    match (limits.processes, pids) {
        (Some(n), Some(dir)) => write_file(&dir.join("pids.max"), &n.to_string())?,
        (Some(_), None) => {
            return Err(CgroupError::ControllerMissing {
                controller: "pids",
                dir: memory.to_path_buf(),
            })
        }
        (None, Some(dir)) => write_file(&dir.join("pids.max"), "max")?,
        (None, None) => {}
    }

    match (limits.cpu, cpu) {
        (Some(cores), Some(dir)) => {
            write_file(&dir.join("cpu.cfs_period_us"), "100000")?;
            write_file(
                &dir.join("cpu.cfs_quota_us"),
                &super::v2::cpu_quota(cores).to_string(),
            )?;
        }
        (Some(_), None) => {
            return Err(CgroupError::ControllerMissing {
                controller: "cpu",
                dir: memory.to_path_buf(),
            })
        }
        (None, Some(dir)) => write_file(&dir.join("cpu.cfs_quota_us"), "-1")?,
        (None, None) => {}
    }
    Ok(())
}

pub(super) fn usage(memory: &Path, pids: Option<&Path>) -> Result<Usage> {
    let limit = read_u64(&memory.join("memory.limit_in_bytes"))?;
    let oom_control = read_file(&memory.join("memory.oom_control"))?;
    let (pids_current, pids_limit) = match pids {
        Some(dir) => (
            Some(read_u64(&dir.join("pids.current"))?),
            read_pids_max(&dir.join("pids.max"))?,
        ),
        None => (None, None),
    };
    Ok(Usage {
        memory_current: Some(read_u64(&memory.join("memory.usage_in_bytes"))?),
        memory_limit: (limit < UNLIMITED_FLOOR).then_some(limit),
        oom_kills: keyed_value(&oom_control, "oom_kill").unwrap_or(0),
        pids_current,
        pids_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn v1_backend_against_fake_tree_writes_limits_in_a_valid_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (m, p, c) = (
            tmp.path().join("memory"),
            tmp.path().join("pids"),
            tmp.path().join("cpu"),
        );
        for d in [&m, &p, &c] {
            fs::create_dir_all(d).unwrap();
        }
        for f in [
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.usage_in_bytes",
        ] {
            fs::write(m.join(f), "").unwrap();
        }
        fs::write(p.join("pids.max"), "").unwrap();
        fs::write(c.join("cpu.cfs_period_us"), "").unwrap();
        fs::write(c.join("cpu.cfs_quota_us"), "").unwrap();
        let limits = Limits {
            memory: Some(64 << 20),
            processes: Some(20),
            cpu: Some(0.5),
        };
        write_limits(&m, Some(&p), Some(&c), &limits).unwrap();
        let read = |d: &Path, f: &str| fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(&m, "memory.limit_in_bytes"), "67108864");
        assert_eq!(read(&m, "memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(read(&p, "pids.max"), "20");
        assert_eq!(read(&c, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&c, "cpu.cfs_period_us"), "100000");

        fs::write(m.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(m.join("memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(
            m.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        fs::write(p.join("pids.current"), "4\n").unwrap();
        assert_eq!(
            usage(&m, Some(&p)).unwrap(),
            Usage {
                memory_current: Some(4096),
                memory_limit: None,
                oom_kills: 3,
                pids_current: Some(4),
                pids_limit: Some(20),
            }
        );
        fs::write(p.join("pids.max"), "max\n").unwrap();
        assert_eq!(usage(&m, Some(&p)).unwrap().pids_limit, None);
    }
}
