//! Helpers shared by the engine's end-to-end tests: the backend under test and a bounded wait.

use std::time::Duration;

use clarion_engine::Io;

/// The backend under test: `CLARION_TEST_IO=epoll|uring` (default: whatever `auto` picks).
pub fn io() -> Io {
    match std::env::var("CLARION_TEST_IO").as_deref() {
        Ok("epoll") => Io::Epoll,
        Ok("uring") => Io::Uring,
        Ok(other) if !other.is_empty() => panic!("CLARION_TEST_IO={other}: use epoll or uring"),
        _ => Io::Auto,
    }
}

/// Polls `condition` every 10 ms for up to 30 s (a bound for a broken server or a loaded
/// machine, not a timing assertion).
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    (0..3000).any(|_| {
        condition() || {
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    })
}
