//! The publishing thread: takes publishes from the reactors through a channel and hands them to
//! Redis in pipelined batches, through the publish script (which numbers them).
//!
//! While Redis is unreachable publishes stay queued, in order, and the thread reconnects with
//! back-off; the reactors refuse new ones once the queue holds `buffer_bytes` (see
//! [`super::Cluster::publish`]). A batch whose replies were lost is sent again: each publish
//! carries this node's id and its own number, and the script takes each number once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Client, Connection, RedisError, Value};

use super::link::{Backoff, Link};
use super::wire::format_code;
use super::{CONNECT_TIMEOUT, IO_TIMEOUT, keys};
use clarion_pubsub::Payload;

/// Most publishes in one pipeline.
const BATCH: usize = 256;
/// How long an idle thread waits before looking at the stop flag again.
const IDLE: Duration = Duration::from_millis(100);
/// How often an idle connection is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(1);

/// One publish on its way to Redis.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub topic: Arc<str>,
    pub payload: Payload,
    /// Publish time, µs since the Unix epoch.
    pub time: u64,
    /// The `seq` this node gave it while the link was down (it delivered it locally); 0 if none.
    pub provisional: u64,
}

/// What the publish script needs besides the message.
#[derive(Clone, Debug)]
pub(super) struct Publisher {
    pub client: Client,
    pub link: Arc<Link>,
    pub node: Arc<str>,
    /// Log entries kept per topic (`MAXLEN ~`); 0 keeps no log.
    pub log_length: usize,
    /// Log TTL after the last publish; zero keeps it.
    pub log_ttl: Duration,
}

struct Connected {
    con: Connection,
    sha: String,
}

impl Publisher {
    /// Runs until the link stops and nothing is left to send, or the channel closes.
    pub fn run(self, incoming: Receiver<Outgoing>) {
        let mut queue: VecDeque<(u64, Outgoing)> = VecDeque::new();
        let mut number = 0u64;
        let mut connected: Option<Connected> = None;
        let mut backoff = Backoff::new();
        let mut lost = false;
        let mut idle_since = Instant::now();
        loop {
            if self.link.stopping() && (queue.is_empty() || connected.is_none()) {
                return;
            }
            let Some(ready) = connected.as_mut() else {
                match self.connect() {
                    Ok(fresh) => {
                        connected = Some(fresh);
                        self.link.publisher_up.store(true, Relaxed);
                        tracing::debug!("cluster: publisher connected");
                        if lost {
                            self.link.reconnects.fetch_add(1, Relaxed);
                            tracing::info!("cluster: publishing to Redis again");
                        }
                        backoff.reset();
                    }
                    Err(e) => {
                        self.down(&e, &mut lost);
                        backoff.wait(&self.link);
                    }
                }
                continue;
            };
            if queue.is_empty() {
                match incoming.recv_timeout(IDLE) {
                    Ok(outgoing) => {
                        number += 1;
                        queue.push_back((number, outgoing));
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        // An idle connection is checked now and then, so that the link's
                        // state is true while nothing is published.
                        if idle_since.elapsed() >= PING_EVERY {
                            idle_since = Instant::now();
                            if let Err(e) = redis::cmd("PING").query::<()>(&mut ready.con) {
                                connected = None;
                                self.down(&e, &mut lost);
                            }
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            idle_since = Instant::now();
            while queue.len() < BATCH
                && let Ok(outgoing) = incoming.try_recv()
            {
                number += 1;
                queue.push_back((number, outgoing));
            }
            let batch = queue.len().min(BATCH);
            match self.send(ready, queue.range(..batch)) {
                Ok(()) => {
                    let bytes: u64 = queue
                        .drain(..batch)
                        .map(|(_, o)| o.payload.bytes().len() as u64)
                        .sum();
                    self.link.published.fetch_add(batch as u64, Relaxed);
                    self.release(batch as u64, bytes);
                    tracing::trace!(batch, bytes, "cluster: published a batch");
                }
                Err(e) if is_link_failure(&e) => {
                    connected = None;
                    self.down(&e, &mut lost);
                }
                Err(e) => {
                    // Redis refused (out of memory, say): sending again would fail again.
                    tracing::warn!("cluster: Redis refused {batch} publishes: {e}");
                    let bytes: u64 = queue
                        .drain(..batch)
                        .map(|(_, o)| o.payload.bytes().len() as u64)
                        .sum();
                    self.link.dropped.fetch_add(batch as u64, Relaxed);
                    self.release(batch as u64, bytes);
                }
            }
        }
    }

    fn connect(&self) -> Result<Connected, RedisError> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        let sha = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(keys::PUBLISH)
            .query(&mut con)?;
        Ok(Connected { con, sha })
    }

    fn send<'a>(
        &self,
        ready: &mut Connected,
        batch: impl Iterator<Item = &'a (u64, Outgoing)>,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        let ttl = self.log_ttl.as_millis() as u64;
        for (number, outgoing) in batch {
            let topic = &*outgoing.topic;
            pipe.cmd("EVALSHA")
                .arg(&ready.sha)
                .arg(3)
                .arg(keys::seq(topic))
                .arg(keys::log(topic))
                .arg(keys::origins(topic))
                .arg(&*self.node)
                .arg(*number)
                .arg(self.log_length)
                .arg(ttl)
                .arg(format_code(outgoing.payload.format()))
                .arg(outgoing.time)
                .arg(outgoing.payload.bytes())
                .arg(keys::channel(topic))
                .arg(outgoing.provisional)
                .ignore();
        }
        pipe.query::<Value>(&mut ready.con).map(drop)
    }

    fn down(&self, error: &RedisError, lost: &mut bool) {
        if self.link.publisher_up.swap(false, Relaxed) || !*lost {
            tracing::warn!("cluster: cannot publish to Redis ({error}); buffering and retrying");
        } else {
            tracing::debug!("cluster: publisher cannot reach Redis yet ({error})");
        }
        *lost = true;
    }

    fn release(&self, messages: u64, bytes: u64) {
        self.link.buffered.fetch_sub(messages, Relaxed);
        self.link.buffered_bytes.fetch_sub(bytes, Relaxed);
    }
}

/// Whether an error means the connection is gone (or its script cache, after a Redis restart
/// that kept the socket): reconnect and send again.
pub(super) fn is_link_failure(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.code() == Some("NOSCRIPT")
}
