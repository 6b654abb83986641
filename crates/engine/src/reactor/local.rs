//! The handler's view of every connection of its reactor during the inbox drain (behind
//! [`crate::Local`]): shared frames are queued by reference and each touched connection is
//! moved on once, at the turn's end.

use std::sync::Arc;
use std::time::Instant;

use clarion_protocol::CloseCode;
use clarion_protocol::deflate::Params;
use slab::Slab;

use super::bookkeeping::{mark_dirty, rearm_on_state_change};
use super::conn::{Conn, ConnFlags, live, open};
use super::tls::TlsTable;
use super::writer::{ConnWriter, Writing, writer_for};
use crate::buffer::Pool;
use crate::timer::TimerWheel;
use crate::txqueue::TxQueue;
use crate::{ConnId, LocalOps, Push};

/// The parts of the core and the driver that [`crate::Local`] reaches.
pub(super) struct LocalConns<'a, S, C, W> {
    pub(super) conns: &'a mut Slab<Conn<S, C>>,
    pub(super) tx_pool: &'a mut Pool<TxQueue>,
    pub(super) writing: &'a mut W,
    pub(super) timers: &'a mut TimerWheel<u32>,
    pub(super) dirty: &'a mut Vec<usize>,
    /// Half the write cap.
    pub(super) low_mark: usize,
    pub(super) tls: &'a TlsTable,
    /// The clock as the drain began: when the shared frames queued now count as queued from.
    pub(super) queued_at: Instant,
}

impl<S, C, W: Writing<S>> LocalOps<C> for LocalConns<'_, S, C, W> {
    fn conn(&mut self, id: ConnId) -> Option<&mut C> {
        open(self.conns, id)?.app.as_mut()
    }

    fn queued(&self, id: ConnId) -> Option<usize> {
        Some(self.conns.get(id)?.queued())
    }

    fn deflate(&self, id: ConnId) -> Option<Params> {
        self.conns.get(id)?.ws.deflate()
    }

    fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>, max_queued: usize) -> Push {
        let Some(conn) = open(self.conns, id) else {
            return Push::Closed;
        };
        // The backlog decides, not the frame's size: a message larger than the room left never
        // makes a subscriber with a short queue "slow".
        if conn.queued() >= max_queued {
            return Push::Full;
        }
        let queue = conn.tx.get_or_insert_with(|| self.tx_pool.take());
        queue.push_shared(frame.clone(), 0);
        queue.stamp_shared(self.queued_at);
        if !conn.flags.contains(ConnFlags::DIRTY) {
            conn.flags.insert(ConnFlags::DIRTY);
            self.dirty.push(id);
        }
        Push::Queued
    }

    fn has_room(&self, id: ConnId) -> bool {
        self.conns
            .get(id)
            .is_some_and(|conn| conn.queued() < self.low_mark)
    }

    fn notify_writable(&mut self, id: ConnId) {
        if let Some(conn) = open(self.conns, id) {
            conn.flags.insert(ConnFlags::WANTS_WRITABLE);
            // The turn's end looks at it (and tells it at once if the queue is already low).
            mark_dirty(self.conns, self.dirty, id);
        }
    }

    fn close(&mut self, id: ConnId, code: CloseCode, reason: &str, now: Instant) {
        let Some(conn) = live(self.conns, id).filter(|c| !c.flags.contains(ConnFlags::LINGER))
        else {
            return;
        };
        let state_before = conn.ws.state();
        let mut out = writer_for(
            self.writing,
            self.tls.is_tls(id),
            &mut conn.socket,
            &mut conn.tx,
            self.tx_pool,
        );
        conn.ws.close(code, reason, now, &mut out);
        // A failed write shows up again at the next read or write of this connection; the turn's
        // end arms the close timer and moves the queue on either way.
        let _ = out.finish();
        rearm_on_state_change(self.timers, conn, state_before);
        mark_dirty(self.conns, self.dirty, id);
    }
}
