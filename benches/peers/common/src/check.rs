//! The end-to-end check each peer server's tests run against it, with a real client
//! (tokio-tungstenite): `/echo` echoes text and binary messages, `/t/<topic>` delivers what one
//! subscriber publishes to every subscriber of that topic and to no other, and other paths are
//! refused.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(addr: SocketAddr, path: &str) -> Result<Client, Error> {
    connect_async(format!("ws://{addr}{path}"))
        .await
        .map(|(ws, _)| ws)
}

async fn next(ws: &mut Client) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message within 5 s")
        .expect("the socket stays open")
        .expect("a valid message")
}

/// Checks every route of the server at `addr`; panics with what went wrong.
pub async fn endpoints(addr: SocketAddr) {
    let mut echo = open(addr, "/echo").await.expect("/echo opens");
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(70_000)),
    ] {
        echo.send(message.clone()).await.unwrap();
        assert_eq!(next(&mut echo).await, message);
    }
    echo.close(None).await.unwrap();

    let mut a = open(addr, "/t/news").await.expect("/t/news opens");
    let mut b = open(addr, "/t/news").await.expect("/t/news opens");
    let mut other = open(addr, "/t/sport").await.expect("/t/sport opens");
    // Subscriptions start with the socket, so whatever follows reaches all of them.
    a.send(Message::text("first")).await.unwrap();
    assert_eq!(next(&mut a).await, Message::text("first"));
    assert_eq!(next(&mut b).await, Message::text("first"));
    other.send(Message::binary(vec![9u8])).await.unwrap();
    assert_eq!(next(&mut other).await, Message::binary(vec![9u8]));
    b.send(Message::text("second")).await.unwrap();
    assert_eq!(next(&mut a).await, Message::text("second"));
    assert_eq!(next(&mut b).await, Message::text("second"));

    match open(addr, "/nowhere").await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("/nowhere: {:?}", other.map(|_| "opened")),
    }
}
