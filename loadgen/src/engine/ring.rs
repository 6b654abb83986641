//! The io_uring receive path (`--io uring`): each open plaintext WebSocket is read by one
//! multishot receive that draws from a provided-buffer ring, and the loop waits in
//! `io_uring_enter`, with epoll's own descriptor watched by a multishot poll on the ring, so
//! connects, handshakes, writes, TLS and event streams still come from epoll. Per read this
//! saves the readiness event and the `recv` system call (`epoll_wait` alone was 11% of the
//! loop's core in a fanout to 5,000 subscribers at 50 msgs/s); the kernel's receive work, the
//! copy and the ACK, is the same.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use clarion_host::uring::{BUFFER_GROUP, BufRing, build_ring, explain, submit_and_wait};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// Submission entries (completions: four times as many). Arming 5,000 receives at the end of
/// a ramp submits in chunks of this many.
const ENTRIES: u32 = 1024;
/// Provided buffers, each of [`BUFFER_SIZE`]: 8 MiB per loop, resident from the start. A read
/// holds its buffer only until the loop has copied it out, within the same wait; with every
/// buffer out a receive ends (ENOBUFS) and is armed again, its bytes waiting in the socket.
const BUFFERS: u16 = 4096;
/// Bytes per provided buffer: a fanout write of a few dozen small messages fits one; a larger
/// one arrives in several reads, in order.
const BUFFER_SIZE: u32 = 2048;
/// The `user_data` of the poll on epoll's descriptor.
const EPOLL: u64 = u64::MAX;
/// The `user_data` of cancellations (their own completions say nothing we act on).
const CANCEL: u64 = u64::MAX - 1;

/// What the ring reported, copied out of its completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// epoll has events: take them with a wait that does not block.
    Epoll,
    /// A receive on `slot`, armed while the slot had `generation`.
    Read {
        /// The slot it reads for.
        slot: u32,
        /// The slot's generation when armed (a later dial makes it stale).
        generation: u32,
        /// Bytes read (in `buffer`), 0 at the peer's FIN, or a negative errno.
        result: i32,
        /// The provided buffer holding the bytes, to hand back with [`Ring::take`].
        buffer: Option<u16>,
        /// Whether the receive is still armed.
        more: bool,
    },
}

/// One loop's ring, its receive buffers and what its last wait reaped.
pub struct Ring {
    // Declared before `buffers`: the ring is closed first, ending the kernel's use of them.
    ring: IoUring,
    buffers: BufRing,
    /// Whether the multishot poll on epoll's descriptor is armed.
    watching_epoll: bool,
    /// A bit per slot: a receive is armed for it (kept here, not in the slot, so `--io epoll`
    /// slots stay 64 bytes; 1 bit per connection).
    armed: Vec<u64>,
    completed: Vec<Completion>,
}

impl Ring {
    /// A ring for one loop, on the thread that will use it; errors say what the host lacks.
    pub fn new() -> io::Result<Ring> {
        let ring = build_ring(ENTRIES)?;
        let buffers = BufRing::new(&ring, BUFFERS, BUFFER_SIZE)
            .map_err(|e| explain(e, "register the loadgen's receive buffers"))?;
        Ok(Ring {
            ring,
            buffers,
            watching_epoll: false,
            armed: Vec::new(),
            completed: Vec::with_capacity(ENTRIES as usize * 4),
        })
    }

    /// Starts a multishot receive on `fd` for `slot` at `generation`.
    pub fn arm(&mut self, fd: RawFd, slot: usize, generation: u32) -> io::Result<()> {
        let recv = opcode::RecvMulti::new(types::Fd(fd), BUFFER_GROUP)
            .build()
            .user_data(user_data(slot, generation));
        self.push(&recv)?;
        let (word, bit) = (slot / 64, 1 << (slot % 64));
        if self.armed.len() <= word {
            self.armed.resize(word + 1, 0);
        }
        self.armed[word] |= bit;
        Ok(())
    }

    /// Whether a receive is armed for `slot`: its completions are the slot's reads.
    pub fn is_armed(&self, slot: usize) -> bool {
        self.armed
            .get(slot / 64)
            .is_some_and(|word| word & 1 << (slot % 64) != 0)
    }

    /// The receive of `slot` ended by itself (its completion said no more).
    pub fn ended(&mut self, slot: usize) {
        if let Some(word) = self.armed.get_mut(slot / 64) {
            *word &= !(1 << (slot % 64));
        }
    }

    /// Ends the receive armed for `slot` at `generation`, if any: its last completion comes
    /// with the slot no longer armed, and is ignored. Until the cancel is submitted (the next
    /// wait) the receive keeps the socket open.
    pub fn cancel(&mut self, slot: usize, generation: u32) {
        if !self.is_armed(slot) {
            return;
        }
        self.ended(slot);
        let cancel = opcode::AsyncCancel::new(user_data(slot, generation))
            .build()
            .user_data(CANCEL);
        // Fails only if the kernel refuses a submission; the ring's end (the loop's) then
        // ends the receive and closes the socket.
        let _ = self.push(&cancel);
    }

    /// Submits what is queued and waits up to `timeout` for a completion (none: return at
    /// once with what there is), then reaps them all into [`Ring::completed`].
    pub fn wait(&mut self, epoll: RawFd, timeout: Duration) -> io::Result<()> {
        if !self.watching_epoll {
            let poll = opcode::PollAdd::new(types::Fd(epoll), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(EPOLL);
            self.push(&poll)?;
            self.watching_epoll = true;
        }
        submit_and_wait(&self.ring, Some(timeout))?;
        self.completed.clear();
        for entry in self.ring.completion() {
            let (data, result, flags) = (entry.user_data(), entry.result(), entry.flags());
            let more = cqueue::more(flags);
            match data {
                EPOLL => {
                    // Ended (an overflow, a signal): armed again at the next wait.
                    self.watching_epoll &= more;
                    self.completed.push(Completion::Epoll);
                }
                CANCEL => {}
                _ => self.completed.push(Completion::Read {
                    slot: data as u32,
                    generation: (data >> 32) as u32,
                    result,
                    buffer: cqueue::buffer_select(flags),
                    more,
                }),
            }
        }
        Ok(())
    }

    /// Whether the last wait reaped anything.
    pub fn has_completed(&self) -> bool {
        !self.completed.is_empty()
    }

    /// What the last wait reaped; give it back with [`Ring::put_completed`].
    pub fn take_completed(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completed)
    }

    /// Gives the list taken by [`Ring::take_completed`] back, for the next wait.
    pub fn put_completed(&mut self, completed: Vec<Completion>) {
        self.completed = completed;
    }

    /// Copies the `len` bytes of `buffer` into `to` and hands the buffer back to the kernel;
    /// returns how many were copied.
    pub fn take(&mut self, buffer: u16, len: usize, to: &mut [u8]) -> usize {
        let bytes = self.buffers.get(buffer, len as u32);
        let n = bytes.len().min(to.len());
        to[..n].copy_from_slice(&bytes[..n]);
        self.buffers.recycle(buffer);
        n
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entries pushed here name descriptors, a buffer group and other
            // requests' user data, no memory of ours; the kernel holds its own reference to a
            // file from submission on, so a descriptor closed before its request ends is safe.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }
}

/// A receive's `user_data`: the slot in the low half, its generation in the high one (slots
/// stay below 2^32 - 2, so it never equals [`EPOLL`] or [`CANCEL`]).
fn user_data(slot: usize, generation: u32) -> u64 {
    (generation as u64) << 32 | slot as u64
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    /// Waits (up to half a second) until what the ring reported satisfies `done`; returns it.
    fn wait_for(
        ring: &mut Ring,
        epoll: &mio::Poll,
        done: impl Fn(&[Completion]) -> bool,
    ) -> Vec<Completion> {
        let mut seen = Vec::new();
        for _ in 0..10 {
            ring.wait(epoll.as_raw_fd(), Duration::from_millis(50))
                .unwrap();
            seen.extend(ring.take_completed());
            if done(&seen) {
                break;
            }
        }
        seen
    }

    #[test]
    fn reads_arrive_per_slot_and_epoll_readiness_is_reported() {
        let mut ring = Ring::new().unwrap();
        let epoll = mio::Poll::new().unwrap();
        let (mut a, a_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let (b, b_rx) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.arm(a_rx.as_raw_fd(), 3, 7).unwrap();
        ring.arm(b_rx.as_raw_fd(), 4, 9).unwrap();
        a.write_all(b"hello").unwrap();
        let got = wait_for(&mut ring, &epoll, |seen| !seen.is_empty());
        let [
            Completion::Read {
                slot: 3,
                generation: 7,
                result: 5,
                buffer: Some(buffer),
                more: true,
            },
        ] = got[..]
        else {
            panic!("{got:?}");
        };
        let mut to = [0u8; 16];
        assert_eq!(ring.take(buffer, 5, &mut to), 5);
        assert_eq!(&to[..5], b"hello");

        // A cancelled receive ends with a last completion, of the generation it was armed at.
        assert!(ring.is_armed(4));
        ring.cancel(4, 9);
        assert!(!ring.is_armed(4) && ring.is_armed(3));
        drop(b);
        let last = |c: &Completion| {
            matches!(c, Completion::Read { slot: 4, generation: 9, result, more: false, .. }
                if *result == -libc::ECANCELED || *result == 0)
        };
        // Something registered with epoll becomes ready: the ring reports epoll's turn.
        let mut ready = mio::net::UnixStream::from_std(a_rx);
        epoll
            .registry()
            .register(&mut ready, mio::Token(0), mio::Interest::READABLE)
            .unwrap();
        a.write_all(b"x").unwrap();
        let seen = wait_for(&mut ring, &epoll, |seen| {
            seen.contains(&Completion::Epoll) && seen.iter().any(last)
        });
        assert!(seen.contains(&Completion::Epoll), "{seen:?}");
        assert!(seen.iter().any(last), "{seen:?}");
        drop(b_rx);
    }
}
