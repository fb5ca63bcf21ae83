//! Log rotation against the real binary run as root (split: a supervisor
//! and a router process as `polyhost`, which writes the site logs), issue
//! 24: every site log renamed away under load, `polyhost reopen-logs`, and
//! 10,000 requests across the rename each appear exactly once, in the old
//! file or the new one; every request sent after the reopen returned is in
//! the new file. php-fpm masters get SIGUSR1 and reopen their own log; the
//! router process survives a SIGUSR1 of its own.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{file_text, open_up, wait_for, Binary, Client, TestConfig, TestUser};

const REQUESTS: usize = 10_000;
const CLIENTS: usize = 16;
/// The logs are renamed once this many requests were sent...
const RENAME_AT: usize = 3_000;
/// ... and no request past this one is sent before the reopen returned:
/// requests straddle the rename whatever the machine's speed.
const HOLD_AT: usize = 6_000;

/// The request numbers (`?r=N`) logged in an access log's text, with how
/// often each appears.
fn logged(text: &str) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    for line in text.lines() {
        if let Some(n) = line
            .split("?r=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
        {
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_logged_once_across_a_rename_and_reopen() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs polyhost split, as root"
    );
    common::router_uid();
    let cfg = TestConfig::new();
    cfg.write(
        "polyhost.toml",
        "listen = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\nlog_dir = \"logs\"\nshutdown_timeout = \"5s\"\nrouter_threads = 2\n",
    );
    cfg.static_site("st", &["st.test"], "");
    cfg.write("www/st/a.txt", "static file\n");
    let user = TestUser::new();
    cfg.write("www/php/index.php", "<?php echo 'php ok';");
    cfg.write(
        "vhosts/php.toml",
        &format!(
            "hosts = [\"php.test\"]\nroot = \"www/php\"\nuser = \"{}\"\n[php]\nmax_children = 2\n",
            user.name
        ),
    );
    open_up(cfg.path());
    let bin = Binary::start(&cfg.main(), &[]).await;
    let php = common::get(bin.addr, "php.test", "/").await;
    assert_eq!(php.text(), "php ok", "{}", bin.log());
    let logs = cfg.path().join("logs");
    let fpm_log = cfg.path().join("state/sites/php/php-fpm.log");

    // The router process must survive a SIGUSR1 sent to it (as
    // `systemctl kill -s USR1` sends to every process of the unit).
    let supervisor = bin.child.id().unwrap() as i32;
    let router = common::router_process_of(supervisor).expect("the router process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(router),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();

    let next = Arc::new(AtomicUsize::new(0));
    let reopened = Arc::new(AtomicBool::new(false));
    let after: Arc<Vec<AtomicBool>> =
        Arc::new((0..REQUESTS).map(|_| AtomicBool::new(false)).collect());
    let rename_now = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, reopened, after, rename_now) = (
            next.clone(),
            reopened.clone(),
            after.clone(),
            rename_now.clone(),
        );
        let addr = bin.addr;
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut failed = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= REQUESTS {
                    return failed;
                }
                if n == RENAME_AT {
                    rename_now.notify_one();
                }
                if n >= HOLD_AT {
                    let mut held = 0;
                    while !reopened.load(Ordering::SeqCst) && held < 3000 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        held += 1;
                    }
                }
                after[n].store(reopened.load(Ordering::SeqCst), Ordering::SeqCst);
                let resp = client.get("st.test", &format!("/a.txt?r={n}")).await;
                if resp.status != 200 {
                    failed.push((n, resp.status));
                }
            }
        }));
    }

    // The rotation: every log renamed away (as logrotate does), then the reopen.
    rename_now.notified().await;
    let mut renamed = Vec::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        let to = path.with_extension("log.1");
        std::fs::rename(&path, &to).unwrap();
        renamed.push(to);
    }
    std::fs::rename(&fpm_log, fpm_log.with_extension("log.1")).unwrap();
    let (code, stdout, stderr) = common::polyhost_cli(&cfg.main(), &["reopen-logs"]).await;
    reopened.store(true, Ordering::SeqCst);
    assert_eq!(
        code,
        0,
        "stdout: {stdout}\nstderr: {stderr}\nlog:\n{}",
        bin.log()
    );
    assert!(
        stdout.contains("reopened the logs of 2 site(s); sent SIGUSR1 to 1 php-fpm master(s)"),
        "{stdout}"
    );

    for c in clients {
        let failed = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
    }

    // Every request's line, once the flusher wrote them all.
    let old_path = logs.join("st.access.log.1");
    let new_path = logs.join("st.access.log");
    let (old, new) = wait_for(
        "every request's access log line in the old or the new file",
        Duration::from_secs(20),
        async || {
            let old = logged(&file_text(&old_path).0);
            let new = logged(&file_text(&new_path).0);
            (old, new)
        },
        |(old, new)| old.len() + new.len() >= REQUESTS,
    )
    .await;
    let mut wrong = Vec::new();
    for n in 0..REQUESTS {
        let (o, w) = (
            old.get(&n).copied().unwrap_or(0),
            new.get(&n).copied().unwrap_or(0),
        );
        if o + w != 1 {
            wrong.push(format!(
                "request {n}: {o} time(s) in the old file, {w} in the new"
            ));
        } else if after[n].load(Ordering::SeqCst) && o != 0 {
            wrong.push(format!(
                "request {n} was sent after the reopen returned but is in the old file"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        !old.is_empty() && !new.is_empty(),
        "old {} new {}",
        old.len(),
        new.len()
    );
    let sent_after = (0..REQUESTS)
        .filter(|&n| after[n].load(Ordering::SeqCst))
        .count();
    assert!(
        sent_after >= REQUESTS - HOLD_AT,
        "{sent_after} requests sent after the reopen"
    );
    // The new files were made as site setup makes them: the router's,
    // 0640, the site's group reading.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&new_path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), common::router_uid());
    for kind in ["access", "error"] {
        assert!(
            logs.join(format!("php.{kind}.log")).exists(),
            "php.{kind}.log made again"
        );
    }

    // php-fpm reopened its own log: a new file at the path, master unchanged.
    let fpm = wait_for(
        "php-fpm's log made again after SIGUSR1",
        Duration::from_secs(10),
        async || file_text(&fpm_log),
        |t| t.0.contains("re-opened"),
    )
    .await;
    assert!(!fpm.0.is_empty());
    let php = common::get(bin.addr, "php.test", "/").await;
    assert_eq!(php.text(), "php ok");
    assert_eq!(
        common::router_process_of(supervisor),
        Some(router),
        "the router process lived through SIGUSR1 and the reopen; log:\n{}",
        bin.log()
    );
    let status = bin.terminate().await;
    assert!(status.success(), "{status:?}");
}
