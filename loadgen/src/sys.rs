//! The few operating-system facts and knobs the loadgen needs beside `clarion_host`'s: timer
//! slack, its own CPU time and memory, and another process's.

use std::io;

use serde::{Deserialize, Serialize};

/// Lets the calling thread's sleeps end on time: the default timer slack (50 µs) would make a
/// paced sender late by up to that much.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

/// CPU time, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTime {
    /// In user space.
    pub user_s: f64,
    /// In the kernel on the process's behalf.
    pub system_s: f64,
}

impl CpuTime {
    /// This process's CPU time so far (all threads).
    pub fn of_self() -> CpuTime {
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        CpuTime {
            user_s: secs(usage.ru_utime),
            system_s: secs(usage.ru_stime),
        }
    }

    /// Both together.
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }

    /// The time spent since `earlier`.
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            system_s: (self.system_s - earlier.system_s).max(0.0),
        }
    }

    /// Adds another process's time.
    pub fn add(&mut self, other: CpuTime) {
        self.user_s += other.user_s;
        self.system_s += other.system_s;
    }
}

/// User and system CPU time of process `pid` (all its threads) from `/proc/PID/stat`.
pub fn cpu_of(pid: u32) -> io::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // SAFETY: sysconf has no memory arguments.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    parse_cpu_ticks(&stat)
        .map(|(user, system)| CpuTime {
            user_s: user as f64 / ticks_per_s,
            system_s: system as f64 / ticks_per_s,
        })
        .ok_or_else(|| io::Error::other("unreadable /proc/PID/stat"))
}

/// `utime` and `stime` (fields 14 and 15), counted after the command name, which may hold
/// spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let user = fields.nth(11)?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_kib(&status, "VmRSS:").ok_or_else(|| io::Error::other("no VmRSS line"))
}

/// This process's resident memory now and at its peak (`VmRSS`, `VmHWM`), KiB; zeros if
/// `/proc` cannot be read.
pub fn own_rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let read = |key| status_kib(&status, key).unwrap_or(0);
    (read("VmRSS:"), read("VmHWM:"))
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_ticks_behind_an_awkward_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some((1234, 567)));
        assert_eq!(parse_cpu_ticks("42 (cut) S 1 2"), None);
        let own = cpu_of(std::process::id()).unwrap();
        assert!(own.total_s() >= 0.0);
    }

    #[test]
    fn reads_own_facts() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let spin: u64 = (0..2_000_000u64).map(std::hint::black_box).sum();
        assert!(spin > 0);
        assert!(CpuTime::of_self().total_s() > 0.0);
        assert_eq!(
            status_kib("Name: x\nVmRSS:\t  1234 kB\n", "VmRSS:"),
            Some(1234)
        );
        assert_eq!(status_kib("Name: x\n", "VmRSS:"), None);
        let (now, peak) = own_rss_kib();
        assert!(now > 0 && peak >= now, "{now} {peak}");
    }
}
