//! systemd's service notifications (`Type=notify`, `sd_notify(3)`): what
//! polyhost tells the service manager of its life. Owns nothing but the
//! messages; every call does nothing when `NOTIFY_SOCKET` is not set (not
//! under systemd, or a child polyhost started: children get a cleared
//! environment, so the router process never notifies).
//!
//! ```text
//! start:  READY=1 + STATUS=     once it listens and its eager sites are ready
//!                               (privilege-separated: once the router serves)
//! reload: RELOADING=1 + MONOTONIC_USEC=   when a reload starts (any trigger:
//!         SIGHUP, the admin API, `polyhost reload` — ExecReload=)
//!         READY=1 + STATUS=     when it ends, accepted or refused
//! stop:   STOPPING=1 + STATUS=  on SIGTERM/SIGINT, before anything stops
//! upgrade: MAINPID= + READY=1 + STATUS=   from the old process, once the
//!                               new binary said it serves (`privsep::upgrade`)
//! WATCHDOG=1                    every half of WATCHDOG_USEC, when set for us
//! ```
//!
//! The datagrams are sent by the `sd-notify` crate (a socket per message:
//! these are rare). A failure to send is logged at debug level and
//! otherwise ignored: systemd then reports the start as timed out, which
//! says more than polyhost could.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot send a notification to the service manager");
    }
}

/// One line: newlines and other control characters would end the
/// `STATUS=` field early or start another.
fn one_line(status: &str) -> String {
    status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `READY=1` with a one-line `STATUS=`: serving (after start or a reload).
pub fn ready(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (now): a reload starts.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1` with a one-line `STATUS=`.
pub fn stopping(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
}

/// `MAINPID=` the successor of a binary upgrade, with `READY=1` and a
/// one-line `STATUS=`: the service's main process is now that one.
pub fn main_pid(pid: u32, status: &str) {
    let status = one_line(status);
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Ready,
        NotifyState::Status(&status),
    ]);
}

/// When the service manager watches us (`WatchdogSec=`, which sets
/// `WATCHDOG_USEC` and `WATCHDOG_PID` for the main process), sends
/// `WATCHDOG=1` every half of that interval for as long as the tokio
/// runtime it runs on lives: a wedged runtime stops the pings and systemd
/// restarts polyhost. Returns whether it pings.
pub fn spawn_watchdog() -> bool {
    let Some(every) = sd_notify::watchdog_enabled() else {
        return false;
    };
    let half = every / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(one_line("3 sites\nREADY=1"), "3 sites READY=1");
    }
}
