//! What a Linux host gives a Clarion process, shared by the server, the engine and the load
//! generator so that each rule exists once: the descriptor limit ([`raise_fd_limit`]), a private
//! descriptor table per thread ([`unshare_fd_table`]), an io_uring with its provided-buffer
//! ring ([`uring`]), and the one duration syntax every Clarion command line and config file
//! accepts ([`parse_duration`]).
#![deny(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "Clarion runs on Linux only: it is built on epoll, io_uring and Linux socket options"
);

mod duration;
mod fd;
pub mod uring;

pub use duration::parse_duration;
pub use fd::{fd_limit, raise_fd_limit, unshare_fd_table};
