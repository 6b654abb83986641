//! The eventfd through which other threads wake a ring (a multishot poll watches it).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::Wake;

/// An eventfd that other threads write to wake the ring's multishot poll.
pub(super) struct EventFd(OwnedFd);

impl EventFd {
    /// The descriptor a poll watches.
    pub(super) fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    pub(super) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) has no memory arguments; a non-negative result is a new descriptor
        // that we then own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a valid descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Resets the counter so the poll fires again on the next wake.
    pub(super) fn drain(&self) {
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a local u64, as eventfd(2) requires.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a local u64, as eventfd(2) requires.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
