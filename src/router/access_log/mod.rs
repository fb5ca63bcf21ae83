//! Per-site logs written by the router: the access log (combined log format
//! plus the request time in seconds) and the site's error log (the same file
//! the site's runtimes write their stderr to), held together as [`SiteLogs`].
//!
//! - `file`: [`LogFile`], one buffered, private log file; the log directory
//!   ([`prepare_log_dir`]) and removed sites' files ([`retire_other_logs`]).
//! - `flusher`: the one thread that writes every log's pending lines twice a
//!   second and closes a log's descriptor after `CLOSE_AFTER` (15 s) without
//!   a line ([`flush_logs`] at shutdown; [`reopen_logs`] for log rotation:
//!   pending lines to the file held, then every descriptor closed, so the
//!   next line opens the path afresh).
//! - `line`: what a request's access log line records ([`LogFacts`], taken
//!   from the request before it moves on) and its format ([`write_combined`]).
//!   The line is written when the response body is done, by
//!   `router::outgoing::LoggedBody`.
//!
//! Lines go into a log's buffer behind its mutex; the flusher writes them
//! every half second, so a log line costs a memory copy on the hot path, not
//! a system call. No descriptor, buffer or timer is held for a site that
//! logs nothing (an idle site): the file is opened by its first line and
//! closed after 15 s without one.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

mod file;
mod flusher;
mod line;

pub use file::{prepare_log_dir, retire_other_logs, set_log_owner, LogFile, LOG_FILE_MODE};
pub use flusher::{
    flush_all as flush_logs, reopen_all as reopen_logs, CLOSE_AFTER as LOG_CLOSE_AFTER,
};
pub(crate) use line::LogFacts;
pub use line::{write_combined, AccessRecord};

/// A site's two log files.
pub struct SiteLogs {
    pub access: Arc<LogFile>,
    pub error: Arc<LogFile>,
}

impl SiteLogs {
    /// Opens `<log_dir>/<site>.access.log` and `<log_dir>/<site>.error.log`
    /// (`0640 root:root` until [`give_to_group`](Self::give_to_group)).
    /// A file that cannot be opened (a full or read-only disk, ...) does not
    /// keep the site, or polyhost, from serving: the error is logged and
    /// that file's lines are dropped until the site's logs are opened again
    /// (a restart of polyhost).
    pub fn open(log_dir: &Path, site: &str) -> SiteLogs {
        let open = |kind: &str| {
            let path = log_dir.join(format!("{site}.{kind}.log"));
            LogFile::open(&path).unwrap_or_else(|e| {
                tracing::error!(site, file = %path.display(), error = %e, "cannot open the site's log file; its lines are dropped until polyhost is restarted");
                LogFile::closed(&path)
            })
        };
        SiteLogs {
            access: open("access"),
            error: open("error"),
        }
    }

    /// Opens the two files another process made (the router opens what
    /// the supervisor made: [`LogFile::open_existing`]). A file that cannot
    /// be opened drops its lines, as with [`open`](Self::open).
    pub fn open_existing(log_dir: &Path, site: &str) -> SiteLogs {
        let open = |kind: &str| {
            let path = log_dir.join(format!("{site}.{kind}.log"));
            LogFile::open_existing(&path).unwrap_or_else(|e| {
                tracing::error!(site, file = %path.display(), error = %e, "cannot open the site's log file (the supervisor makes it); its lines are dropped until the site is added again or polyhost restarted");
                LogFile::closed(&path)
            })
        };
        SiteLogs {
            access: open("access"),
            error: open("error"),
        }
    }

    /// Lets the site's group read both files (`None`: root only).
    pub fn give_to_group(&self, group: Option<u32>) -> std::io::Result<()> {
        self.access.give_to_group(group)?;
        self.error.give_to_group(group)
    }

    /// Makes both files again where log rotation moved them away
    /// ([`LogFile::recreate`]).
    pub fn recreate(&self) -> std::io::Result<()> {
        self.access.recreate()?;
        self.error.recreate()
    }

    /// Writes a line a runtime reported (e.g. PHP's stderr) to the error log.
    pub fn runtime_line(&self, runtime: &str, message: &str) {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        self.error.line(&format!("[{now}] {runtime}: {message}"));
    }

    /// Writes a timestamped line to the site's error log.
    pub fn error(&self, message: &str) {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        self.error.line(&format!("[{now}] polyhost: {message}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_that_cannot_be_opened_drops_its_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no/such/dir");
        let logs = SiteLogs::open(&missing, "shop");
        logs.error("nobody reads this");
        logs.access.flush();
        logs.give_to_group(Some(1)).unwrap();
        assert!(!missing.exists());
    }
}
