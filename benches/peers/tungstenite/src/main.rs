//! Clarion's `/echo` and `/t/<topic>` on tokio-tungstenite, written the way its examples are:
//! a task per connection, `StreamExt::next` and `SinkExt::send`, and a `tokio::select!` between
//! the socket and the topic's broadcast receiver. A published message is one `Message` whose
//! payload (`Bytes`) every subscriber shares; tungstenite frames it once per subscriber (it has
//! no way to send a frame made once). With `--tls-cert`/`--tls-key` the socket is
//! tokio-rustls's `TlsStream` (see `peers_common::tls`).
//!
//! `--read-buffer` is tungstenite's eagerly allocated read buffer per connection: 4 KiB by
//! default here, the size its documentation suggests for many connections (its own default
//! is 128 KiB).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use peers_common::{Args, Listener, Route, Stream, Subscription, Topics};
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The flags.
#[derive(Parser, Debug)]
#[command(name = "peer-tungstenite")]
struct Cli {
    #[command(flatten)]
    args: Args,
    /// Read buffer per connection, in bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = WebSocketConfig::default().read_buffer_size(cli.read_buffer.max(1));
    let topics = Topics::new(cli.args.topic_capacity);
    peers_common::run("peer-tungstenite", &cli.args, |listener| {
        serve(listener, topics, config)
    })
}

async fn serve(listener: Listener, topics: Arc<Topics<Message>>, config: WebSocketConfig) {
    peers_common::serve(listener, move |stream| {
        connection(stream, Arc::clone(&topics), config)
    })
    .await;
}

async fn connection(stream: Stream, topics: Arc<Topics<Message>>, config: WebSocketConfig) {
    let mut route = None;
    // The callback's types are tungstenite's, large error included.
    #[allow(clippy::result_large_err)]
    let pick_route = |request: &Request, response: Response| {
        route = Route::parse(request.uri().path());
        if route.is_some() {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(None);
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(stream, pick_route, Some(config)).await;
    let Ok(ws) = accepted else { return };
    match route {
        Some(Route::Echo) => echo(ws).await,
        Some(Route::Topic(name)) => topic(ws, topics.subscribe(name)).await,
        None => {}
    }
}

/// Sends every text or binary message back; tungstenite answers pings and closes itself.
async fn echo(mut ws: WebSocketStream<Stream>) {
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}

/// Publishes what the socket sends to the topic, and sends it what the topic receives.
async fn topic(mut ws: WebSocketStream<Stream>, mut subscription: Subscription<Message>) {
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(message)) if message.is_text() || message.is_binary() => {
                    let _ = subscription.sender.send(message);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            delivery = subscription.receiver.recv() => match delivery {
                Ok(message) => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn serves_echo_and_topics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let topics = Topics::new(16);
        tokio::spawn(serve(
            Listener::plain(listener),
            Arc::clone(&topics),
            WebSocketConfig::default(),
        ));
        peers_common::check::endpoints(addr).await;
    }

    #[tokio::test]
    async fn serves_echo_and_topics_over_tls() {
        let (listener, addr, ca) = peers_common::check::tls_listener().await;
        tokio::spawn(serve(listener, Topics::new(16), WebSocketConfig::default()));
        peers_common::check::endpoints_tls(addr, &ca).await;
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
    }
}
