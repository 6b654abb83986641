//! Where a topic lives in Redis: key and channel names, and the Lua scripts that make a publish,
//! a sync and a presence update atomic.
//!
//! Per topic `T` (the `{T}` hash tag keeps a topic's keys and channel in one Redis Cluster
//! slot): `clarion:{T}:seq` (the last `seq`, by `INCR`), `clarion:{T}:log` (a Stream capped
//! with `MAXLEN ~`, entry ids `<seq>-0`, fields `f` format, `t` publish time in µs since the
//! Unix epoch, `d` payload), `clarion:{T}:origins` (per node, the number of its last publish
//! taken: what makes a retried publish count once) and the Pub/Sub channel `clarion:{T}`
//! (sharded in Redis Cluster). Cluster-wide: `clarion:epoch`, `clarion:nodes` (a sorted set of
//! node ids) and `clarion:presence:<node>` (a hash, topic to local subscribers, with a TTL),
//! each a single key, so each in some slot of its own.

/// The epoch that every topic's `seq` belongs to; set once (`SET NX`) by the first node.
pub(super) const EPOCH: &str = "clarion:epoch";

/// Node ids that wrote presence recently (score: when to forget them, in ms since the epoch).
pub(super) const NODES: &str = "clarion:nodes";

const CHANNEL_PREFIX: &str = "clarion:{";

/// The Pub/Sub channel of `topic`.
pub(super) fn channel(topic: &str) -> String {
    format!("{CHANNEL_PREFIX}{topic}}}")
}

/// The topic a channel of ours carries, if it is one.
pub(super) fn topic_of(channel: &str) -> Option<&str> {
    channel.strip_prefix(CHANNEL_PREFIX)?.strip_suffix('}')
}

/// The key holding `topic`'s last `seq`.
pub(super) fn seq(topic: &str) -> String {
    format!("clarion:{{{topic}}}:seq")
}

/// The Stream holding `topic`'s recent messages.
pub(super) fn log(topic: &str) -> String {
    format!("clarion:{{{topic}}}:log")
}

/// The hash of each node's last publish number taken for `topic`.
pub(super) fn origins(topic: &str) -> String {
    format!("clarion:{{{topic}}}:origins")
}

/// The hash of `node`'s subscriber counts.
pub(super) fn presence(node: &str) -> String {
    format!("clarion:presence:{node}")
}

/// A Lua script; `EVALSHA` runs it by its SHA-1, once a connection loaded it.
#[derive(Debug)]
pub(super) struct Script {
    pub text: &'static str,
}

impl Script {
    /// The hex SHA-1 that `SCRIPT LOAD` answers and `EVALSHA` names.
    pub fn sha(&self) -> String {
        sha1_smol::Sha1::from(self.text).digest().to_string()
    }
}

/// Every script, loaded on each command connection when it opens.
pub(super) const SCRIPTS: [&Script; 3] = [&PUBLISH, &SYNC, &PRESENCE];

/// Numbers and records one publish, once: `KEYS` seq, log, origins; `ARGV` node, publish
/// number, log length (0 = no log), log TTL in ms (0 = none), format, time (µs), payload,
/// channel, provisional `seq` (0 = none), and the command that publishes (`PUBLISH`, or
/// `SPUBLISH` for a sharded channel). Returns the `seq`, or 0 when this node's publish of
/// that number was taken already (a retry after a lost reply). Live subscribers get
/// `<seq>:<format><time>:<payload>`; a message its node delivered locally with a provisional
/// `seq` (while Redis was down) names it as `<seq>/<node>/<provisional>:…`, and its log entry
/// has the field `o` = `<node>/<provisional>`, so that its node knows it.
pub(super) const PUBLISH: Script = Script {
    text: r"
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], 86400000)
local seq = redis.call('INCR', KEYS[1])
local origin = ''
if tonumber(ARGV[9]) > 0 then origin = ARGV[1] .. '/' .. ARGV[9] end
if tonumber(ARGV[3]) > 0 then
  local fields = {'f', ARGV[5], 't', ARGV[6], 'd', ARGV[7]}
  if origin ~= '' then
    table.insert(fields, 'o')
    table.insert(fields, origin)
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', unpack(fields))
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
end
local head = seq
if origin ~= '' then head = seq .. '/' .. origin end
redis.call(ARGV[10], ARGV[8], head .. ':' .. ARGV[5] .. ARGV[6] .. ':' .. ARGV[7])
return seq
",
};

/// A topic's last `seq` and its newest log entries, read together: `KEYS` seq, log; `ARGV`
/// how many entries. Returns `{seq, entries newest first}`.
pub(super) const SYNC: Script = Script {
    text: r"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) == 0 then return {seq, {}} end
return {seq, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1])}
",
};

/// Replaces a node's subscriber counts: `KEYS` its presence hash; `ARGV` the TTL in ms, then
/// topic and count pairs. One key, so that it works in any Redis Cluster slot; `HSET` takes 500
/// pairs at a time (Lua's `unpack` has a stack limit).
pub(super) const PRESENCE: Script = Script {
    text: r"
redis.call('DEL', KEYS[1])
local i = 2
while i <= #ARGV do
  local last = math.min(i + 999, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_topic_and_nothing_else() {
        let name = channel("chat.room/1");
        assert_eq!(name, "clarion:{chat.room/1}");
        assert_eq!(topic_of(&name), Some("chat.room/1"));
        assert_eq!(topic_of("clarion:{x"), None);
        assert_eq!(topic_of("other:{x}"), None);
        assert_eq!(seq("a"), "clarion:{a}:seq");
        assert_eq!(log("a"), "clarion:{a}:log");
    }

    #[test]
    fn a_script_s_sha_is_the_one_redis_gives_it() {
        // `redis-cli SCRIPT LOAD "return 1"`.
        let one = Script { text: "return 1" };
        assert_eq!(one.sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
