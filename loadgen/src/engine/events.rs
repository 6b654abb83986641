//! What a loop does when a socket is ready: finish the connect and send the upgrade request,
//! read the 101, then read frames into the protocol core and hand messages to the mode, write
//! what they queued, and see the close handshake through.

use clarion_protocol::handshake::ClientHandshake;
use clarion_protocol::{CloseCode, Connection, Event};

use super::conn::{self, Got, Life, Phase};
use super::{At, Readiness, Stage, Worker, next_random};
use crate::clock::ns;
use crate::failure::Reason;
use crate::hist;
use crate::traffic::{Link, Traffic, Verdict};

/// What feeding bytes to an open connection came to.
pub(super) enum Fed {
    Open,
    Finish,
    Closed,
    Fail(Reason),
}

impl<T: Traffic> Worker<'_, T> {
    pub(super) fn send_scheduled(&mut self, at: At) {
        let mut due = std::mem::take(&mut self.due);
        self.traffic.schedule(at.now_ns, &mut due);
        for &slot in &due {
            self.with_link(slot, at, |traffic, state, link| {
                traffic.send_due(state, link);
                Verdict::Continue
            });
        }
        due.clear();
        self.due = due;
    }

    pub(super) fn on_event(&mut self, slot: usize, ready: Readiness, at: At) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        match conn.phase {
            Phase::Idle => {}
            Phase::Connecting { .. } => {
                if ready.readable || ready.writable {
                    self.on_connect(slot, at);
                }
            }
            Phase::Handshaking { .. } => {
                if ready.readable {
                    self.read_handshake(slot, at);
                }
            }
            Phase::Open(_) => {
                if ready.writable && conn.lent.is_some() {
                    self.flush(slot, at);
                }
                if ready.readable {
                    self.read_frames(slot, ready.hangup, at);
                }
            }
            Phase::Finishing => {
                if ready.readable {
                    self.read_until_eof(slot);
                }
            }
        }
    }

    pub(super) fn on_connect(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        let (Phase::Connecting { since_ns }, Some(stream)) = (&conn.phase, &mut conn.stream) else {
            return;
        };
        let error = match stream.take_error() {
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                // Woken before the connect finished.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return,
                Err(e) => Some(e),
            },
            Ok(Some(e)) | Err(e) => Some(e),
        };
        if let Some(e) = error {
            return self.fail(slot, Reason::of_io(&e), at);
        }
        if conn.life == Life::Pending {
            hist::record(&mut self.tally.connect, at.now_ns.saturating_sub(*since_ns));
        }
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&next_random(&mut self.rng).to_ne_bytes());
        nonce[8..].copy_from_slice(&next_random(&mut self.rng).to_ne_bytes());
        let handshake = ClientHandshake::new(nonce);
        let index = self.first + slot;
        let (_, target) = self.plan.pairs.pair(index);
        let path = self.traffic.path(index, target);
        handshake.write_request(&target.host, &path, &[], &mut self.tx);
        conn.phase = Phase::Handshaking {
            handshake,
            since_ns: at.now_ns,
        };
        self.flush(slot, at);
    }

    pub(super) fn read_handshake(&mut self, slot: usize, at: At) {
        loop {
            let conn = &mut self.conns[slot];
            let (
                Phase::Handshaking {
                    handshake,
                    since_ns,
                },
                Some(stream),
            ) = (&conn.phase, &mut conn.stream)
            else {
                return;
            };
            let (handshake, since_ns) = (*handshake, *since_ns);
            let n = match conn::read(stream, &mut self.rbuf) {
                Got::Bytes(n) => n,
                Got::Empty => return,
                Got::Eof => return self.fail(slot, Reason::Eof, at),
                Got::Failed(reason) => return self.fail(slot, reason, at),
            };
            let mut rx = self.take_rx(slot);
            let answer = if rx.is_empty() {
                handshake.read_response(&self.rbuf[..n])
            } else {
                rx.extend_from_slice(&self.rbuf[..n]);
                handshake.read_response(&rx)
            };
            match answer {
                Ok(None) => {
                    if rx.is_empty() {
                        rx.extend_from_slice(&self.rbuf[..n]);
                    }
                    self.put_rx(slot, rx);
                }
                Err(e) => {
                    self.put_rx(slot, rx);
                    return self.fail(slot, Reason::of_handshake(e), at);
                }
                Ok(Some(head)) => {
                    let early = if rx.is_empty() {
                        self.put_rx(slot, rx);
                        None
                    } else {
                        // Gives the (now empty) entry back; the answer's tail is fed below.
                        self.put_rx(slot, Vec::new());
                        rx.drain(..head);
                        Some(rx)
                    };
                    self.open(slot, since_ns, early, head..n, at);
                    // Whatever came behind the 101 (frames, even the server's FIN) raises no
                    // new edge: read on until the socket is empty.
                    return self.read_frames(slot, true, at);
                }
            }
        }
    }

    /// The 101 (to a request sent at `since_ns`) arrived; frames that came with it are in
    /// `early` or else in `rbuf[in_rbuf]`.
    pub(super) fn open(
        &mut self,
        slot: usize,
        since_ns: u64,
        early: Option<Vec<u8>>,
        in_rbuf: std::ops::Range<usize>,
        at: At,
    ) {
        let seed = next_random(&mut self.rng) as u32;
        let conn = &mut self.conns[slot];
        if conn.life == Life::Pending {
            hist::record(
                &mut self.tally.handshake,
                at.now_ns.saturating_sub(since_ns),
            );
            self.tally.established += 1;
            conn.life = Life::Open;
        }
        conn.phase = Phase::Open(Connection::client(at.instant, seed));
        self.with_link(slot, at, |traffic, state, link| traffic.opened(state, link));
        let fed = match early {
            Some(mut early) => self.feed(slot, &mut early, at),
            None if !in_rbuf.is_empty() => {
                let mut rbuf = std::mem::take(&mut self.rbuf);
                let fed = self.feed(slot, &mut rbuf[in_rbuf], at);
                self.rbuf = rbuf;
                fed
            }
            None => Fed::Open,
        };
        self.conclude(slot, fed, at);
    }

    /// Reads and handles frames until the socket is drained. With `hangup` the server's FIN is
    /// already queued behind the data and raises no further edge, so reading goes on to it.
    pub(super) fn read_frames(&mut self, slot: usize, hangup: bool, at: At) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        loop {
            let conn = &mut self.conns[slot];
            let (Phase::Open(_), Some(stream)) = (&conn.phase, &mut conn.stream) else {
                break;
            };
            let n = match conn::read(stream, &mut rbuf) {
                Got::Bytes(n) => n,
                Got::Empty => break,
                Got::Eof => {
                    self.on_eof(slot, at);
                    break;
                }
                Got::Failed(reason) => {
                    self.fail(slot, reason, at);
                    break;
                }
            };
            let fed = self.feed(slot, &mut rbuf[..n], at);
            self.conclude(slot, fed, at);
            // A short read drained the socket; the next arrival raises a new edge.
            if n < rbuf.len() && !hangup {
                break;
            }
        }
        self.rbuf = rbuf;
        if matches!(self.conns[slot].phase, Phase::Finishing) {
            // The close handshake just ended; the FIN may already be here.
            self.read_until_eof(slot);
        }
    }

    /// Hands received bytes to the protocol and the mode, with the slot's receive buffer for
    /// what stays incomplete.
    pub(super) fn feed(&mut self, slot: usize, input: &mut [u8], at: At) -> Fed {
        let mut rx = self.take_rx(slot);
        let fed = self.feed_with(slot, input, &mut rx, at);
        self.put_rx(slot, rx);
        fed
    }

    fn feed_with(&mut self, slot: usize, input: &mut [u8], rx: &mut Vec<u8>, at: At) -> Fed {
        let sending = self.sending();
        let conn = &mut self.conns[slot];
        let Phase::Open(ws) = &mut conn.phase else {
            return Fed::Open;
        };
        let mut input = input;
        while let Some(event) = ws.read(&mut input, rx, at.instant, &self.ws_config, &mut self.tx) {
            match event {
                Event::Message(kind, payload) => {
                    self.tally.messages_received += 1;
                    if sending && at.now_ns >= self.go_ns {
                        self.tally.received_in_window += 1;
                    }
                    let mut link = Link {
                        ws,
                        tx: &mut self.tx,
                        tally: &mut self.tally,
                        now_ns: at.now_ns,
                        slot,
                        index: self.first + slot,
                        sending,
                        go_ns: self.go_ns,
                        stop_ns: self.stop_ns,
                    };
                    match self
                        .traffic
                        .message(&mut conn.state, &mut link, kind, payload)
                    {
                        Verdict::Continue => {}
                        Verdict::Finish => return Fed::Finish,
                        Verdict::Fail(reason) => return Fed::Fail(reason),
                    }
                }
                Event::Ping(_) | Event::Pong(_) => {}
                Event::Close(_) => return Fed::Closed,
                Event::Failed(_) | Event::Request(..) => return Fed::Fail(Reason::Protocol),
            }
        }
        Fed::Open
    }

    /// Writes what feeding queued and acts on how it ended.
    pub(super) fn conclude(&mut self, slot: usize, fed: Fed, at: At) {
        self.flush(slot, at);
        let conn = &mut self.conns[slot];
        if !matches!(conn.phase, Phase::Open(_)) {
            return;
        }
        match fed {
            Fed::Open => {
                if self.traffic.ready(&conn.state) {
                    if !conn.settled {
                        self.settle(slot);
                    }
                    if self.conns[slot].life == Life::Rejoining {
                        self.rejoined(slot, Ok(()), at);
                    }
                }
            }
            Fed::Finish => self.begin_close(slot, at),
            Fed::Closed => {
                match conn.life {
                    Life::Rejoining => self.rejoined(slot, Err(Reason::ClosedByServer), at),
                    _ if conn.we_closed => self.tally.closed_clean += 1,
                    _ => self.tally.drops.add(Reason::ClosedByServer),
                }
                let conn = &mut self.conns[slot];
                conn.life = Life::Ended;
                self.settle(slot);
                self.await_eof(slot, at);
            }
            Fed::Fail(reason) => self.fail(slot, reason, at),
        }
    }

    /// Runs a mode callback on an open connection, then writes what it queued.
    pub(super) fn with_link(
        &mut self,
        slot: usize,
        at: At,
        callback: impl FnOnce(&mut T, &mut T::Conn, &mut Link<'_>) -> Verdict,
    ) {
        let sending = self.sending();
        let conn = &mut self.conns[slot];
        let Phase::Open(ws) = &mut conn.phase else {
            return;
        };
        let mut link = Link {
            ws,
            tx: &mut self.tx,
            tally: &mut self.tally,
            now_ns: at.now_ns,
            slot,
            index: self.first + slot,
            sending,
            go_ns: self.go_ns,
            stop_ns: self.stop_ns,
        };
        let verdict = callback(&mut self.traffic, &mut conn.state, &mut link);
        let fed = match verdict {
            Verdict::Continue => Fed::Open,
            Verdict::Finish => Fed::Finish,
            Verdict::Fail(reason) => Fed::Fail(reason),
        };
        self.conclude(slot, fed, at);
    }

    /// Sends our close frame; the server's answer ends the connection.
    pub(super) fn begin_close(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        let Phase::Open(ws) = &mut conn.phase else {
            return;
        };
        if !conn.we_closed {
            conn.we_closed = true;
            ws.close(CloseCode::NORMAL, "", at.instant, &mut self.tx);
            self.watch_finish(slot, at);
        }
        self.flush(slot, at);
    }

    /// The WebSocket is over: wait (bounded) for the server to close TCP.
    pub(super) fn await_eof(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        conn.phase = Phase::Finishing;
        if !conn.we_closed {
            self.watch_finish(slot, at);
        }
        // Nothing more will be read; a backlog (our close frame) may still be leaving.
        if self.conns[slot].lent.is_some() {
            drop(self.take_rx(slot));
            self.put_rx(slot, Vec::new());
        }
    }

    /// Bounds the end of a connection's close by `--close-timeout`. While the loop is closing
    /// everything its own deadline does that, so no entry per connection is queued (16 bytes
    /// each at the peak of closing a million).
    fn watch_finish(&mut self, slot: usize, at: At) {
        if !matches!(self.stage, Stage::Closing { .. }) {
            self.finish_deadlines.push_back((
                at.now_ns + ns(self.plan.close_timeout),
                slot as u32,
                self.conns[slot].generation,
            ));
        }
    }

    pub(super) fn read_until_eof(&mut self, slot: usize) {
        loop {
            let Some(stream) = &mut self.conns[slot].stream else {
                return;
            };
            match conn::read(stream, &mut self.rbuf) {
                Got::Bytes(_) => {}
                Got::Empty => return,
                Got::Eof | Got::Failed(_) => return self.release(slot),
            }
        }
    }

    pub(super) fn on_eof(&mut self, slot: usize, at: At) {
        if self.conns[slot].we_closed {
            // We asked to close and the server hung up without a close frame: over, not clean.
            self.conns[slot].life = Life::Ended;
            self.release(slot);
        } else {
            self.fail(slot, Reason::Eof, at);
        }
    }
}
