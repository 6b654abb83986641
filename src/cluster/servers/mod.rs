//! Where Redis runs and how the bridge reaches it, in each of the three ways a cluster can be
//! deployed: one server by URL, the master that Redis Sentinel names (found again after a
//! failover), or the masters of a Redis Cluster, each serving its hash slots.
//!
//! The bridge threads see two things: [`Commands`] (keyed commands, pipelined to the server that
//! holds each key, redirections followed) and [`Subscriptions`] (each topic's channel on the
//! server that carries it, read without blocking). Both are made from [`Servers`], which the
//! threads share: it holds the deployment, the credentials, and a generation that a Sentinel
//! switch bumps so that every connection made before it is dropped.

mod commands;
mod push;
mod sentinel;
mod slots;
mod subscriptions;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use redis::{
    Connection, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    RedisResult,
};

use super::{CONNECT_TIMEOUT, IO_TIMEOUT, keys};
pub(super) use commands::{Commands, Routed};
pub(super) use sentinel::watch as watch_sentinels;
pub(super) use slots::slot;
pub(super) use subscriptions::{Event, Subscriptions};

/// How a node finds Redis: what `[cluster]` names.
#[derive(Clone, PartialEq, Eq)]
pub enum Upstream {
    /// One server, by URL (`redis://host:6379`, `redis://:password@host:6379/0`, …).
    Redis(String),
    /// The master that these sentinels (`host:port`) know as `master_name`.
    Sentinel {
        /// Sentinel addresses.
        sentinels: Vec<String>,
        /// The name the sentinels monitor the master under.
        master_name: String,
    },
    /// A Redis Cluster, found from any of these nodes (`host:port`).
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may hold a password.
            Upstream::Redis(_) => f.write_str("Redis(<redacted>)"),
            Upstream::Sentinel {
                sentinels,
                master_name,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("master_name", master_name)
                .finish(),
            Upstream::Cluster(nodes) => f.debug_tuple("Cluster").field(nodes).finish(),
        }
    }
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream::Redis(String::new())
    }
}

/// Credentials for the Redis servers of Sentinel and Redis Cluster (a `redis` URL carries its
/// own), and for the sentinels.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// ACL user of the Redis servers; unset: the default user.
    pub username: Option<String>,
    /// Password of the Redis servers; unset: no `AUTH`.
    pub password: Option<String>,
    /// Password of the sentinels; unset: no `AUTH`.
    pub sentinel_password: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &shown(&self.password))
            .field("sentinel_password", &shown(&self.sentinel_password))
            .finish()
    }
}

/// A server's address: the key of its connections, and what redirections name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Node {
    pub host: String,
    pub port: u16,
}

impl Node {
    pub fn new(host: &str, port: u16) -> Node {
        Node {
            host: host.to_owned(),
            port,
        }
    }

    /// `host:port` as Redis writes it in `MOVED` and `ASK` (the port after the last colon).
    pub fn parse(text: &str) -> Option<Node> {
        let (host, port) = text.rsplit_once(':')?;
        Some(Node::new(host, port.parse().ok()?))
    }

    fn of(info: &ConnectionInfo) -> Node {
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => Node::new(host, *port),
            // A Unix socket (one server only): its path names it.
            other => Node::new(&other.to_string(), 0),
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The deployment, parsed.
#[derive(Clone, Debug)]
enum Deployment {
    Redis(ConnectionInfo),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
    },
    Cluster(Vec<ConnectionInfo>),
}

/// What the bridge threads share about Redis.
#[derive(Debug)]
pub(super) struct Servers {
    deployment: Deployment,
    /// A found server's settings (the credentials), its address to be set.
    found: ConnectionInfo,
    /// Bumped when Sentinel announces a new master: connections made before are stale.
    generation: AtomicU64,
    /// `MOVED` and `ASK` redirections followed.
    redirects: AtomicU64,
}

impl Servers {
    /// Parses the deployment (it does not connect).
    pub fn new(upstream: &Upstream, auth: &Auth) -> Result<Servers, String> {
        let deployment = match upstream {
            Upstream::Redis(url) => Deployment::Redis(
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| format!("invalid redis URL {url:?}: {e}"))?,
            ),
            Upstream::Sentinel {
                sentinels,
                master_name,
            } => {
                if master_name.is_empty() {
                    return Err("sentinels need a master_name".to_owned());
                }
                let sentinel_auth = Auth {
                    username: None,
                    password: auth.sentinel_password.clone(),
                    sentinel_password: None,
                };
                Deployment::Sentinel {
                    sentinels: entries(sentinels, "sentinels", &sentinel_auth)?,
                    master_name: master_name.clone(),
                }
            }
            Upstream::Cluster(nodes) => Deployment::Cluster(entries(nodes, "redis_cluster", auth)?),
        };
        let found = "redis://127.0.0.1"
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(settings(auth));
        Ok(Servers {
            deployment,
            found,
            generation: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
        })
    }

    /// Redis Cluster: channels are sharded (`SSUBSCRIBE`, `SPUBLISH`).
    pub fn sharded(&self) -> bool {
        matches!(self.deployment, Deployment::Cluster(_))
    }

    /// Sentinel mode: the master can change under the node.
    pub fn sentinels(&self) -> bool {
        matches!(self.deployment, Deployment::Sentinel { .. })
    }

    /// The current generation: connections made under an older one are stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Sentinel named a new master: every connection made before is stale.
    pub fn switched(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// `MOVED` and `ASK` redirections followed so far.
    pub fn redirects(&self) -> u64 {
        self.redirects.load(Relaxed)
    }

    fn redirected(&self) {
        self.redirects.fetch_add(1, Relaxed);
    }

    /// The connection settings of `node`: the URL's for the one server, else `node` with the
    /// credentials.
    fn info(&self, node: &Node) -> ConnectionInfo {
        match &self.deployment {
            Deployment::Redis(info) => info.clone(),
            _ => self
                .found
                .clone()
                .set_addr(ConnectionAddr::Tcp(node.host.clone(), node.port)),
        }
    }

    /// The Redis Cluster nodes listed (none otherwise).
    fn seeds(&self) -> &[ConnectionInfo] {
        match &self.deployment {
            Deployment::Cluster(seeds) => seeds,
            _ => &[],
        }
    }

    /// The master in Sentinel mode, as the sentinels name it now (and it confirms); the one
    /// server otherwise. `None` for Redis Cluster, which has no single master.
    fn master(&self) -> RedisResult<Option<Node>> {
        match &self.deployment {
            Deployment::Redis(info) => Ok(Some(Node::of(info))),
            Deployment::Sentinel {
                sentinels,
                master_name,
            } => sentinel::master(sentinels, master_name, |node| self.info(node)).map(Some),
            Deployment::Cluster(_) => Ok(None),
        }
    }
}

/// Connection settings with `auth`'s credentials.
fn settings(auth: &Auth) -> RedisConnectionInfo {
    let mut settings = RedisConnectionInfo::default();
    if let Some(username) = &auth.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &auth.password {
        settings = settings.set_password(password);
    }
    settings
}

/// Parses a list of `host:port` entries, each to be reached with `auth`'s credentials (which
/// have keys of their own, secrets: not in the list).
fn entries(list: &[String], key: &str, auth: &Auth) -> Result<Vec<ConnectionInfo>, String> {
    if list.is_empty() {
        return Err(format!("{key} is empty"));
    }
    list.iter()
        .map(|entry| {
            if entry.contains(['/', '@']) {
                return Err(format!(
                    "{key} entry {entry:?} is not host:port (credentials go in their own keys)"
                ));
            }
            let info = format!("redis://{entry}")
                .into_connection_info()
                .map_err(|e| format!("invalid {key} entry {entry:?}: {e}"))?;
            Ok(info.set_redis_settings(settings(auth)))
        })
        .collect()
}

/// A command connection to `info`, with the bridge's timeouts and scripts loaded.
fn connect(info: &ConnectionInfo) -> RedisResult<Connection> {
    let con = redis::Client::open(info.clone())?.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// [`connect`], then loads the bridge's scripts, so that `EVALSHA` finds them.
fn connect_with_scripts(info: &ConnectionInfo) -> RedisResult<Connection> {
    let mut con = connect(info)?;
    let mut load = redis::pipe();
    for script in keys::SCRIPTS {
        load.cmd("SCRIPT").arg("LOAD").arg(script.text).ignore();
    }
    load.exec(&mut con)?;
    Ok(con)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_host_port_and_take_the_credentials_of_their_kind() {
        let auth = Auth {
            username: Some("app".into()),
            password: Some("secret".into()),
            sentinel_password: Some("watch".into()),
        };
        let list = ["10.0.0.1:7000".to_owned(), "[::1]:7001".to_owned()];
        let parsed = entries(&list, "redis_cluster", &auth).unwrap();
        assert_eq!(Node::of(&parsed[0]), Node::new("10.0.0.1", 7000));
        assert_eq!(parsed[0].redis_settings().username(), Some("app"));
        assert_eq!(parsed[0].redis_settings().password(), Some("secret"));
        assert!(matches!(parsed[1].addr(), ConnectionAddr::Tcp(_, 7001)));
        for bad in [
            &[][..],
            &["h:x".to_owned()],
            &["redis://h:1".to_owned()],
            &["user:pw@h:1".to_owned()],
        ] {
            assert!(entries(bad, "redis_cluster", &auth).is_err(), "{bad:?}");
        }
        let upstream = Upstream::Sentinel {
            sentinels: list.to_vec(),
            master_name: "main".into(),
        };
        let servers = Servers::new(&upstream, &auth).unwrap();
        let Deployment::Sentinel { sentinels, .. } = &servers.deployment else {
            panic!("{:?}", servers.deployment);
        };
        assert_eq!(sentinels[0].redis_settings().password(), Some("watch"));
        assert_eq!(sentinels[0].redis_settings().username(), None);
        // The master it finds gets the servers' credentials.
        let master = servers.info(&Node::new("10.0.0.2", 6379));
        assert_eq!(master.redis_settings().password(), Some("secret"));
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("watch"),
            "{shown}"
        );
    }

    #[test]
    fn a_redis_url_is_never_shown() {
        let shown = format!("{:?}", Upstream::Redis("redis://:hunter2@h:1".into()));
        assert_eq!(shown, "Redis(<redacted>)");
    }

    #[test]
    fn sentinels_need_a_master_name() {
        let upstream = Upstream::Sentinel {
            sentinels: vec!["127.0.0.1:26379".into()],
            master_name: String::new(),
        };
        assert!(Servers::new(&upstream, &Auth::default()).is_err());
    }

    #[test]
    fn redirection_addresses_parse() {
        assert_eq!(
            Node::parse("127.0.0.1:7001"),
            Some(Node::new("127.0.0.1", 7001))
        );
        assert_eq!(Node::parse("::1:7001"), Some(Node::new("::1", 7001)));
        assert_eq!(Node::parse("host"), None);
        assert_eq!(Node::parse("host:x"), None);
        assert_eq!(Node::new("h", 1).to_string(), "h:1");
    }
}
