//! The provided-buffer ring: the receive memory of one ring, lent to the kernel buffer by buffer
//! as bytes arrive and handed back right after they are parsed.

use std::io;

use io_uring::{IoUring, types};

use super::setup::explain;

/// The buffer group every multishot recv draws from.
pub(super) const BUFFER_GROUP: u16 = 0;

/// The provided-buffer ring: a page-aligned ring of buffer descriptors shared with the kernel,
/// and the buffers themselves in one allocation.
pub(super) struct BufRing {
    /// The descriptor ring (mmap'd, page aligned, registered with the kernel).
    ring: *mut types::BufRingEntry,
    entries: u16,
    /// Our next tail position (published to the kernel in `recycle`).
    tail: u16,
    memory: Box<[u8]>,
    buffer_size: u32,
}

impl BufRing {
    pub(super) fn new(uring: &IoUring, entries: u16, buffer_size: u32) -> io::Result<BufRing> {
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
        // (field order in Uring), ending the registration.
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
    pub(super) fn get(&mut self, bid: u16, len: u32) -> &mut [u8] {
        let start = bid as usize * self.buffer_size as usize;
        &mut self.memory[start..start + len.min(self.buffer_size) as usize]
    }

    /// Gives buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
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
        // SAFETY: unmaps exactly the mapping made in `new`. The Uring's ring field is dropped
        // first (declared first), which ends the kernel's use of it.
        unsafe {
            libc::munmap(
                self.ring.cast(),
                self.entries as usize * std::mem::size_of::<types::BufRingEntry>(),
            );
        }
    }
}
