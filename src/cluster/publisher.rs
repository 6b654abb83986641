//! The publishing thread: takes publishes from the reactors through a channel and hands them to
//! Redis in pipelined batches, through the publish script (which numbers them).
//!
//! While Redis is unreachable publishes stay queued, in order, and the thread reconnects with
//! back-off; the reactors refuse new ones once the queue holds `buffer_bytes` (see
//! [`super::Cluster::publish`]). A batch whose replies were lost is sent again: each publish
//! carries this node's id and its own number, and the script takes each number once. With
//! `min_replicas_ack`, each master's pipeline ends with `WAIT`, and a batch stays queued (and is
//! sent again, which the script takes as already done) until the replicas have it: a failover
//! to a replica that missed it then gets it from the queue.
//!
//! At shutdown ([`super::Cluster::finish`]) the thread sends what is queued until the drain's
//! deadline, reconnecting if it must; what is left then is counted as dropped and logged: an
//! acknowledged publish is sent or reported lost, never silently.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{RedisError, Value};

use super::keys;
use super::link::{Backoff, Link};
use super::servers::{Commands, Routed, Servers};
use super::wire::format_code;
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

impl Outgoing {
    /// Bytes a publish of `payload` to `topic` takes while it waits: the record, its topic name
    /// (with the `Arc`'s counts) and its payload. What `buffer_bytes` counts, so that empty
    /// payloads are not free.
    pub fn memory(topic: &str, payload: &Payload) -> usize {
        size_of::<Outgoing>() + 2 * size_of::<usize>() + topic.len() + payload.memory()
    }
}

/// How long the thread pauses between reconnections while it flushes at shutdown (the back-off
/// is cut short once stopping).
const FLUSH_RETRY: Duration = Duration::from_millis(50);

/// What the publish script needs besides the message.
#[derive(Debug)]
pub(super) struct Publisher {
    pub servers: Arc<Servers>,
    pub link: Arc<Link>,
    pub node: Arc<str>,
    /// Log entries kept per topic (`MAXLEN ~`); 0 keeps no log.
    pub log_length: usize,
    /// Log TTL after the last publish; zero keeps it.
    pub log_ttl: Duration,
    /// Replicas that must acknowledge a batch (`WAIT`) before it leaves the queue.
    pub replicas: u32,
}

/// What became of a batch.
enum Sent {
    /// Redis took every publish but `refused` (those it answered with an error for good).
    Taken { refused: u64 },
    /// Redis ran it, but not enough replicas acknowledged it in time.
    Unreplicated,
}

impl Publisher {
    /// Runs until the link stops and nothing is left to send, or the channel closes.
    pub fn run(self, incoming: Receiver<Outgoing>) {
        let mut queue: VecDeque<(u64, Outgoing)> = VecDeque::new();
        let mut number = 0u64;
        let mut connected: Option<Commands> = None;
        let sha = keys::PUBLISH.sha();
        let mut backoff = Backoff::new();
        let mut lost = false;
        let mut idle_since = Instant::now();
        loop {
            if self.link.stopping() {
                let nothing_left = queue.is_empty() && incoming.is_empty();
                let due = self
                    .link
                    .flush_until
                    .get()
                    .is_none_or(|&deadline| Instant::now() >= deadline);
                if nothing_left || due {
                    return self.give_up(queue.len() + incoming.len(), &queue, &incoming);
                }
            }
            let Some(ready) = connected.as_mut() else {
                if self.link.stopping() && lost {
                    std::thread::sleep(FLUSH_RETRY);
                }
                match Commands::connect(&self.servers) {
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
                let idle = if self.link.stopping() {
                    FLUSH_RETRY
                } else {
                    IDLE
                };
                match incoming.recv_timeout(idle) {
                    Ok(outgoing) => {
                        number += 1;
                        queue.push_back((number, outgoing));
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        // An idle connection is checked now and then, so that the link's
                        // state is true while nothing is published.
                        if idle_since.elapsed() >= PING_EVERY {
                            idle_since = Instant::now();
                            if let Err(e) = ready.ping() {
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
            // Checked right before sending: a master that Sentinel replaced may still take
            // writes (until it is demoted), and they would be lost with it.
            if ready.stale() {
                connected = None;
                tracing::info!("cluster: Sentinel named another master; publishing there");
                continue;
            }
            let batch = queue.len().min(BATCH);
            match self.send(ready, &sha, queue.range(..batch)) {
                Ok(Sent::Taken { refused }) => {
                    if refused > 0 {
                        // Out of memory, say: sending them again would fail again.
                        tracing::warn!("cluster: Redis refused {refused} publishes");
                        self.link.dropped.fetch_add(refused, Relaxed);
                    }
                    let bytes: u64 = queue
                        .drain(..batch)
                        .map(|(_, o)| Outgoing::memory(&o.topic, &o.payload) as u64)
                        .sum();
                    self.link
                        .published
                        .fetch_add(batch as u64 - refused, Relaxed);
                    self.release(batch as u64, bytes);
                    tracing::trace!(batch, bytes, "cluster: published a batch");
                }
                Ok(Sent::Unreplicated) => {
                    // Kept: sent again (a no-op for what Redis took) until replicas have it.
                    self.link.replica_timeouts.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    connected = None;
                    self.down(&e, &mut lost);
                }
            }
        }
    }

    /// The thread's end: `left` publishes were acknowledged but not sent (the drain's deadline
    /// passed, or no flush was asked for): counted as dropped, and logged.
    fn give_up(
        &self,
        left: usize,
        queue: &VecDeque<(u64, Outgoing)>,
        incoming: &Receiver<Outgoing>,
    ) {
        if left == 0 {
            return;
        }
        let bytes: usize = queue
            .iter()
            .map(|(_, o)| o)
            .chain(incoming.try_iter().collect::<Vec<_>>().iter())
            .map(|o| Outgoing::memory(&o.topic, &o.payload))
            .sum();
        self.link.dropped.fetch_add(left as u64, Relaxed);
        self.link.lost_at_exit.store(left as u64, Relaxed);
        self.release(left as u64, bytes as u64);
        tracing::error!(
            lost = left,
            "cluster: {left} acknowledged publishes could not be sent to Redis before the \
             drain timeout; they are lost"
        );
    }

    /// Sends a batch; fails (keeping it queued) if a connection failed or a master asks for a
    /// reconnection (see [`is_link_failure`]).
    fn send<'a>(
        &self,
        ready: &mut Commands,
        sha: &str,
        batch: impl Iterator<Item = &'a (u64, Outgoing)>,
    ) -> Result<Sent, RedisError> {
        let ttl = self.log_ttl.as_millis() as u64;
        let publish = if self.servers.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let commands: Vec<Routed> = batch
            .map(|(number, outgoing)| {
                let topic = &*outgoing.topic;
                let seq = keys::seq(topic);
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha)
                    .arg(3)
                    .arg(&seq)
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
                    .arg(publish);
                Routed::new(&seq, cmd)
            })
            .collect();
        let ran = ready.run(&commands, self.replicas)?;
        let mut refused = 0;
        for reply in ran.replies {
            if let Value::ServerError(error) = reply {
                let error = RedisError::from(error);
                if is_link_failure(&error) {
                    return Err(error);
                }
                refused += 1;
            }
        }
        Ok(if ran.acked {
            Sent::Taken { refused }
        } else {
            Sent::Unreplicated
        })
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

/// Whether an error reply means the connection's server is not (or no longer) the one to send
/// to, so that the thread should reconnect and send again: its script cache is gone (a restart
/// that kept the socket), it is a replica now (`READONLY`, after a failover), it is loading or
/// cut off from its cluster, or Redis Cluster kept redirecting.
fn is_link_failure(error: &RedisError) -> bool {
    matches!(
        error.code(),
        Some(
            "NOSCRIPT"
                | "READONLY"
                | "LOADING"
                | "MASTERDOWN"
                | "CLUSTERDOWN"
                | "TRYAGAIN"
                | "MOVED"
                | "ASK"
        )
    )
}
