//! `scripts/tune-linux.sh check` runs without root and its exit status says whether the host is
//! ready for a connection count. Only `check` runs here: `apply` changes the host.

use std::path::Path;
use std::process::{Command, Output};

const SETTINGS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "RLIMIT_NOFILE soft",
    "RLIMIT_NOFILE hard",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "RLIMIT_MEMLOCK",
];

fn run(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tune-linux.sh");
    Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/tune-linux.sh")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_lists_every_setting() {
    let out = run(&["check", "--connections", "1000"]);
    let text = stdout(&out);
    let code = out.status.code();
    assert!(matches!(code, Some(0 | 1)), "status {code:?}\n{text}");
    for name in SETTINGS {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    if Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        assert!(text.contains("net.netfilter.nf_conntrack_max"), "{text}");
    }
    if Path::new("/proc/sys/kernel/io_uring_disabled").exists() {
        assert!(text.contains("kernel.io_uring_disabled"), "{text}");
    }
    // Status 1 for 1,000 connections only when a row really says so.
    let flagged = text
        .lines()
        .any(|l| l.contains(" low ") || l.contains(" high "));
    assert_eq!(
        code == Some(1),
        flagged,
        "status and rows disagree:\n{text}"
    );
}

#[test]
fn absurd_target_is_not_ready() {
    let out = run(&["check", "--connections", "100000000"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not ready for 100000000 connections"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["bogus"][..],
        &[][..],
        &["check", "--connections", "many"][..],
        &["check", "--connections", "0"][..],
        &["check", "--frobnicate"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}
