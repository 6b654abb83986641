//! `--server-pid`: the server's resident memory before the loadgen opens its connections and once
//! they are all open, to report what each connection costs the server.

use serde::Serialize;

use crate::sys;

/// The server's memory around the ramp-up.
#[derive(Clone, Debug, Serialize)]
pub struct ServerWatch {
    /// The server's process id.
    pub pid: u32,
    /// VmRSS before the first dial, KiB.
    pub rss_before_kib: Option<u64>,
    /// VmRSS once the ramp-up finished, KiB.
    pub rss_after_kib: Option<u64>,
    /// Why a reading failed, if one did.
    pub error: Option<String>,
}

impl ServerWatch {
    /// Takes the "before" reading.
    pub fn start(pid: u32) -> ServerWatch {
        let mut watch = ServerWatch {
            pid,
            rss_before_kib: None,
            rss_after_kib: None,
            error: None,
        };
        watch.rss_before_kib = watch.read();
        watch
    }

    /// Takes the "after" reading.
    pub fn sample_after(&mut self) {
        self.rss_after_kib = self.read();
    }

    /// Bytes of server memory per open connection, from the two readings.
    pub fn bytes_per_connection(&self, connections: u64) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        (connections > 0).then(|| (after as f64 - before as f64) * 1024.0 / connections as f64)
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
}
