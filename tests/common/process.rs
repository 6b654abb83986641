//! A `clarion serve` process for end-to-end tests, on std and libc alone, so that the tests of
//! other workspace crates (the Rust client's) include this file by path and run the same server
//! the same way.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The backend under test, `CLARION_TEST_IO=epoll|uring`; `None` for whatever `auto` picks.
pub fn io_name() -> Option<&'static str> {
    match std::env::var("CLARION_TEST_IO").as_deref() {
        Ok("epoll") => Some("epoll"),
        Ok("uring") => Some("uring"),
        Ok(other) if !other.is_empty() => panic!("CLARION_TEST_IO={other}: use epoll or uring"),
        _ => None,
    }
}

/// The `clarion` binary: Cargo's for the root crate's tests; for another crate's tests the one
/// beside their own executable (`target/<profile>/clarion`), built first if missing or stale.
pub fn binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_clarion") {
        return PathBuf::from(path);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| cargo_build(&["-p", "clarion", "--bin", "clarion"], "clarion"))
        .clone()
}

/// Runs `cargo build --quiet ARGS` in the profile of the running test (debug or release) and
/// returns `target/<profile>/<built>`: for what Cargo does not hand a test (another package's
/// binary, an example).
pub fn cargo_build(args: &[&str], built: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    build.arg("build").arg("--quiet").args(args);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build {args:?} failed");
    profile_dir.join(built)
}

/// A loopback port that was free a moment ago (for servers that must come back on the same
/// port, or that cannot report theirs).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What the end-to-end tests exercise beyond the production defaults, as environment
/// variables: `/echo`, publishing from clients, no per-client rates (tests send as fast as they
/// can; the limits have tests of their own in `tests/hostile.rs`), and room for many clients
/// connecting at once.
pub const TEST_ENV: &[(&str, &str)] = &[
    ("CLARION_ECHO", "true"),
    ("CLARION_CLIENT_PUBLISH", "all"),
    ("CLARION_MESSAGE_RATE", "0"),
    ("CLARION_BYTE_RATE", "0"),
    ("CLARION_MAX_HANDSHAKES_PER_REACTOR", "65536"),
];

/// Runs the `clarion` binary with `serve` and `args` (which should listen on port 0) and
/// returns it with the address from its "listening on" log line (other threads, such as the
/// cluster bridge, may log before it); the rest of its log is drained.
pub fn spawn_clarion(args: &[&str]) -> (std::process::Child, SocketAddr) {
    Clarion::start(args, &[]).into_parts()
}

/// Longest wait for a log line or a notification: a bound for a server that never sends it,
/// not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `clarion serve` process and its log, line by line. Killed when dropped, unless
/// taken apart with [`Clarion::into_parts`].
pub struct Clarion {
    child: Option<std::process::Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin listener listens (on a free port unless the test sets `admin_listen`).
    pub admin: Option<SocketAddr>,
    lines: std::sync::mpsc::Receiver<String>,
    /// The lines read so far.
    pub log: Vec<String>,
}

impl Clarion {
    /// Runs `clarion serve ARGS` with `env` added to the environment (and `CLARION_IO` set to
    /// the backend under test, when one is chosen), and waits for its "listening on" line.
    /// What the tests exercise beyond the production defaults is on ([`TEST_ENV`]); a test's
    /// own `env` or flags win.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Clarion {
        Clarion::launch(args, &[TEST_ENV, env].concat())
    }

    /// [`Clarion::start`] with the production defaults: only `args` and `env` change them.
    pub fn production(args: &[&str], env: &[(&str, &str)]) -> Clarion {
        Clarion::launch(args, env)
    }

    fn launch(args: &[&str], env: &[(&str, &str)]) -> Clarion {
        // `CLARION_TEST_BIN` runs another build (to see a test fail without the fix it checks).
        let bin = std::env::var_os("CLARION_TEST_BIN").map_or_else(binary, PathBuf::from);
        let mut command = std::process::Command::new(bin);
        command.arg("serve").args(args);
        // The test's own variables are no settings: passed on, they would only be warned about.
        command.env_remove("CLARION_TEST_IO");
        command.env_remove("CLARION_TEST_BIN");
        if let Some(io) = io_name() {
            command.env("CLARION_IO", io);
        }
        // A free port rather than the default 9011, which parallel tests would share; below the
        // test's own flags and variables.
        command.env("CLARION_ADMIN_LISTEN", "127.0.0.1:0");
        command.envs(env.iter().copied());
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("clarion starts");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        // Reads to the end, so the server never blocks on a full pipe, whoever listens.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = send.send(line);
            }
        });
        let mut clarion = Clarion {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            lines,
            log: Vec::new(),
        };
        let Some(line) = clarion.try_wait_for("listening on ") else {
            panic!("no address in {:?}", clarion.log);
        };
        clarion.addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let admin_off = args.contains(&"off")
            || env
                .iter()
                .any(|(name, value)| *name == "CLARION_ADMIN_LISTEN" && *value == "off");
        if !admin_off {
            let line = clarion.wait_for("admin listener on ");
            clarion.admin = line.split("admin listener on ").nth(1).and_then(|rest| {
                rest.split(':')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
                    .parse()
                    .ok()
            });
        }
        clarion
    }

    /// The next log line that contains `needle` (the lines before it are kept in `log`).
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.try_wait_for(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {:#?}", self.log))
    }

    /// [`Clarion::wait_for`], `None` if the log ends or stays silent for [`PATIENCE`].
    pub fn try_wait_for(&mut self, needle: &str) -> Option<String> {
        loop {
            let line = self.lines.recv_timeout(PATIENCE).ok()?;
            self.log.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) on the child we spawned, by its PID.
        unsafe { libc::kill(pid, signal) };
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.as_mut().unwrap().wait().unwrap()
    }

    /// The process and its address; its log goes on being drained.
    pub fn into_parts(mut self) -> (std::process::Child, SocketAddr) {
        (self.child.take().unwrap(), self.addr)
    }
}

/// Stops a spawned process that has children of its own: SIGTERM first, so that it stops them
/// (nginx's master leaves its workers running, and holding its ports, when it is killed), then
/// SIGKILL if it has not exited within 5 s.
pub fn terminate(child: &mut std::process::Child) {
    // SAFETY: kill(2) on the child we spawned, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..500 {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Clarion {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
