//! Redis Sentinel: which server is the master now. The sentinels are asked in turn
//! (`SENTINEL get-master-addr-by-name`), and the server named must confirm with `ROLE` that it
//! is a master (a sentinel cut off from the others can name an old one). Sentinels announce a
//! failover on their `+switch-master` channel; [`switch_names`] reads it.

use redis::{ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};

use super::{Node, connect};

/// The channel on which sentinels announce a new master.
pub(super) const SWITCH_CHANNEL: &str = "+switch-master";

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
pub(super) fn switch_names(payload: &[u8], name: &str) -> bool {
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
