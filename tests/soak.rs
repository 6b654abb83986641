//! Connect/disconnect churn for a bounded time, with every kind of ending (clean close, a drop
//! mid-frame, a reset, a half-sent request head, a large unread echo, silence); afterwards no
//! connection, receive buffer, write queue or timer may be left behind.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use socket2::Socket;

const CHURN: Duration = Duration::from_secs(3);
/// Connections per worker at the least: each of the six kinds of ending, five times.
const MIN_ROUNDS: u64 = 30;

fn reset(stream: std::net::TcpStream) {
    // SO_LINGER 0: close sends RST instead of FIN.
    let socket = Socket::from(stream);
    socket.set_linger(Some(Duration::ZERO)).unwrap();
}

#[test]
fn churn_leaves_nothing_behind() {
    let server = start(|c| {
        c.protocol.close_timeout = Duration::from_millis(200);
        c.protocol.handshake_timeout = Duration::from_millis(300);
    });
    let addr = server.local_addr();
    let deadline = Instant::now() + CHURN;
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                // At least every kind of ending several times however slow the machine, then
                // as many as fit the churn time.
                while rounds < MIN_ROUNDS || Instant::now() < deadline {
                    match (rounds + worker) % 6 {
                        0 => {
                            let mut ws = connect(addr, "/echo");
                            ws.send(tungstenite::Message::text("hi")).unwrap();
                            assert_eq!(ws.read().unwrap(), tungstenite::Message::text("hi"));
                            ws.close(None).unwrap();
                            while ws.read().is_ok() {}
                        }
                        1 => {
                            let mut s = raw_ws(addr);
                            let f = frame(true, 0x2, &[7; 1000]);
                            s.write_all(&f[..500]).unwrap();
                        }
                        2 => {
                            let mut s = raw_ws(addr);
                            s.write_all(&frame(true, 0x1, b"bye")).unwrap();
                            reset(s);
                        }
                        3 => {
                            let mut s = tcp(addr);
                            s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
                        }
                        4 => {
                            let mut s = raw_ws(addr);
                            for _ in 0..8 {
                                s.write_all(&frame(true, 0x2, &[1; 256 * 1024])).unwrap();
                            }
                            reset(s);
                        }
                        _ => drop(tcp(addr)),
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let rounds: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let clean = eventually(|| {
        total(&server, |s| &s.connections) == 0
            && total(&server, |s| &s.rx_buffers_lent) == 0
            && total(&server, |s| &s.tx_queues_lent) == 0
            && total(&server, |s| &s.timers) == 0
    });
    assert!(
        clean,
        "left behind after {rounds} connections: {} connections, {} rx buffers, {} write queues, {} timers",
        total(&server, |s| &s.connections),
        total(&server, |s| &s.rx_buffers_lent),
        total(&server, |s| &s.tx_queues_lent),
        total(&server, |s| &s.timers),
    );
    // Still serving.
    let mut ws = connect(addr, "/echo");
    ws.send(tungstenite::Message::text("after")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("after"));
}
