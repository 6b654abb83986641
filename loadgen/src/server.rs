//! `--server-pid`: the server's resident memory before the loadgen opens its connections, once
//! they are all open and again at the end of the measurement window, to report what each
//! connection costs the server; and its CPU time over the window only (no ramp-up, no close), to
//! report what each message costs it.

use std::thread::JoinHandle;

use serde::Serialize;

use crate::clock;
use crate::sys::{self, CpuTime};

/// The server's memory around the ramp-up.
#[derive(Clone, Debug, Serialize)]
pub struct ServerWatch {
    /// The server's process id.
    pub pid: u32,
    /// VmRSS before the first dial, KiB.
    pub rss_before_kib: Option<u64>,
    /// VmRSS once the ramp-up finished, KiB: what the connections hold, with what the ramp
    /// still has in flight (answers being sent, the buffers lent for them).
    pub rss_after_kib: Option<u64>,
    /// VmRSS at the end of the measurement window, KiB: in `idle` mode, what the connections
    /// hold once idle (the ramp's transients settled, the server's keep-alive traffic going).
    pub rss_window_end_kib: Option<u64>,
    /// CPU time over the measurement window.
    pub cpu_window: Option<CpuTime>,
    /// Why a reading failed, if one did.
    pub error: Option<String>,
}

/// What [`CpuSampler`] read: CPU time over the window, and resident memory at its end (KiB).
type WindowSample = (CpuTime, Option<u64>);

/// Reads the server's CPU time at the edges of a measurement window (and its memory at the end),
/// from its own thread so it reads on time whatever the caller is doing.
pub struct CpuSampler(JoinHandle<Result<WindowSample, String>>);

impl CpuSampler {
    /// Samples the server's CPU at `go_ns` and `stop_ns` (monotonic, see [`clock::now_ns`]),
    /// and its RSS at `stop_ns`.
    pub fn start(pid: u32, go_ns: u64, stop_ns: u64) -> CpuSampler {
        CpuSampler(std::thread::spawn(move || {
            let read =
                || sys::cpu_of(pid).map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"));
            clock::sleep_until_ns(go_ns);
            let at_go = read()?;
            clock::sleep_until_ns(stop_ns);
            let cpu = read()?.since(at_go);
            Ok((cpu, sys::rss_kib(pid).ok()))
        }))
    }
}

impl ServerWatch {
    /// Takes the "before" reading.
    pub fn start(pid: u32) -> ServerWatch {
        let mut watch = ServerWatch {
            pid,
            rss_before_kib: None,
            rss_after_kib: None,
            rss_window_end_kib: None,
            cpu_window: None,
            error: None,
        };
        watch.rss_before_kib = watch.read();
        watch
    }

    /// Takes the "after" reading.
    pub fn sample_after(&mut self) {
        self.rss_after_kib = self.read();
    }

    /// Collects the window's CPU time (and the memory at its end) once the window has passed;
    /// an aborted run does not wait for it.
    pub fn finish_window(&mut self, sampler: CpuSampler, aborted: bool) {
        if aborted && !sampler.0.is_finished() {
            return;
        }
        match sampler.0.join() {
            Ok(Ok((cpu, rss))) => {
                self.cpu_window = Some(cpu);
                self.rss_window_end_kib = rss;
            }
            Ok(Err(e)) => self.error = Some(e),
            Err(_) => self.error = Some("the CPU sampler panicked".into()),
        }
    }

    /// Bytes of server memory per open connection, from the readings before and after the
    /// ramp-up.
    pub fn bytes_per_connection(&self, connections: u64) -> Option<f64> {
        per_connection(self.rss_before_kib?, self.rss_after_kib?, connections)
    }

    /// Bytes of server memory per connection at the end of the window (once idle, in `idle`
    /// mode).
    pub fn bytes_per_connection_at_window_end(&self, connections: u64) -> Option<f64> {
        per_connection(self.rss_before_kib?, self.rss_window_end_kib?, connections)
    }

    fn read(&mut self) -> Option<u64> {
        match sys::rss_kib(self.pid) {
            Ok(kib) => Some(kib),
            Err(e) => {
                self.error = Some(format!("cannot read /proc/{}/status: {e}", self.pid));
                None
            }
        }
    }
}

/// (`after` − `before`) KiB over `connections`, in bytes.
fn per_connection(before: u64, after: u64, connections: u64) -> Option<f64> {
    (connections > 0).then(|| (after as f64 - before as f64) * 1024.0 / connections as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_a_live_process_and_reports_a_dead_one() {
        let mut watch = ServerWatch::start(std::process::id());
        watch.sample_after();
        assert!(watch.bytes_per_connection(10).is_some());
        assert_eq!(watch.bytes_per_connection(0), None);
        let missing = ServerWatch::start(u32::MAX);
        assert!(missing.error.is_some());
        assert_eq!(missing.bytes_per_connection(1), None);
    }

    #[test]
    fn samples_cpu_over_the_window_only() {
        let mut watch = ServerWatch::start(std::process::id());
        let go_ns = clock::now_ns() + 20_000_000;
        let stop_ns = go_ns + 1_000_000_000;
        let sampler = CpuSampler::start(watch.pid, go_ns, stop_ns);
        // Burn 50 ms of CPU inside the window (counted in CPU time, not wall time, so a busy
        // machine only makes it take longer): the sample must see it.
        clock::sleep_until_ns(go_ns + 15_000_000);
        let start = CpuTime::of_self();
        while CpuTime::of_self().since(start).total_s() < 0.05 && clock::now_ns() < stop_ns {
            std::hint::black_box(&start);
        }
        watch.finish_window(sampler, false);
        let cpu = watch.cpu_window.expect("sampled");
        // Read in clock ticks of 10 ms: 50 ms burnt shows as 40-60 ms, and 4 ticks add up to
        // a hair under 0.04 s in floating point.
        assert!(cpu.total_s() >= 0.035, "{cpu:?}");
        assert!(watch.rss_window_end_kib.is_some_and(|kib| kib > 0));
        assert!(watch.bytes_per_connection_at_window_end(10).is_some());
        let mut dead = ServerWatch::start(u32::MAX);
        let now = clock::now_ns();
        dead.finish_window(CpuSampler::start(u32::MAX, now, now), false);
        assert!(dead.cpu_window.is_none() && dead.error.is_some());
    }
}
