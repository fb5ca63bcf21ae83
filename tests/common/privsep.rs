//! The router process of `polyhost serve` run as root (`privsep`): its
//! user and where to find it.

use std::time::Duration;

/// The router process's user (`router_user`'s default, `polyhost`), created
/// if missing as `scripts/setup.sh` does: `polyhost serve` run as root
/// starts its router as it. Its uid.
pub fn router_uid() -> u32 {
    const NAME: &str = "polyhost";
    for _ in 0..200 {
        if let Some(u) = nix::unistd::User::from_name(NAME).unwrap() {
            return u.uid.as_raw();
        }
        let _pause = polyhost::isolation::pause_reaper();
        // Fails while another test's useradd holds /etc/passwd's lock: again.
        let _ = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .output();
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot create the user {NAME} (router_user)");
}

/// The router process of the polyhost `supervisor` (`polyhost serve` as
/// root): its child running `polyhost router`, if there is one now.
pub fn router_process_of(supervisor: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            let parent = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("PPid:"))
                        .and_then(|v| v.trim().parse::<i32>().ok())
                });
            parent == Some(supervisor)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"router".as_slice()))
        })
}
