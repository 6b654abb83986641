//! A connection's life in the shared core, the same for both I/O models: admitted (or refused
//! at accept), written, paused over its write cap and resumed, timed out, closed. The drivers
//! call these; the close procedure lives here once.

use std::time::Instant;

use clarion_protocol::{CloseCode, Config, Connection, Timeout, Transmit};

use super::Reactor;
use super::bookkeeping::{HttpConn, arm, rearm_on_state_change, release_deflate};
use super::conn::{Conn, ConnFlags, live, open};
use super::driver::Driver;
use super::writer::{ConnWriter, EitherWriter, Writing, Written, writer_for};
use crate::limits::Allowance;
use crate::sys::{Flushed, Peer};
use crate::{Ctx, Handler, Limit, LimitHit, ProxyProtocol, Stats};

/// A driver's connection writer (or a TLS connection's).
type WriterOf<'a, D> =
    EitherWriter<'a, <<D as Driver>::Writing as Writing<<D as Driver>::Socket>>::Writer<'a>>;

impl<D: Driver, H: Handler> Reactor<D, H> {
    /// Takes a connection a driver accepted on `listener` into the table, or refuses it by
    /// closing it without a word: while draining, or past a limit (the process's
    /// `max_connections`, the reactor's `max_connections_per_reactor` or
    /// `max_handshakes_per_reactor`, which the handler hears of through
    /// [`Handler::on_limit`]; the TLS handshake cap, counted in `tls_refused`).
    pub(super) fn on_accepted(
        &mut self,
        mut socket: D::Socket,
        peer: Option<std::net::SocketAddr>,
        listener: usize,
        now: Instant,
    ) {
        let core = &mut self.core;
        if core.drain_deadline.is_some() {
            return self.driver.refuse(socket);
        }
        let refused = if core.conns.len() >= core.config.max_connections_per_reactor {
            Some(Limit::Connections)
        } else if core.handshaking >= core.config.max_handshakes_per_reactor {
            Some(Limit::Handshakes)
        } else if !core.limits.admit() {
            Some(Limit::Connections)
        } else {
            None
        };
        if let Some(limit) = refused {
            Stats::bump(match limit {
                Limit::Handshakes => &core.stats.refused_handshakes,
                _ => &core.stats.refused_connections,
            });
            core.handler.on_limit(&LimitHit {
                limit,
                id: None,
                peer,
                conn: None,
                now,
            });
            return self.driver.refuse(socket);
        }
        let entry = core.conns.vacant_entry();
        let token = entry.key();
        // TLS, like the PROXY protocol, is spoken on `listen` only: the other listeners (the
        // admin port) are plaintext, on loopback by default.
        if listener == 0 && !core.tls.admit(token, &core.stats) {
            core.limits.release();
            return self.driver.refuse(socket);
        }
        if let Err(e) = self.driver.register(&mut socket, token) {
            tracing::warn!("cannot watch accepted socket: {e}");
            core.limits.release();
            core.tls.remove(token, &mut core.rx_pool, &mut core.tx_pool);
            return self.driver.refuse(socket);
        }
        let ws = Connection::server(now);
        let timer = arm(&mut core.timers, &core.config, &ws, token, now);
        let conn = entry.insert(Conn::new(socket, ws, timer, Allowance::full(&core.rates)));
        // The PROXY protocol is spoken on `listen` only, where the proxies connect.
        if listener == 0 && core.config.proxy_protocol != ProxyProtocol::Off {
            conn.flags.insert(ConnFlags::PROXY_HEADER);
        }
        core.handshaking += 1;
        let http = HttpConn {
            peer,
            // Below MAX_LISTENERS (8): the runtime binds no more.
            listener: listener as u8,
            answered: 0,
        };
        if http != HttpConn::default() {
            core.http.insert(token, http);
        }
        core.stats
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bookkeeping after a connection's writer finished: drop it if its socket failed, stop
    /// reading it if it went over its write cap, leave it to the turn's end if it queued bytes,
    /// else the timers, the end of the WebSocket and FIN.
    pub(super) fn after_io(&mut self, token: usize, written: Written, now: Instant) {
        match written {
            Written::Failed => return self.drop_conn(token, now),
            Written::Queued => self.core.mark_dirty(token),
            Written::Done => {}
        }
        let cap = self.core.limits.max_queued_bytes();
        let Some(conn) = live(&mut self.core.conns, token) else {
            return;
        };
        let queued = conn.queued();
        if queued > cap && !conn.flags.intersects(ConnFlags::PAUSED | ConnFlags::LINGER) {
            conn.flags.insert(ConnFlags::PAUSED);
            self.driver.pause_reading(token, &mut conn.socket);
            self.core.stalled.insert(token, now);
        } else if conn.flags.contains(ConnFlags::WANTS_WRITABLE) && queued <= cap / 2 {
            // Asked while the queue was already low: told at the turn's end.
            self.core.mark_dirty(token);
        }
        if written == Written::Queued {
            return;
        }
        if self.core.end_of_websocket(token, now) {
            if self.core.tls.is_tls(token) && !self.tls_closed(token, now) {
                return;
            }
            let conn = &mut self.core.conns[token];
            if conn.tx.is_none() && !conn.flags.contains(ConnFlags::FIN_SENT) {
                conn.flags.insert(ConnFlags::FIN_SENT);
                self.driver.shutdown_write(token, &mut conn.socket);
            }
        }
    }

    /// After a connection's queue moved on: at or below the low mark (half the write cap), the
    /// handler hears `on_writable` if it asked, and a connection paused over its cap is read
    /// again, its parked bytes first.
    pub(super) fn after_flush(&mut self, token: usize, now: Instant) {
        let Some(conn) = open(&mut self.core.conns, token) else {
            return;
        };
        // Once per flush, so per message on an echo: the flags first, the cap only if asked.
        if !conn
            .flags
            .intersects(ConnFlags::WANTS_WRITABLE | ConnFlags::PAUSED)
        {
            return;
        }
        let low_mark = self.core.limits.max_queued_bytes() / 2;
        if conn.queued() > low_mark {
            return;
        }
        if conn.flags.contains(ConnFlags::WANTS_WRITABLE) {
            conn.flags.remove(ConnFlags::WANTS_WRITABLE);
            self.writable(token, now);
        }
        if let Some(conn) = live(&mut self.core.conns, token)
            && conn.flags.contains(ConnFlags::PAUSED)
            && conn.queued() <= low_mark
        {
            self.resume(token, now);
        }
    }

    /// Tells the handler an open connection has room again ([`Handler::on_writable`]).
    fn writable(&mut self, token: usize, now: Instant) {
        let core = &mut self.core;
        let Some(conn) = open(&mut core.conns, token) else {
            return;
        };
        let Some(app) = conn.app.as_mut() else {
            return;
        };
        let state_before = conn.ws.state();
        let tls = core.tls.is_tls(token);
        let mut out = writer_for(
            self.driver.writing(),
            tls,
            &mut conn.socket,
            &mut conn.tx,
            &mut core.tx_pool,
        );
        core.handler.on_writable(&mut Ctx {
            id: token,
            conn: app,
            ws: &mut conn.ws,
            out: &mut out,
            deflating: &mut core.compression.deflating,
            stats: &core.stats,
            flags: &mut conn.flags,
            low_mark: core.limits.max_queued_bytes() / 2,
            now,
        });
        let written = out.finish();
        rearm_on_state_change(&mut core.timers, conn, state_before);
        self.after_io(token, written, now);
    }

    /// Reads a paused connection again: its parked bytes are fed first (which may pause it
    /// again), then the driver reads what waits in the socket.
    fn resume(&mut self, token: usize, now: Instant) {
        let core = &mut self.core;
        let Some(conn) = live(&mut core.conns, token) else {
            return;
        };
        conn.flags.remove(ConnFlags::PAUSED);
        core.stalled.remove(&token);
        if conn.flags.contains(ConnFlags::UNREAD) {
            conn.flags.remove(ConnFlags::UNREAD);
            if let Some(mut parked) = conn.rx.take() {
                core.partial_bytes -= parked.capacity();
                let writing = self.driver.writing();
                let tls = core.tls.is_tls(token);
                let written = core.on_plaintext(writing, tls, token, &mut parked, false, now);
                self.core.rx_pool.give(parked);
                self.after_io(token, written, now);
            }
        }
        if let Some(conn) = live(&mut self.core.conns, token)
            && !conn.flags.contains(ConnFlags::PAUSED)
        {
            self.driver.resume_reading(token, &mut conn.socket);
        }
    }

    /// Drops the connections that stayed over their write cap past `write_timeout` (their peers
    /// are not reading).
    pub(super) fn stalled_out(&mut self, now: Instant) {
        let timeout = self.core.config.write_timeout;
        let expired: Vec<usize> = self
            .core
            .stalled
            .iter()
            .filter(|&(_, &since)| now.saturating_duration_since(since) >= timeout)
            .map(|(&token, _)| token)
            .collect();
        for token in expired {
            self.limit_hit(token, Limit::WriteTimeout, now);
            Stats::bump(&self.core.stats.write_timeouts);
            self.drop_conn(token, now);
        }
    }

    /// Tells the handler of a limit enforced on a connection in the table.
    fn limit_hit(&mut self, token: usize, limit: Limit, now: Instant) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get(token) else {
            return;
        };
        let peer = match core.http.get(&token).and_then(|h| h.peer) {
            Some(peer) => Some(peer),
            None if conn.flags.contains(ConnFlags::OPENED) => conn.socket.peer(),
            None => None,
        };
        core.handler.on_limit(&LimitHit {
            limit,
            id: Some(token),
            peer,
            conn: conn.app.as_ref(),
            now,
        });
    }

    /// A TLS connection whose WebSocket is over: true once what it queued, then its
    /// close_notify, are all sent (FIN may follow).
    fn tls_closed(&mut self, token: usize, now: Instant) -> bool {
        let core = &mut self.core;
        if core.conns[token].tx.is_some() {
            return false;
        }
        if core.tls.close_notify(token, &mut core.tx_pool) {
            self.flush(token, now);
        }
        self.core
            .tls
            .get_mut(token)
            .is_some_and(|tls| tls.outgoing.is_none())
    }

    /// Moves a connection's queue on; true when it emptied now (and went back to the pool).
    pub(super) fn flush(&mut self, token: usize, now: Instant) -> bool {
        if self.core.tls.is_tls(token) {
            return self.flush_tls(token, now);
        }
        let Some(conn) = live(&mut self.core.conns, token) else {
            return false;
        };
        let Some(queue) = conn.tx.as_deref_mut() else {
            return false;
        };
        match self.driver.flush(token, &mut conn.socket, queue) {
            Ok(Flushed::Done) => {
                let queue = conn.tx.take().expect("present");
                self.core.tx_pool.give(queue);
                true
            }
            Ok(Flushed::Pending) => false,
            Err(_) => {
                self.drop_conn(token, now);
                false
            }
        }
    }

    /// [`Reactor::flush`] for a TLS connection: sends the ciphertext waiting, then encrypts the
    /// next batch of queued plaintext, until the socket stops taking it or nothing is left.
    fn flush_tls(&mut self, token: usize, now: Instant) -> bool {
        loop {
            let core = &mut self.core;
            let Some(conn) = live(&mut core.conns, token) else {
                return false;
            };
            let Some(tls) = core.tls.get_mut(token) else {
                return false;
            };
            if let Some(queue) = tls.outgoing.as_deref_mut() {
                match self.driver.flush(token, &mut conn.socket, queue) {
                    Ok(Flushed::Done) => {
                        let queue = tls.outgoing.take().expect("present");
                        core.tx_pool.give(queue);
                    }
                    Ok(Flushed::Pending) => return false,
                    Err(_) => {
                        self.drop_conn(token, now);
                        return false;
                    }
                }
            }
            let Some(plain) = conn.tx.as_deref_mut() else {
                return true;
            };
            if plain.is_empty() || !core.tls.can_encrypt(token) {
                // Nothing to send, or no way to: the handshake never finished, or an alert
                // ended the connection's sending.
                let plain = conn.tx.take().expect("present");
                core.tx_pool.give(plain);
                return true;
            }
            if let Err(e) = core.tls.encrypt(token, plain, &mut core.tx_pool) {
                tracing::debug!(token, "TLS cannot encrypt: {e}");
                self.drop_conn(token, now);
                return false;
            }
            if plain.is_empty() {
                let plain = conn.tx.take().expect("present");
                core.tx_pool.give(plain);
            }
        }
    }

    /// Runs `f` with a connection's protocol state, its writer and the protocol settings.
    fn with_writer(
        &mut self,
        token: usize,
        f: impl FnOnce(&mut Connection, &mut WriterOf<'_, D>, &Config),
    ) -> Written {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(token) else {
            return Written::Done;
        };
        let state_before = conn.ws.state();
        let mut out = writer_for(
            self.driver.writing(),
            core.tls.is_tls(token),
            &mut conn.socket,
            &mut conn.tx,
            &mut core.tx_pool,
        );
        f(&mut conn.ws, &mut out, &core.config.protocol);
        let written = out.finish();
        rearm_on_state_change(&mut core.timers, conn, state_before);
        written
    }

    /// Acts on the deadlines that passed by `horizon` (the clock, or earlier when the reactor is
    /// behind: [`Reactor::deadline_horizon`]): pings, pong, handshake, idle and close timeouts.
    /// `now` is when what they send is sent.
    pub(super) fn fire_timers(&mut self, horizon: Instant, now: Instant) {
        while let Some(token) = self.core.timers.poll_expired(horizon) {
            let token = token as usize;
            let Some(conn) = self.core.conns.get_mut(token) else {
                continue;
            };
            conn.timer = None;
            if conn.flags.contains(ConnFlags::LINGER) {
                self.drop_conn(token, now);
                continue;
            }
            let mut fired = None;
            let written = self.with_writer(token, |ws, out, protocol| {
                fired = ws.handle_timeout(now, protocol, out);
                if let Some(timeout) = fired {
                    tracing::debug!(token, ?timeout, "timeout");
                }
            });
            if fired == Some(Timeout::Handshake) {
                Stats::bump(&self.core.stats.handshake_timeouts);
                self.limit_hit(token, Limit::HandshakeTimeout, now);
                self.core.left_handshake(token, false);
            }
            self.after_io(token, written, now);
        }
    }

    /// Shutdown: stop accepting and send every open connection a close (1001): a WebSocket its
    /// close frame, a streaming response the ending its handler writes
    /// ([`Handler::stream_ending`]).
    pub(super) fn begin_drain(&mut self, now: Instant) {
        self.driver.stop_accepting();
        self.core.drain_deadline = Some(now + self.core.config.drain_timeout);
        let (code, reason) = (CloseCode::GOING_AWAY, "server shutdown");
        let tokens: Vec<usize> = self.core.conns.iter().map(|(token, _)| token).collect();
        let mut ending = Vec::new();
        for token in tokens {
            if !self.core.is_live(token) {
                continue;
            }
            ending.clear();
            let core = &mut self.core;
            if let Some(conn) = core.conns.get_mut(token)
                && conn.ws.is_streaming()
                && let Some(app) = conn.app.as_mut()
            {
                core.handler.stream_ending(app, code, reason, &mut ending);
            }
            let written = self.with_writer(token, |ws, out, _| {
                if !ending.is_empty() {
                    out.transmit(&ending, &[]);
                }
                ws.close(code, reason, now, out);
            });
            self.after_io(token, written, now);
        }
    }

    /// Ends a connection: tells the handler, returns what it borrowed, closes its socket. Its
    /// entry stays (released) until the driver has nothing in flight on it and the turn's
    /// events are handled.
    pub(super) fn drop_conn(&mut self, token: usize, now: Instant) {
        let core = &mut self.core;
        let Some(conn) = core.conns.get_mut(token) else {
            return;
        };
        if conn.flags.contains(ConnFlags::RELEASING) {
            return;
        }
        core.http.remove(&token);
        core.stalled.remove(&token);
        if let Some(key) = conn.timer.take() {
            core.timers.cancel(key);
        }
        if let Some(rx) = conn.rx.take() {
            core.partial_bytes -= rx.capacity();
            core.rx_pool.give(rx);
        }
        conn.flags
            .remove(ConnFlags::PAUSED | ConnFlags::UNREAD | ConnFlags::WANTS_WRITABLE);
        core.tls.release_incoming(token, &mut core.rx_pool);
        release_deflate(&mut core.compression, token, conn);
        if conn.flags & (ConnFlags::OPENED | ConnFlags::LINGER) == ConnFlags::OPENED
            && let Some(app) = conn.app.as_mut()
        {
            // Dropped before the close handshake finished: no code (1006 on the other side).
            core.handler.on_close(token, app, conn.ws.close_code(), now);
        }
        conn.flags.insert(ConnFlags::RELEASING);
        if self.driver.close(token, &mut conn.socket) {
            core.retired.push(token);
        }
        core.left_handshake(token, false);
    }
}
