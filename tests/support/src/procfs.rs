//! What a process uses, read from `/proc`, for the benchmarks that watch the binary they run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Memory and CPU of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// The highest resident set so far (`VmHWM`), KiB.
    pub peak_kib: u64,
    /// User and system CPU time so far.
    pub cpu: Duration,
}

/// The usage of process `pid`; zeros for a process that is gone.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Usage {
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 on Linux.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The bytes of the files directly in `path`.
pub fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
