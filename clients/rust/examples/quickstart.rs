//! The README's example, kept here so that it builds and runs in the tests
//! (`tests/readme.rs` checks the README shows this file's code and runs it against the real
//! server): subscribe, publish three messages, print them as they come back, close.
//!
//! ```sh
//! cargo run --release -- serve &
//! cargo run -p clarion-client --example quickstart   # or give another ws://HOST:PORT/ws
//! ```

use clarion_client::{Client, Data, Event, Options};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1);
    let url = url.as_deref().unwrap_or("ws://127.0.0.1:9001/ws");
    let client = Client::connect(url, Options::default())?;
    let mut events = client.events();
    client.subscribe("chat.lobby", None);
    for n in 1..=3 {
        // Queued until the client is connected, then resolved by the server's ack.
        let ack = client.publish("chat.lobby", json!({ "n": n })).await?;
        println!("published as #{}", ack.seq.unwrap_or_default());
    }
    let mut received = 0;
    while let Some(event) = events.next().await {
        match event {
            Event::Message {
                topic,
                seq,
                data: Data::Json(value),
            } => {
                println!("{topic} #{seq}: {value}");
                received += 1;
                if received == 3 {
                    break;
                }
            }
            // After a reconnection the subscription resumes from its last seq; when the server
            // no longer has what was missed, the application is told to reload.
            Event::Subscribed {
                topic,
                resumed: true,
                recovered: false,
                ..
            } => {
                println!("{topic}: messages were missed while away; reload its state");
            }
            other => println!("{other:?}"),
        }
    }
    client.close().await;
    Ok(())
}
