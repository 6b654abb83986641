//! What an io_uring user here needs once: a ring set up the way both the engine's reactors and
//! the load generator's receive path run it ([`build_ring`]), setup errors that say what the
//! host lacks ([`explain`]), and the provided-buffer ring multishot receives draw from
//! ([`BufRing`]).

use std::io;
use std::time::Duration;

use io_uring::{IoUring, types};

/// The buffer group every multishot recv draws from.
pub const BUFFER_GROUP: u16 = 0;

/// A ring of `entries` submissions and four times as many completions, used by the thread
/// that made it only (`SINGLE_ISSUER`), whose completions' task work runs when that thread
/// waits for them (`DEFER_TASKRUN`) rather than interrupting it.
pub fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(entries * 4)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .build(entries)
        .map_err(|e| explain(e, "create an io_uring"))
}

/// Submits what is queued and waits for a completion, up to `timeout` (`None`: for as long as it
/// takes; zero: a look, not a wait). Not `submit()`: with deferred task work only an enter that
/// asks for completions (GETEVENTS) posts those ready, received bytes among them. No completion
/// in time, a signal, or completions waiting for room in the queue (EBUSY) are not errors: the
/// caller reaps what there is.
///
/// A look asks for a quarter of the completion queue, not one: from Linux 6.13 an enter runs
/// at most `max(20, asked)` deferred completions a pass, so a look asking for one posted 20 of
/// the receives ready and left the rest to later calls (a loadgen polling 5,000 sockets once a
/// millisecond read each about six times a second, its latencies 300 ms). With nothing more
/// ready a look still returns at once (its timeout is zero); a quarter leaves room for
/// receives that post several completions each.
pub fn submit_and_wait(ring: &IoUring, timeout: Option<Duration>) -> io::Result<()> {
    let submitted = match timeout {
        Some(timeout) => {
            let timespec = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&timespec);
            let want = match timeout.is_zero() {
                true => (ring.params().cq_entries() / 4).max(1) as usize,
                false => 1,
            };
            ring.submitter().submit_with_args(want, &args)
        }
        None => ring.submit_and_wait(1),
    };
    match submitted {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Turns a setup error into one that says what to change.
pub fn explain(e: io::Error, what: &str) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring",
        Some(libc::EPERM) => {
            "io_uring is disabled (sysctl kernel.io_uring_disabled) or blocked by seccomp"
        }
        Some(libc::ENOMEM) => "not enough locked memory (raise RLIMIT_MEMLOCK, e.g. ulimit -l)",
        Some(libc::EMFILE) => "RLIMIT_NOFILE is too low for the requested table",
        Some(libc::EINVAL) => "the kernel is too old for this feature (Linux 6.0+ is needed)",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!(
            "cannot {what}: {e}{}{hint}",
            if hint.is_empty() { "" } else { "; " }
        ),
    )
}

/// The provided-buffer ring: a page-aligned ring of buffer descriptors shared with the kernel,
/// and the buffers themselves in one allocation. Registered as [`BUFFER_GROUP`] of one ring,
/// which must be dropped before it (declare the ring first in the owning struct).
pub struct BufRing {
    /// The descriptor ring (mmap'd, page aligned, registered with the kernel).
    ring: *mut types::BufRingEntry,
    entries: u16,
    /// Our next tail position (published to the kernel in `recycle`).
    tail: u16,
    memory: Box<[u8]>,
    buffer_size: u32,
}

impl BufRing {
    /// `entries` buffers (a power of two, at most 32,768) of `buffer_size` bytes each,
    /// registered with `uring` and all handed to the kernel.
    pub fn new(uring: &IoUring, entries: u16, buffer_size: u32) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "uring buffers must be a power of two up to 32768",
            ));
        }
        let ring_bytes = entries as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut buffers = BufRing {
            ring: ring.cast(),
            entries,
            tail: 0,
            // Filled (not calloc'ed lazily) so the pages are resident from the start: this is the
            // reactor's fixed receive memory, and no page fault lands on the hot path.
            memory: vec![0xAAu8; entries as usize * buffer_size as usize].into_boxed_slice(),
            buffer_size,
        };
        // SAFETY: the descriptor ring is page aligned (mmap) and `entries` long; it and the
        // buffers stay mapped until the BufRing drops, which happens after the io_uring closes
        // (field order in its owner), ending the registration.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries, BUFFER_GROUP, 0)
                .map_err(|e| explain(e, "register the provided-buffer ring"))?;
        }
        for bid in 0..entries {
            buffers.recycle(bid);
        }
        Ok(buffers)
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has filled.
    pub fn get(&mut self, bid: u16, len: u32) -> &mut [u8] {
        let start = bid as usize * self.buffer_size as usize;
        &mut self.memory[start..start + len.min(self.buffer_size) as usize]
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        let mask = self.entries - 1;
        // SAFETY: the index is masked into the ring; the address and length name buffer `bid`
        // inside `memory`, which outlives the registration; the tail is published with release
        // ordering after the descriptor is written, as the kernel's protocol requires.
        unsafe {
            let entry = &mut *self.ring.add((self.tail & mask) as usize);
            entry.set_addr(
                self.memory
                    .as_ptr()
                    .add(bid as usize * self.buffer_size as usize) as u64,
            );
            entry.set_len(self.buffer_size);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`. The owner's ring is dropped first
        // (declared first), which ends the kernel's use of it.
        unsafe {
            libc::munmap(
                self.ring.cast(),
                self.entries as usize * std::mem::size_of::<types::BufRingEntry>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use io_uring::{cqueue, opcode};

    use super::*;

    /// Waits for one completion and returns its result, flags and, for a recv, its bytes.
    fn next(ring: &mut IoUring, buffers: &mut BufRing) -> (i32, u32, Vec<u8>) {
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().expect("a completion");
        let (result, flags) = (cqe.result(), cqe.flags());
        let bytes = match cqueue::buffer_select(flags) {
            Some(bid) => {
                let bytes = buffers.get(bid, result.max(0) as u32).to_vec();
                buffers.recycle(bid);
                bytes
            }
            None => Vec::new(),
        };
        (result, flags, bytes)
    }

    #[test]
    fn a_multishot_recv_fills_provided_buffers_and_reuses_them() {
        let mut ring = build_ring(8).unwrap();
        // Two buffers of 4 bytes: more arrivals than buffers, and one arrival larger than a
        // buffer, are served only if recycled buffers go back to the kernel.
        let mut buffers = BufRing::new(&ring, 2, 4).unwrap();
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let recv = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), BUFFER_GROUP)
            .build()
            .user_data(7);
        // SAFETY: the socket outlives the request (it ends at the peer's close, awaited below).
        unsafe { ring.submission().push(&recv).unwrap() };
        let mut got = Vec::new();
        for chunk in [&b"abc"[..], b"defgh", b"ij", b"klmnop"] {
            tx.write_all(chunk).unwrap();
            let want = got.len() + chunk.len();
            while got.len() < want {
                let (result, flags, bytes) = next(&mut ring, &mut buffers);
                assert!(result > 0 && cqueue::more(flags), "{result}");
                assert!(bytes.len() <= 4);
                got.extend_from_slice(&bytes);
            }
        }
        assert_eq!(got, b"abcdefghijklmnop");
        drop(tx);
        let (result, flags, _) = next(&mut ring, &mut buffers);
        assert_eq!(result, 0, "the peer's close ends the recv");
        assert!(!cqueue::more(flags));
    }

    #[test]
    fn a_wait_with_nothing_to_complete_ends_at_its_timeout_without_an_error() {
        let ring = build_ring(8).unwrap();
        for timeout in [Duration::ZERO, Duration::from_millis(5)] {
            let started = std::time::Instant::now();
            submit_and_wait(&ring, Some(timeout)).unwrap();
            assert!(started.elapsed() >= timeout);
        }
    }

    #[test]
    fn a_look_posts_every_receive_ready_not_the_kernels_default_batch() {
        // 60 sockets with bytes ready: more than the 20 deferred completions a look asking
        // for one completion runs on Linux 6.13 and later.
        const SOCKETS: usize = 60;
        let mut ring = build_ring(64).unwrap();
        let mut buffers = BufRing::new(&ring, 128, 64).unwrap();
        let pairs: Vec<_> = (0..SOCKETS)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        for (slot, (_, rx)) in pairs.iter().enumerate() {
            let recv = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), BUFFER_GROUP)
                .build()
                .user_data(slot as u64);
            // SAFETY: the sockets outlive the requests (the ring is dropped first).
            unsafe { ring.submission().push(&recv).unwrap() };
        }
        // Armed, nothing to read yet: each receive now waits on its socket's readiness.
        submit_and_wait(&ring, Some(Duration::ZERO)).unwrap();
        assert_eq!(ring.completion().count(), 0);
        for (tx, _) in &pairs {
            (&*tx).write_all(b"x").unwrap();
        }
        submit_and_wait(&ring, Some(Duration::ZERO)).unwrap();
        let mut read = vec![false; SOCKETS];
        for cqe in ring.completion() {
            assert_eq!(cqe.result(), 1);
            buffers.recycle(cqueue::buffer_select(cqe.flags()).unwrap());
            read[cqe.user_data() as usize] = true;
        }
        assert!(read.iter().all(|&r| r), "one look read {read:?}");
        drop(ring);
    }

    #[test]
    fn sizes_that_are_not_a_power_of_two_are_refused() {
        let ring = build_ring(8).unwrap();
        assert!(BufRing::new(&ring, 3, 64).is_err());
        assert!(BufRing::new(&ring, 0, 64).is_err());
    }
}
