//! Clarion: a WebSocket engine and massive-fanout push server.
//!
//! Layers, each using only the ones below it: [`protocol`] (sans-IO RFC 6455), [`reactor`]
//! (thread-per-core event loops generic over a [`reactor::Handler`]), [`server`] (the push server
//! application: routes, config).

pub mod protocol;
pub mod reactor;
pub mod server;
