use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;

use super::*;
use crate::config::tests_support;

fn app(listen: AppListen) -> AppConfig {
    AppConfig {
        program: "/usr/bin/node".into(),
        args: vec!["server.js".into()],
        cwd: "/srv/blog".into(),
        processes: 2,
        listen,
        mount: String::new(),
        ready: Some("/healthz".into()),
        start: StartPolicy::OnDemand,
        startup_timeout: Duration::from_secs(30),
        max_concurrency: 100,
        queue_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(60),
        max_requests: Some(1000),
        memory_per_process: None,
        idle_timeout: Some(Duration::from_secs(300)),
        env: BTreeMap::from([
            ("NODE_ENV".to_owned(), "production".to_owned()),
            ("APP_ENV".to_owned(), "app".to_owned()),
            ("LISTEN_FDS".to_owned(), "7".to_owned()),
            ("PORT".to_owned(), "80".to_owned()),
        ]),
    }
}

fn launcher(listen: AppListen, log: &Path) -> AppLauncher {
    let site = tests_support::site("/srv/blog");
    AppLauncher::new(
        &site,
        &app(listen),
        Some(Path::new("/home/blog")),
        Path::new("/tmp/blog"),
        log,
    )
}

fn var<'a>(cmd: &'a Command, name: &str) -> Option<&'a str> {
    let mut found = cmd.env.iter().filter(|(k, _)| k == name);
    let (_, v) = found.next()?;
    assert!(found.next().is_none(), "{name} is set twice");
    Some(v)
}

fn socket_of(path: &Path, tcp: Option<SocketAddr>) -> ProcessSocket<'_> {
    ProcessSocket {
        path,
        fd: if tcp.is_some() { -1 } else { 17 },
        tcp,
    }
}

#[test]
fn socket_mode_hands_the_socket_over_as_fd_3_with_systemd_variables() {
    let l = launcher(AppListen::Socket, Path::new("/nonexistent/blog.error.log"));
    let cmd = l
        .command(socket_of(Path::new("/s/app-1-1.sock"), None))
        .unwrap();
    assert_eq!(cmd.program, Path::new("/usr/bin/node"));
    assert_eq!(cmd.args, ["server.js"]);
    assert_eq!(cmd.cwd, Path::new("/srv/blog"));
    assert_eq!(cmd.socket_at, Some(3));
    assert_eq!(cmd.pid_env, Some("LISTEN_PID"));
    assert_eq!(
        var(&cmd, "LISTEN_FDS"),
        Some("1"),
        "the site cannot override it"
    );
    assert_eq!(var(&cmd, "LISTEN_FDNAMES"), Some("http"));
    assert_eq!(var(&cmd, "POLYHOST_LISTEN_FD"), Some("3"));
    assert_eq!(var(&cmd, "PORT"), None, "no port in socket mode");
    assert_eq!(var(&cmd, "NODE_ENV"), Some("production"));
    assert_eq!(
        var(&cmd, "APP_ENV"),
        Some("app"),
        "[app.env] over the site's [env]"
    );
    assert_eq!(var(&cmd, "PATH"), Some(DEFAULT_APP_PATH));
    assert_eq!(var(&cmd, "HOME"), Some("/home/blog"));
    assert_eq!(var(&cmd, "TMPDIR"), Some("/tmp/blog"));
    assert_eq!(
        l.listen(),
        Listen::Supervisor {
            backlog: BACKLOG,
            probe: Probe::Http {
                path: Some("/healthz".into())
            }
        }
    );
}

#[test]
fn port_mode_passes_port_and_host_and_binds_nothing() {
    let l = launcher(AppListen::Port, Path::new("/nonexistent/blog.error.log"));
    let addr: SocketAddr = "127.0.0.1:41234".parse().unwrap();
    let cmd = l
        .command(socket_of(Path::new("/s/app-1-1.sock"), Some(addr)))
        .unwrap();
    assert_eq!(var(&cmd, "PORT"), Some("41234"));
    assert_eq!(var(&cmd, "HOST"), Some("127.0.0.1"));
    assert_eq!(cmd.socket_at, None);
    assert_eq!(cmd.pid_env, None);
    for name in ["LISTEN_FDS", "LISTEN_FDNAMES", "POLYHOST_LISTEN_FD"] {
        assert_eq!(var(&cmd, name), None, "{name}");
    }
    assert_eq!(
        l.listen(),
        Listen::Port {
            probe: Probe::Http {
                path: Some("/healthz".into())
            }
        }
    );
    let err = l
        .command(socket_of(Path::new("/s/x.sock"), None))
        .unwrap_err();
    assert!(err.to_string().contains("no loopback port"), "{err}");
}

#[test]
fn lifecycle_follows_the_app_table() {
    let l = launcher(AppListen::Socket, Path::new("/nonexistent"));
    let life = l.lifecycle();
    assert_eq!(life.processes, 2);
    assert_eq!(life.max_requests, Some(1000));
    assert_eq!(life.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(life.drain_timeout, Duration::from_secs(61));
    assert!(!life.eager);
}

#[test]
fn a_crash_is_told_with_what_the_process_wrote_since_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("blog.error.log");
    std::fs::write(&log, "an older process's line\n").unwrap();
    let l = launcher(AppListen::Socket, &log);
    let socket = Path::new("/s/app-1-7.sock");
    l.command(socket_of(socket, None)).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for i in 0..12 {
        writeln!(f, "line {i}").unwrap();
    }
    writeln!(
        f,
        "[2026-12-05T21:00:00Z] polyhost: app process 9 failed: x"
    )
    .unwrap();
    writeln!(f, "Error: Cannot find module 'express'").unwrap();
    let said = l.diagnose(socket).unwrap();
    assert_eq!(
        said,
        "line 3 | line 4 | line 5 | line 6 | line 7 | line 8 | line 9 | line 10 | line 11 | Error: Cannot find module 'express'"
    );
    assert_eq!(l.diagnose(socket), None, "told once");
    assert_eq!(l.diagnose(Path::new("/s/unknown.sock")), None);
}

#[test]
fn a_long_lived_process_keeps_its_start_through_many_recycles_of_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("blog.error.log");
    std::fs::write(&log, "").unwrap();
    let l = launcher(AppListen::Socket, &log);
    let first = Path::new("/s/app-1-1.sock");
    l.command(socket_of(first, None)).unwrap();
    // Its 63 neighbours recycled ten times over (max_requests), each
    // ending cleanly.
    for n in 2..=640 {
        let other = PathBuf::from(format!("/s/app-1-{n}.sock"));
        l.command(socket_of(&other, None)).unwrap();
        l.forget(&other);
    }
    std::fs::write(&log, "Error: listen EADDRINUSE\n").unwrap();
    assert_eq!(
        l.diagnose(first).as_deref(),
        Some("Error: listen EADDRINUSE"),
        "the first process's start was forgotten"
    );
    // Without `forget` (processes that never end), the oldest go past the bound.
    for n in 0..=REMEMBERED {
        l.command(socket_of(&PathBuf::from(format!("/s/live-{n}.sock")), None))
            .unwrap();
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "a late line").unwrap();
    assert_eq!(
        l.diagnose(Path::new("/s/live-0.sock")),
        None,
        "the oldest went"
    );
    assert_eq!(
        l.diagnose(Path::new("/s/live-1.sock")).as_deref(),
        Some("a late line")
    );
}

#[test]
fn a_long_tail_is_cut_to_its_last_2_kib() {
    let line = "é".repeat(700);
    let text = format!("{line}\n{line}\n");
    let tail = last_lines(text.as_bytes());
    assert!(tail.starts_with('…'));
    assert!(tail.len() <= TAIL_BYTES + '…'.len_utf8(), "{}", tail.len());
    assert!(tail.ends_with('é'));
}
