//! What a handler's callbacks act through: [`Ctx`] on one open connection during its own event,
//! [`Local`] on any connection of the reactor during the inbox drain.

use std::sync::Arc;
use std::time::Instant;

use clarion_protocol::deflate::Params;
use clarion_protocol::{CloseCode, MessageKind, SendError};

use crate::compression::Deflating;
use crate::reactor::{ConnFlags, Sink};
use crate::{ConnId, Push, Stats};

/// A handler's view of one open connection during a callback.
pub struct Ctx<'a, C> {
    pub(crate) id: ConnId,
    pub(crate) conn: &'a mut C,
    pub(crate) ws: &'a mut clarion_protocol::Connection,
    pub(crate) out: &'a mut dyn Sink,
    pub(crate) deflating: &'a mut Deflating,
    pub(crate) stats: &'a Stats,
    pub(crate) flags: &'a mut ConnFlags,
    /// The connection's low mark: half its write cap.
    pub(crate) low_mark: usize,
    pub(crate) now: Instant,
}

impl<C> Ctx<'_, C> {
    /// The connection's id in its reactor.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The connection's application state.
    pub fn conn(&mut self) -> &mut C {
        self.conn
    }

    /// When the reactor woke for this event.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Sends a message (written at once if the socket takes it, else queued), compressed when
    /// the connection negotiated permessage-deflate and the payload reaches the threshold.
    pub fn send(&mut self, kind: MessageKind, payload: &[u8]) -> Result<(), SendError> {
        let (id, stats) = (self.id, self.stats);
        self.deflating
            .send(id, self.ws, kind, payload, &mut *self.out, stats)
    }

    /// The permessage-deflate parameters the connection negotiated, if it did.
    pub fn deflate(&self) -> Option<Params> {
        self.ws.deflate()
    }

    /// Sends a whole frame built with [`clarion_protocol::frame::encode_frame`], shared by many
    /// connections; on a streaming response, bytes of its body shared alike.
    pub fn send_shared(&mut self, frame: &Arc<[u8]>) -> Result<(), SendError> {
        if !self.ws.can_send() && !self.ws.is_streaming() {
            return Err(SendError::NotOpen);
        }
        self.out.transmit_shared(frame);
        Ok(())
    }

    /// Whether the connection carries a streaming response ([`crate::Answer::Stream`]) rather
    /// than a WebSocket.
    pub fn is_streaming(&self) -> bool {
        self.ws.is_streaming()
    }

    /// Sends bytes of a streaming response's body as they are (written at once if the socket
    /// takes them, else queued). `NotOpen` on a WebSocket, or once the stream is closed.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        if !self.ws.is_streaming() {
            return Err(SendError::NotOpen);
        }
        self.out.transmit(bytes, &[]);
        Ok(())
    }

    /// Starts the close handshake (a streaming response simply ends, after what is queued).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.ws.close(code, reason, self.now, &mut *self.out);
    }

    /// Bytes waiting to be written to the connection (what the socket has not taken yet).
    pub fn queued(&self) -> usize {
        self.out.queued()
    }

    /// Whether less than the connection's low mark (half its write cap) waits: room to send
    /// more of something long now rather than after [`Handler::on_writable`].
    ///
    /// [`Handler::on_writable`]: crate::Handler::on_writable
    pub fn has_room(&self) -> bool {
        self.out.queued() < self.low_mark
    }

    /// Asks for [`Handler::on_writable`] once the queue is at or below the low mark (at the end
    /// of this turn if it already is).
    ///
    /// [`Handler::on_writable`]: crate::Handler::on_writable
    pub fn notify_writable(&mut self) {
        self.flags.insert(ConnFlags::WANTS_WRITABLE);
    }
}

/// A handler's access to every connection of its reactor, during [`crate::Handler::on_inbox`].
pub struct Local<'a, C> {
    pub(crate) ops: &'a mut dyn LocalOps<C>,
    pub(crate) now: Instant,
}

/// The reactor side of [`Local`].
pub(crate) trait LocalOps<C> {
    fn conn(&mut self, id: ConnId) -> Option<&mut C>;
    fn queued(&self, id: ConnId) -> Option<usize>;
    fn deflate(&self, id: ConnId) -> Option<Params>;
    fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>, max_queued: usize) -> Push;
    fn close(&mut self, id: ConnId, code: CloseCode, reason: &str, now: Instant);
    fn has_room(&self, id: ConnId) -> bool;
    fn notify_writable(&mut self, id: ConnId);
}

impl<C> Local<'_, C> {
    /// When the reactor woke.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// An open connection's application state.
    pub fn conn(&mut self, id: ConnId) -> Option<&mut C> {
        self.ops.conn(id)
    }

    /// Bytes waiting to be written to a connection.
    pub fn queued(&self, id: ConnId) -> Option<usize> {
        self.ops.queued(id)
    }

    /// The permessage-deflate parameters an open connection negotiated, if it did: a frame
    /// compressed on its own fits it when [`Params::accepts_shared`] says so.
    pub fn deflate(&self, id: ConnId) -> Option<Params> {
        self.ops.deflate(id)
    }

    /// Queues a whole frame shared with other connections (or bytes of a streaming response's
    /// body), unless `max_queued` bytes or more already wait for this connection (then
    /// [`Push::Full`]). The frame's own size does not count: a subscriber is refused for its
    /// backlog, never for a large message, and holds at most `max_queued` plus one frame.
    pub fn send_shared(&mut self, id: ConnId, frame: &Arc<[u8]>, max_queued: usize) -> Push {
        self.ops.send_shared(id, frame, max_queued)
    }

    /// Whether less than an open connection's low mark (half its write cap) waits for it.
    pub fn has_room(&self, id: ConnId) -> bool {
        self.ops.has_room(id)
    }

    /// Asks for [`Handler::on_writable`] on an open connection once its queue is at or below
    /// the low mark (at the end of this turn if it already is).
    ///
    /// [`Handler::on_writable`]: crate::Handler::on_writable
    pub fn notify_writable(&mut self, id: ConnId) {
        self.ops.notify_writable(id);
    }

    /// Starts the close handshake of a connection.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        self.ops.close(id, code, reason, self.now);
    }
}
