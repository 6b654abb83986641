//! Negotiating permessage-deflate (RFC 7692 §5 and §7.1), both roles.
//!
//! Server: every offer in the request's `Sec-WebSocket-Extensions` headers is parsed strictly
//! (an unknown parameter, a duplicate or a bad value declines that offer, not the handshake);
//! the first acceptable one is answered. Client: the offer to send, and the check of the answer.

use super::{MAX_WINDOW_BITS, MIN_WINDOW_BITS, Params};

/// The extension token.
pub(crate) const NAME: &str = "permessage-deflate";

/// What the server wants from any offer it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wants {
    /// Answer `server_no_context_takeover` (then no window is kept for sending).
    pub server_no_context_takeover: bool,
    /// Answer `client_no_context_takeover` (then no window is kept for receiving). RFC 7692
    /// §7.1.1.2 lets a server include it whatever the offer says.
    pub client_no_context_takeover: bool,
    /// The largest window the server compresses with.
    pub server_max_window_bits: u8,
    /// The largest window asked of the client, when its offer lets the server ask.
    pub client_max_window_bits: u8,
}

/// One `permessage-deflate` offer, as parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Chooses the first acceptable offer among `headers` (the values of every
/// `Sec-WebSocket-Extensions` header, in order) and returns what was agreed and the header value
/// to answer with; `None` when no offer is acceptable (the connection goes on uncompressed).
pub fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a [u8]>,
    wants: &Wants,
) -> Option<(Params, String)> {
    let offer = headers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(elements)
        .filter_map(parse)
        .find_map(Result::ok)?;
    let server_bits = offer
        .server_max_window_bits
        .unwrap_or(MAX_WINDOW_BITS)
        .min(wants.server_max_window_bits);
    let client_bits = match offer.client_max_window_bits {
        Some(hint) => hint
            .unwrap_or(MAX_WINDOW_BITS)
            .min(wants.client_max_window_bits),
        None => MAX_WINDOW_BITS,
    };
    let params = Params {
        server_no_context_takeover: offer.server_no_context_takeover
            || wants.server_no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover
            || wants.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    };
    let mut answer = String::from(NAME);
    if params.server_no_context_takeover {
        answer.push_str("; server_no_context_takeover");
    }
    if params.client_no_context_takeover {
        answer.push_str("; client_no_context_takeover");
    }
    if offer.server_max_window_bits.is_some() || server_bits < MAX_WINDOW_BITS {
        answer.push_str(&format!("; server_max_window_bits={server_bits}"));
    }
    // Only an offer with the parameter lets the server limit the client's window.
    if offer.client_max_window_bits.is_some() {
        answer.push_str(&format!("; client_max_window_bits={client_bits}"));
    }
    Some((params, answer))
}

/// What a client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOffer {
    /// Ask the server to start each message with an empty window.
    pub server_no_context_takeover: bool,
    /// Announce that this client starts each message with an empty window.
    pub client_no_context_takeover: bool,
    /// Ask the server for at most this window.
    pub server_max_window_bits: Option<u8>,
    /// Let the server limit this client's window (`client_max_window_bits` without a value).
    pub client_max_window_bits: bool,
}

impl Default for ClientOffer {
    /// What browsers offer: `permessage-deflate; client_max_window_bits`.
    fn default() -> ClientOffer {
        ClientOffer {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: true,
        }
    }
}

/// Why a server's answer cannot be accepted (the client must then fail the connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadAnswer;

impl ClientOffer {
    /// The `Sec-WebSocket-Extensions` value to send.
    pub fn header(&self) -> String {
        let mut offer = String::from(NAME);
        if self.server_no_context_takeover {
            offer.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            offer.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            offer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if self.client_max_window_bits {
            offer.push_str("; client_max_window_bits");
        }
        offer
    }

    /// Checks the server's `Sec-WebSocket-Extensions` answer (every header value, in order):
    /// `Ok(None)` when it declined, the agreed parameters when it accepted within this offer,
    /// `Err` for anything else (another extension, two answers, a parameter not allowed).
    pub fn accept<'a>(
        &self,
        headers: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<Params>, BadAnswer> {
        let mut agreed = None;
        for value in headers {
            let value = std::str::from_utf8(value).map_err(|_| BadAnswer)?;
            for element in elements(value) {
                let answer = parse(element).ok_or(BadAnswer)?.map_err(|_| BadAnswer)?;
                if agreed.is_some() {
                    return Err(BadAnswer);
                }
                let too_wide = |asked: Option<u8>, got: Option<u8>| matches!((asked, got), (Some(max), Some(bits)) if bits > max);
                if too_wide(self.server_max_window_bits, answer.server_max_window_bits)
                    || (answer.client_max_window_bits.is_some() && !self.client_max_window_bits)
                    || (self.server_no_context_takeover && !answer.server_no_context_takeover)
                {
                    return Err(BadAnswer);
                }
                agreed = Some(Params {
                    server_no_context_takeover: answer.server_no_context_takeover,
                    client_no_context_takeover: answer.client_no_context_takeover
                        || self.client_no_context_takeover,
                    server_max_window_bits: answer
                        .server_max_window_bits
                        .or(self.server_max_window_bits)
                        .unwrap_or(MAX_WINDOW_BITS),
                    client_max_window_bits: answer
                        .client_max_window_bits
                        .flatten()
                        .unwrap_or(MAX_WINDOW_BITS),
                });
            }
        }
        Ok(agreed)
    }
}

/// The comma-separated elements of a header value (commas inside quoted strings do not count),
/// trimmed, empty ones skipped.
fn elements(value: &str) -> impl Iterator<Item = &str> {
    split_unquoted(value, ',')
}

fn split_unquoted(value: &str, separator: char) -> impl Iterator<Item = &str> {
    let (mut pieces, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                pieces.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&value[start..]);
    pieces.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

/// Parses one element: `None` when it is not permessage-deflate, `Some(Err)` when it is but
/// malformed.
fn parse(element: &str) -> Option<Result<Offer, ()>> {
    let mut parts = split_unquoted(element, ';');
    let name = parts.next()?;
    if !name.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut offer = Offer::default();
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key.trim(), Some(unquote(value.trim()))),
            None => (part, None),
        };
        let ok = match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                !std::mem::replace(&mut offer.server_no_context_takeover, true)
            }
            "client_no_context_takeover" if value.is_none() => {
                !std::mem::replace(&mut offer.client_no_context_takeover, true)
            }
            "server_max_window_bits" => match value.flatten().and_then(window_bits) {
                Some(bits) => offer.server_max_window_bits.replace(bits).is_none(),
                None => false,
            },
            "client_max_window_bits" => match value {
                None => offer.client_max_window_bits.replace(None).is_none(),
                Some(v) => match v.and_then(window_bits) {
                    Some(bits) => offer.client_max_window_bits.replace(Some(bits)).is_none(),
                    None => false,
                },
            },
            _ => false,
        };
        if !ok {
            return Some(Err(()));
        }
    }
    Some(Ok(offer))
}

/// A token, or the contents of a quoted string (`None` if the quotes are unbalanced).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|v| !v.contains(['"', '\\'])),
        None => Some(value),
    }
}

/// 8 to 15, written without leading zeros or signs.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || value.starts_with('0') {
        return None;
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then_some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: Wants = Wants {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    const TAKEOVER: Wants = Wants {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    fn answer(offer: &str, wants: &Wants) -> Option<String> {
        negotiate([offer.as_bytes()], wants).map(|(_, answer)| answer)
    }

    #[test]
    fn negotiation_table() {
        let cases: &[(&str, &Wants, Option<&str>)] = &[
            // What browsers send.
            (
                "permessage-deflate; client_max_window_bits",
                &SHARED,
                Some(
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15",
                ),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                &TAKEOVER,
                Some("permessage-deflate; client_max_window_bits=15"),
            ),
            ("permessage-deflate", &TAKEOVER, Some("permessage-deflate")),
            // Each parameter.
            (
                "permessage-deflate; server_no_context_takeover",
                &TAKEOVER,
                Some("permessage-deflate; server_no_context_takeover"),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                &TAKEOVER,
                Some("permessage-deflate; client_no_context_takeover"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                &TAKEOVER,
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                &TAKEOVER,
                Some("permessage-deflate; server_max_window_bits=8"),
            ),
            (
                "permessage-deflate; client_max_window_bits=9",
                &TAKEOVER,
                Some("permessage-deflate; client_max_window_bits=9"),
            ),
            (
                "permessage-deflate; client_max_window_bits=\"12\"",
                &TAKEOVER,
                Some("permessage-deflate; client_max_window_bits=12"),
            ),
            // Invalid offers are declined.
            (
                "permessage-deflate; server_max_window_bits",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=7",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=010",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=+9",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits=x",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; server_no_context_takeover=1",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                &TAKEOVER,
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
                &TAKEOVER,
                None,
            ),
            ("permessage-deflate; unknown", &TAKEOVER, None),
            (
                "permessage-deflate; client_max_window_bits=\"1",
                &TAKEOVER,
                None,
            ),
            ("x-webkit-deflate-frame", &TAKEOVER, None),
            // The first acceptable offer wins.
            (
                "permessage-deflate; bogus, x-other; a=\"1,2\", permessage-deflate; server_max_window_bits=12, permessage-deflate",
                &TAKEOVER,
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
        ];
        for (offer, wants, expected) in cases {
            assert_eq!(answer(offer, wants).as_deref(), *expected, "{offer}");
        }
    }

    #[test]
    fn the_server_limits_windows_within_the_offer() {
        let small = Wants {
            server_max_window_bits: 10,
            client_max_window_bits: 11,
            ..TAKEOVER
        };
        let (params, answer) =
            negotiate([&b"permessage-deflate; client_max_window_bits"[..]], &small).unwrap();
        assert_eq!(
            answer,
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11"
        );
        assert_eq!(
            (params.server_max_window_bits, params.client_max_window_bits),
            (10, 11)
        );
        // Without client_max_window_bits in the offer the client's window cannot be limited.
        let (params, _) = negotiate([&b"permessage-deflate"[..]], &small).unwrap();
        assert_eq!(params.client_max_window_bits, 15);
        // Offers spread over several headers are read in order.
        let (params, _) = negotiate(
            [&b"foo"[..], b"permessage-deflate; server_max_window_bits=9"],
            &TAKEOVER,
        )
        .unwrap();
        assert_eq!(params.server_max_window_bits, 9);
    }

    #[test]
    fn client_checks_the_answer_against_its_offer() {
        let offer = ClientOffer {
            server_max_window_bits: Some(10),
            ..ClientOffer::default()
        };
        assert_eq!(
            offer.header(),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits"
        );
        let check = |answer: &str| offer.accept([answer.as_bytes()]);
        assert_eq!(
            check("permessage-deflate; server_max_window_bits=9; client_no_context_takeover"),
            Ok(Some(Params {
                server_no_context_takeover: false,
                client_no_context_takeover: true,
                server_max_window_bits: 9,
                client_max_window_bits: 15,
            }))
        );
        assert_eq!(offer.accept(std::iter::empty()), Ok(None));
        for bad in [
            "permessage-deflate; server_max_window_bits=11",
            "permessage-deflate, permessage-deflate",
            "x-other",
            "permessage-deflate; foo",
        ] {
            assert_eq!(check(bad), Err(BadAnswer), "{bad}");
        }
        let no_client_bits = ClientOffer {
            client_max_window_bits: false,
            ..ClientOffer::default()
        };
        assert_eq!(
            no_client_bits.accept([&b"permessage-deflate; client_max_window_bits=9"[..]]),
            Err(BadAnswer)
        );
    }

    #[test]
    fn server_and_client_agree() {
        for offer in [
            ClientOffer::default(),
            ClientOffer {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: Some(8),
                client_max_window_bits: false,
            },
        ] {
            for wants in [SHARED, TAKEOVER] {
                let (server, answer) = negotiate([offer.header().as_bytes()], &wants).unwrap();
                let client = offer.accept([answer.as_bytes()]).unwrap().unwrap();
                assert_eq!(server, client, "{offer:?} {wants:?}");
            }
        }
    }
}
