//! The receiving thread: subscribes to the Redis channels of the topics this node's reactors
//! want, syncs each from its log when it is first wanted (and after every reconnection), and
//! delivers what arrives into the hub, which posts it to the reactors' inboxes like a local
//! publish. It also runs the presence heartbeat.
//!
//! Order and exactly-once: every message carries the `seq` Redis gave it, and the hub takes only
//! the next one of each topic. A duplicate (a message the sync already delivered) is dropped; a
//! message past a gap (missed while the link was down) first has the gap filled from the log,
//! as far as the log still holds it.
//!
//! Link events (connections, topics followed and left, syncs, gap fills, resets) are logged at
//! `debug`, heartbeats at `trace`.
//!
//! One Pub/Sub connection and one command connection. The Pub/Sub read waits at most
//! [`POLL`] so that new interest (a topic's first subscriber) is acted on promptly; messages
//! themselves are read as they arrive.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::{Client, Connection, Msg, PubSub, RedisError, RedisResult, Value};

use super::link::{Backoff, Link};
use super::presence::Presence;
use super::{CONNECT_TIMEOUT, IO_TIMEOUT, keys, wire};
use clarion_engine::Mailboxes;
use clarion_pubsub::{Delivered, Epoch, Hub, Interest, Message, Post, Reactors};

/// Longest wait for a Pub/Sub message before looking for new interest.
const POLL: Duration = Duration::from_millis(10);

/// Everything the receiving thread works with.
pub(super) struct Feed {
    pub client: Client,
    pub hub: Arc<Hub>,
    pub interest: Receiver<Interest>,
    pub mailboxes: Arc<Mailboxes<Post>>,
    pub link: Arc<Link>,
    pub presence: Arc<Presence>,
    pub node: Arc<str>,
    /// Log entries to read when a topic is synced: the history a node keeps.
    pub history: usize,
    pub heartbeat: Duration,
}

/// The command connection and the sync script's hash.
struct Query {
    con: Connection,
    sync: String,
}

impl Feed {
    /// Runs sessions (connect, subscribe, sync, receive) until the link stops.
    pub fn run(self) {
        let mut backoff = Backoff::new();
        let mut lost = false;
        while !self.link.stopping() {
            if let Err(e) = self.session(&mut backoff, &mut lost) {
                if self.link.feed_up.swap(false, Relaxed) || !lost {
                    tracing::warn!("cluster: lost Redis ({e}); local delivery goes on, retrying");
                } else {
                    tracing::debug!("cluster: feed cannot reach Redis yet ({e})");
                }
                lost = true;
                self.presence.clear();
                backoff.wait(&self.link);
            }
        }
    }

    fn session(&self, backoff: &mut Backoff, lost: &mut bool) -> RedisResult<()> {
        let mut query = self.query_connection()?;
        let mut sub = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        sub.set_write_timeout(Some(IO_TIMEOUT))?;
        let epoch = shared_epoch(&mut query.con)?;
        let replace = epoch != self.hub.epoch();
        self.hub.set_epoch(epoch);
        let mut pubsub = sub.as_pubsub();
        pubsub.set_read_timeout(Some(IO_TIMEOUT))?;
        // Interest sent before now is in the hub's state, which is read next.
        while self.interest.try_recv().is_ok() {}
        let mut subscribed = HashSet::new();
        for topic in self.hub.wanted() {
            pubsub.subscribe(keys::channel(&topic))?;
            subscribed.insert(topic);
        }
        for topic in &subscribed {
            self.sync(&mut query, topic, replace)?;
        }
        self.link.feed_up.store(true, Relaxed);
        tracing::debug!(%epoch, topics = subscribed.len(), "cluster: feed connected");
        if *lost {
            self.link.reconnects.fetch_add(1, Relaxed);
            tracing::info!(%epoch, "cluster: receiving from Redis again");
        }
        backoff.reset();
        pubsub.set_read_timeout(Some(POLL))?;
        let mut next_beat = Instant::now();
        while !self.link.stopping() {
            let mut changed: Vec<Arc<str>> = Vec::new();
            while let Ok(Interest::Join(topic) | Interest::Leave(topic)) = self.interest.try_recv()
            {
                changed.push(topic);
            }
            if !changed.is_empty() {
                pubsub.set_read_timeout(Some(IO_TIMEOUT))?;
                for topic in changed {
                    self.follow(&mut pubsub, &mut query, &mut subscribed, topic)?;
                }
                pubsub.set_read_timeout(Some(POLL))?;
            }
            if Instant::now() >= next_beat {
                tracing::trace!("cluster: presence heartbeat");
                self.presence
                    .beat(&mut query.con, &self.hub, &self.node, self.heartbeat)?;
                next_beat = Instant::now() + self.heartbeat;
            }
            match pubsub.get_message() {
                Ok(message) => self.receive(&mut query, &message)?,
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn query_connection(&self) -> RedisResult<Query> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        let sync = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(keys::SYNC)
            .query(&mut con)?;
        Ok(Query { con, sync })
    }

    /// Brings the channel subscription of `topic` in line with what the hub wants now (interest
    /// messages can be stale by the time they are read), and syncs a topic that waits.
    fn follow(
        &self,
        pubsub: &mut PubSub<'_>,
        query: &mut Query,
        subscribed: &mut HashSet<Arc<str>>,
        topic: Arc<str>,
    ) -> RedisResult<()> {
        match self.hub.wants(&topic) {
            Some(live) => {
                if !subscribed.contains(&topic) {
                    tracing::debug!(topic = &*topic, "cluster: following a topic");
                    pubsub.subscribe(keys::channel(&topic))?;
                    subscribed.insert(topic.clone());
                }
                if !live {
                    self.sync(query, &topic, false)?;
                }
            }
            None => {
                if subscribed.remove(&topic) {
                    tracing::debug!(topic = &*topic, "cluster: leaving a topic");
                    pubsub.unsubscribe(keys::channel(&topic))?;
                }
            }
        }
        Ok(())
    }

    /// Reads `topic`'s last `seq` and newest log entries and hands them to the hub; tells the
    /// reactors that waited for it.
    fn sync(&self, query: &mut Query, topic: &Arc<str>, replace: bool) -> RedisResult<()> {
        let (seq, newest): (u64, Vec<Value>) = redis::cmd("EVALSHA")
            .arg(&query.sync)
            .arg(2)
            .arg(keys::seq(topic))
            .arg(keys::log(topic))
            .arg(self.history)
            .query(&mut query.con)?;
        let recent: Vec<Arc<Message>> = newest
            .iter()
            .rev()
            .filter_map(|entry| wire::decode_entry(topic, entry, &self.node))
            .map(Arc::new)
            .collect();
        let entries = recent.len();
        let waiting = self
            .hub
            .sync(topic, seq, recent, replace, |p, r| self.post(p, r));
        tracing::debug!(
            topic = &**topic,
            seq,
            entries,
            reactors_waiting = waiting.iter().count(),
            "cluster: synced a topic from Redis"
        );
        for reactor in waiting.iter() {
            self.mailboxes.post(reactor, Post::Ready(topic.clone()));
        }
        Ok(())
    }

    /// A Pub/Sub message: delivered in order, after filling any gap before it from the log.
    fn receive(&self, query: &mut Query, message: &Msg) -> RedisResult<()> {
        let Some(topic) = keys::topic_of(message.get_channel_name()) else {
            return Ok(());
        };
        let Some(message) =
            wire::decode_live(Arc::from(topic), message.get_payload_bytes(), &self.node)
        else {
            tracing::warn!(topic, "cluster: ignoring a malformed message");
            return Ok(());
        };
        self.link.received.fetch_add(1, Relaxed);
        let message = Arc::new(message);
        if let Delivered::Gap { have } = self
            .hub
            .deliver(message.clone(), false, |p, r| self.post(p, r))
        {
            let missed: Vec<Value> = redis::cmd("XRANGE")
                .arg(keys::log(topic))
                .arg(format!("{}-0", have + 1))
                .arg(format!("{}-0", message.seq() - 1))
                .query(&mut query.con)?;
            tracing::debug!(
                topic,
                after = have,
                before = message.seq(),
                read = missed.len(),
                "cluster: filling a gap from the log"
            );
            for entry in &missed {
                if let Some(old) = wire::decode_entry(message.topic(), entry, &self.node) {
                    self.link.received.fetch_add(1, Relaxed);
                    self.hub
                        .deliver(Arc::new(old), true, |p, r| self.post(p, r));
                }
            }
            self.hub.deliver(message, true, |p, r| self.post(p, r));
        }
        Ok(())
    }

    fn post(&self, post: Post, reactors: Reactors) {
        if let Post::Reset { topic, seq } = &post {
            tracing::debug!(topic = &**topic, seq, "cluster: topic renumbered by Redis");
            self.link.resets.fetch_add(1, Relaxed);
        }
        for reactor in reactors.iter() {
            self.mailboxes.post(reactor, post.clone());
        }
    }
}

/// The cluster's epoch: the one in Redis, or a new one this node sets (first node, or a Redis
/// that lost its data, whose `seq`s start over).
fn shared_epoch(con: &mut Connection) -> RedisResult<Epoch> {
    let (stored,): (String,) = redis::pipe()
        .cmd("SET")
        .arg(keys::EPOCH)
        .arg(Epoch::random().to_string())
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(keys::EPOCH)
        .query(con)?;
    Epoch::parse(&stored).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Client,
            "clarion:epoch holds no epoch",
            stored,
        ))
    })
}
