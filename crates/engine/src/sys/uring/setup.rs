//! Setting a ring up: its sizes ([`UringConfig`]), the probe `--io auto` runs first, and errors
//! that say what the host lacks.

use std::io;

use io_uring::IoUring;

use clarion_host::uring::{BufRing, build_ring, explain};

/// Sizes of one reactor's ring and buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue is four times larger).
    pub entries: u32,
    /// Slots of the fixed-file table: the most connections this reactor holds.
    pub files: u32,
    /// Provided receive buffers (a power of two, at most 32768).
    pub buffers: u16,
    /// Bytes per provided buffer.
    pub buffer_size: u32,
    /// Report each accepted connection's peer address (per-IP limits need it): single-shot
    /// accepts, eight in flight, instead of one multishot accept.
    pub peer_addresses: bool,
}

impl Default for UringConfig {
    fn default() -> UringConfig {
        UringConfig {
            entries: 4096,
            files: 20_000,
            buffers: 512,
            buffer_size: 16 << 10,
            peer_addresses: false,
        }
    }
}

/// Checks, with a throwaway ring, that this host can run the backend with `config`.
pub(crate) fn probe(config: &UringConfig) -> io::Result<()> {
    // The kernel tears a ring down partly through task work queued to the thread that made it,
    // which interrupts that thread's next blocking socket call with a timeout (EINTR). The
    // caller's thread is not ours (an embedding application's, a test's): probe on a thread of
    // our own that ends with it.
    std::thread::scope(|scope| {
        scope
            .spawn(|| probe_here(config))
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
    })
}

fn probe_here(config: &UringConfig) -> io::Result<()> {
    // A kernel too old for multishot recv (6.0) accepts the ring but fails the recv later.
    let mut uname = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname(2) fills the struct it is given.
    let release = unsafe {
        libc::uname(uname.as_mut_ptr());
        std::ffi::CStr::from_ptr(uname.assume_init_ref().release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let major: u32 = release
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 6 {
        return Err(io::Error::other(format!(
            "Linux {release} is too old: the io_uring backend needs 6.0+"
        )));
    }
    let ring = build_ring(config.entries.min(64))?;
    register(&ring, config)?;
    BufRing::new(&ring, config.buffers.min(8), 4096).map(drop)
}

pub(super) fn register(ring: &IoUring, config: &UringConfig) -> io::Result<()> {
    if !ring.params().is_feature_nodrop() {
        return Err(io::Error::other(
            "io_uring without IORING_FEAT_NODROP (Linux 5.5+ needed)",
        ));
    }
    ring.submitter()
        .register_files_sparse(config.files)
        .map_err(|e| {
            explain(
                e,
                &format!(
                    "register a fixed-file table of {} slots (capped by the soft RLIMIT_NOFILE)",
                    config.files
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How many of `rounds` blocking reads with a timeout, each right after `probe`, fail
    /// with EINTR instead of timing out.
    fn interrupted_reads(rounds: usize, probe: fn(&UringConfig) -> io::Result<()>) -> usize {
        use std::io::Read;
        let (mut a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let config = UringConfig::default();
        (0..rounds)
            .filter(|_| {
                probe(&config).unwrap();
                let error = a.read(&mut [0u8; 8]).unwrap_err();
                error.kind() == io::ErrorKind::Interrupted
            })
            .count()
    }

    #[test]
    fn probing_never_interrupts_the_caller_s_blocking_calls() {
        // Probing on the caller's own thread interrupted most of them (34 of 50 here).
        assert_eq!(interrupted_reads(50, probe), 0);
    }
}
