//! A precise wake-up for an event loop. epoll's own timeout counts whole milliseconds, far too
//! coarse for rate-driven sends whose latency is measured in microseconds from their intended
//! time: a timerfd armed at the next deadline wakes the loop within microseconds of it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A timerfd on `CLOCK_MONOTONIC` (the clock of [`crate::clock`]), registered with a poll.
pub struct Alarm {
    fd: OwnedFd,
    armed_ns: u64,
}

impl Alarm {
    /// Creates the timerfd and registers it under `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Alarm> {
        // SAFETY: plain syscall with constant flags; the result is checked below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Alarm { fd, armed_ns: 0 })
    }

    /// Makes the alarm go off at `at_ns` (clock nanoseconds); nothing to do if it already will.
    pub fn arm(&mut self, at_ns: u64) {
        if at_ns == self.armed_ns {
            return;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: a valid timerfd, a pointer to a live itimerspec, no old value wanted.
        let result = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        // Failing to arm only costs precision: epoll's own timeout still wakes the loop.
        if result == 0 {
            self.armed_ns = at_ns;
        }
    }

    /// The alarm went off: consume its expiry so the next one raises a new edge.
    pub fn clear(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reading 8 bytes into a live 8-byte buffer from our own non-blocking timerfd.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        self.armed_ns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use mio::{Events, Poll};
    use std::time::Duration;

    #[test]
    fn wakes_a_poll_well_within_a_millisecond() {
        let mut poll = Poll::new().unwrap();
        let mut alarm = Alarm::new(poll.registry(), Token(7)).unwrap();
        let mut events = Events::with_capacity(4);
        let due = clock::now_ns() + 300_000;
        alarm.arm(due);
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        let woke = clock::now_ns();
        assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(7)));
        assert!(woke >= due, "woke early");
        alarm.clear();
        alarm.arm(clock::now_ns() + 100_000);
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(events.iter().count(), 1, "re-armed after clear");
    }
}
