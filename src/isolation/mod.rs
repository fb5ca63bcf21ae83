//! Isolation: the only module that forks, drops privileges and writes cgroup
//! files.
//!
//! **Architecture Invariant:** only `isolation` calls `fork`/`setuid`/`setgid`/
//! `setgroups`/`prctl`/`setrlimit` or writes under `/sys/fs/cgroup`; it is the only
//! module with `unsafe` code, and every block carries a `// SAFETY:` comment.
//!
//! # Layout
//! - [`identity`]: who a site runs as ([`SiteIdentity`]); never root.
//!   `userdb`: its name lookups, answered from one read of `/etc/passwd` and
//!   `/etc/group` while they are unchanged (10,000 sites, one pass).
//! - [`cgroup`]: one interface ([`CgroupRoot`], [`SiteCgroup`]) over cgroup v2
//!   and v1, or the "unavailable" fallback; limits and usage.
//! - [`spawn`](mod@spawn): starting a site process ([`SpawnSpec`] → [`spawn()`]),
//!   the child's fixed, fail-closed setup order; [`sandbox`]: the per-site
//!   namespaces and mounts a process starts in.
//! - [`elf`]: what a program's ELF dynamic section says it loads (its
//!   libraries and run path), read without running it.
//! - [`inherited`]: descriptors inherited at known numbers, taken over
//!   once (`polyhost router`'s link and listeners).
//! - [`nofile`]: polyhost's own file-descriptor limit (raised at start).
//! - [`process`]: a running [`SiteProcess`] (wait, stop, kill on drop).
//! - [`reap`]: which pids polyhost may wait for, the reaping of orphans (the
//!   subreaper) and its pause; below `process` and `cgroup`, which both use it.
//! - [`router_process`]: starting the router process (`privsep`) as
//!   `router_user` with `CAP_DAC_READ_SEARCH` alone.
//! - [`sealed`]: [`sealed_file`], contents handed to a site process that it
//!   can read but never change (php-fpm's generated config).
//! - [`unread`]: [`unread_by_peer`], what a Unix socket's peer has not read
//!   yet (`SIOCOUTQ`; the PHP pool's sign that a php-fpm child accepted).
//! - [`sock_diag`]: which user owns a TCP socket on this host (a local
//!   client's; the listener that took a connection to an `[app]` port).
//!
//! The child setup order, the cgroup layout and the fallback are described in
//! `docs/isolation.md`.

pub mod cgroup;
pub mod elf;
pub mod identity;
pub mod inherited;
pub mod nofile;
pub mod process;
pub mod reap;
pub mod router_process;
pub mod sealed;
pub mod sock_diag;
pub mod spawn;
mod step_report;
pub mod successor;
pub mod unread;
mod userdb;

pub use cgroup::{CgroupError, CgroupKind, CgroupRoot, Limits, SiteCgroup, Usage};
pub use identity::{running_as_root, IdentityError, SiteIdentity};
pub use nofile::{nofile_limit, raise_nofile_limit};
pub use process::{session_rss, SiteProcess, StopError};
pub use reap::{pause_reaper, reap_orphans, set_child_subreaper, ReaperPause};
pub use sealed::sealed_file;
pub use spawn::sandbox::{self, Sandbox};
pub use spawn::{spawn, Rlimits, SpawnError, SpawnSpec};
pub use unread::unread_by_peer;
