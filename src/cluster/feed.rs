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
//! Command connections ([`Commands`]) and push connections ([`Subscriptions`]), one of each per
//! master. The wait for pushed messages lasts at most [`POLL`] so that new interest (a topic's
//! first subscriber) is acted on promptly; messages themselves are read as they arrive. A topic
//! whose Redis Cluster slot moved is subscribed again on its new master and synced, which fills
//! what was published there in between from the log. In Sentinel mode a new master (announced
//! by the sentinels, see [`super::servers::watch_sentinels`]) or a connection lost ends the
//! session, and the next one asks the sentinels for the master.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::{FromRedisValue, RedisError, RedisResult, Value};

use super::link::{Backoff, Link};
use super::presence::Presence;
use super::servers::{Commands, Event, Routed, Servers, Subscriptions};
use super::{keys, wire};
use clarion_engine::Mailboxes;
use clarion_pubsub::{Delivered, Epoch, Hub, Interest, Message, Post, Reactors};

/// Longest wait for a Pub/Sub message before looking for new interest.
const POLL: Duration = Duration::from_millis(10);
/// How often a feed held back by full inboxes looks again.
const ROOM_CHECK: Duration = Duration::from_millis(1);

/// Everything the receiving thread works with.
pub(super) struct Feed {
    pub servers: Arc<Servers>,
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

/// A session's connections.
struct Session {
    commands: Commands,
    subscriptions: Subscriptions,
    /// The sync script's hash.
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
        let mut session = Session {
            commands: Commands::connect(&self.servers)?,
            subscriptions: Subscriptions::new(&self.servers),
            sync: keys::SYNC.sha(),
        };
        let epoch = shared_epoch(&mut session.commands)?;
        let replace = epoch != self.hub.epoch();
        self.hub.set_epoch(epoch);
        // Interest sent before now is in the hub's state, which is read next.
        while self.interest.try_recv().is_ok() {}
        let wanted = self.hub.wanted();
        session
            .subscriptions
            .subscribe(&wanted, &mut session.commands)?;
        self.sync(&mut session, &wanted, replace)?;
        self.link.feed_up.store(true, Relaxed);
        tracing::debug!(%epoch, topics = wanted.len(), "cluster: feed connected");
        if *lost {
            self.link.reconnects.fetch_add(1, Relaxed);
            tracing::info!(%epoch, "cluster: receiving from Redis again");
        }
        backoff.reset();
        let mut next_beat = Instant::now();
        while !self.link.stopping() {
            if session.commands.stale() {
                return Err(switched());
            }
            let mut changed: Vec<Arc<str>> = Vec::new();
            while let Ok(Interest::Join(topic) | Interest::Leave(topic)) = self.interest.try_recv()
            {
                changed.push(topic);
            }
            self.follow(&mut session, changed)?;
            if Instant::now() >= next_beat {
                tracing::trace!("cluster: presence heartbeat");
                self.presence
                    .beat(&mut session.commands, &self.hub, &self.node, self.heartbeat)?;
                next_beat = Instant::now() + self.heartbeat;
            }
            let mut moved = Vec::new();
            for event in session.subscriptions.wait(POLL)? {
                match event {
                    Event::Message { topic, payload } => {
                        self.receive(&mut session, topic, &payload)?;
                    }
                    Event::Moved(topic) => {
                        tracing::debug!(%topic, "cluster: the topic's slot moved");
                        moved.push(topic);
                    }
                }
            }
            self.follow(&mut session, moved)?;
        }
        Ok(())
    }

    /// Brings the channel subscriptions of `topics` in line with what the hub wants now
    /// (interest messages can be stale by the time they are read), and syncs the topics that
    /// wait or were subscribed again: all subscribes, then all syncs, each pipelined.
    fn follow(&self, session: &mut Session, topics: Vec<Arc<str>>) -> RedisResult<()> {
        let mut subscribe = Vec::new();
        let mut sync = Vec::new();
        let mut seen = HashSet::new();
        for topic in topics {
            if !seen.insert(topic.clone()) {
                continue;
            }
            match self.hub.wants(&topic) {
                Some(live) => {
                    let fresh = !session.subscriptions.contains(&topic);
                    if fresh {
                        tracing::debug!(topic = &*topic, "cluster: following a topic");
                        subscribe.push(topic.clone());
                    }
                    if fresh || !live {
                        sync.push(topic);
                    }
                }
                None => {
                    if session.subscriptions.contains(&topic) {
                        tracing::debug!(topic = &*topic, "cluster: leaving a topic");
                    }
                    session.subscriptions.unsubscribe(&topic)?;
                }
            }
        }
        session
            .subscriptions
            .subscribe(&subscribe, &mut session.commands)?;
        self.sync(session, &sync, false)
    }

    /// Reads each topic's last `seq` and newest log entries (one pipeline per master) and hands
    /// them to the hub; tells the reactors that waited for a topic.
    fn sync(&self, session: &mut Session, topics: &[Arc<str>], replace: bool) -> RedisResult<()> {
        let reads: Vec<Routed> = topics
            .iter()
            .map(|topic| {
                let seq_key = keys::seq(topic);
                let mut sync = redis::cmd("EVALSHA");
                sync.arg(&session.sync)
                    .arg(2)
                    .arg(&seq_key)
                    .arg(keys::log(topic))
                    .arg(self.history);
                Routed::new(&seq_key, sync)
            })
            .collect();
        let replies = session.commands.run(&reads, 0)?.ok()?;
        for (topic, reply) in topics.iter().zip(replies) {
            let (seq, newest) = <(u64, Vec<Value>)>::from_redis_value(reply)?;
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
        }
        Ok(())
    }

    /// A Pub/Sub message: delivered in order, after filling any gap before it from the log.
    fn receive(&self, session: &mut Session, topic: Arc<str>, payload: &[u8]) -> RedisResult<()> {
        let Some(message) = wire::decode_live(topic.clone(), payload, &self.node) else {
            tracing::warn!(%topic, "cluster: ignoring a malformed message");
            return Ok(());
        };
        self.link.received.fetch_add(1, Relaxed);
        self.wait_for_room();
        let message = Arc::new(message);
        if let Delivered::Gap { have } = self
            .hub
            .deliver(message.clone(), false, |p, r| self.post(p, r))
        {
            let log = keys::log(&topic);
            let mut range = redis::cmd("XRANGE");
            range
                .arg(&log)
                .arg(format!("{}-0", have + 1))
                .arg(format!("{}-0", message.seq() - 1));
            let replies = session.commands.run(&[Routed::new(&log, range)], 0)?.ok()?;
            let missed = Vec::<Value>::from_redis_value(first(replies))?;
            tracing::debug!(
                %topic,
                after = have,
                before = message.seq(),
                read = missed.len(),
                "cluster: filling a gap from the log"
            );
            for entry in &missed {
                if let Some(old) = wire::decode_entry(&topic, entry, &self.node) {
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
        let weight = match &post {
            Post::Message(message) => message.memory(),
            _ => size_of::<Post>(),
        };
        for reactor in reactors.iter() {
            self.mailboxes.post_weighed(reactor, post.clone(), weight);
        }
    }

    /// Waits (reading nothing more from Redis) while a reactor's inbox is full: Redis numbered
    /// the message already, so it cannot be refused, and the backlog stays in Redis's output
    /// buffer instead of this node's memory (past Redis's own limit Redis drops the
    /// subscription, and the next session syncs from the log).
    fn wait_for_room(&self) {
        let reactors = self.mailboxes.len();
        while !self.link.stopping() && !(0..reactors).all(|r| self.mailboxes.has_room(r)) {
            std::thread::sleep(ROOM_CHECK);
        }
    }
}

/// Why a session ended when Sentinel named another master.
fn switched() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Io,
        "Sentinel named another master; connecting to it",
    ))
}

/// The first of some replies (`Nil` if none).
fn first(replies: Vec<Value>) -> Value {
    replies.into_iter().next().unwrap_or(Value::Nil)
}

/// The cluster's epoch: the one in Redis, or a new one this node sets (first node, or a Redis
/// that lost its data, whose `seq`s start over).
fn shared_epoch(commands: &mut Commands) -> RedisResult<Epoch> {
    let mut set = redis::cmd("SET");
    set.arg(keys::EPOCH)
        .arg(Epoch::random().to_string())
        .arg("NX");
    let mut get = redis::cmd("GET");
    get.arg(keys::EPOCH);
    let ran = commands.run(
        &[Routed::new(keys::EPOCH, set), Routed::new(keys::EPOCH, get)],
        0,
    )?;
    let stored = String::from_redis_value(first(ran.ok()?.split_off(1)))?;
    Epoch::parse(&stored).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Client,
            "clarion:epoch holds no epoch",
            stored,
        ))
    })
}
