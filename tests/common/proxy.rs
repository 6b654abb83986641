//! A real nginx or HAProxy in front of the server under test, from the templates in `deploy/`,
//! on a free loopback port with a certificate from `scripts/make-cert.sh`, in a temp dir of its
//! own (config, pid, logs), stopped by PID on drop. CI installs both (`scripts/test.sh`); if one
//! is missing the test fails and says so.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, terminate};

/// A running proxy.
pub struct Proxy {
    child: Child,
    dir: PathBuf,
    /// Where clients connect (TLS).
    pub addr: SocketAddr,
}

/// Which proxy, and how it talks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// nginx, HTTP mode: `deploy/nginx.conf`, X-Forwarded-For.
    Nginx,
    /// HAProxy, HTTP mode: `deploy/haproxy.cfg`, X-Forwarded-For.
    Haproxy,
    /// nginx, stream module: `deploy/nginx-stream.conf`, PROXY protocol version 1.
    NginxStream,
    /// HAProxy, TCP mode: `deploy/haproxy-tcp.cfg`, PROXY protocol version 2.
    HaproxyTcp,
}

impl Kind {
    /// Its template, and the program that runs it.
    fn template(self) -> (&'static str, &'static str) {
        match self {
            Kind::Nginx => ("deploy/nginx.conf", "nginx"),
            Kind::Haproxy => ("deploy/haproxy.cfg", "haproxy"),
            Kind::NginxStream => ("deploy/nginx-stream.conf", "nginx"),
            Kind::HaproxyTcp => ("deploy/haproxy-tcp.cfg", "haproxy"),
        }
    }
}

/// Debian's nginx stream module (package libnginx-mod-stream).
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

impl Proxy {
    /// Starts `kind` in front of `upstream`, dropping a WebSocket silent for `read_timeout`.
    pub fn start(kind: Kind, upstream: SocketAddr, read_timeout: &str) -> Proxy {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("clarion-proxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let made = Command::new(root.join("scripts/make-cert.sh"))
            .arg(dir.join("cert"))
            .stdout(Stdio::null())
            .status()
            .expect("scripts/make-cert.sh runs (it needs openssl)");
        assert!(made.success(), "scripts/make-cert.sh failed");
        let (template, program) = kind.template();
        let cert = |file: &str| dir.join("cert").join(file).display().to_string();
        // HAProxy takes the chain and the key in one file.
        let chain = match program {
            "haproxy" => "combined.pem",
            _ => "chain.pem",
        };
        let text = std::fs::read_to_string(root.join(template)).unwrap();
        let config = text
            .replace("@PREFIX@", &dir.display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@UPSTREAM@", &upstream.to_string())
            .replace("@READ_TIMEOUT@", read_timeout)
            .replace("@CERT@", &cert(chain))
            .replace("@KEY@", &cert("key.pem"))
            .replace("@STREAM_MODULE@", STREAM_MODULE);
        assert!(!config.contains('@'), "a placeholder left in {template}");
        let conf = dir.join("proxy.conf");
        std::fs::write(&conf, config).unwrap();
        let mut command = Command::new(program);
        match program {
            "nginx" => command
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"]),
            _ => command
                .arg("-f")
                .arg(&conf)
                .arg("-p")
                .arg(dir.join("haproxy.pid"))
                .arg("-db"),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {program} ({e}): apt-get install {program} \
                     (and libnginx-mod-stream); scripts/test.sh installs them"
                )
            });
        let proxy = Proxy {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(proxy.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{program} did not start: {}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// The CA that signed the proxy's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("cert/ca.pem")
    }

    /// What the proxy logged (for failure messages).
    pub fn log(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .collect()
    }

    /// Python `websockets` clients through this proxy ([`Clients`]).
    pub fn clients(&self) -> Clients {
        Clients::start(&format!("wss://127.0.0.1:{}", self.addr.port()), &self.ca())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tests/interop/proxy_client.py`: WebSocket clients over TLS, one command per line.
pub struct Clients {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Clients {
    fn start(base: &str, ca: &Path) -> Clients {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/proxy_client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(base)
            .arg(ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (with websockets; scripts/test.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Clients {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one command and returns its answer.
    pub fn run(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "the client script died at {command:?}");
        answer.trim_end().to_owned()
    }

    /// Opens connection `name` from `source` on `path`; "101" or the refusal's status.
    pub fn open(&mut self, name: &str, source: &str, path: &str) -> String {
        self.run(&format!("open {name} {source} {path}"))
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
