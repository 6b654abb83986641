//! The feed's subscriptions: each followed topic's channel on the master that carries it (the
//! one master; in Redis Cluster the master of the topic's slot, with a sharded channel, so that
//! a message crosses only its own shard), one push connection per master, all waited on at
//! once.
//!
//! A subscribe returns once the server confirmed it (the topic's sync must read the log after
//! that, or a message could fall between the two). When a slot moves to another master, Redis
//! drops the sharded channels of the slot (an unasked `sunsubscribe`): that comes out as
//! [`Event::Moved`], and the feed subscribes again where the slot is now and syncs the topic.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisResult, ServerError, Value};

use super::super::{IO_TIMEOUT, keys};
use super::commands::{Commands, ROUNDS, moved_to};
use super::push::{self, PushConnection};
use super::{Node, Servers, slot};

/// Most values read from one connection per [`Subscriptions::wait`], so that a busy master
/// cannot keep the feed from its other work.
const READ_BUDGET: usize = 1024;

/// What came in.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::cluster) enum Event {
    /// A message on a topic's channel.
    Message { topic: Arc<str>, payload: Vec<u8> },
    /// The server dropped the topic's channel: its slot moved to another master.
    Moved(Arc<str>),
}

/// The Pub/Sub words of one kind of channel.
struct Words {
    subscribe: &'static str,
    unsubscribe: &'static str,
    subscribed: &'static [u8],
    unsubscribed: &'static [u8],
    message: &'static [u8],
}

const PLAIN: Words = Words {
    subscribe: "SUBSCRIBE",
    unsubscribe: "UNSUBSCRIBE",
    subscribed: b"subscribe",
    unsubscribed: b"unsubscribe",
    message: b"message",
};

const SHARDED: Words = Words {
    subscribe: "SSUBSCRIBE",
    unsubscribe: "SUNSUBSCRIBE",
    subscribed: b"ssubscribe",
    unsubscribed: b"sunsubscribe",
    message: b"smessage",
};

/// One master's push connection.
struct Server {
    con: PushConnection,
    /// Channels unsubscribed whose confirmations are still to come, and how many.
    leaving: HashMap<Vec<u8>, u32>,
    /// The last read stopped at the budget: values may wait in the parser, unseen by `poll`.
    more: bool,
}

/// What one pushed value was, besides what it queued.
enum Pushed {
    Other,
    Subscribed(Vec<u8>),
    Refused(ServerError),
}

/// The feed's channels and announcements.
pub(in crate::cluster) struct Subscriptions {
    servers: Arc<Servers>,
    words: &'static Words,
    by_node: HashMap<Node, Server>,
    topics: HashMap<Arc<str>, Node>,
    events: VecDeque<Event>,
}

impl Subscriptions {
    /// None yet; connections open on first use.
    pub fn new(servers: &Arc<Servers>) -> Subscriptions {
        Subscriptions {
            servers: servers.clone(),
            words: if servers.sharded() { &SHARDED } else { &PLAIN },
            by_node: HashMap::new(),
            topics: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether `topic`'s channel is subscribed.
    pub fn contains(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Subscribes the channels of `topics` on the masters that `commands` says carry them
    /// (following `MOVED`), all sent before any confirmation is read, and waits for the
    /// confirmations; messages that come meanwhile are kept.
    pub fn subscribe(&mut self, topics: &[Arc<str>], commands: &mut Commands) -> RedisResult<()> {
        let mut pending: Vec<&Arc<str>> = topics.iter().collect();
        for _ in 0..ROUNDS {
            // Per master, the topics whose confirmations are due, in the order sent (a master
            // answers its commands in order; messages may come between).
            let mut sent: Vec<(Node, VecDeque<&Arc<str>>)> = Vec::new();
            for topic in pending.drain(..) {
                let channel = keys::channel(topic);
                let node = commands.owner(slot(channel.as_bytes())).clone();
                let subscribe = redis::cmd(self.words.subscribe).arg(&channel).clone();
                self.server(&node)?.con.send(&subscribe)?;
                match sent.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, due)) => due.push_back(topic),
                    None => sent.push((node, VecDeque::from([topic]))),
                }
            }
            for (node, mut due) in sent {
                let deadline = Instant::now() + IO_TIMEOUT;
                while let Some(&topic) = due.front() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let value = self.server(&node)?.con.read(left)?;
                    match self.take(&node, value) {
                        Pushed::Subscribed(name) if name == keys::channel(topic).as_bytes() => {
                            self.topics.insert(topic.clone(), node.clone());
                            due.pop_front();
                        }
                        Pushed::Refused(error) => match moved_to(&error) {
                            Some((slot, to)) => {
                                commands.moved(slot, to);
                                pending.extend(due.pop_front());
                            }
                            None => return Err(error.into()),
                        },
                        _ => {}
                    }
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
            "Redis Cluster kept redirecting a subscribe",
        )))
    }

    /// Unsubscribes `topic`'s channel (without waiting for the confirmation).
    pub fn unsubscribe(&mut self, topic: &str) -> RedisResult<()> {
        let Some(node) = self.topics.remove(topic) else {
            return Ok(());
        };
        let channel = keys::channel(topic);
        let unsubscribe = redis::cmd(self.words.unsubscribe).arg(&channel).clone();
        let server = self.server(&node)?;
        server.con.send(&unsubscribe)?;
        *server.leaving.entry(channel.into_bytes()).or_default() += 1;
        Ok(())
    }

    /// Waits at most `timeout` for something to come in, and returns all that did.
    pub fn wait(&mut self, timeout: Duration) -> RedisResult<Vec<Event>> {
        if !self.events.is_empty() {
            return Ok(self.events.drain(..).collect());
        }
        let nodes: Vec<Node> = self.by_node.keys().cloned().collect();
        let fds: Vec<_> = nodes.iter().map(|n| self.by_node[n].con.fd()).collect();
        let buffered = self.by_node.values().any(|s| s.more);
        let wait = if buffered { Duration::ZERO } else { timeout };
        let ready = push::readable(&fds, wait)?;
        for (node, &ready) in nodes.iter().zip(&ready) {
            let Some(server) = self.by_node.get_mut(node) else {
                continue;
            };
            if !ready && !server.more {
                continue;
            }
            server.more = false;
            for read in 0.. {
                let Some(server) = self.by_node.get_mut(node) else {
                    break;
                };
                if read == READ_BUDGET {
                    server.more = true;
                    break;
                }
                let Some(value) = server.con.try_read()? else {
                    break;
                };
                if let Pushed::Refused(error) = self.take(node, value) {
                    return Err(error.into());
                }
            }
        }
        Ok(self.events.drain(..).collect())
    }

    /// Queues what `value` (pushed by `node`) carries: a message, or a channel the server
    /// dropped.
    fn take(&mut self, node: &Node, value: Value) -> Pushed {
        let parts = match value {
            Value::ServerError(error) => return Pushed::Refused(error),
            Value::Array(parts) => parts,
            _ => return Pushed::Other,
        };
        let mut parts = parts.into_iter();
        let (Some(Value::BulkString(kind)), Some(Value::BulkString(channel)), Some(third)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Pushed::Other;
        };
        let topic = std::str::from_utf8(&channel)
            .ok()
            .and_then(keys::topic_of)
            .and_then(|topic| self.topics.get_key_value(topic));
        if kind == self.words.message {
            if let (Some((topic, at)), Value::BulkString(payload)) = (topic, third)
                && at == node
            {
                let topic = topic.clone();
                self.events.push_back(Event::Message { topic, payload });
            }
        } else if kind == self.words.subscribed {
            return Pushed::Subscribed(channel);
        } else if kind == self.words.unsubscribed {
            if let Some(server) = self.by_node.get_mut(node)
                && let Some(count) = server.leaving.get_mut(&channel)
            {
                *count -= 1;
                if *count == 0 {
                    server.leaving.remove(&channel);
                }
            } else if let Some((topic, at)) = topic
                && at == node
            {
                let topic = topic.clone();
                self.topics.remove(&topic);
                self.events.push_back(Event::Moved(topic));
            }
        }
        Pushed::Other
    }

    fn server(&mut self, node: &Node) -> RedisResult<&mut Server> {
        use std::collections::hash_map::Entry;
        Ok(match self.by_node.entry(node.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Server {
                con: PushConnection::connect(&self.servers.info(node))?,
                leaving: HashMap::new(),
                more: false,
            }),
        })
    }
}
