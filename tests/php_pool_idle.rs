//! `[php] pool_idle_timeout` against the real binary: an idle PHP pool
//! stops whole (master and children; no process of the site user, no
//! socket, no pid file, no process cgroup left), status shows it idle, the
//! next request starts it again; a trickle of requests keeps it up;
//! requests that race the stop are all served; idle time counts from
//! readiness, not from a slow start.

mod admin_support;
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime};

use common::{eventually, get, open_up, pids_of_uid, Binary, TestConfig, TestUser};

/// A PHP site `name` whose index names its php-fpm master (the child's parent).
fn php_site(cfg: &TestConfig, name: &str, user: &TestUser, php_extra: &str) {
    cfg.write(
        &format!("www/{name}/index.php"),
        "<?php echo 'master=' . posix_getppid() . ' pid=' . getmypid();",
    );
    cfg.write(
        &format!("vhosts/{name}.toml"),
        &format!(
            "hosts = [\"{name}.test\"]\nroot = \"www/{name}\"\nuser = \"{}\"\n[php]\nmax_children = 4\n{php_extra}\n",
            user.name
        ),
    );
    open_up(cfg.path());
}

fn master_of(body: &str) -> String {
    common::field(body, "master").to_owned()
}

/// What the pool left in the state directory: sockets and pid files.
fn leftovers(cfg: &TestConfig, site: &str) -> Vec<String> {
    let state = cfg.path().join("state");
    [
        state.join("sockets").join(site),
        state.join("sites").join(site),
    ]
    .iter()
    .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
    .filter_map(Result::ok)
    .map(|e| e.path())
    .filter(|p| p.extension().is_some_and(|x| x == "sock" || x == "pid"))
    .map(|p| p.display().to_string())
    .collect()
}

/// The per-process cgroups left under the site's cgroup, in every hierarchy.
fn process_cgroups(cfg: &TestConfig, site: &str) -> Vec<String> {
    fn find(dir: &std::path::Path, name: &str, depth: usize, out: &mut Vec<std::path::PathBuf>) {
        if depth == 0 {
            return;
        }
        for e in std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_str() == Some(name) {
                out.push(e.path());
            } else {
                find(&e.path(), name, depth - 1, out);
            }
        }
    }
    let state = std::fs::canonicalize(cfg.path().join("state")).unwrap();
    let mut ours = Vec::new();
    find(
        std::path::Path::new("/sys/fs/cgroup"),
        &polyhost::supervisor::cgroup_parent_name(&state),
        6,
        &mut ours,
    );
    ours.iter()
        .flat_map(|d| std::fs::read_dir(d.join(site)).into_iter().flatten())
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().display().to_string())
        .collect()
}

/// No process of the site's user, no socket, no pid file, no process cgroup.
fn pool_gone(cfg: &TestConfig, site: &str, user: &TestUser) -> bool {
    pids_of_uid(user.uid).is_empty()
        && leftovers(cfg, site).is_empty()
        && process_cgroups(cfg, site).is_empty()
}

async fn site_status(cfg: &TestConfig, site: &str) -> polyhost::app::status::SiteStatus {
    let socket = cfg.path().join("state/admin.sock");
    let out = admin_support::cli(&socket, &["status", site, "--json"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

async fn wait_gone(cfg: &TestConfig, bin: &Binary, site: &str, user: &TestUser) {
    let gone = eventually(Duration::from_secs(10), || async {
        pool_gone(cfg, site, user)
    })
    .await;
    assert!(
        gone,
        "the idle pool stopped whole: processes {:?}, files {:?}, cgroups {:?}\n{}",
        pids_of_uid(user.uid),
        leftovers(cfg, site),
        process_cgroups(cfg, site),
        bin.log()
    );
}

#[tokio::test]
async fn an_idle_pool_stops_whole_and_the_next_request_starts_it_again() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    // start = "eager" (the default): started with polyhost, stopped when idle.
    php_site(&cfg, "nap", &user, "pool_idle_timeout = \"1s\"");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let started = eventually(Duration::from_secs(10), || async {
        !pids_of_uid(user.uid).is_empty()
    })
    .await;
    assert!(started, "eager start\n{}", bin.log());
    let cgroups = process_cgroups(&cfg, "nap");
    assert!(
        !cgroups.is_empty() || !std::path::Path::new("/sys/fs/cgroup/pids").exists(),
        "a running pool has its process cgroup (else the check below shows nothing)"
    );
    wait_gone(&cfg, &bin, "nap", &user).await;
    let idle = site_status(&cfg, "nap").await;
    assert_eq!(
        (idle.state.as_str(), idle.processes),
        ("idle", 0),
        "{idle:?}"
    );

    let first = get(bin.addr, "nap.test", "/").await;
    assert_eq!(first.status, 200, "{}\n{}", first.text(), bin.log());
    let running = site_status(&cfg, "nap").await;
    assert_eq!(running.state, "running", "{running:?}");
    wait_gone(&cfg, &bin, "nap", &user).await;

    let second = get(bin.addr, "nap.test", "/").await;
    assert_eq!(second.status, 200, "{}\n{}", second.text(), bin.log());
    assert_ne!(
        master_of(&first.text()),
        master_of(&second.text()),
        "a new master after the stop"
    );
    assert!(
        bin.log()
            .contains("no requests for idle_timeout; scaling to zero site=nap runtime=\"php\""),
        "{}",
        bin.log()
    );
    let state_dir = cfg.path().join("state");
    assert!(bin.terminate().await.success());
    common::check_hygiene(&state_dir);
    assert!(pids_of_uid(user.uid).is_empty());
}

/// An `ondemand` pool (the default) keeps its connections alive, and
/// php-fpm counts a child on a kept connection as busy: the router must
/// close idle ones, or the children never end on `idle_timeout`. After
/// concurrent requests (several children), every child ends and the master
/// stays.
#[tokio::test]
async fn an_ondemand_pools_children_end_once_idle_though_its_connections_were_kept() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(&cfg, "kept", &user, "idle_timeout = \"1s\"");
    let bin = Binary::start(&cfg.main(), &[]).await;
    let addr = bin.addr;
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "kept.test", "/").await }))
        .collect();
    let mut masters = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.log());
        masters.push(master_of(&r.text()));
    }
    masters.dedup();
    assert_eq!(masters.len(), 1, "one master: {masters:?}");
    let master: i32 = masters[0].parse().unwrap();
    let children = || {
        pids_of_uid(user.uid)
            .into_iter()
            .filter(|p| *p != master)
            .collect::<Vec<_>>()
    };
    let ended = eventually(Duration::from_secs(30), || async { children().is_empty() }).await;
    assert!(
        ended,
        "children still running: {:?} (master {master})\n{}",
        children(),
        bin.log()
    );
    let again = get(addr, "kept.test", "/").await;
    assert_eq!(again.status, 200, "{}\n{}", again.text(), bin.log());
    assert_eq!(master_of(&again.text()), masters[0], "the master stayed");
    let state_dir = cfg.path().join("state");
    assert!(bin.terminate().await.success());
    common::check_hygiene(&state_dir);
}

#[tokio::test]
async fn requests_closer_together_than_the_timeout_keep_the_pool_up() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(
        &cfg,
        "busy",
        &user,
        "start = \"on_demand\"\npool_idle_timeout = \"1s\"",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    assert!(pids_of_uid(user.uid).is_empty(), "started on demand");
    let mut masters = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let r = get(bin.addr, "busy.test", "/").await;
        assert_eq!(r.status, 200, "{}\n{}", r.text(), bin.log());
        masters.insert(master_of(&r.text()));
        assert!(!pids_of_uid(user.uid).is_empty(), "the pool is up");
        // The pace of the trickle, not a wait for a state.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(masters.len(), 1, "one master throughout: {masters:?}");
    assert!(
        !bin.log().contains("scaling to zero"),
        "never stopped:\n{}",
        bin.log()
    );
    wait_gone(&cfg, &bin, "busy", &user).await;
    let state_dir = cfg.path().join("state");
    assert!(bin.terminate().await.success());
    common::check_hygiene(&state_dir);
}

/// One raw `GET /` on a connection opened beforehand; the status (0: no
/// answer) and the body.
fn answer(mut s: std::net::TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (common::raw_status(&text), text)
}

/// When polyhost logged that `site` scaled to zero, latest last.
fn stops_logged(log: &str, site: &str) -> Vec<SystemTime> {
    let needle = format!("scaling to zero site={site} ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .collect()
}

/// Bursts of requests aimed at the moment the idle check stops the pool
/// (its ticks are 500 ms apart, at a phase read from the log): some land
/// before it (the pool stays), some in the middle of it (the requests of a
/// closed process go to a new start), some after. Every one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_the_idle_stop_are_all_served() {
    const BURST: usize = 16;
    const CYCLES: usize = 20;
    let cfg = TestConfig::new();
    let user = TestUser::new();
    php_site(
        &cfg,
        "race",
        &user,
        "start = \"on_demand\"\npool_idle_timeout = \"1s\"",
    );
    let bin = Binary::start(&cfg.main(), &[]).await;
    let host = "race.test";
    let r = get(bin.addr, host, "/").await;
    assert_eq!(r.status, 200, "{}", bin.log());
    wait_gone(&cfg, &bin, "race", &user).await;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (mut raced, mut split, mut failures) = (0, 0, Vec::new());
    for cycle in 0..CYCLES {
        // The pool is up, and its last request ended at `last`.
        let r = get(bin.addr, host, "/").await;
        assert_eq!(r.status, 200, "{}", bin.log());
        let last = SystemTime::now();
        let phase = *stops_logged(&bin.log(), "race").last().expect("a stop");
        // The first tick at least 1 s (+ the coarse clock's slack) after it.
        let since = last.duration_since(phase).unwrap_or_default() + Duration::from_millis(1005);
        let ticks = since.as_millis().div_ceil(500) as u32;
        // Swept from 1 ms before the tick to 4 ms after it, over the cycles
        // (the tick fires up to a few ms late; the router takes a while to
        // read a request).
        let offset = Duration::from_micros(250 * cycle as u64);
        let aim = phase + Duration::from_millis(500) * ticks + offset - Duration::from_millis(1);
        let conns: Vec<std::net::TcpStream> = (0..BURST)
            .map(|_| std::net::TcpStream::connect(bin.addr).unwrap())
            .collect();
        let bytes = request.clone();
        let sent = tokio::task::spawn_blocking(move || {
            if let Ok(wait) = aim.duration_since(SystemTime::now()) {
                std::thread::sleep(wait.saturating_sub(Duration::from_millis(3)));
            }
            while SystemTime::now() < aim {
                std::hint::spin_loop();
            }
            let start = SystemTime::now();
            let mut conns = conns;
            for c in &mut conns {
                c.write_all(bytes.as_bytes()).unwrap();
            }
            (start, conns)
        })
        .await
        .unwrap();
        let (start, conns) = sent;
        let answers: Vec<(u16, String)> = futures_util::future::join_all(
            conns
                .into_iter()
                .map(|c| tokio::task::spawn_blocking(move || answer(c))),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        let end = SystemTime::now();
        for (status, text) in &answers {
            if *status != 200 {
                failures.push(format!("cycle {cycle}: {text}"));
            }
        }
        // Did the burst meet a stop: decided while its requests were on
        // their way in, or at most 10 ms before them (the old master still
        // exiting)?
        let stopped_during = stops_logged(&bin.log(), "race")
            .iter()
            .any(|t| *t + Duration::from_millis(10) >= start && *t <= end);
        let masters: std::collections::BTreeSet<String> =
            answers.iter().map(|(_, t)| master_of(t)).collect();
        // Requests that took the old pool before it closed were served
        // by it, the others by a new start.
        split += usize::from(masters.len() > 1);
        if stopped_during {
            raced += 1;
        } else {
            // The burst came before the stop and kept the pool up: let it
            // stop, so the next cycle aims at a fresh phase (a tick that
            // fires late moves every later one).
            wait_gone(&cfg, &bin, "race", &user).await;
        }
        let delta: Vec<i128> = stops_logged(&bin.log(), "race")
            .iter()
            .map(|t| {
                t.duration_since(start).map_or_else(
                    |e| -(e.duration().as_micros() as i128),
                    |d| d.as_micros() as i128,
                )
            })
            .filter(|d| d.abs() < 100_000)
            .collect();
        eprintln!(
            "cycle {cycle}: offset {offset:?}, stop during the burst: {stopped_during} (stop - burst start: {delta:?} µs), masters {masters:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "every request racing the stop is served: {failures:#?}\n{}",
        bin.log()
    );
    // The test raced the stop at all (else it shows nothing).
    assert!(
        raced >= 4,
        "only {raced} of {CYCLES} bursts met a stop\n{}",
        bin.log()
    );
    eprintln!(
        "{raced} of {CYCLES} bursts met a stop; {split} were served partly by the stopping pool"
    );
    let state_dir = cfg.path().join("state");
    assert!(bin.terminate().await.success());
    common::check_hygiene(&state_dir);
    assert!(pids_of_uid(user.uid).is_empty());
}

#[test]
fn pool_idle_timeout_is_a_duration_and_zero_means_never() {
    let cfg = TestConfig::new();
    let site = |value: &str| {
        cfg.write(
            "vhosts/p.toml",
            &format!("hosts = [\"p.test\"]\nroot = \"/srv\"\n[php]\npool_idle_timeout = {value}\n"),
        );
    };
    let load = || polyhost::config::load(&cfg.main());
    let php_of = |c: polyhost::config::Config| {
        c.sites
            .values()
            .next()
            .unwrap()
            .php
            .clone()
            .unwrap()
            .pool_idle_timeout
    };
    site("\"90s\"");
    assert_eq!(php_of(load().unwrap()), Some(Duration::from_secs(90)));
    site("0");
    assert_eq!(php_of(load().unwrap()), None, "0: never");
    cfg.write(
        "vhosts/p.toml",
        "hosts = [\"p.test\"]\nroot = \"/srv\"\n[php]\n",
    );
    assert_eq!(php_of(load().unwrap()), None, "unset: never");
    site("\"soon\"");
    let err = load().unwrap_err().to_string();
    let file = cfg.path().join("vhosts/p.toml");
    assert!(
        err.contains(&format!(
            "{}: php.pool_idle_timeout: \"soon\" is not a duration",
            file.display()
        )),
        "{err}"
    );
}

/// When polyhost logged `what` for `site`, in order.
fn logged(log: &str, what: &str, site: &str) -> Vec<SystemTime> {
    let needle = format!("{what} site={site} ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .collect()
}

/// Idle time counts from the moment a start is ready at the earliest: a
/// start slower than the idle timeout is not scaled to zero at the next
/// check (requests waiting for it would start it again, and again). Shown
/// on the supervisor's one idle machinery with a Python app whose import
/// takes 1.5 s (php-fpm cannot be made to start slowly), started by a
/// request whose client gives up before it is ready.
#[tokio::test]
async fn idle_time_counts_from_readiness_not_from_a_slow_start() {
    let cfg = TestConfig::new();
    let user = TestUser::new();
    admin_support::python_site(&cfg, "slow", &user, "1", "");
    let vhost = cfg.path().join("vhosts/slow.toml");
    let text = std::fs::read_to_string(&vhost).unwrap();
    std::fs::write(
        &vhost,
        text.replace("[python]\n", "[python]\nidle_timeout = \"1s\"\n")
            .replace(
                "APP_VERSION = \"1\"",
                "APP_VERSION = \"1\", IMPORT_DELAY = \"1.5\"",
            ),
    )
    .unwrap();
    let bin = Binary::start(&cfg.main(), &[]).await;
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), get(bin.addr, "slow.test", "/")).await;
    assert!(gave_up.is_err(), "answered before its app was imported");
    let stopped = eventually(Duration::from_secs(15), || async {
        !logged(&bin.log(), "scaling to zero", "slow").is_empty()
    })
    .await;
    assert!(stopped, "scaled to zero at all\n{}", bin.log());
    let log = bin.log();
    let ready = logged(&log, "ready", "slow")[0];
    let stop = logged(&log, "scaling to zero", "slow")[0];
    let up = stop.duration_since(ready).unwrap_or_default();
    assert!(
        up >= Duration::from_millis(950),
        "up only {up:?} after it became ready\n{log}"
    );
    wait_gone(&cfg, &bin, "slow", &user).await;
    assert!(bin.terminate().await.success());
}
