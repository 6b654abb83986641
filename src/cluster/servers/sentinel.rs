//! Redis Sentinel: which server is the master now. The sentinels are asked in turn
//! (`SENTINEL get-master-addr-by-name`), and the server named must confirm with `ROLE` that it
//! is a master (a sentinel cut off from the others can name an old one). Sentinels announce a
//! failover on their `+switch-master` channel: [`watch`] listens on one of them, on a thread of
//! its own so that an unreachable sentinel never holds up delivery, and marks the connections
//! made before as stale.

use std::time::Duration;

use redis::{ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};

use super::push::PushConnection;
use super::{Deployment, Node, Servers, connect};
use crate::cluster::IO_TIMEOUT;

/// The channel on which sentinels announce a new master.
const SWITCH_CHANNEL: &str = "+switch-master";
/// How often the watch looks at its stop flag while it waits.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Wait before trying the sentinels again when none took the subscribe.
const RETRY: Duration = Duration::from_secs(1);

/// In Sentinel mode, runs until `stopping()`: listens for `+switch-master` on one sentinel after
/// another, and when one names this deployment's master, bumps the generation
/// ([`Servers::switched`]), so that the publisher and the feed reconnect to the new master even
/// if the old one still answers (demoted, not dead). Returns at once in the other modes.
pub(in crate::cluster) fn watch(servers: &Servers, stopping: impl Fn() -> bool) {
    let Deployment::Sentinel {
        sentinels,
        master_name,
    } = &servers.deployment
    else {
        return;
    };
    while !stopping() {
        for sentinel in sentinels {
            let mut con = match subscribe(sentinel) {
                Ok(con) => con,
                Err(e) => {
                    tracing::debug!("cluster: sentinel watch: {e}");
                    continue;
                }
            };
            while !stopping() {
                match con.read(STOP_CHECK) {
                    Ok(Value::Array(parts)) => {
                        if let [Value::BulkString(kind), _, Value::BulkString(payload)] = &parts[..]
                            && kind == b"message"
                            && switch_names(payload, master_name)
                        {
                            tracing::info!("cluster: Sentinel switched the master");
                            servers.switched();
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(e) => {
                        tracing::debug!("cluster: sentinel watch lost: {e}");
                        break;
                    }
                }
            }
            if stopping() {
                return;
            }
        }
        let mut left = RETRY;
        while !left.is_zero() && !stopping() {
            std::thread::sleep(STOP_CHECK);
            left = left.saturating_sub(STOP_CHECK);
        }
    }
}

/// A push connection to `sentinel`, subscribed to `+switch-master`.
fn subscribe(sentinel: &ConnectionInfo) -> RedisResult<PushConnection> {
    let mut con = PushConnection::connect(sentinel)?;
    con.send(redis::cmd("SUBSCRIBE").arg(SWITCH_CHANNEL))?;
    match con.read(IO_TIMEOUT)? {
        Value::ServerError(error) => Err(error.into()),
        _ => Ok(con),
    }
}

/// The master the first sentinel that answers names `name`, once it confirms; `info` gives the
/// connection settings of a server.
pub(super) fn master(
    sentinels: &[ConnectionInfo],
    name: &str,
    info: impl Fn(&Node) -> ConnectionInfo,
) -> RedisResult<Node> {
    let mut last = None;
    for sentinel in sentinels {
        match ask(sentinel, name, &info) {
            Ok(node) => return Ok(node),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::InvalidClientConfig, "no sentinel"))))
}

fn ask(
    sentinel: &ConnectionInfo,
    name: &str,
    info: &impl Fn(&Node) -> ConnectionInfo,
) -> RedisResult<Node> {
    let mut con = connect(sentinel)?;
    let named: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(name)
        .query(&mut con)?;
    let Some((host, port)) = named else {
        return Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "the sentinel knows no master named",
            name.to_owned(),
        )));
    };
    let node = Node::new(&host, port);
    let role: Vec<Value> = redis::cmd("ROLE").query(&mut connect(&info(&node))?)?;
    match role.first() {
        Some(Value::BulkString(role)) if role == b"master" => Ok(node),
        _ => Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "the sentinel names a server that is not a master",
            node.to_string(),
        ))),
    }
}

/// Whether a `+switch-master` message (`<name> <old ip> <old port> <new ip> <new port>`) is
/// about the master named `name`.
fn switch_names(payload: &[u8], name: &str) -> bool {
    payload.split(|&b| b == b' ').next() == Some(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_ours_only_if_it_names_our_master() {
        let message = b"main 127.0.0.1 6379 127.0.0.1 6380";
        assert!(switch_names(message, "main"));
        assert!(!switch_names(message, "mai"));
        assert!(!switch_names(b"other 127.0.0.1 1 127.0.0.1 2", "main"));
        assert!(!switch_names(b"", "main"));
    }
}
