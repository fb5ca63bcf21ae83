//! System tests of `polyhost::isolation`, cgroups: limits written to the
//! detected hierarchy and enforced (memory, processes), stopping and
//! dropping a site whole (escaped grandchildren too), sub-cgroups of
//! workers, stale cgroups, and the v2 code paths on the real unified
//! hierarchy. Real users, cgroups and processes: they need root and clean
//! up after themselves (cgroups removed, processes killed and reaped).

mod common;
mod isolation_support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::file_text;
use isolation_support::{
    alive, eventually, log_dir, read_pid_line, require_root, run, session_of, spec, unique,
    TestRoot, TestUser,
};
use polyhost::isolation::{self, CgroupKind, CgroupRoot, Limits, SiteCgroup, SiteProcess};

#[tokio::test]
async fn memory_limit_oom_kills_the_site() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    if std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .contains("memory:")
    {
        // This CI kernel has the v1 memory controller: the detected backend must be v1.
        assert!(
            matches!(root.0.kind(), CgroupKind::V1 { .. }),
            "{}",
            root.0.describe()
        );
    }
    let site = root
        .0
        .site(
            "oom",
            &Limits {
                memory: Some(64 << 20),
                ..Limits::default()
            },
        )
        .unwrap();
    let dir = log_dir();
    let mut s = spec(
        &user,
        &dir.path().join("log"),
        "/usr/bin/python3.11",
        &["-c", "x = b'a' * (200 << 20); print('survived')"],
    );
    s.cgroup = Some(&site);
    let (status, out) = run(&s).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?} {out}");
    assert!(!out.contains("survived"));
    let usage = site.usage().unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(
        usage.memory_limit.is_some_and(|l| l <= 64 << 20),
        "{usage:?}"
    );
}

#[tokio::test]
async fn process_limit_caps_a_fork_loop_and_stop_leaves_no_survivors() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root
        .0
        .site(
            "forks",
            &Limits {
                processes: Some(20),
                ..Limits::default()
            },
        )
        .unwrap();
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &[
            "-c",
            "i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done; sleep 1000",
        ],
    );
    s.cgroup = Some(&site);
    let mut process = isolation::spawn(&s).unwrap();
    eventually(
        "the fork loop hits the limit",
        || {
            let current = site.usage().unwrap().pids_current.unwrap();
            assert!(current <= 20, "pids.current = {current}");
            (current, file_text(&log))
        },
        |(_, log)| log.0.contains("fork"),
    )
    .await;
    let procs = site.procs().unwrap();
    assert!(procs.len() <= 20 && procs.len() >= 10, "{procs:?}");

    process.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(site.procs().unwrap(), Vec::<i32>::new());
    for pid in procs {
        assert!(
            !alive(pid),
            "pid {pid} survived (or is a zombie): {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
}

#[tokio::test]
async fn stop_kills_a_grandchild_that_left_the_group() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root.0.site("escape", &Limits::default()).unwrap();
    let (mut process, escaped, _logs) = spawn_with_escaped_grandchild(&user, &site).await;
    assert_ne!(session_of(escaped), Some(process.pid()));

    process.stop(Duration::from_millis(500)).await.unwrap();
    assert!(!alive(process.pid()));
    assert!(
        !alive(escaped),
        "the escaped grandchild survived or is a zombie"
    );
    assert_eq!(site.procs().unwrap(), Vec::<i32>::new());
}

#[tokio::test]
async fn cleanup_stale_removes_leftover_site_cgroups() {
    require_root();
    let root = TestRoot::new();
    let stale = root.0.site("stale", &Limits::default()).unwrap();
    let kept = root.0.site("kept", &Limits::default()).unwrap();
    // A process of a "previous run": joined to the cgroup, not a SiteProcess.
    let mut script = String::new();
    for file in stale.procs_files() {
        script.push_str(&format!("echo $$ > {}; ", file.display()));
    }
    script.push_str("exec sleep 1000");
    let leftover = {
        let _pause = isolation::pause_reaper();
        Command::new("/bin/sh")
            .args(["-c", &script])
            .spawn()
            .unwrap()
    };
    let pid = leftover.id() as i32;
    eventually(
        "the leftover joined the stale cgroup",
        || stale.procs().unwrap(),
        |procs| *procs == vec![pid],
    )
    .await;

    let removed = root.0.cleanup_stale(&["kept"]).unwrap();
    assert_eq!(removed, vec!["stale".to_string()]);
    for dir in stale.dirs() {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    for dir in kept.dirs() {
        assert!(dir.exists());
    }
    // The leftover was our child: cleanup killed and reaped it.
    assert!(!alive(pid));
    drop(leftover);
}

#[tokio::test]
async fn dropping_a_site_process_kills_its_group_and_cgroup() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root.0.site("drop", &Limits::default()).unwrap();
    let dir = log_dir();

    // Without a cgroup: the process group is killed.
    let log = dir.path().join("nocg.log");
    let process = isolation::spawn(&spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "sleep 1000 & echo $!; sleep 1000"],
    ))
    .unwrap();
    let leader = process.pid();
    let member = read_pid_line(&log).await;
    drop(process);
    assert!(!alive(leader), "the leader is reaped on drop");
    // The member was reparented to us (subreaper): the orphan reaper collects it.
    eventually(
        "the group member is gone",
        || {
            isolation::reap_orphans();
            alive(member)
        },
        |&alive| !alive,
    )
    .await;

    // With a cgroup: everything in it is killed and reaped.
    let log = dir.path().join("cg.log");
    let mut s = spec(
        &user,
        &log,
        "/bin/sh",
        &["-c", "setsid sleep 1000 & echo $!; sleep 1000"],
    );
    s.cgroup = Some(&site);
    let process = isolation::spawn(&s).unwrap();
    let escaped = read_pid_line(&log).await;
    eventually(
        "the grandchild has its own session",
        || session_of(escaped),
        |&sid| sid == Some(escaped),
    )
    .await;
    drop(process);
    assert_eq!(site.procs().unwrap(), Vec::<i32>::new());
    assert!(!alive(escaped));
}

/// The v2 code paths on the real kernel: this host's v2 hierarchy has no
/// memory/pids controllers (they are bound to v1), so it cannot hold limits,
/// but joining, listing, `cgroup.kill` and removal are real. (Limits on v2 are
/// covered by `v2_backend_against_fake_tree_*` unit tests, and by every test
/// here on a v2-only host, where `detect` picks v2.)
#[tokio::test]
async fn v2_join_kill_and_remove_on_the_real_unified_hierarchy() {
    require_root();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(mount) = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1))
    else {
        panic!("no cgroup2 mount on this host");
    };
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap();
    let own_dir = Path::new(mount).join(own.trim_start_matches('/'));
    let root = TestRoot(CgroupRoot::v2_at(&own_dir, &unique("polyhost-test-")).unwrap());
    assert!(matches!(root.0.kind(), CgroupKind::V2 { .. }));
    let site = root.0.site("v2", &Limits::default()).unwrap();
    let user = TestUser::new();
    let (mut process, escaped, _logs) = spawn_with_escaped_grandchild(&user, &site).await;
    eventually(
        "both processes are in the v2 cgroup",
        || site.procs().unwrap(),
        |procs| procs.contains(&process.pid()) && procs.contains(&escaped),
    )
    .await;
    process.stop(Duration::from_millis(200)).await.unwrap();
    assert!(
        !alive(escaped),
        "{:?}",
        std::fs::read_to_string(format!("/proc/{escaped}/stat"))
    );
    site.remove().unwrap();
    for dir in site.dirs() {
        assert!(!dir.exists());
    }
}

#[tokio::test]
async fn limits_are_written_to_the_detected_hierarchy() {
    require_root();
    let root = TestRoot::new();
    let limits = Limits {
        memory: Some(128 << 20),
        processes: Some(33),
        cpu: Some(0.5),
    };
    let site = root.0.site("limits", &limits).unwrap();
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    match root.0.kind() {
        CgroupKind::V1 { pids, cpu, .. } => {
            let memory = site.dirs()[0];
            assert_eq!(read(memory, "memory.limit_in_bytes").trim(), "134217728");
            if memory.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(
                    read(memory, "memory.memsw.limit_in_bytes").trim(),
                    "134217728"
                );
            }
            let pids = pids.as_ref().expect("pids hierarchy").join("limits");
            assert_eq!(read(&pids, "pids.max").trim(), "33");
            let cpu = cpu.as_ref().expect("cpu hierarchy").join("limits");
            assert_eq!(read(&cpu, "cpu.cfs_quota_us").trim(), "50000");
            assert_eq!(read(&cpu, "cpu.cfs_period_us").trim(), "100000");
        }
        CgroupKind::V2 { dir } => {
            let dir = dir.join("limits");
            assert_eq!(read(&dir, "memory.max").trim(), "134217728");
            assert_eq!(read(&dir, "pids.max").trim(), "33");
            assert_eq!(read(&dir, "cpu.max").trim(), "50000 100000");
        }
        CgroupKind::Unavailable { reason } => panic!("no cgroups: {reason}"),
    }
    let usage = site.usage().unwrap();
    assert_eq!(usage.memory_limit, Some(128 << 20));
    assert_eq!(usage.pids_current, Some(0));
    assert_eq!(usage.oom_kills, 0);

    // Reusing the cgroup with no limits lifts them.
    let site = root.0.site("limits", &Limits::default()).unwrap();
    assert_eq!(site.usage().unwrap().memory_limit, None);
}

#[tokio::test]
async fn a_site_cgroup_on_demand_is_made_with_its_first_process_cgroup() {
    require_root();
    let root = TestRoot::new();
    let limits = Limits {
        memory: Some(96 << 20),
        processes: Some(20),
        cpu: None,
    };
    let site = root.0.site_on_demand("lazy", &limits).unwrap();
    assert!(!site.exists(), "an idle site has no cgroup: {site}");
    assert!(site.usage().is_err(), "nothing to measure yet");
    site.remove().unwrap();
    let worker = site.child("w1").unwrap();
    assert!(site.exists() && worker.exists(), "{site}");
    let usage = site.usage().unwrap();
    assert_eq!(usage.memory_limit, Some(96 << 20));
    assert_eq!(usage.pids_limit, Some(20));
    // A later set-up with other limits writes them with its own first process.
    let again = root.0.site_on_demand("lazy", &Limits::default()).unwrap();
    assert_eq!(again.usage().unwrap().memory_limit, Some(96 << 20));
    again.child("w2").unwrap();
    assert_eq!(again.usage().unwrap().memory_limit, None);
    again.remove().unwrap();
    assert!(!site.exists());
}

#[tokio::test]
async fn workers_in_sub_cgroups_stop_alone_and_count_for_the_site() {
    require_root();
    let user = TestUser::new();
    let root = TestRoot::new();
    let site = root
        .0
        .site(
            "workers",
            &Limits {
                processes: Some(50),
                ..Limits::default()
            },
        )
        .unwrap();
    let (w1, w2) = (site.child("w1").unwrap(), site.child("w2").unwrap());
    assert_eq!(w1.name(), "workers/w1");
    let dir = log_dir();
    let start = |cg, log: &str| {
        let mut s = spec(&user, &dir.path().join(log), "/bin/sleep", &["1000"]);
        s.cgroup = Some(cg);
        isolation::spawn(&s).unwrap()
    };
    let mut p1 = start(&w1, "1.log");
    let mut p2 = start(&w2, "2.log");
    assert_eq!(site.procs().unwrap().len(), 2);
    assert_eq!(site.usage().unwrap().pids_current, Some(2));

    p1.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(w1.procs().unwrap(), Vec::<i32>::new());
    assert_eq!(w2.procs().unwrap(), vec![p2.pid()]);
    assert!(alive(p2.pid()));
    p2.stop(Duration::from_millis(200)).await.unwrap();
    site.remove().unwrap();
    for dir in w1.dirs().into_iter().chain(site.dirs()) {
        assert!(!dir.exists(), "{}", dir.display());
    }
}

/// A site process in `site` whose child left its session (`setsid`), as a
/// site's code may try in order to outlive a stop: the process, the
/// escaped grandchild's pid once it has its own session, and the log
/// directory (kept while the process runs).
async fn spawn_with_escaped_grandchild(
    user: &TestUser,
    site: &SiteCgroup,
) -> (SiteProcess, i32, tempfile::TempDir) {
    let dir = log_dir();
    let log = dir.path().join("log");
    let mut s = spec(
        user,
        &log,
        "/bin/sh",
        &["-c", "setsid sleep 1000 & echo $!; sleep 1000"],
    );
    s.cgroup = Some(site);
    let process = isolation::spawn(&s).unwrap();
    let escaped = read_pid_line(&log).await;
    eventually(
        "the grandchild has its own session",
        || session_of(escaped),
        |&sid| sid == Some(escaped),
    )
    .await;
    (process, escaped, dir)
}
