//! Keyed commands to the server that holds each key: all to the one master (one server, or
//! Sentinel's), or in Redis Cluster to the master of each key's slot, one pipeline per master,
//! sent to all of them before any reply is read. `MOVED` updates the slot map, `ASK` sends the
//! command once more to the named master after `ASKING`, and `TRYAGAIN` (a slot half-migrated)
//! waits a little; the commands still to run go again, in their order, so that a topic's
//! publishes reach Redis in the order they were made. Connections open on first use and load
//! the bridge's scripts; any connection failing fails the whole call (the caller reconnects).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Connection, RedisResult, ServerError, Value};

use super::slots::SlotMap;
use super::{Node, Servers, connect_with_scripts};

/// Longest a `WAIT` for replicas takes, in ms: below the reply timeout, so that a slow replica
/// makes a short count, not a lost connection.
pub(in crate::cluster) const REPLICA_WAIT_MS: u64 = 1000;
/// Rounds of redirections one call follows before it gives up.
pub(super) const ROUNDS: u32 = 10;
/// Wait before a command refused with `TRYAGAIN` (a slot migrating) goes again, times the round.
const SETTLE: Duration = Duration::from_millis(20);

/// `ASKING`, encoded.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// A command and the slot of its keys (ignored with one server).
#[derive(Clone, Debug)]
pub(in crate::cluster) struct Routed {
    pub slot: u16,
    pub cmd: Cmd,
}

impl Routed {
    /// `cmd`, routed by `key`.
    pub fn new(key: &str, cmd: Cmd) -> Routed {
        Routed {
            slot: super::slot(key.as_bytes()),
            cmd,
        }
    }
}

/// What [`Commands::run`] got back.
#[derive(Debug)]
pub(in crate::cluster) struct Ran {
    /// Each command's reply (an error reply is a [`Value::ServerError`]), in order.
    pub replies: Vec<Value>,
    /// With replicas to wait for, whether each master had them acknowledge its commands.
    pub acked: bool,
}

impl Ran {
    /// The replies, or the first error among them.
    pub fn ok(self) -> RedisResult<Vec<Value>> {
        self.replies
            .into_iter()
            .map(|reply| match reply {
                Value::ServerError(error) => Err(error.into()),
                reply => Ok(reply),
            })
            .collect()
    }
}

/// Where commands go.
#[derive(Debug)]
enum Route {
    One(Node),
    Slots(SlotMap),
}

/// A thread's command connections.
pub(in crate::cluster) struct Commands {
    servers: Arc<Servers>,
    generation: u64,
    route: Route,
    connections: HashMap<Node, Connection>,
}

/// What a reply says about where its command belongs.
enum Redirect {
    Moved(u16, Node),
    Ask(Node),
    Again,
}

impl Commands {
    /// Finds the master (or, in Redis Cluster, reads the slot map from the first node listed
    /// that answers) and connects to it.
    pub fn connect(servers: &Arc<Servers>) -> RedisResult<Commands> {
        let generation = servers.generation();
        let mut connections = HashMap::new();
        let route = match servers.master()? {
            Some(master) => {
                connections.insert(
                    master.clone(),
                    connect_with_scripts(&servers.info(&master))?,
                );
                Route::One(master)
            }
            None => Route::Slots(read_slots(servers, &mut connections)?),
        };
        Ok(Commands {
            servers: servers.clone(),
            generation,
            route,
            connections,
        })
    }

    /// Sentinel named another master since these connections were made.
    pub fn stale(&self) -> bool {
        self.servers.generation() != self.generation
    }

    /// The master that serves `slot`.
    pub fn owner(&self, slot: u16) -> &Node {
        match &self.route {
            Route::One(node) => node,
            Route::Slots(map) => map.owner(slot),
        }
    }

    /// A redirection said that `slot` is served by `node` now.
    pub fn moved(&mut self, slot: u16, node: Node) {
        if let Route::Slots(map) = &mut self.route {
            map.moved(slot, node);
        }
        self.servers.redirected();
    }

    /// Checks every open connection with a `PING`.
    pub fn ping(&mut self) -> RedisResult<()> {
        for con in self.connections.values_mut() {
            redis::cmd("PING").exec(con)?;
        }
        Ok(())
    }

    /// Runs `commands`, pipelined per master. With `replicas` above 0 each master's pipeline
    /// ends with `WAIT replicas`, and [`Ran::acked`] says whether every master had them. The
    /// replies are in order; a command refused for good has its error as its reply. Fails if a
    /// connection fails, or if redirections go on for [`ROUNDS`] rounds.
    pub fn run(&mut self, commands: &[Routed], replicas: u32) -> RedisResult<Ran> {
        let mut replies = vec![Value::Nil; commands.len()];
        let mut acked = true;
        // Command index, and the master an `ASK` named for it.
        let mut pending: Vec<(usize, Option<Node>)> =
            (0..commands.len()).map(|i| (i, None)).collect();
        for round in 1..=ROUNDS {
            let mut groups: Vec<(Node, Vec<(usize, bool)>)> = Vec::new();
            for (i, asked) in pending.drain(..) {
                let asking = asked.is_some();
                let node = asked.unwrap_or_else(|| self.owner(commands[i].slot).clone());
                match groups.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, group)) => group.push((i, asking)),
                    None => groups.push((node, vec![(i, asking)])),
                }
            }
            let mut packed = Vec::new();
            for (node, group) in &groups {
                packed.clear();
                for &(i, asking) in group {
                    if asking {
                        packed.extend_from_slice(ASKING);
                    }
                    commands[i].cmd.write_packed_command(&mut packed);
                }
                if replicas > 0 {
                    let mut wait = redis::cmd("WAIT");
                    wait.arg(replicas).arg(REPLICA_WAIT_MS);
                    wait.write_packed_command(&mut packed);
                }
                self.connection(node)?.send_packed_command(&packed)?;
            }
            let mut again = false;
            for (node, group) in &groups {
                let con = self.connection(node)?;
                let mut got = Vec::with_capacity(group.len());
                for &(i, asking) in group {
                    if asking {
                        // An `ASKING` that failed leaves the command to be refused below.
                        con.recv_response()?;
                    }
                    got.push((i, con.recv_response()?));
                }
                if replicas > 0
                    && !matches!(con.recv_response()?, Value::Int(n) if n >= i64::from(replicas))
                {
                    acked = false;
                }
                for (i, reply) in got {
                    match self.redirect(&reply) {
                        None => replies[i] = reply,
                        Some(Redirect::Moved(slot, to)) => {
                            self.moved(slot, to);
                            pending.push((i, None));
                        }
                        Some(Redirect::Ask(to)) => {
                            self.servers.redirected();
                            pending.push((i, Some(to)));
                        }
                        Some(Redirect::Again) => {
                            again = true;
                            pending.push((i, None));
                        }
                    }
                }
            }
            if pending.is_empty() {
                return Ok(Ran { replies, acked });
            }
            // In their order again: a topic's publishes may have been spread over two masters.
            pending.sort_by_key(|(i, _)| *i);
            if again {
                std::thread::sleep(SETTLE * round);
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
            "Redis Cluster kept redirecting",
        )))
    }

    /// Where a reply in Redis Cluster says its command belongs, if elsewhere.
    fn redirect(&self, reply: &Value) -> Option<Redirect> {
        let Route::Slots(_) = self.route else {
            return None;
        };
        let Value::ServerError(error) = reply else {
            return None;
        };
        match error.code() {
            "MOVED" => moved_to(error).map(|(slot, node)| Redirect::Moved(slot, node)),
            "ASK" => target(error).map(|(_, node)| Redirect::Ask(node)),
            "TRYAGAIN" => Some(Redirect::Again),
            _ => None,
        }
    }

    fn connection(&mut self, node: &Node) -> RedisResult<&mut Connection> {
        Ok(match self.connections.entry(node.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(connect_with_scripts(&self.servers.info(node))?),
        })
    }
}

/// The slot and master a `MOVED` error names.
pub(super) fn moved_to(error: &ServerError) -> Option<(u16, Node)> {
    (error.code() == "MOVED").then(|| target(error)).flatten()
}

/// The slot and master in a redirection's details (`<slot> <host>:<port>`).
fn target(error: &ServerError) -> Option<(u16, Node)> {
    let (slot, node) = error.details()?.split_once(' ')?;
    Some((slot.parse().ok()?, Node::parse(node)?))
}

/// The slot map, from the first listed node that gives one; its connection is kept.
fn read_slots(
    servers: &Servers,
    connections: &mut HashMap<Node, Connection>,
) -> RedisResult<SlotMap> {
    let mut last = None;
    for seed in servers.seeds() {
        let asked = Node::of(seed);
        let read = connect_with_scripts(seed).and_then(|mut con| {
            let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
            Ok((con, reply))
        });
        match read {
            Ok((con, reply)) => match SlotMap::parse(&reply, &asked) {
                Some(map) => {
                    connections.insert(asked, con);
                    return Ok(map);
                }
                None => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "no slot map from",
                        asked.to_string(),
                    )));
                }
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no Redis Cluster node",
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(reply: &[u8]) -> ServerError {
        match redis::parse_redis_value(reply).unwrap() {
            Value::ServerError(error) => error,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn redirections_name_their_slot_and_master() {
        let moved = error(b"-MOVED 3999 127.0.0.1:6381\r\n");
        assert_eq!(moved_to(&moved), Some((3999, Node::new("127.0.0.1", 6381))));
        let ask = error(b"-ASK 3999 10.0.0.2:7000\r\n");
        assert_eq!(moved_to(&ask), None, "ASK moves nothing");
        assert_eq!(target(&ask), Some((3999, Node::new("10.0.0.2", 7000))));
        for bad in [
            &b"-MOVED\r\n"[..],
            b"-MOVED 3999\r\n",
            b"-MOVED x 127.0.0.1:6381\r\n",
            b"-MOVED 3999 nowhere\r\n",
        ] {
            assert_eq!(target(&error(bad)), None, "{bad:?}");
        }
    }
}
