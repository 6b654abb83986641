//! One `info` line per refused client (route, peer address, status, reason, and the token's
//! `sub` when one was read), rate-limited by one token bucket per process: a flood of
//! refusals (a scan, a fleet with a stale key) costs [`PER_SECOND`] lines a second and a count
//! of the rest, never a line each.
//!
//! Nothing is done while `info` is off for this module (`clarion::server::refusals=warn`
//! silences it); the bucket is a short lock taken only on a refusal.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines that may be written at once after a quiet spell.
pub const BURST: u32 = 20;
/// Lines a second, once the burst is spent.
pub const PER_SECOND: u32 = 10;
const REFILL: Duration = Duration::from_millis(1000 / PER_SECOND as u64);

/// Longest path or reason written, in bytes: the rest is the client's to fill.
const MAX_SHOWN: usize = 128;

/// Why and where a client was refused.
#[derive(Clone, Copy, Debug)]
pub struct Refusal<'a> {
    /// The request's path.
    pub path: &'a str,
    /// The client's address, when the backend reports it.
    pub peer: Option<SocketAddr>,
    /// The HTTP status answered (for a `/ws` upgrade whose token was refused, the close code
    /// it was closed with at once: 4001 or 4003).
    pub status: u16,
    /// What was wrong.
    pub reason: &'a str,
    /// The `sub` of the client's token, when one was read.
    pub subject: Option<&'a str>,
}

/// The process's refusal log.
#[derive(Debug)]
pub struct RefusalLog {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    /// When the tokens were last counted.
    refilled: Instant,
    /// Refusals not written since the last summary.
    suppressed: u64,
}

impl Default for RefusalLog {
    fn default() -> RefusalLog {
        RefusalLog::new(Instant::now())
    }
}

impl RefusalLog {
    fn new(now: Instant) -> RefusalLog {
        RefusalLog {
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                refilled: now,
                suppressed: 0,
            }),
        }
    }

    /// Logs `refusal` if the bucket allows, else counts it.
    pub fn log(&self, refusal: Refusal<'_>) {
        if tracing::enabled!(tracing::Level::INFO) {
            self.log_at(Instant::now(), refusal);
        }
    }

    fn log_at(&self, now: Instant, refusal: Refusal<'_>) {
        let (write, suppressed) = {
            let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            bucket.refill(now);
            if bucket.tokens > 0 {
                bucket.tokens -= 1;
                (true, std::mem::take(&mut bucket.suppressed))
            } else {
                bucket.suppressed += 1;
                (false, 0)
            }
        };
        summarize(suppressed);
        if write {
            let peer = refusal.peer.map(tracing::field::display);
            tracing::info!(
                path = shown(refusal.path),
                peer,
                status = refusal.status,
                reason = shown(refusal.reason),
                sub = refusal.subject.map(shown),
                "refused a client"
            );
        }
    }

    /// Writes the count of refusals not logged, if any (called once a second, so that the
    /// end of a flood is reported too).
    pub fn flush(&self) {
        let suppressed = {
            let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut bucket.suppressed)
        };
        summarize(suppressed);
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_millis() / REFILL.as_millis();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(BURST);
        self.refilled = if self.tokens == BURST {
            now
        } else {
            self.refilled + REFILL * earned
        };
    }
}

fn summarize(suppressed: u64) {
    if suppressed > 0 {
        tracing::info!(
            suppressed,
            "{suppressed} more refusals not logged (at most {PER_SECOND} lines a second)"
        );
    }
}

/// At most [`MAX_SHOWN`] bytes of `text`, cut at a character boundary; the log's formatter
/// escapes what it writes.
fn shown(text: &str) -> &str {
    if text.len() <= MAX_SHOWN {
        return text;
    }
    let mut end = MAX_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Log lines written while `f` runs.
    fn captured(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn refusal(reason: &str) -> Refusal<'_> {
        Refusal {
            path: "/t/news",
            peer: Some("127.0.0.1:5000".parse().unwrap()),
            status: 403,
            reason,
            subject: Some("alice"),
        }
    }

    #[test]
    fn a_refusal_is_one_line_with_its_details() {
        let log = RefusalLog::default();
        let lines = captured(|| log.log(refusal("topic not allowed")));
        assert_eq!(lines.len(), 1, "{lines:?}");
        for part in [
            "refused a client",
            "path=\"/t/news\"",
            "peer=127.0.0.1:5000",
            "status=403",
            "reason=\"topic not allowed\"",
            "sub=\"alice\"",
        ] {
            assert!(lines[0].contains(part), "{part} in {}", lines[0]);
        }
    }

    #[test]
    fn a_flood_is_counted_not_written() {
        let start = Instant::now();
        let log = RefusalLog::new(start);
        let lines = captured(|| {
            for _ in 0..1000 {
                log.log_at(start, refusal("origin not allowed"));
            }
            log.flush();
        });
        assert_eq!(lines.len(), BURST as usize + 1, "{lines:?}");
        assert!(
            lines[BURST as usize].contains("980 more refusals not logged"),
            "{lines:?}"
        );

        // A second later there are tokens again: the next refusal is written, after the count
        // of those suppressed meanwhile.
        let lines = captured(|| {
            for _ in 0..5 {
                log.log_at(start, refusal("origin not allowed"));
            }
            log.log_at(start + Duration::from_secs(1), refusal("late"));
            log.flush();
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("5 more refusals not logged"), "{lines:?}");
        assert!(lines[1].contains("late"), "{lines:?}");
    }

    #[test]
    fn long_text_is_cut_at_a_character() {
        let long = "é".repeat(100);
        let cut = shown(&long);
        assert!(cut.len() <= MAX_SHOWN && long.starts_with(cut));
    }
}
