//! `wss:` against the real `clarion serve --tls-cert … --tls-key …` with a certificate from
//! `scripts/make-cert.sh`: connect, subscribe, publish and receive; a server restart resumed
//! over TLS; a cut reconnected with a resumed TLS session (the server counts it); and a server
//! whose CA the client does not trust refused with close code 1015 and no retry.
//! `CLARION_TEST_IO=epoll|uring` picks the server's backend.

mod common;

use std::time::Duration;

use clarion_client::{Backoff, Client, Data, Event, Options, State};
use common::{
    Certs, Proxy, Server, eventually, is_disconnected, is_subscribed, next_matching, seq_of,
};
use serde_json::json;

/// Reconnections within a second, trusting `certs`' CA (besides the platform's roots).
fn trusting(certs: &Certs) -> Options {
    let mut options = Options {
        backoff: Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..Backoff::default()
        },
        ..Options::default()
    };
    options.tls.add_ca_file(certs.ca()).unwrap();
    options
}

fn tls_server(certs: &Certs, extra: &[&str]) -> Server {
    let mut args = certs.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_connect_subscribe_publish_receive_and_resume_after_a_restart() {
    let certs = Certs::make("wss-restart");
    // Room for the 300 KiB message below (the production default is 64 KiB).
    let sizes = [
        "--max-message-size",
        "1048576",
        "--max-frame-size",
        "1048576",
    ];
    let mut server = tls_server(&certs, &sizes);
    // The host is a name here (the certificate's DNS name), an address in the other tests.
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let client = Client::connect(&url, trusting(&certs)).unwrap();
    let mut events = client.events();
    client.subscribe("news", None);
    let first = next_matching(&mut events, |_| true).await;
    assert!(matches!(first, Event::Connected { .. }), "{first:?}");
    let Event::Subscribed {
        resumed: false,
        epoch: first,
        ..
    } = next_matching(&mut events, |_| true).await
    else {
        panic!("subscribed first")
    };
    for n in 1..=3u64 {
        let ack = client.publish("news", json!({ "n": n })).await.unwrap();
        assert_eq!(ack.seq, Some(n));
    }
    for n in 1..=3u64 {
        assert_eq!(
            next_matching(&mut events, |_| true).await,
            Event::Message {
                topic: "news".into(),
                seq: n,
                data: Data::Json(json!({ "n": n })),
            }
        );
    }
    // Larger than a TLS record (16 KiB) and than rustls' send buffer (64 KiB), both ways.
    let big = "x".repeat(300 << 10);
    let ack = client.publish("news", json!(big)).await.unwrap();
    assert_eq!(ack.seq, Some(4));
    assert_eq!(
        next_matching(&mut events, |_| true).await,
        Event::Message {
            topic: "news".into(),
            seq: 4,
            data: Data::Json(json!(big)),
        }
    );

    server.restart();
    assert!(matches!(
        next_matching(&mut events, is_disconnected).await,
        Event::Disconnected {
            will_retry: true,
            ..
        }
    ));
    let Event::Subscribed {
        resumed,
        recovered,
        epoch,
        seq,
        ..
    } = next_matching(&mut events, is_subscribed).await
    else {
        unreachable!()
    };
    assert!(
        resumed && !recovered,
        "a new run cannot recover the old epoch"
    );
    assert_ne!(epoch, first);
    assert_eq!(seq, 0);
    let ack = client.publish("news", json!("after")).await.unwrap();
    assert_eq!(ack.seq, Some(1));
    assert_eq!(
        next_matching(&mut events, |e| seq_of(e).is_some()).await,
        Event::Message {
            topic: "news".into(),
            seq: 1,
            data: Data::Json(json!("after")),
        }
    );
    client.close().await;
    assert!(matches!(
        next_matching(&mut events, |_| true).await,
        Event::Disconnected {
            code: 1000,
            will_retry: false,
            ..
        }
    ));
    assert!(
        events.next().await.is_none(),
        "the stream ends when the client stops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_reconnects_with_a_resumed_tls_session_and_loses_nothing() {
    let certs = Certs::make("wss-cut");
    let server = tls_server(&certs, &["--history-size", "100"]);
    let proxy = Proxy::start(server.addr).await;
    let client = Client::connect(&format!("wss://{}/ws", proxy.addr), trusting(&certs)).unwrap();
    let mut events = client.events();
    client.subscribe("feed", None);
    next_matching(&mut events, is_subscribed).await;
    assert_eq!(server.admin_stat("tls_resumed").await, 0);
    for cut in 1..=3u64 {
        let ack = client.publish("feed", json!(cut)).await.unwrap();
        assert_eq!(ack.seq, Some(cut));
        assert_eq!(
            seq_of(&next_matching(&mut events, |e| seq_of(e).is_some()).await),
            Some(cut)
        );
        proxy.cut();
        assert!(matches!(
            next_matching(&mut events, is_disconnected).await,
            Event::Disconnected {
                will_retry: true,
                ..
            }
        ));
        assert!(matches!(
            next_matching(&mut events, is_subscribed).await,
            Event::Subscribed {
                resumed: true,
                recovered: true,
                seq,
                ..
            } if seq == cut
        ));
    }
    // Each reconnection offered the ticket of the connection before it.
    assert_eq!(server.admin_stat("tls_handshakes").await, 4);
    assert_eq!(server.admin_stat("tls_resumed").await, 3);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_once_with_1015_and_no_retry() {
    let (served, trusted) = (Certs::make("wss-served"), Certs::make("wss-other-ca"));
    let server = tls_server(&served, &[]);
    let client = Client::connect(&server.wss_url(), trusting(&trusted)).unwrap();
    let mut events = client.events();
    client.subscribe("t", None);
    let publish = client.publish("t", json!("queued"));
    let Event::Disconnected {
        code,
        reason,
        will_retry,
        retry_in,
        status,
    } = next_matching(&mut events, |_| true).await
    else {
        panic!("the first event is the refusal")
    };
    assert_eq!(code, 1015, "{reason}");
    assert!(
        reason.starts_with("TLS: invalid peer certificate"),
        "{reason}"
    );
    assert!(!will_retry && retry_in.is_none() && status.is_none());
    assert_eq!(publish.await.unwrap_err().code, "closed");
    assert!(events.next().await.is_none(), "the client stopped");
    assert_eq!(client.state(), State::Closed);
    // The server saw the handshake fail (the client's alert), and none succeed.
    eventually(|| async { server.admin_stat("tls_failures").await >= 1 }).await;
    assert_eq!(server.admin_stat("tls_handshakes").await, 0);
}
