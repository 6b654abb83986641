//! A small subscriber: prints every event of the topics given, across restarts and cuts.
//!
//! ```sh
//! clarion serve &
//! cargo run -p clarion-client --example subscriber -- ws://127.0.0.1:9001/ws chat.lobby news
//! curl -X POST localhost:9001/publish/chat.lobby -d '{"text":"hi"}'
//! ```
//!
//! With `CLARION_TOKEN` set, it connects with that token; with `CLARION_CA` (a PEM file), a
//! `wss://` server may also have a certificate from that CA (`scripts/make-cert.sh`'s
//! `ca.pem`). Ctrl-C closes it.

use clarion_client::{Client, Data, Event, Options};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001/ws".to_owned());
    let topics: Vec<String> = args.collect();
    let mut options = Options::default();
    if let Ok(token) = std::env::var("CLARION_TOKEN") {
        options = options.token(token);
    }
    let trusted = match std::env::var("CLARION_CA") {
        Ok(ca) => options.tls.add_ca_file(ca),
        Err(_) => Ok(()),
    };
    let client = match trusted.and_then(|()| Client::connect(&url, options)) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("subscriber: {e}");
            std::process::exit(2);
        }
    };
    let mut events = client.events();
    for topic in &topics {
        client.subscribe(topic, None);
    }
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c() => {
                client.close().await;
                return;
            }
        };
        let Some(event) = event else { return };
        match event {
            Event::Message { topic, seq, data } => match data {
                Data::Json(value) => println!("{topic} #{seq} {value}"),
                Data::Binary(bytes) => println!("{topic} #{seq} <{} bytes>", bytes.len()),
            },
            Event::Subscribed {
                topic,
                resumed: true,
                recovered: false,
                seq,
                ..
            } => println!("{topic}: resubscribed at #{seq}; messages were missed while away"),
            Event::Disconnected {
                code,
                reason,
                will_retry,
                retry_in,
                ..
            } => match (will_retry, retry_in) {
                (true, Some(delay)) => {
                    println!("disconnected ({code} {reason}); retry in {delay:?}")
                }
                _ => println!("disconnected ({code} {reason}); stopped"),
            },
            other => println!("{other:?}"),
        }
    }
}
