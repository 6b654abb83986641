//! What a loop does when a socket is ready: finish the connect and send the upgrade request,
//! read the 101, then read frames into the protocol core and hand messages to the mode, write
//! what they queued, and see the close handshake through.

use std::io;
use std::os::fd::AsRawFd;

use clarion_protocol::handshake::ClientHandshake;
use clarion_protocol::{CloseCode, Connection, Event, MessageKind};

use super::conn::{self, Got, Life, Phase};
use super::{At, Readiness, Stage, Worker, next_random};
use crate::clock::ns;
use crate::failure::Reason;
use crate::hist;
use crate::sse;
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
        // An armed connection's bytes and FIN come from its receive on the ring.
        let armed = self.armed(slot);
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
            Phase::Securing { .. } => {
                if ready.readable {
                    self.read_tls_handshake(slot, at);
                } else if ready.writable {
                    self.flush(slot, at);
                }
            }
            Phase::Handshaking { .. } => {
                if ready.readable {
                    self.read_handshake(slot, at);
                }
            }
            Phase::Open(_) | Phase::Stream(_) => {
                let tls = self.secure.get(slot).and_then(|t| t.as_deref());
                if ready.writable && (conn.lent.is_some() || tls.is_some_and(|t| t.wants_write())) {
                    self.flush(slot, at);
                }
                if ready.readable && !armed {
                    self.read_frames(slot, ready.hangup, at);
                }
            }
            Phase::Finishing => {
                if ready.readable && !armed {
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
        let (_, target) = self.plan.pairs.pair(self.first + slot);
        if target.tls {
            return self.start_tls(slot, at);
        }
        self.send_upgrade(slot, at);
    }

    /// Starts the TLS handshake (`wss://`): the client's hello goes out now.
    fn start_tls(&mut self, slot: usize, at: At) {
        let (_, target) = self.plan.pairs.pair(self.first + slot);
        let config = self
            .plan
            .tls
            .as_ref()
            .expect("a TLS target has a TLS config");
        let mut tls = match crate::tls::connect(config, &target.server_name()) {
            Ok(tls) => tls,
            Err(_) => return self.fail(slot, Reason::Tls, at),
        };
        tls.set_buffer_limit(Some(conn::MAX_BACKLOG));
        if self.secure.len() <= slot {
            self.secure.resize_with(slot + 1, || None);
        }
        self.secure[slot] = Some(Box::new(tls));
        self.conns[slot].phase = Phase::Securing {
            since_ns: at.now_ns,
        };
        self.flush(slot, at);
    }

    /// Reads the server's side of the TLS handshake; once it is done, sends the upgrade.
    fn read_tls_handshake(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        let (Phase::Securing { since_ns }, Some(stream), Some(Some(tls))) =
            (&conn.phase, &mut conn.stream, self.secure.get_mut(slot))
        else {
            return;
        };
        let since_ns = *since_ns;
        loop {
            match conn::receive_tls(stream, tls) {
                Ok(true) => {}
                Ok(false) => break,
                Err(Got::Failed(reason)) => {
                    // The alert rustls queued says why; send it if the socket takes it.
                    self.flush(slot, at);
                    return self.fail(slot, reason, at);
                }
                Err(_) => return self.fail(slot, Reason::Tls, at),
            }
            if !tls.is_handshaking() {
                break;
            }
        }
        let done = !tls.is_handshaking();
        self.flush(slot, at);
        if done && matches!(self.conns[slot].phase, Phase::Securing { .. }) {
            if self.conns[slot].life == Life::Pending {
                hist::record(&mut self.tally.tls, at.now_ns.saturating_sub(since_ns));
            }
            self.send_upgrade(slot, at);
        }
    }

    /// Sends the upgrade request (over TLS when the slot has it).
    fn send_upgrade(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&next_random(&mut self.rng).to_ne_bytes());
        nonce[8..].copy_from_slice(&next_random(&mut self.rng).to_ne_bytes());
        let handshake = ClientHandshake::new(nonce);
        let index = self.first + slot;
        let (_, target) = self.plan.pairs.pair(index);
        let path = self.traffic.path(index, target);
        if self.plan.sse {
            // The handshake's key goes unused: an event stream is a plain GET.
            sse::write_request(&target.host, &path, &mut self.tx);
        } else {
            handshake.write_request(&target.host, &path, &[], &mut self.tx);
        }
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
            let tls = self.secure.get_mut(slot).and_then(|t| t.as_deref_mut());
            let n = match conn::read(stream, tls, &mut self.rbuf) {
                Got::Bytes(n) => n,
                Got::Empty => return,
                Got::Eof => return self.fail(slot, Reason::Eof, at),
                Got::Failed(reason) => return self.fail(slot, reason, at),
            };
            let mut rx = self.take_rx(slot);
            let head = if rx.is_empty() {
                &self.rbuf[..n]
            } else {
                rx.extend_from_slice(&self.rbuf[..n]);
                &rx[..]
            };
            let (answer, stream) = if self.plan.sse {
                match sse::read_head(head) {
                    Ok(Some((len, decoder))) => (Ok(Some(len)), Some(decoder)),
                    Ok(None) => (Ok(None), None),
                    Err(reason) => (Err(reason), None),
                }
            } else {
                let answer = handshake.read_response(head);
                (answer.map_err(Reason::of_handshake), None)
            };
            match answer {
                Ok(None) => {
                    if rx.is_empty() {
                        rx.extend_from_slice(&self.rbuf[..n]);
                    }
                    self.put_rx(slot, rx);
                }
                Err(reason) => {
                    self.put_rx(slot, rx);
                    return self.fail(slot, reason, at);
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
                    self.open(slot, since_ns, stream, early, head..n, at);
                    // Whatever came behind the 101 (frames, even the server's FIN) raises no
                    // new edge: read on until the socket is empty.
                    self.read_frames(slot, true, at);
                    return self.arm_ring(slot, at);
                }
            }
        }
    }

    /// The 101 (to a request sent at `since_ns`) arrived, or with `stream` the event stream's
    /// head; what came with it is in `early` or else in `rbuf[in_rbuf]`.
    pub(super) fn open(
        &mut self,
        slot: usize,
        since_ns: u64,
        stream: Option<sse::Decoder>,
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
        conn.phase = match stream {
            Some(decoder) => Phase::Stream(decoder),
            None => Phase::Open(Connection::client(at.instant, seed)),
        };
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
        // Through TLS a short read says nothing of the socket: read until it is empty.
        let tls_slot = self.secure.get(slot).is_some_and(Option::is_some);
        loop {
            let conn = &mut self.conns[slot];
            let (Phase::Open(_) | Phase::Stream(_), Some(stream)) = (&conn.phase, &mut conn.stream)
            else {
                break;
            };
            let tls = self.secure.get_mut(slot).and_then(|t| t.as_deref_mut());
            let n = match conn::read(stream, tls, &mut rbuf) {
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
            if n < rbuf.len() && !hangup && !tls_slot {
                break;
            }
        }
        self.rbuf = rbuf;
        if matches!(self.conns[slot].phase, Phase::Finishing) {
            // The close handshake just ended; the FIN may already be here.
            self.read_until_eof(slot);
        }
    }

    /// `--io uring`: from now on an open plaintext WebSocket is read by a multishot receive on
    /// the loop's ring; epoll watches it for writing only.
    fn arm_ring(&mut self, slot: usize, at: At) {
        let tls = self.secure.get(slot).is_some_and(Option::is_some);
        let conn = &mut self.conns[slot];
        let (Some(ring), Phase::Open(_), Some(stream), false) =
            (&mut self.ring, &conn.phase, &mut conn.stream, tls)
        else {
            return;
        };
        if ring.is_armed(slot) {
            return;
        }
        let armed = self
            .poll
            .registry()
            .reregister(stream, mio::Token(slot), mio::Interest::WRITABLE)
            .and_then(|()| ring.arm(stream.as_raw_fd(), slot, conn.generation));
        if let Err(e) = armed {
            self.fail(slot, Reason::of_io(&e), at);
        }
    }

    /// Whether `slot` is read by a receive on the ring rather than through epoll.
    fn armed(&self, slot: usize) -> bool {
        self.ring.as_ref().is_some_and(|ring| ring.is_armed(slot))
    }

    /// `--io uring`: a completion of the receive armed for `slot` at `generation`: bytes for
    /// the protocol, the server's FIN, or an error; one that ended without either is armed
    /// again. Completions of an earlier dial of the slot only give their buffer back.
    pub(super) fn on_ring_read(
        &mut self,
        slot: usize,
        generation: u32,
        result: i32,
        buffer: Option<u16>,
        more: bool,
        at: At,
    ) {
        let Some(ring) = &mut self.ring else {
            return;
        };
        let n = match buffer {
            Some(buffer) => ring.take(buffer, result.max(0) as usize, &mut self.rbuf),
            None => 0,
        };
        let conn = &mut self.conns[slot];
        if conn.generation != generation || !ring.is_armed(slot) {
            return;
        }
        if !more {
            ring.ended(slot);
        }
        let mut rbuf = std::mem::take(&mut self.rbuf);
        match conn.phase {
            Phase::Open(_) if result > 0 => {
                self.tally.ring_reads += 1;
                let fed = self.feed(slot, &mut rbuf[..n], at);
                self.conclude(slot, fed, at);
            }
            Phase::Finishing if result > 0 => {}
            Phase::Open(_) | Phase::Finishing if result == -libc::ENOBUFS => {}
            Phase::Open(_) => match result {
                0 => self.on_eof(slot, at),
                errno => self.fail(
                    slot,
                    Reason::of_io(&io::Error::from_raw_os_error(-errno)),
                    at,
                ),
            },
            // The FIN (or an error) after our close: the connection is over.
            Phase::Finishing => self.release(slot),
            _ => {}
        }
        self.rbuf = rbuf;
        let conn = &mut self.conns[slot];
        if let (Some(ring), Some(stream)) = (&mut self.ring, &conn.stream)
            && !ring.is_armed(slot)
            && conn.generation == generation
            && matches!(conn.phase, Phase::Open(_) | Phase::Finishing)
        {
            // Ended without the connection ending (no buffer was free, or a large read):
            // the bytes wait in the socket for the next receive.
            if let Err(e) = ring.arm(stream.as_raw_fd(), slot, generation) {
                self.fail(slot, Reason::of_io(&e), at);
            }
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
        if matches!(self.conns[slot].phase, Phase::Stream(_)) {
            return self.feed_stream(slot, input, rx, at);
        }
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
                Event::Failed(failure) => {
                    report_protocol_failure(self.first + slot, &format!("{failure:?}"));
                    return Fed::Fail(Reason::Protocol);
                }
                Event::Request(..) => {
                    report_protocol_failure(self.first + slot, "an HTTP request");
                    return Fed::Fail(Reason::Protocol);
                }
            }
        }
        Fed::Open
    }

    /// Hands an event stream's bytes to the mode, one event's data at a time (as a text message).
    fn feed_stream(&mut self, slot: usize, input: &[u8], rx: &mut Vec<u8>, at: At) -> Fed {
        let sending = self.sending();
        let index = self.first + slot;
        let conn = &mut self.conns[slot];
        let Phase::Stream(decoder) = &mut conn.phase else {
            return Fed::Open;
        };
        // What a mode writes to a stream would be dropped unread by the server: it is not sent.
        let mut unused = Connection::client(at.instant, 0);
        let mut verdict = Verdict::Continue;
        let (traffic, tally, tx) = (&mut self.traffic, &mut self.tally, &mut self.tx);
        let (state, go_ns, stop_ns) = (&mut conn.state, self.go_ns, self.stop_ns);
        let fed = decoder.feed(input, rx, &mut self.scratch, &mut |_, data| {
            tally.messages_received += 1;
            if sending && at.now_ns >= go_ns {
                tally.received_in_window += 1;
            }
            let mut link = Link {
                ws: &mut unused,
                tx,
                tally,
                now_ns: at.now_ns,
                slot,
                index,
                sending,
                go_ns,
                stop_ns,
            };
            verdict = traffic.message(state, &mut link, MessageKind::Text, data);
            tx.clear();
            verdict == Verdict::Continue
        });
        match (fed, verdict) {
            (Err(reason), _) | (_, Verdict::Fail(reason)) => Fed::Fail(reason),
            (_, Verdict::Finish) => Fed::Finish,
            (Ok(sse::Fed::Ended), _) => Fed::Closed,
            _ => Fed::Open,
        }
    }

    /// Writes what feeding queued and acts on how it ended.
    pub(super) fn conclude(&mut self, slot: usize, fed: Fed, at: At) {
        self.flush(slot, at);
        let conn = &mut self.conns[slot];
        if !matches!(conn.phase, Phase::Open(_) | Phase::Stream(_)) {
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
        // A stream's mode callbacks get a WebSocket that sends nowhere (see `feed_stream`).
        let mut unused = Connection::client(at.instant, 0);
        let (ws, stream) = match &mut conn.phase {
            Phase::Open(ws) => (ws, false),
            Phase::Stream(_) => (&mut unused, true),
            _ => return,
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
        if stream {
            self.tx.clear();
        }
        let fed = match verdict {
            Verdict::Continue => Fed::Open,
            Verdict::Finish => Fed::Finish,
            Verdict::Fail(reason) => Fed::Fail(reason),
        };
        self.conclude(slot, fed, at);
    }

    /// Sends our close frame; the server's answer ends the connection. A stream has none: our
    /// FIN asks the server to end it, and its own FIN is the clean end.
    pub(super) fn begin_close(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        if let (Phase::Stream(_), Some(stream)) = (&conn.phase, &conn.stream) {
            if !conn.we_closed {
                conn.we_closed = true;
                let _ = stream.shutdown(std::net::Shutdown::Write);
                self.watch_finish(slot, at);
            }
            return;
        }
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
        if self.armed(slot) {
            // The FIN comes as the receive's last completion (`on_ring_read`).
            return;
        }
        loop {
            let Some(stream) = &mut self.conns[slot].stream else {
                return;
            };
            let tls = self.secure.get_mut(slot).and_then(|t| t.as_deref_mut());
            match conn::read(stream, tls, &mut self.rbuf) {
                Got::Bytes(_) => {}
                Got::Empty => return,
                Got::Eof | Got::Failed(_) => return self.release(slot),
            }
        }
    }

    pub(super) fn on_eof(&mut self, slot: usize, at: At) {
        let conn = &mut self.conns[slot];
        if conn.we_closed && matches!(conn.phase, Phase::Stream(_)) {
            // The server ended the stream after our FIN: a stream's clean end.
            self.tally.closed_clean += 1;
            conn.life = Life::Ended;
            return self.release(slot);
        }
        if self.conns[slot].we_closed {
            // We asked to close and the server hung up without a close frame: over, not clean.
            self.conns[slot].life = Life::Ended;
            self.release(slot);
        } else {
            self.fail(slot, Reason::Eof, at);
        }
    }
}

/// Says on stderr what a server's protocol violation was, for the first few of a run (a
/// broken server could break thousands): the drop count alone does not tell a bad frame from
/// a bad close.
fn report_protocol_failure(connection: usize, what: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Lines a run prints at most.
    const MAX_REPORTED: usize = 20;
    static REPORTED: AtomicUsize = AtomicUsize::new(0);
    if REPORTED.fetch_add(1, Ordering::Relaxed) < MAX_REPORTED {
        eprintln!("connection {connection}: the server broke the WebSocket protocol: {what}");
    }
}
