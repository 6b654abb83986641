//! `/echo` over real sockets with a third-party client: messages, fragments, control frames,
//! close, limits, many clients, and a client that does not read (held at its write cap, not
//! queued without end).

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn text_and_binary_come_back_as_sent() {
    let server = start(|_| {});
    let mut ws = connect(server.local_addr(), "/echo");
    for message in [
        Message::text("hello"),
        Message::text("κόσμε ✓"),
        Message::binary(vec![0u8, 255, 7]),
        Message::binary(vec![]),
        Message::binary(vec![42u8; 200_000]),
    ] {
        ws.send(message.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), message);
    }
}

#[test]
fn fragmented_messages_are_reassembled_around_pings() {
    let server = start(|_| {});
    let mut stream = raw_ws(server.local_addr());
    let mut bytes = frame(false, 0x1, b"frag");
    bytes.extend(frame(true, 0x9, b"mid"));
    bytes.extend(frame(false, 0x0, b"men"));
    bytes.extend(frame(true, 0x0, b"ted"));
    // Dribble the bytes to split frames and headers across reads.
    for chunk in bytes.chunks(3) {
        stream.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        read_frame(&mut stream).unwrap(),
        (true, 0xA, b"mid".to_vec())
    );
    assert_eq!(
        read_frame(&mut stream).unwrap(),
        (true, 0x1, b"fragmented".to_vec())
    );
}

#[test]
fn pings_get_pongs() {
    let server = start(|_| {});
    let mut ws = connect(server.local_addr(), "/echo");
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );
}

#[test]
fn close_is_echoed_then_the_server_hangs_up() {
    let server = start(|_| {});
    let mut ws = connect(server.local_addr(), "/echo");
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "done".into(),
    }))
    .unwrap();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Library(4001)),
        other => panic!("{other:?}"),
    }
    // The server closes TCP after its close frame.
    assert!(matches!(
        ws.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
    // Once the client closes its socket too, the server frees the connection at once (it
    // would otherwise linger up to the close timeout for the client's FIN).
    drop(ws);
    assert!(eventually(|| total(&server, |s| &s.connections) == 0));
}

#[test]
fn protocol_errors_close_with_rfc_codes() {
    let server = start(|_| {});
    let cases: [(Vec<u8>, u16); 4] = [
        (frame(true, 0x1, &[0xC3, 0x28]), 1007),
        (frame(true, 0x3, b""), 1002),
        (
            {
                let mut f = frame(true, 0x2, b"x");
                f[1] &= 0x7F;
                f.drain(2..6);
                f
            },
            1002,
        ),
        (frame(false, 0x9, b""), 1002),
    ];
    for (bytes, code) in cases {
        let mut stream = raw_ws(server.local_addr());
        stream.write_all(&bytes).unwrap();
        assert_eq!(read_close_code(&mut stream), code, "{bytes:x?}");
    }
}

#[test]
fn limits_close_with_1009() {
    let server = start(|c| {
        c.protocol.max_message_size = 1000;
        c.protocol.max_frame_size = 600;
    });
    let mut ws = connect(server.local_addr(), "/echo");
    ws.send(Message::binary(vec![1u8; 600])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![1u8; 600]));
    ws.send(Message::binary(vec![1u8; 601])).unwrap();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("{other:?}"),
    }
    // Fragments within the frame limit that add up past the message limit.
    let mut stream = raw_ws(server.local_addr());
    stream.write_all(&frame(false, 0x2, &[0; 500])).unwrap();
    stream.write_all(&frame(false, 0x0, &[0; 500])).unwrap();
    stream.write_all(&frame(true, 0x0, &[0; 1])).unwrap();
    assert_eq!(read_close_code(&mut stream), 1009);
}

#[test]
fn a_thousand_concurrent_clients() {
    let server = start(|_| {});
    let mut clients: Vec<_> = (0..1000)
        .map(|_| connect(server.local_addr(), "/echo"))
        .collect();
    assert!(eventually(|| total(&server, |s| &s.upgrades) == 1000));
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("client {i}"))).unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.read().unwrap(), Message::text(format!("client {i}")));
    }
    // Idle, open connections own no buffer and no queue.
    assert_eq!(total(&server, |s| &s.rx_buffers_lent), 0);
    assert_eq!(total(&server, |s| &s.tx_queues_lent), 0);
}

#[test]
fn a_client_that_does_not_read_gets_everything_in_order_later() {
    let server = start(|_| {});
    let mut ws = connect(server.local_addr(), "/echo");
    // Far more than the socket buffers hold: the server must queue, then drain in order.
    let messages: Vec<Message> = (0..64u8)
        .map(|i| Message::binary(vec![i; 128 * 1024]))
        .collect();
    let writer_stream = ws.get_ref().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sender = tungstenite::WebSocket::from_raw_socket(
            writer_stream,
            tungstenite::protocol::Role::Client,
            None,
        );
        for m in messages {
            sender.send(m).unwrap();
        }
        sender
    });
    // 8 MiB of echoes against a 1 MiB write cap: the server queues about the cap, then stops
    // reading this client (its sender blocks in TCP) until it reads.
    assert!(eventually(|| total(&server, |s| &s.paused) == 1));
    assert!(total(&server, |s| &s.tx_queues_lent) >= 1);
    for i in 0..64u8 {
        assert_eq!(ws.read().unwrap(), Message::binary(vec![i; 128 * 1024]));
    }
    let _sender = sender.join().unwrap();
    assert!(eventually(|| total(&server, |s| &s.tx_queues_lent) == 0));
}

#[test]
fn partial_frames_borrow_a_buffer_only_until_complete() {
    let server = start(|c| c.threads = 1);
    let mut stream = raw_ws(server.local_addr());
    let bytes = frame(true, 0x1, b"split across reads");
    stream.write_all(&bytes[..9]).unwrap();
    assert!(eventually(|| total(&server, |s| &s.rx_buffers_lent) == 1));
    stream.write_all(&bytes[9..]).unwrap();
    assert_eq!(
        read_frame(&mut stream).unwrap(),
        (true, 0x1, b"split across reads".to_vec())
    );
    assert!(eventually(|| total(&server, |s| &s.rx_buffers_lent) == 0));
}
