//! The router process of a `polyhost serve` run as root (privilege
//! separation): its user, and finding it among the supervisor's children.

use std::time::Duration;

use super::{eventually, Binary};

/// The router's user (`router_user`'s default), created if missing as
/// `scripts/setup.sh` does; its uid.
pub fn router_uid() -> u32 {
    const ROUTER_USER: &str = "polyhost";
    for _ in 0..100 {
        if let Some(u) = nix::unistd::User::from_name(ROUTER_USER).unwrap() {
            return u.uid.as_raw();
        }
        let _pause = polyhost::isolation::pause_reaper();
        // Exit 10: /etc/passwd is locked by another test's useradd; again.
        let _ = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                ROUTER_USER,
            ])
            .output();
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot create the user {ROUTER_USER}");
}

/// The parent pid of `pid`.
fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The child of `supervisor` running `polyhost router`, if there is one now.
pub fn router_of(supervisor: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            parent_of(pid) == Some(supervisor)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"router".as_slice()))
        })
}

/// The router process of `bin` other than `not`, waited for (20 s); panics
/// with the log when there is none.
pub async fn router_pid(bin: &Binary, not: Option<i32>) -> i32 {
    let supervisor = bin.child.id().expect("polyhost runs") as i32;
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(Duration::from_secs(20), || {
        let now = router_of(supervisor).filter(|p| Some(*p) != not);
        *found.lock().unwrap() = now;
        async move { now.is_some() }
    })
    .await;
    let found = *found.lock().unwrap();
    found.unwrap_or_else(|| {
        panic!(
            "no router process (other than {not:?}) under polyhost {supervisor}; log:\n{}",
            bin.log()
        )
    })
}
