//! The examples in `examples/`, run: the echo server and the chat server started on free ports,
//! driven by the client example (the protocol crate's client role over a plain TCP stream).
//! `CLARION_TEST_IO=epoll|uring` picks the servers' backend. `cargo test` also builds each
//! example as its own binary.

mod common;

#[path = "../examples/chat.rs"]
#[allow(dead_code, reason = "the example's main is its binary's")]
mod chat;
#[path = "../examples/client.rs"]
#[allow(dead_code, reason = "the example's main is its binary's")]
mod client;
#[path = "../examples/echo.rs"]
#[allow(dead_code, reason = "the example's main is its binary's")]
mod echo;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clarion_engine::Runtime;
use clarion_protocol::MessageKind;
use client::Client;
use common::{eventually, http, io, total};

fn free_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn connect(runtime: &Runtime, path: &str) -> Client {
    let client = Client::connect(&format!("ws://{}{path}", runtime.local_addr())).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
}

fn text(message: &str) -> Option<(MessageKind, Vec<u8>)> {
    Some((MessageKind::Text, message.as_bytes().to_vec()))
}

#[test]
fn the_echo_server_returns_each_message_as_it_came() {
    let runtime = echo::start(free_port(), 2, io()).unwrap();
    let mut client = connect(&runtime, "/");
    client.send(MessageKind::Text, b"hello").unwrap();
    assert_eq!(client.recv().unwrap(), text("hello"));
    let binary: Vec<u8> = (0..=255).cycle().take(100_000).collect();
    client.send(MessageKind::Binary, &binary).unwrap();
    assert_eq!(client.recv().unwrap(), Some((MessageKind::Binary, binary)));
    client.close().unwrap();
    assert_eq!(client.recv().unwrap(), None, "the server answers the close");
    let answer = http(runtime.local_addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_chat_message_reaches_everyone_in_its_room_on_every_reactor_and_no_one_else() {
    let runtime = chat::start(free_port(), 2, io()).unwrap();
    // Members join until both reactors hold some (the kernel spreads connections over them), so
    // the room's messages cross reactors through the inboxes.
    let mut lobby = Vec::new();
    while lobby.len() < 6 || !runtime.stats().iter().all(|s| s.upgrades.load(Relaxed) > 0) {
        assert!(
            lobby.len() < 64,
            "the kernel put 64 connections on one reactor"
        );
        lobby.push(connect(&runtime, "/chat/lobby"));
        assert!(eventually(
            || total(&runtime, |s| &s.upgrades) == lobby.len() as u64
        ));
    }
    let mut kitchen = connect(&runtime, "/chat/kitchen");
    lobby[0].send(MessageKind::Text, b"hi all").unwrap();
    for member in &mut lobby {
        assert_eq!(member.recv().unwrap(), text("hi all"));
    }
    kitchen.send(MessageKind::Text, b"kitchen only").unwrap();
    assert_eq!(
        kitchen.recv().unwrap(),
        text("kitchen only"),
        "nothing from the lobby"
    );
    lobby[3].send(MessageKind::Text, b"second").unwrap();
    for member in &mut lobby {
        assert_eq!(
            member.recv().unwrap(),
            text("second"),
            "nothing from the kitchen"
        );
    }
    // A member that leaves is gone from the room; the others go on.
    lobby.pop().unwrap().close().unwrap();
    lobby[0].send(MessageKind::Text, b"third").unwrap();
    for member in &mut lobby {
        assert_eq!(member.recv().unwrap(), text("third"));
    }
}

#[test]
fn the_chat_refuses_what_is_not_a_room_and_closes_on_binary() {
    let runtime = chat::start(free_port(), 1, io()).unwrap();
    let url = format!("ws://{}/elsewhere", runtime.local_addr());
    let error = Client::connect(&url).err().expect("no room, no WebSocket");
    assert!(error.to_string().contains("Status(404)"), "{error}");
    let mut member = connect(&runtime, "/chat/lobby");
    member.send(MessageKind::Binary, b"\x00").unwrap();
    assert_eq!(member.recv().unwrap(), None, "closed (1003)");
}
