//! Real Redis servers for the cluster tests, on free loopback ports, killed by PID on drop: a
//! single `redis-server`, a replica, Redis Sentinels (`redis-server --sentinel`), and a Redis
//! Cluster made with `redis-cli --cluster create`. CI installs redis-server and redis-cli
//! (`scripts/test.sh`); if they are missing the test fails and says so.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` (or sentinel).
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Arguments after the port and bind address.
    args: Vec<String>,
}

impl Redis {
    /// A throwaway Redis: nothing is written to disk. A replica gets its first copy at once
    /// (not after the default 5 s wait for other replicas).
    pub fn start() -> Redis {
        Redis::launch(&["--appendonly", "no", "--repl-diskless-sync-delay", "0"])
    }

    /// A Redis that keeps its data across a restart (append-only file, fsync on every write).
    pub fn persistent() -> Redis {
        Redis::launch(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A throwaway replica of `master`.
    pub fn replica_of(master: &Redis) -> Redis {
        let port = master.port.to_string();
        let mut args = vec!["--appendonly", "no", "--repl-diskless-sync-delay", "0"];
        args.extend(["--replicaof", "127.0.0.1", &port]);
        if let Some(password) = master.password() {
            args.extend(["--requirepass", password, "--masterauth", password]);
        }
        Redis::launch(&args)
    }

    /// [`Redis::start`], asking for [`PASSWORD`] (and giving it to its master, once a replica).
    pub fn guarded() -> Redis {
        Redis::launch(&[
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
        ])
    }

    /// A throwaway Redis Cluster node, not yet in a cluster, that asks for [`PASSWORD`].
    fn cluster_node() -> Redis {
        Redis::launch(&[
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
        ])
    }

    fn launch(args: &[&str]) -> Redis {
        // A cluster node also listens on its port + 10000 (the cluster bus).
        let port = if args.contains(&"--cluster-enabled") {
            free_cluster_port()
        } else {
            free_port()
        };
        let dir = std::env::temp_dir().join(format!("clarion-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--save".into(), String::new()]);
        let mut redis = Redis {
            child: None,
            port,
            dir,
            args,
        };
        redis.spawn(&[]);
        redis
    }

    fn spawn(&mut self, before: &[&str]) {
        let child = Command::new("redis-server")
            .args(before)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.args)
            .arg("--dir")
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): the cluster tests need it on PATH \
                     (apt-get install redis-server; scripts/test.sh installs it)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers a PING.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let (request, expected) = match self.password() {
            Some(password) => (
                format!("AUTH {password}\r\nPING\r\n"),
                &b"+OK\r\n+PONG\r\n"[..],
            ),
            None => ("PING\r\n".to_owned(), &b"+PONG\r\n"[..]),
        };
        let mut reply = vec![0u8; expected.len()];
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && reply == expected
    }

    /// The password it asks for, if any.
    pub fn password(&self) -> Option<&str> {
        let at = self.args.iter().position(|a| a == "--requirepass")?;
        self.args.get(at + 1).map(String::as_str)
    }

    /// `redis://[:<password>@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        let auth = self
            .password()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A command connection.
    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        let con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap();
        con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        con
    }

    /// Runs a command and returns its reply.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("{args:?} on {}: {e}", self.port))
    }

    /// Runs a command (on a server that may be changing roles, or down).
    pub fn try_query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
        con.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut con)
    }

    /// Kills it (SIGKILL: a crash, no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (and data directory).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&[]);
    }

    /// Starts it again on the same port as a replica of `master` (as an operator brings back a
    /// failed master after a failover).
    pub fn restart_as_replica_of(&mut self, master: u16) {
        self.kill();
        self.args
            .extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        self.spawn(&[]);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The password of the test's Redis servers behind Sentinel and in Redis Cluster.
pub const PASSWORD: &str = "clarion-test";
/// The password of the test's sentinels.
pub const SENTINEL_PASSWORD: &str = "clarion-watch";

/// A master, its replica and three sentinels that watch it as `main` (quorum 2, a master
/// unanswered for 1 s is down); the servers ask for [`PASSWORD`], the sentinels for
/// [`SENTINEL_PASSWORD`].
pub struct Sentinels {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<Redis>,
}

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "main";

impl Sentinels {
    /// Starts them, and returns once the replica has the master's data and every sentinel
    /// knows the replica and the other two.
    pub fn start() -> Sentinels {
        let master = Redis::guarded();
        let replica = Redis::replica_of(&master);
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let dir = std::env::temp_dir()
                    .join(format!("clarion-sentinel-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let config = dir.join("sentinel.conf");
                std::fs::write(
                    &config,
                    format!(
                        "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                         sentinel auth-pass {MASTER_NAME} {PASSWORD}\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 10000\n",
                        master.port
                    ),
                )
                .unwrap();
                let mut sentinel = Redis {
                    child: None,
                    port,
                    dir,
                    args: ["--sentinel", "--requirepass", SENTINEL_PASSWORD]
                        .map(String::from)
                        .to_vec(),
                };
                sentinel.spawn(&[config.to_str().unwrap()]);
                sentinel
            })
            .collect();
        let set = Sentinels {
            master,
            replica,
            sentinels,
        };
        let ready = |s: &Redis| {
            let info: HashMap<String, String> = s.query(&["SENTINEL", "MASTER", MASTER_NAME]);
            info["num-slaves"] == "1" && info["num-other-sentinels"] == "2"
        };
        let synced = || {
            let info: String = set.replica.query(&["INFO", "replication"]);
            info.contains("master_link_status:up")
        };
        assert!(
            wait_for(Duration::from_secs(30), || synced()
                && set.sentinels.iter().all(ready)),
            "the sentinels did not find each other and the replica"
        );
        set
    }

    /// The `[cluster]` lines that name them: the sentinels, the master's name, the passwords.
    pub fn config(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"{}\"", s.host_port()))
            .collect();
        format!(
            "sentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\n\
             password = \"{PASSWORD}\"\nsentinel_password = \"{SENTINEL_PASSWORD}\"",
            list.join(", ")
        )
    }

    /// The port of the master that the sentinels name now (each asked in turn).
    pub fn named_master(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let named: Option<(String, u16)> =
                s.query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
            named.map(|(_, port)| port)
        })
    }
}

/// A Redis Cluster of `n` masters and no replicas, slots spread evenly, that asks for
/// [`PASSWORD`].
pub struct RedisCluster {
    pub masters: Vec<Redis>,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create`, and returns once every
    /// node says the cluster is ok.
    pub fn start(n: usize) -> RedisCluster {
        let masters: Vec<Redis> = (0..n).map(|_| Redis::cluster_node()).collect();
        let status = Command::new("redis-cli")
            .args(["-a", PASSWORD, "--no-auth-warning", "--cluster", "create"])
            .args(masters.iter().map(Redis::host_port))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): it comes with redis-server"));
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { masters };
        let ok = |node: &Redis| {
            let info: String = node.query(&["CLUSTER", "INFO"]);
            let slots: Vec<redis::Value> = node.query(&["CLUSTER", "SLOTS"]);
            info.contains("cluster_state:ok") && slots.len() == n
        };
        assert!(
            wait_for(Duration::from_secs(30), || cluster.masters.iter().all(ok)),
            "the cluster did not settle"
        );
        cluster
    }

    /// The `[cluster]` lines that name it: every master, and the password.
    pub fn config(&self) -> String {
        let list: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("\"{}\"", m.host_port()))
            .collect();
        format!(
            "redis_cluster = [{}]\npassword = \"{PASSWORD}\"",
            list.join(", ")
        )
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        self.masters[0].query(&["CLUSTER", "KEYSLOT", key])
    }

    /// Which master serves `slot` now.
    pub fn owner(&self, slot: u16) -> usize {
        use redis::Value;
        let ranges: Vec<Value> = self.masters[0].query(&["CLUSTER", "SLOTS"]);
        for range in ranges {
            let Value::Array(parts) = range else {
                panic!("{range:?}");
            };
            let [Value::Int(start), Value::Int(end), Value::Array(master), ..] = &parts[..] else {
                panic!("{parts:?}");
            };
            let Value::Int(port) = master[1] else {
                panic!("{master:?}");
            };
            if (*start..=*end).contains(&i64::from(slot)) {
                return self
                    .masters
                    .iter()
                    .position(|m| i64::from(m.port) == port)
                    .unwrap();
            }
        }
        panic!("nobody serves slot {slot}");
    }

    /// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard` does:
    /// mark it importing and migrating, `MIGRATE` its keys, then give it to `to` (the target
    /// first, so that a client sent there finds it). The keys move one at a time with `pause`
    /// after each, so that traffic meets the slot with its keys split over the two masters
    /// (`TRYAGAIN`), then all moved but the slot not yet handed over (`ASK`).
    pub fn migrate(&self, slot: u16, from: usize, to: usize, pause: Duration) {
        let (source, target) = (&self.masters[from], &self.masters[to]);
        let slot = slot.to_string();
        let source_id: String = source.query(&["CLUSTER", "MYID"]);
        let target_id: String = target.query(&["CLUSTER", "MYID"]);
        let _: () = target.query(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]);
        let _: () = source.query(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]);
        let port = target.port.to_string();
        loop {
            let keys: Vec<String> = source.query(&["CLUSTER", "GETKEYSINSLOT", &slot, "1"]);
            let Some(key) = keys.first() else {
                break;
            };
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, key, "0", "5000"];
            if let Some(password) = target.password() {
                migrate.extend(["AUTH", password]);
            }
            let _: () = source.query(&migrate);
            std::thread::sleep(pause);
        }
        for node in std::iter::once(target)
            .chain(std::iter::once(source))
            .chain(
                self.masters
                    .iter()
                    .filter(|m| m.port != source.port && m.port != target.port),
            )
        {
            let _: () = node.query(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        }
    }
}

fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= u16::MAX - 10000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}
