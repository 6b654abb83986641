//! Clarion's push server: topics over WebSocket, an HTTP publish API, auth, metrics and
//! clustering over Redis, built as a [`clarion_engine::Handler`].
//!
//! The crates below it, each using only the ones under it (an arrow back up does not build):
//! `clarion-protocol` (sans-IO RFC 6455 and 7692), `clarion-engine` (thread-per-core event
//! loops generic over a `Handler`) beside `clarion-pubsub` (topics, fanout, history; no
//! sockets). Here: [`server`] (routes, envelope protocol, HTTP API, auth, metrics, config)
//! beside [`cluster`] (the Redis bridge that joins nodes into one topic space).

#[cfg(not(target_os = "linux"))]
compile_error!(
    "Clarion runs on Linux only: it is built on epoll, io_uring and Linux socket options"
);

pub mod cluster;
pub mod server;
