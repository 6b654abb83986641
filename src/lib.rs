//! Clarion: a WebSocket engine and massive-fanout push server.
//!
//! Layers, each using only the ones below it: [`protocol`] (sans-IO RFC 6455), [`reactor`]
//! (thread-per-core event loops generic over a [`reactor::Handler`]) beside [`pubsub`] (topics,
//! fanout, history; no sockets), and [`server`] (the push server application: routes, envelope
//! protocol, HTTP API, auth, metrics, config) beside [`cluster`] (the Redis bridge that joins
//! nodes into one topic space).

pub mod cluster;
pub mod protocol;
pub mod pubsub;
pub mod reactor;
pub mod server;
