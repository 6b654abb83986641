//! The accepts in flight on one of a ring's listeners: one multishot accept, or a few single-shot ones
//! when each connection's peer address is wanted.

use std::net::SocketAddr;

use io_uring::{opcode, squeue, types};
use socket2::{SockAddr, SockAddrStorage};

/// Single-shot accepts in flight when peer addresses are wanted: enough that a burst of
/// connections never waits for a turn of the loop between two accepts.
/// Also the stride of a listener's accepts in `user_data`: accept `i` of listener `l` is
/// `l * PEER_ACCEPTS + i`.
pub(crate) const PEER_ACCEPTS: usize = 8;

/// The accepts in flight on the listener: one multishot accept, or [`PEER_ACCEPTS`] single-shot
/// accepts with an address buffer each (a multishot accept would write every peer's address
/// to one place, overwritten before it is read).
pub(super) struct Accepts {
    /// Bit `i`: accept `i` is in flight (the multishot accept is accept 0).
    armed: u8,
    /// Peer address buffers, one per single-shot accept; `None` for the multishot accept.
    peers: Option<Box<[PeerAddr; PEER_ACCEPTS]>>,
}

/// Where the kernel writes one accepted peer's address.
struct PeerAddr {
    storage: SockAddrStorage,
    len: libc::socklen_t,
}

impl Accepts {
    pub(super) fn new(peer_addresses: bool) -> Accepts {
        let peers = peer_addresses.then(|| {
            Box::new(std::array::from_fn(|_| PeerAddr {
                storage: SockAddrStorage::zeroed(),
                len: 0,
            }))
        });
        Accepts { armed: 0, peers }
    }

    /// The next accept to arm on `listener`, if one is idle.
    pub(super) fn next_idle(&mut self, listener: types::Fd) -> Option<(usize, squeue::Entry)> {
        let Some(peers) = &mut self.peers else {
            let multishot = opcode::AcceptMulti::new(listener).allocate_file_index(true);
            return (self.armed == 0).then(|| (0, multishot.build()));
        };
        let index = (0..PEER_ACCEPTS).find(|i| self.armed & 1 << i == 0)?;
        let peer = &mut peers[index];
        peer.len = peer.storage.size_of();
        let accept =
            opcode::Accept::new(listener, (&raw mut peer.storage).cast(), &raw mut peer.len)
                .file_index(Some(types::DestinationSlot::auto_target()));
        Some((index, accept.build()))
    }

    pub(super) fn armed(&mut self, index: usize) {
        self.armed |= 1 << index;
    }

    pub(super) fn in_flight(&self) -> impl Iterator<Item = usize> + use<> {
        let armed = self.armed;
        (0..PEER_ACCEPTS).filter(move |i| armed & 1 << i != 0)
    }

    /// Accept `index` completed with `result` (`more`: a multishot accept goes on); the peer's
    /// address when this is a single-shot accept that succeeded.
    pub(super) fn completed(
        &mut self,
        index: usize,
        more: bool,
        result: i32,
    ) -> Option<SocketAddr> {
        if index >= PEER_ACCEPTS {
            return None;
        }
        if !more {
            self.armed &= !(1 << index);
        }
        let peer = self
            .peers
            .as_mut()
            .filter(|_| result >= 0)?
            .get_mut(index)?;
        let storage = std::mem::replace(&mut peer.storage, SockAddrStorage::zeroed());
        // SAFETY: the kernel wrote a socket address of `len` bytes into `storage` when this
        // accept succeeded (it is not re-armed before this read).
        unsafe { SockAddr::new(storage, peer.len) }.as_socket()
    }
}
