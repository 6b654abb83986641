//! A connection's socket on io_uring: a direct descriptor's slot and the operations in flight on
//! it, packed in 4 bytes.

use std::num::NonZeroU32;

use bitflags::bitflags;

bitflags! {
    /// What the backend knows of one connection: whether it is live and which operations are in
    /// flight on it. The high 8 bits of its [`Direct`] socket.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Ops: u8 {
        /// Registered and not closed: a re-arm must never reach a released connection, whose
        /// fixed-file slot may already belong to another one.
        const LIVE = 1;
        /// Its multishot recv is armed.
        const RECV_ARMED = 1 << 1;
        /// A send reads from its write queue.
        const SEND_IN_FLIGHT = 1 << 2;
        /// Closed by the reactor: released once no operation is left in flight.
        const CLOSING = 1 << 3;
        /// A shutdown is in flight. The kernel runs it in a worker thread, so a close submitted
        /// behind it could free the slot first and the shutdown then hit the next connection
        /// accepted into it: the close waits for the shutdown's completion.
        const SHUTDOWN_IN_FLIGHT = 1 << 4;
        /// The close waits for the shutdown in flight.
        const CLOSE_DEFERRED = 1 << 5;
        /// Receiving is paused (the connection is over its write cap): the recv was cancelled
        /// and is not armed again until it is resumed.
        const RECV_PAUSED = 1 << 6;
    }
}

/// A connection's socket, and all the backend keeps per connection: its slot in the ring's
/// fixed-file table (the low 24 bits; the kernel's table holds at most 2^20) and its [`Ops`] (the
/// high 8 bits). It lives in the reactor's connection entry, which the reactor lends back
/// ([`crate::sys::completion::Sockets`]) while completions are reaped.
///
/// Stored inverted, so that it is never zero (that would take slot 2^24 - 1, past the kernel's
/// largest): the zero is a niche, which the table's entry uses for its own tag, 8 bytes less per
/// connection, as a file descriptor's niche does for epoll's socket.
#[derive(Debug)]
pub(crate) struct Direct(NonZeroU32);

const SLOT_BITS: u32 = 24;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

impl Direct {
    pub(super) fn new(slot: u32) -> Direct {
        Direct::pack(slot, Ops::empty())
    }

    fn pack(slot: u32, ops: Ops) -> Direct {
        debug_assert!(slot < SLOT_MASK, "fixed-file slots stay below 2^20");
        let bits = (slot & SLOT_MASK) | u32::from(ops.bits()) << SLOT_BITS;
        Direct(NonZeroU32::new(!bits).expect("slot 2^24 - 1 is never used"))
    }

    fn bits(&self) -> u32 {
        !self.0.get()
    }

    pub(super) fn slot(&self) -> u32 {
        self.bits() & SLOT_MASK
    }

    pub(super) fn ops(&self) -> Ops {
        Ops::from_bits_retain((self.bits() >> SLOT_BITS) as u8)
    }

    pub(super) fn set_ops(&mut self, ops: Ops) {
        *self = Direct::pack(self.slot(), ops);
    }

    /// Adds `ops` to the operations in flight.
    pub(super) fn insert(&mut self, ops: Ops) {
        self.set_ops(self.ops() | ops);
    }

    /// Removes `ops` from the operations in flight.
    pub(super) fn remove(&mut self, ops: Ops) {
        self.set_ops(self.ops() - ops);
    }
}

/// A direct descriptor has no file to ask `getpeername` of: its peer is known only at accept,
/// when [`super::UringConfig::peer_addresses`] asks for it.
impl super::super::Peer for Direct {
    fn peer(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_socket_keeps_its_slot_and_operations_apart_in_4_bytes() {
        let slot = (1 << 20) - 1; // the kernel's largest fixed-file slot
        let mut socket = Direct::new(slot);
        assert_eq!((socket.slot(), socket.ops()), (slot, Ops::empty()));
        socket.set_ops(Ops::LIVE | Ops::RECV_ARMED | Ops::CLOSE_DEFERRED);
        assert_eq!(socket.slot(), slot);
        assert_eq!(
            socket.ops(),
            Ops::LIVE | Ops::RECV_ARMED | Ops::CLOSE_DEFERRED
        );
        socket.remove(Ops::RECV_ARMED);
        socket.insert(Ops::SEND_IN_FLIGHT);
        assert_eq!(
            socket.ops(),
            Ops::LIVE | Ops::SEND_IN_FLIGHT | Ops::CLOSE_DEFERRED
        );
        socket.set_ops(Ops::from_bits_retain(0xFF));
        assert_eq!((socket.slot(), socket.ops().bits()), (slot, 0xFF));
        assert_eq!(size_of::<Direct>(), 4, "no bigger than a file descriptor");
        assert_eq!(
            size_of::<Option<Direct>>(),
            4,
            "with a niche, as a descriptor has"
        );
        assert_eq!(size_of::<Ops>(), 1);
    }
}
