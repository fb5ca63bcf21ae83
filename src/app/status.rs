//! Status as values: what `polyhost status` prints and the admin API
//! returns as JSON.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    /// How resource limits are enforced: cgroup v2, v1, or the rlimit fallback.
    pub limits_backend: String,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub sites: Vec<SiteStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SiteStatus {
    pub name: String,
    /// `static`, `running`, `idle` (scaled to zero or not started yet),
    /// `starting`, `failed`, `stopped` (by the operator).
    pub state: String,
    pub runtime: String,
    pub hosts: Vec<String>,
    pub generation: u64,
    pub pids: Vec<i32>,
    pub processes: usize,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub requests: u64,
    pub responses_5xx: u64,
    pub restarts: u64,
    pub oom_kills: u64,
    pub last_error: Option<String>,
}
