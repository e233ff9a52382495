//! Free disk space and usable memory, checked before a download starts.

use std::path::Path;

/// Bytes available to an unprivileged writer on the file system holding `dir`.
pub(crate) fn disk_available(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Memory this process may still use: the smallest of MemAvailable and the cgroup (v2 or v1)
/// limit minus current usage. `None` when nothing can be read.
pub fn memory_available() -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut take = |v: u64| best = Some(best.map_or(v, |b| b.min(v)));
    if let Some(v) = meminfo_available() {
        take(v);
    }
    if let Some(v) = cgroup_v2_available() {
        take(v);
    } else if let Some(v) = cgroup_v1_available() {
        take(v);
    }
    best
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn cgroup_v2_available() -> Option<u64> {
    // The process's own cgroup: "0::/some/path" in /proc/self/cgroup.
    let rel = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
        })
        .unwrap_or_default();
    for dir in [format!("/sys/fs/cgroup{rel}"), "/sys/fs/cgroup".to_string()] {
        let Ok(max) = std::fs::read_to_string(format!("{dir}/memory.max")) else {
            continue;
        };
        let max = max.trim();
        if max == "max" {
            return None;
        }
        let max: u64 = max.parse().ok()?;
        let cur = read_u64(&format!("{dir}/memory.current")).unwrap_or(0);
        return Some(max.saturating_sub(cur));
    }
    None
}

fn cgroup_v1_available() -> Option<u64> {
    let limit = read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes")?;
    if limit >= 1 << 60 {
        return None; // "unlimited"
    }
    let usage = read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes").unwrap_or(0);
    Some(limit.saturating_sub(usage))
}

/// A byte count for people: `1.20 GB (1200000000 bytes)`.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_something() {
        assert!(super::disk_available(std::path::Path::new("/tmp")).unwrap() > 0);
        assert!(super::memory_available().unwrap() > 0);
        assert_eq!(super::human(10), "10 B");
        assert!(super::human(3 << 20).starts_with("3.0 MiB"));
    }
}
