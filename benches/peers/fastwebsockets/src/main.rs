//! Clarion's `/echo` and `/t/<topic>` on fastwebsockets, written the way its examples and its
//! main user (Deno) use it: hyper serves the HTTP request and `fastwebsockets::upgrade` takes
//! the connection over; `/echo` is the library's echo example (a `FragmentCollector`
//! reading and writing frames); a topic socket is split into a read half, which publishes, and a
//! write half behind a lock, shared by the topic's deliveries and the read half's obligatory
//! pongs and close replies. A published message is one `Bytes` that every subscriber borrows;
//! fastwebsockets frames it once per subscriber (it has no way to send a frame made once).
//! With `--tls-cert`/`--tls-key` hyper serves tokio-rustls's `TlsStream` (see
//! `peers_common::tls`).

use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::upgrade::{UpgradeFut, upgrade};
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use peers_common::{Args, Listener, Route, Stream, Subscription, Topics};
use tokio::sync::Mutex;
use tokio::sync::broadcast::error::RecvError;

/// A message published to a topic: its opcode (text or binary) and payload.
#[derive(Clone)]
struct Published {
    opcode: OpCode,
    payload: Bytes,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let topics = Topics::new(args.topic_capacity);
    peers_common::run("peer-fastwebsockets", &args, |listener| {
        serve(listener, topics)
    })
}

async fn serve(listener: Listener, topics: Arc<Topics<Published>>) {
    peers_common::serve(listener, move |stream| {
        connection(stream, Arc::clone(&topics))
    })
    .await;
}

async fn connection(stream: Stream, topics: Arc<Topics<Published>>) {
    let service = service_fn(move |request| route(request, Arc::clone(&topics)));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

async fn route(
    mut request: Request<Incoming>,
    topics: Arc<Topics<Published>>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let Some(route) = Route::parse(request.uri().path()) else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let Ok((response, socket)) = upgrade(&mut request) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    tokio::spawn(async move {
        match route {
            Route::Echo => echo(socket).await,
            Route::Topic(name) => topic(socket, topics.subscribe(name)).await,
        }
    });
    Ok(response)
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

/// Sends every text or binary message back; fastwebsockets answers pings and closes itself.
async fn echo(socket: UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(socket.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// Publishes what the socket sends to the topic, and sends it what the topic receives.
async fn topic(
    socket: UpgradeFut,
    mut subscription: Subscription<Published>,
) -> Result<(), WebSocketError> {
    let (read, write) = socket.await?.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let write = Mutex::new(write);
    let Subscription {
        ref sender,
        ref mut receiver,
        ..
    } = subscription;
    let publish = async {
        let mut obligated = |frame| async { write.lock().await.write_frame(frame).await };
        loop {
            let frame = read.read_frame(&mut obligated).await?;
            match frame.opcode {
                OpCode::Close => return Ok(()),
                OpCode::Text | OpCode::Binary => {
                    let payload = Bytes::copy_from_slice(&frame.payload);
                    let _ = sender.send(Published {
                        opcode: frame.opcode,
                        payload,
                    });
                }
                _ => {}
            }
        }
    };
    let deliver = async {
        loop {
            match receiver.recv().await {
                Ok(message) => {
                    let frame = Frame::new(
                        true,
                        message.opcode,
                        None,
                        Payload::Borrowed(&message.payload),
                    );
                    write.lock().await.write_frame(frame).await?;
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    };
    tokio::select! {
        ended = publish => ended,
        ended = deliver => ended,
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
        tokio::spawn(serve(Listener::plain(listener), Topics::new(16)));
        peers_common::check::endpoints(addr).await;
    }

    #[tokio::test]
    async fn serves_echo_and_topics_over_tls() {
        let (listener, addr, ca) = peers_common::check::tls_listener().await;
        tokio::spawn(serve(listener, Topics::new(16)));
        peers_common::check::endpoints_tls(addr, &ca).await;
        let _ = std::fs::remove_dir_all(ca.parent().unwrap());
    }
}
