//! A chat server on the engine's `Handler` API: `/chat/<room>` joins a room, and every text
//! message a member sends goes to everyone in the room (the sender too), whichever reactor
//! holds them. The message is framed once and shared by reference with every member; each
//! reactor learns of it through its inbox.
//!
//! ```text
//! cargo run --release --example chat -- 127.0.0.1:9002
//! cargo run --example client -- ws://127.0.0.1:9002/chat/lobby    (in two terminals)
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use clarion_engine::{
    Answer, Config, ConnId, Ctx, Handler, Io, Local, Mailboxes, Push, RequestInfo, Response,
    Runtime,
};
use clarion_protocol::frame::encode_frame;
use clarion_protocol::handshake::Request;
use clarion_protocol::{CloseCode, MessageKind, OpCode};

/// Bytes that may wait for one member; one that falls further behind is closed (1008).
const MAX_QUEUED: usize = 1 << 20;
/// The longest room name.
const MAX_ROOM: usize = 64;

/// A message said in a room, already framed: what one reactor posts to every reactor.
pub struct Said {
    room: Arc<str>,
    frame: Arc<[u8]>,
}

/// One reactor's chat: the members it holds, by room.
pub struct Chat {
    reactors: Arc<Mailboxes<Said>>,
    rooms: HashMap<Arc<str>, Vec<ConnId>>,
}

impl Handler for Chat {
    /// A member's room: the only per-connection state.
    type Conn = Arc<str>;
    type Inbox = Said;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        _body: &[u8],
        _info: &RequestInfo,
    ) -> Answer<'r, Arc<str>> {
        match request.path().strip_prefix("/chat/") {
            Some(room) if !room.is_empty() && room.len() <= MAX_ROOM => Answer::Upgrade {
                conn: Arc::from(room),
                protocol: None,
            },
            _ => Answer::Respond(Response::new(404, "text/plain", "join /chat/<room>\n")),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Arc<str>>) {
        let (id, room) = (ctx.id(), ctx.conn().clone());
        self.rooms.entry(room).or_default().push(id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Arc<str>>, kind: MessageKind, text: &[u8]) {
        if kind != MessageKind::Text {
            return ctx.close(CloseCode::UNSUPPORTED_DATA, "text only");
        }
        // Framed once here; every member on every reactor gets a reference to these bytes.
        let frame: Arc<[u8]> = encode_frame(OpCode::Text, text).into();
        for reactor in 0..self.reactors.len() {
            let (room, frame) = (ctx.conn().clone(), frame.clone());
            self.reactors.post(reactor, Said { room, frame });
        }
    }

    fn on_close(&mut self, id: ConnId, room: &mut Arc<str>, _: Option<CloseCode>, _: Instant) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.retain(|&member| member != id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    fn on_inbox(&mut self, local: &mut Local<'_, Arc<str>>, said: Said) {
        let Some(members) = self.rooms.get(&said.room) else {
            return;
        };
        // Queued by reference; each member is written once after the inbox is drained.
        for &member in members {
            if local.send_shared(member, &said.frame, MAX_QUEUED) == Push::Full {
                local.close(member, CloseCode::POLICY_VIOLATION, "too slow");
            }
        }
    }
}

/// Starts the chat server on `listen` with `threads` reactors on backend `io`.
pub fn start(listen: SocketAddr, threads: usize, io: Io) -> io::Result<Runtime> {
    let config = Config {
        listen,
        threads,
        pin_threads: false,
        io,
        ..Config::default()
    };
    Runtime::start(config, |_reactor, shared| {
        Ok(Chat {
            reactors: shared.mailboxes.clone(),
            rooms: HashMap::new(),
        })
    })
}

fn main() -> io::Result<()> {
    let listen = std::env::args().nth(1);
    let listen = listen.as_deref().unwrap_or("127.0.0.1:9002");
    let listen = listen
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    let runtime = start(listen, 2, Io::Auto)?;
    println!("chat on ws://{}/chat/<room>", runtime.local_addr());
    runtime.join();
    Ok(())
}
