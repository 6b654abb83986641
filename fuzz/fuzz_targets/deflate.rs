//! permessage-deflate on arbitrary input: negotiation of `Sec-WebSocket-Extensions` values in
//! both roles, the inflater on arbitrary bytes, and the codec round trip.
//!
//! The first byte picks the mode and its options; the rest is the input.
//! - Server negotiation: agreed windows are 8 to 15 and within what the server wants, and a
//!   client that allows everything accepts the answer as exactly the agreed parameters.
//! - Client check of an answer: what it accepts stays within its offer.
//! - Inflating: never more output than the limit (nor a buffer much larger), an error leaves the
//!   output as it was, and the context is usable again afterwards.
//! - Compressing any payload (in three messages, with or without context takeover) inflates
//!   back.
#![no_main]

use clarion_protocol::deflate::{
    ClientOffer, Deflater, InflateError, Inflater, MAX_WINDOW_BITS, MIN_WINDOW_BITS, Params, Wants,
    negotiate,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [options, rest @ ..] = data else {
        return;
    };
    let bits = |n: u8| MIN_WINDOW_BITS + n % 8;
    match options % 4 {
        0 => server(
            rest,
            &Wants {
                server_no_context_takeover: options & 4 != 0,
                client_no_context_takeover: options & 8 != 0,
                server_max_window_bits: bits(options >> 4),
                client_max_window_bits: bits(options >> 5),
            },
        ),
        1 => client(
            rest,
            &ClientOffer {
                server_no_context_takeover: options & 4 != 0,
                client_no_context_takeover: options & 8 != 0,
                server_max_window_bits: (options & 16 != 0).then(|| bits(options >> 5)),
                client_max_window_bits: options & 128 != 0,
            },
        ),
        2 => inflate(rest, bits(options >> 2), options & 32 != 0),
        _ => round_trip(rest, bits(options >> 2), options & 32 != 0),
    }
});

/// Header values, one per line.
fn headers(text: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    text.split(|&b| b == b'\n')
}

fn valid(params: &Params) -> bool {
    let range = MIN_WINDOW_BITS..=MAX_WINDOW_BITS;
    range.contains(&params.server_max_window_bits) && range.contains(&params.client_max_window_bits)
}

fn server(text: &[u8], wants: &Wants) {
    let Some((params, answer)) = negotiate(headers(text), wants) else {
        return;
    };
    assert!(valid(&params), "{params:?}");
    assert!(params.server_max_window_bits <= wants.server_max_window_bits);
    assert!(params.server_no_context_takeover >= wants.server_no_context_takeover);
    assert!(params.client_no_context_takeover >= wants.client_no_context_takeover);
    let permissive = ClientOffer {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: None,
        client_max_window_bits: true,
    };
    assert_eq!(
        permissive.accept([answer.as_bytes()]),
        Ok(Some(params)),
        "answer {answer:?}"
    );
}

fn client(text: &[u8], offer: &ClientOffer) {
    let Ok(Some(params)) = offer.accept(headers(text)) else {
        return;
    };
    assert!(valid(&params), "{params:?}");
    assert!(params.server_no_context_takeover >= offer.server_no_context_takeover);
    assert!(params.client_no_context_takeover >= offer.client_no_context_takeover);
    if let Some(max) = offer.server_max_window_bits {
        assert!(params.server_max_window_bits <= max);
    }
    if !offer.client_max_window_bits {
        assert_eq!(params.client_max_window_bits, MAX_WINDOW_BITS);
    }
}

/// Input: two bytes of limit, then the compressed bytes.
fn inflate(data: &[u8], window_bits: u8, takeover: bool) {
    let [hi, lo, compressed @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*hi, *lo]));
    let mut inflater = Inflater::new(window_bits);
    let mut out = Vec::new();
    let first = inflater.inflate(compressed, &mut out, limit, takeover);
    assert!(out.len() <= limit);
    // Never more than the limit and one byte held.
    assert!(
        out.capacity() <= limit + 1,
        "{} > {limit} + 1",
        out.capacity()
    );
    if first.is_err() {
        assert!(out.is_empty());
        // After an error the context starts afresh: a real message inflates.
        let mut wire = Vec::new();
        Deflater::new(6, window_bits).compress(b"after", &mut wire, false);
        let mut fresh = Vec::new();
        inflater
            .inflate(&wire, &mut fresh, 5, takeover)
            .expect("usable again after an error");
        assert_eq!(fresh, b"after");
    }
    // Appending to what is there: the limit counts this message only, an error keeps the rest.
    let before = out.clone();
    match inflater.inflate(compressed, &mut out, limit, takeover) {
        Ok(()) => assert!(out.len() - before.len() <= limit),
        Err(InflateError::TooBig | InflateError::Corrupt) => assert_eq!(out, before),
    }
}

/// Input: a level byte, two split bytes, then the payload (three messages, any of them
/// possibly empty).
fn round_trip(data: &[u8], window_bits: u8, takeover: bool) {
    let [level, first, second, payload @ ..] = data else {
        return;
    };
    let cut = |at: u8| payload.len() * usize::from(at) / 255;
    let (a, b) = (cut(*first.min(second)), cut(*first.max(second)));
    let mut deflater = Deflater::new(u32::from(level % 10), window_bits);
    let mut inflater = Inflater::new(window_bits);
    for message in [&payload[..a], &payload[a..b], &payload[b..]] {
        let mut wire = Vec::new();
        deflater.compress(message, &mut wire, takeover);
        let mut back = Vec::new();
        inflater
            .inflate(&wire, &mut back, message.len(), takeover)
            .expect("what was compressed inflates, within its own length");
        assert_eq!(back, message);
    }
}
