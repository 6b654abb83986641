//! An echo server embedded on the engine: every WebSocket message comes back as it came, on any
//! path; a plain HTTP request gets a line of text.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! echo hello | cargo run --example client -- ws://127.0.0.1:9001/
//! ```

use std::io;
use std::net::SocketAddr;

use clarion_engine::{Answer, Config, Ctx, Handler, Io, RequestInfo, Response, Runtime};
use clarion_protocol::MessageKind;
use clarion_protocol::handshake::Request;

/// The application: no state per connection, nothing posted between reactors.
pub struct Echo;

impl Handler for Echo {
    type Conn = ();
    type Inbox = ();

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        _body: &[u8],
        _info: &RequestInfo,
    ) -> Answer<'r, ()> {
        if request.wants_websocket() {
            Answer::Upgrade {
                conn: (),
                protocol: None,
            }
        } else {
            let text = "an echo server: open a WebSocket here\n";
            Answer::Respond(Response::new(200, "text/plain", text))
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, kind: MessageKind, payload: &[u8]) {
        // Fails only once our close frame is out: the message is moot then.
        let _ = ctx.send(kind, payload);
    }
}

/// Starts the echo server on `listen` with `threads` reactors on backend `io`.
pub fn start(listen: SocketAddr, threads: usize, io: Io) -> io::Result<Runtime> {
    let config = Config {
        listen,
        threads,
        pin_threads: false,
        io,
        ..Config::default()
    };
    Runtime::start(config, |_reactor, _shared| Ok(Echo))
}

fn main() -> io::Result<()> {
    let listen = std::env::args().nth(1);
    let listen = listen.as_deref().unwrap_or("127.0.0.1:9001");
    let listen = listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    let runtime = start(listen, 2, Io::Auto)?;
    println!(
        "echo on ws://{}/ ({:?})",
        runtime.local_addr(),
        runtime.io()
    );
    runtime.join();
    Ok(())
}
