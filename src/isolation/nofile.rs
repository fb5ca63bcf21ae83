//! polyhost's own file-descriptor limit (`RLIMIT_NOFILE`). Every client
//! connection, upstream socket and file being sent is a descriptor; the
//! usual soft limit (1024) would end polyhost's accepts long before
//! `limits.max_connections`. [`raise_nofile_limit`] lifts the soft limit to
//! the hard one at start; the router reads [`nofile_limit`] to fit its
//! connection limit under it. Site processes get their own limit at spawn
//! (`Rlimits::nofile`), whatever polyhost's is.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the limits
/// before and after (`(soft, soft)` when nothing changed).
pub fn raise_nofile_limit() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok((soft, hard))
}

/// The soft `RLIMIT_NOFILE` (the one that fails `open` and `accept` with
/// EMFILE); `None` when unlimited or unreadable.
pub fn nofile_limit() -> Option<u64> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let (_, after) = raise_nofile_limit().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, soft), (after, hard));
        assert_eq!(nofile_limit(), Some(soft));
    }
}
