//! Redis Cluster's key space: the hash slot of a key (CRC16-XMODEM of its hash tag, modulo
//! 16384) and the map of which master serves each slot, read with `CLUSTER SLOTS`.

use redis::Value;

use super::Node;

/// Hash slots in a Redis Cluster.
pub(in crate::cluster) const SLOTS: usize = 16384;

/// CRC16-XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: of the text between its first `{` and the next `}` when that is not empty
/// (its hash tag, which keeps a topic's keys and channel together), else of the whole key.
pub(in crate::cluster) fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tag) % SLOTS as u16
}

/// Which master serves each slot.
#[derive(Clone, Debug)]
pub(in crate::cluster) struct SlotMap {
    nodes: Vec<Node>,
    /// Per slot, an index into `nodes`.
    owner: Vec<u16>,
}

impl SlotMap {
    /// The map in a `CLUSTER SLOTS` reply got from `asked` (which stands in for a master whose
    /// address the reply leaves empty).
    pub fn parse(reply: &Value, asked: &Node) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut map = SlotMap {
            nodes: Vec::new(),
            owner: vec![0; SLOTS],
        };
        let mut covered = 0;
        for range in ranges {
            let Value::Array(parts) = range else {
                return None;
            };
            let [Value::Int(start), Value::Int(end), Value::Array(master), ..] = parts.as_slice()
            else {
                return None;
            };
            let [host, Value::Int(port), ..] = master.as_slice() else {
                return None;
            };
            let host = match host {
                Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
                _ => return None,
            };
            let node = Node {
                host: if host.is_empty() || host == "?" {
                    asked.host.clone()
                } else {
                    host
                },
                port: u16::try_from(*port).ok()?,
            };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            let index = map.index_of(node);
            map.owner[start..=end].fill(index);
            covered += end - start + 1;
        }
        // Slots nobody serves (a cluster being set up) go to the first master, which answers
        // for them with a redirection or an error.
        (covered > 0).then_some(map)
    }

    /// The master serving `slot`.
    pub fn owner(&self, slot: u16) -> &Node {
        &self.nodes[usize::from(self.owner[usize::from(slot)])]
    }

    /// `slot` moved to `node` (a `MOVED` redirection).
    pub fn moved(&mut self, slot: u16, node: Node) {
        let index = self.index_of(node);
        self.owner[usize::from(slot)] = index;
    }

    fn index_of(&mut self, node: Node) -> u16 {
        let at = self
            .nodes
            .iter()
            .position(|n| *n == node)
            .unwrap_or_else(|| {
                self.nodes.push(node);
                self.nodes.len() - 1
            });
        // A cluster has at most 16384 masters (one slot each).
        at as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"a"), 15495);
        assert_eq!(slot(b"clarion:{a}"), 15495);
        assert_eq!(slot(b"clarion:{a}:seq"), 15495);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        // An empty tag hashes the whole key; only the first tag counts.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        let master = Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        Value::Array(vec![Value::Int(start), Value::Int(end), master])
    }

    #[test]
    fn the_map_follows_cluster_slots_and_redirections() {
        let asked = Node::new("10.0.0.9", 7000);
        let reply = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "", 7001),
            range(10923, 16383, "10.0.0.1", 7000),
        ]);
        let mut map = SlotMap::parse(&reply, &asked).unwrap();
        assert_eq!(*map.owner(0), Node::new("10.0.0.1", 7000));
        assert_eq!(*map.owner(5461), Node::new("10.0.0.9", 7001));
        assert_eq!(*map.owner(16383), Node::new("10.0.0.1", 7000));
        map.moved(5461, Node::new("10.0.0.2", 7002));
        assert_eq!(*map.owner(5461), Node::new("10.0.0.2", 7002));
        assert_eq!(*map.owner(5462), Node::new("10.0.0.9", 7001));
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![range(5, 4, "h", 1)]),
            Value::Array(vec![range(0, 16384, "h", 1)]),
            Value::Array(vec![range(0, 1, "h", 70000)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(1)])]),
        ] {
            assert!(SlotMap::parse(&bad, &asked).is_none(), "{bad:?}");
        }
    }
}
