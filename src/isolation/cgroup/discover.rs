//! Finding our own cgroups: parses `/proc/self/cgroup` and `/proc/self/mountinfo`
//! (pure functions over their text, so they are unit-tested with canned input).
//!
//! polyhost is rarely at a hierarchy root (containers, systemd services), so
//! every directory it creates lives under the cgroup it was started in.

use std::path::{Path, PathBuf};

/// One line of `/proc/<pid>/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    pub hierarchy: u32,
    /// Empty for the v2 hierarchy (`0::/path`).
    pub controllers: Vec<String>,
    pub path: String,
}

/// A cgroup (v1) or cgroup2 mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub v2: bool,
    /// The path inside the hierarchy that is mounted (usually `/`).
    pub root: String,
    pub mount_point: PathBuf,
    /// Super options; for v1 they name the controllers (`rw,cpu,cpuacct`).
    pub options: Vec<String>,
}

pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let path = parts.next()?.to_owned();
            Some(Membership {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                v2,
                root: unescape(left.get(3)?),
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                options: options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn join_under(mount: &CgroupMount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.as_str())
        .filter(|_| mount.root != "/")
        .unwrap_or(path);
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rel)
    }
}

/// Our own directory in the v1 hierarchy that carries `controller`.
pub(crate) fn v1_dir(
    controller: &str,
    members: &[Membership],
    mounts: &[CgroupMount],
) -> Option<PathBuf> {
    let member = members
        .iter()
        .find(|m| m.hierarchy != 0 && m.controllers.iter().any(|c| c == controller))?;
    let mount = mounts
        .iter()
        .find(|m| !m.v2 && m.options.iter().any(|o| o == controller))?;
    Some(join_under(mount, &member.path))
}

/// Our own directory in the v2 hierarchy.
pub(crate) fn v2_dir(members: &[Membership], mounts: &[CgroupMount]) -> Option<PathBuf> {
    let member = members
        .iter()
        .find(|m| m.hierarchy == 0 && m.controllers.is_empty())?;
    let mount = mounts.iter().find(|m| m.v2)?;
    Some(join_under(mount, &member.path))
}

/// Reads the live files of this process.
pub(crate) fn read_self() -> std::io::Result<(Vec<Membership>, Vec<CgroupMount>)> {
    let members = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup")?);
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
    Ok((members, mounts))
}

/// Controllers listed in a v2 `cgroup.controllers` or `cgroup.subtree_control` file.
pub(crate) fn controller_list(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/2cc7\n1:cpu:/\n2:cpuacct:/\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_as_on_the_ci_machine() {
        let members = parse_proc_cgroup(HYBRID_CGROUP);
        let mounts = parse_mountinfo(HYBRID_MOUNTS);
        assert_eq!(
            v1_dir("memory", &members, &mounts).unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/2cc7")
        );
        assert_eq!(
            v1_dir("pids", &members, &mounts).unwrap(),
            Path::new("/sys/fs/cgroup/pids")
        );
        assert_eq!(
            v1_dir("cpu", &members, &mounts).unwrap(),
            Path::new("/sys/fs/cgroup/cpu")
        );
        assert_eq!(
            v2_dir(&members, &mounts).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(v1_dir("blkio", &members, &mounts), None);
    }

    #[test]
    fn v2_only_host_under_systemd() {
        let members = parse_proc_cgroup("0::/system.slice/polyhost.service\n");
        let mounts = parse_mountinfo(
            "25 30 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(
            v2_dir(&members, &mounts).unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/polyhost.service")
        );
        assert_eq!(v1_dir("memory", &members, &mounts), None);
    }

    #[test]
    fn container_bind_mount_of_a_sub_hierarchy() {
        // The container sees only its own subtree mounted at /sys/fs/cgroup/memory.
        let members = parse_proc_cgroup("4:memory:/docker/abc/app\n");
        let mounts = parse_mountinfo(
            "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        );
        assert_eq!(
            v1_dir("memory", &members, &mounts).unwrap(),
            Path::new("/sys/fs/cgroup/memory/app")
        );
    }

    #[test]
    fn escaped_mount_points() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain\"), r"/plain\");
    }
}
