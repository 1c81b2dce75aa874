//! How many workers to start: the CPUs this process may use.
//!
//! That is the CPUs of its affinity mask, capped by a cgroup CPU quota, as Go 1.25 and the
//! JVM do: a container limited to 2 CPUs on a 64-CPU node must not start 64 pinned
//! workers that the quota then throttles. The quota is the smallest over the process's
//! cgroup and its ancestors, cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us` /
//! `cpu.cfs_period_us`), rounded up to whole CPUs. The parsers are pure; [`default_workers`]
//! reads /proc and the cgroup files.

use std::path::{Path, PathBuf};

/// The default worker count and where it came from, for the startup line.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub workers: usize,
    pub source: String,
}

/// Workers for `affinity_cpus` CPUs in the affinity mask, capped by the cgroup quota.
pub fn default_workers(affinity_cpus: usize) -> Budget {
    let affinity = affinity_cpus.max(1);
    match cgroup_quota() {
        Some((quota, version)) if quota.ceil() < affinity as f64 => Budget {
            workers: (quota.ceil() as usize).max(1),
            source: format!("cgroup {version} CPU quota {quota:.2}"),
        },
        _ => Budget {
            workers: affinity,
            source: "the CPUs the process may run on".into(),
        },
    }
}

/// The process's CPU quota in CPUs (the smallest along its cgroup path), and the cgroup
/// version it came from; `None` when there is no quota.
fn cgroup_quota() -> Option<(f64, &'static str)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (path, version) = cpu_cgroup_dir(&cgroups, &mountinfo)?;
    let quota = ancestors_quota(&path, version);
    quota.map(|q| (q, if version == Version::V2 { "v2" } else { "v1" }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The directory of the process's CPU cgroup and its version: the v1 `cpu` controller's
/// hierarchy if it is mounted, else the unified (v2) one.
fn cpu_cgroup_dir(cgroups: &str, mountinfo: &str) -> Option<(PathBuf, Version)> {
    let mounts = cgroup_mounts(mountinfo);
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let v1_cpu = controllers.split(',').any(|c| c == "cpu");
        let wanted = if v1_cpu {
            Some(Version::V1)
        } else if controllers.is_empty() {
            Some(Version::V2)
        } else {
            None
        };
        let Some(version) = wanted else { continue };
        let mount = mounts
            .iter()
            .find(|m| m.version == version && (version == Version::V2 || m.cpu))?;
        // The mount shows the hierarchy from `root` down: strip it from the process's path.
        let relative = path.strip_prefix(mount.root.as_str()).unwrap_or(path);
        let dir = mount.point.join(relative.trim_start_matches('/'));
        if v1_cpu {
            return Some((dir, Version::V1));
        }
        if !mounts.iter().any(|m| m.version == Version::V1 && m.cpu) {
            return Some((dir, Version::V2));
        }
    }
    None
}

struct Mount {
    root: String,
    point: PathBuf,
    version: Version,
    /// A v1 hierarchy with the `cpu` controller.
    cpu: bool,
}

/// The cgroup filesystems of a `/proc/self/mountinfo`:
/// `35 24 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:13 - cgroup cgroup rw,cpu`.
fn cgroup_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let before: Vec<&str> = before.split_whitespace().collect();
            let after: Vec<&str> = after.split_whitespace().collect();
            let version = match *after.first()? {
                "cgroup2" => Version::V2,
                "cgroup" => Version::V1,
                _ => return None,
            };
            let cpu = after
                .get(2)
                .is_some_and(|o| o.split(',').any(|opt| opt == "cpu"));
            Some(Mount {
                root: before.get(3)?.to_string(),
                point: PathBuf::from(before.get(4)?),
                version,
                cpu,
            })
        })
        .collect()
}

/// The smallest quota from `dir` up to the hierarchy's root (a parent's limit binds its
/// children too).
fn ancestors_quota(dir: &Path, version: Version) -> Option<f64> {
    let mut smallest: Option<f64> = None;
    let mut current = Some(dir);
    for _ in 0..64 {
        let Some(dir) = current else { break };
        let quota = match version {
            Version::V2 => std::fs::read_to_string(dir.join("cpu.max"))
                .ok()
                .and_then(|text| parse_cpu_max(&text)),
            Version::V1 => {
                let read = |name| std::fs::read_to_string(dir.join(name)).ok();
                read("cpu.cfs_quota_us")
                    .zip(read("cpu.cfs_period_us"))
                    .and_then(|(quota, period)| parse_cfs(&quota, &period))
            }
        };
        if let Some(quota) = quota {
            smallest = Some(smallest.map_or(quota, |s: f64| s.min(quota)));
        }
        // Stop where the cgroup files end (the mount point's parent has none).
        if !dir
            .join(if version == Version::V2 {
                "cgroup.controllers"
            } else {
                "cgroup.procs"
            })
            .exists()
        {
            break;
        }
        current = dir.parent();
    }
    smallest
}

/// cgroup v2 `cpu.max`: `max 100000` (no limit) or `150000 100000` (1.5 CPUs).
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: f64 = fields.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// cgroup v1: `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        assert_eq!(parse_cfs("x", "100000"), None);
    }

    const MOUNTINFO_V1: &str = "\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";

    #[test]
    fn the_v1_cpu_hierarchy_is_found() {
        let cgroups = "4:memory:/x\n3:cpuacct:/\n2:cpu:/leftpad-test\n";
        let (dir, version) = cpu_cgroup_dir(cgroups, MOUNTINFO_V1).expect("found");
        assert_eq!(
            (dir, version),
            (
                PathBuf::from("/sys/fs/cgroup/cpu/leftpad-test"),
                Version::V1
            )
        );
    }

    #[test]
    fn a_v2_container_path_is_relative_to_its_mount_root() {
        // A container sees its own cgroup as the root of the mount.
        let mountinfo = "40 30 0:31 /kubepods/pod1/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let (dir, version) = cpu_cgroup_dir("0::/kubepods/pod1/c1\n", mountinfo).expect("found");
        assert_eq!(
            (dir, version),
            (PathBuf::from("/sys/fs/cgroup"), Version::V2)
        );
        let (dir, _) = cpu_cgroup_dir("0::/kubepods/pod1/c1/sub\n", mountinfo).expect("found");
        assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/sub"));
    }

    #[test]
    fn without_a_quota_the_affinity_counts() {
        let budget = Budget {
            workers: 3,
            source: "the CPUs the process may run on".into(),
        };
        // The test process has no quota of its own on a developer machine or in CI.
        let found = default_workers(3);
        if found.source.starts_with("cgroup") {
            assert!(found.workers <= 3);
        } else {
            assert_eq!(found, budget);
        }
    }
}
