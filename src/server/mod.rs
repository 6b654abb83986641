//! The push server: the application on top of the reactors, and its configuration.
//!
//! Only this layer reads the command line, config files and the environment; it turns them into
//! plain values for the layers below.

pub mod app;
pub mod config;

use std::io;

use crate::reactor::{self, Runtime};

/// Starts the server's reactors.
pub fn start(config: reactor::Config) -> io::Result<Runtime> {
    Runtime::start(config, |_reactor, _shared| app::App::default())
}
