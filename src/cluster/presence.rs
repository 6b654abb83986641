//! Subscriber counts across the cluster. Each node writes its own counts (topic to local
//! subscribers) into a hash that expires after three heartbeats, registers itself in a sorted
//! set, and reads the other nodes' hashes back; a node that dies stops refreshing its hash, so
//! its counts vanish within three heartbeats. `/topics/<topic>` adds the local count (current) to
//! the others' (as of the last heartbeat). Every command names one key, so that in Redis Cluster
//! each goes to the master of its own slot: two round trips per heartbeat in every mode.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::{FromRedisValue, RedisResult};

use super::keys;
use super::servers::{Commands, Routed};
use super::wire::unix_micros;
use clarion_pubsub::Hub;

/// How long a node stays in the node set without a heartbeat: far longer than a hash's TTL, so
/// clock differences between nodes cannot drop a live one.
const NODE_GRACE_MS: u64 = 60_000;

/// The other nodes' subscriber counts, as of the last heartbeat.
#[derive(Debug, Default)]
pub(super) struct Presence {
    elsewhere: Mutex<HashMap<String, u64>>,
}

impl Presence {
    /// Subscribers of `topic` on the other nodes.
    pub fn elsewhere(&self, topic: &str) -> u64 {
        self.map().get(topic).copied().unwrap_or(0)
    }

    /// Writes this node's counts and reads the others'.
    pub fn beat(
        &self,
        commands: &mut Commands,
        hub: &Hub,
        node: &str,
        heartbeat: Duration,
    ) -> RedisResult<()> {
        let own = keys::presence(node);
        let now_ms = unix_micros() / 1000;
        let ttl_ms = (heartbeat.as_millis() as u64 * 3).max(1);
        let mut write = redis::cmd("EVALSHA");
        write.arg(keys::PRESENCE.sha()).arg(1).arg(&own).arg(ttl_ms);
        for (topic, count) in hub.subscriber_counts() {
            write.arg(&*topic).arg(count);
        }
        let mut register = redis::cmd("ZADD");
        register
            .arg(keys::NODES)
            .arg(now_ms + NODE_GRACE_MS)
            .arg(node);
        let mut forget = redis::cmd("ZREMRANGEBYSCORE");
        forget.arg(keys::NODES).arg("-inf").arg(now_ms);
        let mut list = redis::cmd("ZRANGE");
        list.arg(keys::NODES).arg(0).arg(-1);
        let ran = commands.run(
            &[
                Routed::new(&own, write),
                Routed::new(keys::NODES, register),
                Routed::new(keys::NODES, forget),
                Routed::new(keys::NODES, list),
            ],
            0,
        )?;
        let replies = ran.ok()?;
        let nodes: Vec<String> = replies
            .last()
            .map(Vec::<String>::from_redis_value_ref)
            .transpose()?
            .unwrap_or_default();
        let reads: Vec<Routed> = nodes
            .iter()
            .filter(|n| *n != node)
            .map(|other| {
                let key = keys::presence(other);
                let mut read = redis::cmd("HGETALL");
                read.arg(&key);
                Routed::new(&key, read)
            })
            .collect();
        let mut total: HashMap<String, u64> = HashMap::new();
        for hash in commands.run(&reads, 0)?.ok()? {
            for (topic, count) in HashMap::<String, u64>::from_redis_value(hash)? {
                *total.entry(topic).or_default() += count;
            }
        }
        *self.map() = total;
        Ok(())
    }

    /// Forgets the other nodes' counts (the link is down: they would only grow stale).
    pub fn clear(&self) {
        self.map().clear();
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.elsewhere
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
