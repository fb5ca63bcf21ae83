//! Which of two overlapping polyhost instances this process is. During a
//! binary upgrade (`privsep::upgrade`) the old and the new supervisor run
//! side by side until the new one is ready; both bind runtime sockets under
//! the same `state_dir`, create site cgroups under the same parent, and
//! share the admin socket. Each instance therefore names what it creates
//! with its own tag, and never removes the other's.
//!
//! - Instance `A` (every fresh start) names things as polyhost always did:
//!   `<runtime>-<generation>-<id>.sock`, the cgroup `<site>`.
//! - Instance `B` (the successor of an `A`; the successor of a `B` is an
//!   `A` again) adds `b`: `<runtime>-b<generation>-<id>.sock` (and so the
//!   php-fpm pid file named after it), the cgroup `<site>.b` (a site name
//!   holds no `.`, so the two never meet).
//!
//! Invariants: a successor ([`took_over`]) removes no stale socket, cgroup
//! or admin socket at start or stop while its predecessor may still run;
//! an instance that handed over ([`handed_over`]) removes only its own
//! cgroups and leaves the admin socket, which its successor serves on.
//! Process-wide: set once at start, before any site starts.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

/// One of the two instances that may overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Instance {
    A,
    B,
}

impl Instance {
    /// The other one: what a successor of this instance is.
    pub fn other(self) -> Instance {
        match self {
            Instance::A => Instance::B,
            Instance::B => Instance::A,
        }
    }

    /// What a runtime socket's name carries before its generation.
    pub fn socket_tag(self) -> &'static str {
        match self {
            Instance::A => "",
            Instance::B => "b",
        }
    }

    /// The name of site `site`'s cgroup.
    pub fn cgroup_name(self, site: &str) -> String {
        match self {
            Instance::A => site.to_owned(),
            Instance::B => format!("{site}.b"),
        }
    }

    /// Whether a site cgroup of that name is this instance's.
    pub fn owns_cgroup(self, name: &str) -> bool {
        name.ends_with(".b") == (self == Instance::B)
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(0);
static HANDED_OVER: AtomicBool = AtomicBool::new(false);
/// The predecessor's pid while this is a successor (0: a fresh start).
static PREDECESSOR: AtomicI32 = AtomicI32::new(0);

/// This process's instance ([`Instance::A`] unless [`become_successor`]).
pub fn current() -> Instance {
    match CURRENT.load(Ordering::SeqCst) {
        0 => Instance::A,
        _ => Instance::B,
    }
}

/// This process was started by an upgrade from `predecessor` (pid) and is
/// `instance`. Call before any site starts.
pub fn become_successor(instance: Instance, predecessor: i32) {
    CURRENT.store(u8::from(instance == Instance::B), Ordering::SeqCst);
    PREDECESSOR.store(predecessor, Ordering::SeqCst);
}

/// Whether this process was started by an upgrade and its predecessor may
/// still run (its pid is still alive).
pub fn took_over() -> bool {
    predecessor_running().is_some()
}

/// The predecessor's pid, while it runs.
pub fn predecessor_running() -> Option<i32> {
    let pid = PREDECESSOR.load(Ordering::SeqCst);
    (pid > 0 && runs(pid)).then_some(pid)
}

/// Whether `pid` is a process that has not exited: a zombie (exited, its
/// parent has not waited for it yet) does not count.
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`; comm may hold anything, the state follows the last `)`.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// The successor reported ready: from now on it serves, this one drains.
pub fn set_handed_over() {
    HANDED_OVER.store(true, Ordering::SeqCst);
}

/// Whether this instance handed its listeners to a successor.
pub fn handed_over() -> bool {
    HANDED_OVER.load(Ordering::SeqCst)
}

/// Whether this instance alone uses the shared paths (the admin socket):
/// it neither handed over nor has a predecessor still running.
pub fn sole_owner() -> bool {
    !handed_over() && !took_over()
}

#[cfg(test)]
mod tests {
    use super::Instance;

    #[test]
    fn the_two_instances_name_cgroups_apart() {
        assert_eq!(Instance::A.other(), Instance::B);
        assert_eq!(Instance::B.other(), Instance::A);
        assert_eq!(Instance::A.cgroup_name("blog"), "blog");
        assert_eq!(Instance::B.cgroup_name("blog"), "blog.b");
        assert!(Instance::A.owns_cgroup("blog"));
        assert!(!Instance::A.owns_cgroup("blog.b"));
        assert!(Instance::B.owns_cgroup("blog.b"));
        assert!(!Instance::B.owns_cgroup("blog"));
    }
}
