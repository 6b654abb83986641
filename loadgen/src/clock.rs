//! One clock for the whole run, in nanoseconds: `CLOCK_MONOTONIC`, which every process on the
//! machine shares, so a timestamp a publisher writes in one process means the same instant to a
//! subscriber in another.

use std::time::Duration;

/// Nanoseconds on the machine's monotonic clock.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, so the
    // call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A duration in nanoseconds, saturating.
pub fn ns(duration: Duration) -> u64 {
    duration.as_nanos().min(u64::MAX as u128) as u64
}

/// Sleeps until `at_ns` on [`now_ns`]'s clock.
pub fn sleep_until_ns(at_ns: u64) {
    loop {
        let now = now_ns();
        if now >= at_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos(at_ns - now));
    }
}
