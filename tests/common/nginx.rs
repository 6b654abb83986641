//! A real nginx (the Debian package) in front of a Clarion server, as the proxies that streams
//! exist for: `plain` is a reverse proxy with nginx's defaults (HTTP/1.0 to the upstream,
//! response buffering on, `Upgrade` not forwarded, so WebSockets cannot pass), `upgrading` the
//! usual WebSocket-capable config. One process (`master_process off`) with its own prefix in a
//! temp dir, run as the test's user, killed by PID on drop. `scripts/test.sh` installs nginx.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::free_port;

/// A running nginx with two listeners in front of one upstream.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// Plain reverse proxy, nginx's defaults: no WebSockets.
    pub plain: SocketAddr,
    /// Forwards `Upgrade`: WebSockets pass.
    pub upgrading: SocketAddr,
}

impl Nginx {
    /// Starts nginx in front of `upstream` and waits until both listeners accept.
    pub fn start(upstream: SocketAddr) -> Nginx {
        let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let upgrading = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = std::env::temp_dir().join(format!(
            "clarion-nginx-{}-{}",
            std::process::id(),
            plain.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let config = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {plain};
        location / {{ proxy_pass http://{upstream}; }}
    }}
    server {{
        listen {upgrading};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
        }}
    }}
}}
"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let binary = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or("nginx");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nginx ({e}): the proxy tests need it on PATH \
                     (apt-get install nginx; scripts/test.sh installs it)"
                )
            });
        let nginx = Nginx {
            child,
            dir,
            plain,
            upgrading,
        };
        for _ in 0..1000 {
            if [plain, upgrading]
                .iter()
                .all(|addr| TcpStream::connect(addr).is_ok())
            {
                return nginx;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nginx did not start: {}", nginx.log());
    }

    /// Its error log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
