//! Helpers for the end-to-end tests: the real `clarion` server, the loadgen binary, JSON results.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The loadgen under test.
pub fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clarion-loadgen"))
}

/// Runs the loadgen with `args` and a `--json` file; returns its output and the parsed JSON.
pub fn run_loadgen(args: &[&str]) -> (Output, Option<serde_json::Value>) {
    let dir = std::env::temp_dir().join(format!("clarion-loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!(
        "{}.json",
        args.join("_").replace(['/', ':', '.'], "-")
    ));
    let _ = std::fs::remove_file(&json);
    let output = loadgen()
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run clarion-loadgen");
    let parsed = std::fs::read(&json)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).expect("valid JSON"));
    (output, parsed)
}

/// Describes a run for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A `clarion serve` child, killed on drop.
pub struct ClarionServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ClarionServer {
    /// Starts the server binary on a free loopback port and waits until it accepts. Beyond its
    /// production defaults: `/echo` on, publishing from clients, no per-client rates (a load
    /// generator sends as fast as it can) and room for a ramp of simultaneous handshakes.
    pub fn start(threads: usize) -> ClarionServer {
        ClarionServer::start_with(threads, &[])
    }

    /// [`ClarionServer::start`] with more flags for `clarion serve`.
    pub fn start_with(threads: usize, flags: &[&str]) -> ClarionServer {
        let binary = clarion_binary();
        let addr = free_port();
        let child = Command::new(&binary)
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--threads",
                &threads.to_string(),
                "--echo",
                "--client-publish",
                "all",
                "--message-rate",
                "0",
                "--byte-rate",
                "0",
                "--max-handshakes-per-reactor",
                "65536",
            ])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Generous: a debug server on a machine busy with builds may take seconds to start.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut child = child;
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("clarion serve exited before listening on {addr}: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "clarion serve did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ClarionServer { child, addr }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ClarionServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The `clarion` server binary of this build: `target/<profile>/clarion`, next to the directory
/// of this test binary; built with `cargo build -p clarion --bin clarion` when missing.
fn clarion_binary() -> PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = test_exe.parent().and_then(Path::parent).unwrap().to_owned();
    let binary = profile_dir.join("clarion");
    if binary.exists() {
        return binary;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "-p", "clarion", "--bin", "clarion"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target_dir);
    }
    let mut child = build
        .spawn()
        .expect("run cargo build for the clarion server");
    // `cargo test` may still hold the build lock: do not wait forever for it.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "cargo build -p clarion --bin clarion failed"
            );
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "{} is missing and building it timed out: run `cargo build -p clarion --bin clarion` first",
                binary.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        binary.exists(),
        "{} still missing after the build",
        binary.display()
    );
    binary
}

/// The keys every `--json` document has.
pub const JSON_KEYS: &[&str] = &[
    "mode",
    "connections",
    "established",
    "failed",
    "dropped",
    "failures",
    "drops",
    "retries",
    "retry_reasons",
    "closed_clean",
    "ramp_s",
    "ramp_rate",
    "duration_s",
    "hold_s",
    "warmup_s",
    "coalesce_us",
    "io",
    "ring_reads",
    "messages_sent",
    "messages_received",
    "throughput",
    "throughput_unit",
    "latency_us",
    "connect_us",
    "handshake_us",
    "cycles",
    "handshakes_per_s",
    "published",
    "subscribers",
    "delivered",
    "missing",
    "duplicates",
    "out_of_order",
    "publish_errors",
    "rounds",
    "storm",
    "close",
    "loadgen_memory",
    "loadgen_cpu",
    "server",
    "threads",
    "procs",
    "fd_limit",
];

/// Checks that every stable key is present, with the percentile keys inside the histograms.
pub fn assert_keys(json: &serde_json::Value) {
    for key in JSON_KEYS {
        assert!(json.get(key).is_some(), "missing key {key} in {json:#}");
    }
    for histogram in ["latency_us", "connect_us", "handshake_us"] {
        for key in [
            "count", "p50", "p90", "p99", "p99_9", "p99_99", "max", "mean",
        ] {
            assert!(
                json[histogram].get(key).is_some(),
                "missing {histogram}.{key}"
            );
        }
    }
    for key in [
        "user_s",
        "system_s",
        "per_message_us",
        "cores",
        "total_s",
        "saturated",
    ] {
        assert!(
            json["loadgen_cpu"].get(key).is_some(),
            "missing loadgen_cpu.{key}"
        );
    }
}
