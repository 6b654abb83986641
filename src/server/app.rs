//! The server's [`Handler`]: routes requests and serves each WebSocket route.
//!
//! Routes: `/echo` (WebSocket: every message comes back as it came, text as text, binary as
//! binary) and `/healthz` (plain HTTP). Anything else is a 404.

use std::net::SocketAddr;

use crate::protocol::MessageKind;
use crate::protocol::handshake::Request;
use crate::reactor::{Answer, Ctx, Handler, Response};

/// What a WebSocket connection is for, chosen by its path. One byte per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/echo`.
    Echo,
}

/// One reactor's application state.
#[derive(Debug, Default)]
pub struct App {}

impl Handler for App {
    type Conn = Route;
    type Inbox = ();

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        _body: &[u8],
        _peer: Option<SocketAddr>,
    ) -> Answer<'r, Route> {
        match (request.method(), request.path()) {
            (_, "/echo") => Answer::Upgrade {
                conn: Route::Echo,
                protocol: None,
            },
            ("GET" | "HEAD", "/healthz") => {
                Answer::Respond(Response::new(200, "text/plain", "ok\n"))
            }
            _ => Answer::Respond(Response::new(404, "text/plain", "not found\n")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Route>, kind: MessageKind, payload: &[u8]) {
        match ctx.conn() {
            // A send fails only once our close frame is out; the message is then moot.
            Route::Echo => {
                let _ = ctx.send(kind, payload);
            }
        }
    }
}
