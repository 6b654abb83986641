//! Subscriber counts across the cluster. Each node writes its own counts (topic to local
//! subscribers) into a hash that expires after three heartbeats, registers itself in a sorted
//! set, and reads the other nodes' hashes back; a node that dies stops refreshing its hash, so
//! its counts vanish within three heartbeats. `/topics/<topic>` adds the local count (current) to
//! the others' (as of the last heartbeat).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::{Connection, RedisResult};

use super::keys;
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
        con: &mut Connection,
        hub: &Hub,
        node: &str,
        heartbeat: Duration,
    ) -> RedisResult<()> {
        let own = keys::presence(node);
        let now_ms = unix_micros() / 1000;
        let ttl_ms = (heartbeat.as_millis() as u64 * 3).max(1);
        let counts = hub.subscriber_counts();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(&own).ignore();
        if !counts.is_empty() {
            let hset = pipe.cmd("HSET").arg(&own);
            for (topic, count) in &counts {
                hset.arg(&**topic).arg(*count);
            }
            hset.ignore();
        }
        pipe.cmd("PEXPIRE").arg(&own).arg(ttl_ms).ignore();
        pipe.cmd("ZADD")
            .arg(keys::NODES)
            .arg(now_ms + NODE_GRACE_MS)
            .arg(node)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(keys::NODES)
            .arg("-inf")
            .arg(now_ms)
            .ignore();
        pipe.cmd("ZRANGE").arg(keys::NODES).arg(0).arg(-1);
        let (nodes,): (Vec<String>,) = pipe.query(con)?;
        let others: Vec<&String> = nodes.iter().filter(|n| *n != node).collect();
        let mut read = redis::pipe();
        for other in &others {
            read.cmd("HGETALL").arg(keys::presence(other));
        }
        let hashes: Vec<HashMap<String, u64>> = if others.is_empty() {
            Vec::new()
        } else {
            read.query(con)?
        };
        let mut total: HashMap<String, u64> = HashMap::new();
        for (topic, count) in hashes.into_iter().flatten() {
            *total.entry(topic).or_default() += count;
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
