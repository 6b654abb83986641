//! The README's example is `examples/quickstart.rs`, word for word, and it runs: against the
//! real `clarion` binary it publishes its three messages and receives them back.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{PATIENCE, Server, process};

const README: &str = include_str!("../README.md");
const QUICKSTART: &str = include_str!("../examples/quickstart.rs");

/// The example's code: the file after its `//!` header.
fn quickstart_code() -> &'static str {
    let start = QUICKSTART
        .find("\nuse ")
        .expect("the example has `use` lines");
    &QUICKSTART[start + 1..]
}

#[test]
fn the_readme_shows_the_quickstart_example_as_it_is() {
    let block = format!("```rust,no_run\n{}```", quickstart_code());
    assert!(
        README.contains(&block),
        "clients/rust/README.md must show examples/quickstart.rs's code (from its first `use`) \
         in a rust,no_run block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_example_publishes_and_receives_its_messages() {
    let server = Server::start(&[]);
    let example = tokio::task::block_in_place(|| {
        process::cargo_build(
            &["-p", "clarion-client", "--example", "quickstart"],
            "examples/quickstart",
        )
    });
    let mut child = Command::new(example)
        .arg(server.url())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the example starts");
    // A bound for an example that never ends, not a timing assertion.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the quickstart example did not end within {PATIENCE:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut output)
        .expect("its output");
    assert!(status.success(), "{status}: {output}");
    let lines: Vec<&str> = output.lines().collect();
    for n in 1..=3 {
        assert!(
            lines.contains(&format!("published as #{n}").as_str()),
            "{output}"
        );
        let message = format!("chat.lobby #{n}: {{\"n\":{n}}}");
        assert!(lines.contains(&message.as_str()), "{output}");
    }
    let position = |prefix: &str| {
        lines
            .iter()
            .position(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {output}"))
    };
    assert!(
        position("Subscribed") < position("chat.lobby #"),
        "{output}"
    );
}
