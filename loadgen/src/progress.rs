//! Live progress on stderr: an indicatif line when stderr is a terminal, a plain line per second
//! when `--progress` asks for it elsewhere, nothing otherwise (and never in worker processes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::control::LiveTotals;

/// How often the plain form prints.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

enum Sink {
    Off,
    Bar(ProgressBar),
    Plain { last: Option<Instant> },
}

/// The progress display.
pub struct Progress {
    sink: Sink,
    started: Instant,
    planned: usize,
    last_rate: Option<(Instant, u64)>,
    rate: f64,
}

impl Progress {
    /// A display for a run of `planned` connections; `force` is `--progress`.
    pub fn new(force: bool, planned: usize) -> Progress {
        let sink = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .expect("static template"),
            );
            Sink::Bar(bar)
        } else if force {
            Sink::Plain { last: None }
        } else {
            Sink::Off
        };
        Progress {
            sink,
            started: Instant::now(),
            planned,
            last_rate: None,
            rate: 0.0,
        }
    }

    /// No display.
    pub fn off() -> Progress {
        Progress {
            sink: Sink::Off,
            started: Instant::now(),
            planned: 0,
            last_rate: None,
            rate: 0.0,
        }
    }

    /// Shows where the run is; `totals` are `None` when they live in other processes.
    pub fn show(&mut self, stage: &str, totals: Option<LiveTotals>) {
        if matches!(self.sink, Sink::Off) {
            return;
        }
        let now = Instant::now();
        let message = match totals {
            Some(t) => {
                if let Some((at, received)) = self.last_rate {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs >= 0.5 {
                        self.rate = t.received.saturating_sub(received) as f64 / secs;
                        self.last_rate = Some((now, t.received));
                    }
                } else {
                    self.last_rate = Some((now, t.received));
                }
                format!(
                    "{stage}: established {}/{} failed {} | received {} ({:.0}/s)",
                    t.established, self.planned, t.failed, t.received, self.rate
                )
            }
            None => stage.to_owned(),
        };
        match &mut self.sink {
            Sink::Off => {}
            Sink::Bar(bar) => {
                bar.set_message(message);
                bar.tick();
            }
            Sink::Plain { last } => {
                if last.is_none_or(|l| now.duration_since(l) >= PLAIN_EVERY) {
                    *last = Some(now);
                    let elapsed = now.duration_since(self.started).as_secs_f64();
                    eprintln!("[{elapsed:6.1}s] {message}");
                }
            }
        }
    }

    /// Clears the display.
    pub fn finish(&mut self) {
        if let Sink::Bar(bar) = &self.sink {
            bar.finish_and_clear();
        }
    }
}
