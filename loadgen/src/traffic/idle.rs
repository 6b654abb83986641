//! `idle`: connections are opened and held; nothing is sent but keep-alive pings (which the
//! protocol core sends when `--ping-interval` is set). A message from the server is counted, not
//! an error.

use clarion_protocol::MessageKind;

use super::{Link, Traffic, Verdict};
use crate::tally::Tally;

/// Holds connections.
pub struct Idle;

impl Traffic for Idle {
    type Conn = ();

    fn message(&mut self, _: &mut (), _: &mut Link<'_>, _: MessageKind, _: &[u8]) -> Verdict {
        Verdict::Continue
    }

    fn drained(&self, _: &Tally, _: usize) -> bool {
        true
    }
}
