//! The server side of the opening handshake on arbitrary bytes, as the connection and the push
//! server use it: `Request::parse`, then what a handler asks of the request (path, query, headers,
//! body length, auth token, origin, the client's address behind trusted proxies), the upgrade
//! check and the permessage-deflate negotiation.
//!
//! Invariants: a parsed head is within the limits and parses again, alone, to the same length;
//! a stricter limit never yields a different head; an accepted upgrade answers the key's accept
//! value, and every answer written is a complete HTTP response with the right status; an
//! untrusted peer's forwarding headers are never read, and a client a trusted proxy names is
//! canonical and comes from the configured header.
#![no_main]

use clarion_protocol::deflate::{self, Wants};
use clarion_protocol::handshake::{Accept, HeadError, Request};
use clarion::server::auth::{self, ApiKey, Jwt, JwtConfig, Origins};
use clarion::server::forwarded::{self, ForwardedHeader};
use clarion_engine::TrustedProxies;
use libfuzzer_sys::fuzz_target;

/// The defaults of `clarion_protocol::Config`, and a small pair.
const LIMITS: [(usize, usize); 2] = [(8 << 10, 64), (256, 4)];

fuzz_target!(|data: &[u8]| {
    let mut lengths = Vec::new();
    for (max_head, max_headers) in LIMITS {
        match Request::parse(data, max_head, max_headers) {
            Ok(Some((request, len))) => {
                assert!(len <= max_head && len <= data.len());
                let (again, again_len) = Request::parse(&data[..len], max_head, max_headers)
                    .expect("a head parses again")
                    .expect("a head is complete on its own");
                assert_eq!(again_len, len);
                assert_eq!(again.target(), request.target());
                exercise(&request);
                lengths.push(Some(len));
            }
            Ok(None) => {
                assert!(data.len() < max_head);
                lengths.push(None);
            }
            Err(error) => {
                assert!(matches!(
                    error,
                    HeadError::TooLarge | HeadError::TooManyHeaders | HeadError::Malformed
                ));
                lengths.push(None);
            }
        }
    }
    // What the small limits accept, the default ones accept the same way.
    if let [default, Some(small)] = lengths[..] {
        assert_eq!(default, Some(small));
    }
});

fn exercise(request: &Request<'_>) {
    let (path, query) = (request.path(), request.query());
    match query {
        Some(query) => assert_eq!(format!("{path}?{query}"), request.target()),
        None => assert_eq!(path, request.target()),
    }
    let _ = request.body_len(1 << 20).map(|len| assert!(len <= 1 << 20));
    let _ = request.protocols().count();
    if let Some(token) = auth::token(request) {
        assert!(!token.is_empty());
    }
    let jwt = Jwt::new(&JwtConfig {
        secret: Some("a fuzz secret of at least 32 bytes".into()),
        ..JwtConfig::default()
    })
    .expect("a secret");
    let _ = jwt.authenticate(request);
    let _ = ApiKey::new(b"key").expect("a key").check(request);
    let _ = Origins::new(&["https://example.com"]).allows(request);
    client_address(request);

    let mut out = Vec::new();
    match request.upgrade() {
        Ok(accept) => {
            assert_eq!(request.method(), "GET");
            let key = request
                .header("sec-websocket-key")
                .expect("a key")
                .trim_ascii();
            assert_eq!(accept, Accept::for_key(key));
            let extensions = negotiate(request);
            accept.write_response(None, extensions.as_deref(), &mut out);
            let headers = parse_response(&out, 101);
            assert!(headers.contains(&("sec-websocket-accept".into(), accept.as_str().into())));
        }
        Err(rejection) => {
            rejection.write_response(&mut out);
            parse_response(&out, rejection.status);
        }
    }
}

/// The client's address, from both headers, behind a trusted 10.0.0.0/8.
fn client_address(request: &Request<'_>) {
    let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("a block")]);
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let outsider = "192.0.2.1:5000".parse().expect("an address");
        assert_eq!(forwarded::client(request, outsider, &trusted, header), Ok(None));
        let proxy = "10.0.0.1:5000".parse().expect("an address");
        if let Ok(Some(client)) = forwarded::client(request, proxy, &trusted, header) {
            assert_eq!(client.ip(), client.ip().to_canonical());
            assert!(request.header(header.name()).is_some());
        }
    }
}

/// Negotiates as the reactor does, for both of its compression policies; the answer of the
/// shared one.
fn negotiate(request: &Request<'_>) -> Option<String> {
    let offers = || {
        request
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, value)| value)
    };
    let shared = Wants {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let own = Wants {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        ..shared
    };
    let _ = deflate::negotiate(offers(), &own);
    deflate::negotiate(offers(), &shared).map(|(params, answer)| {
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        answer
    })
}

/// Parses a response Clarion wrote: complete, with this status; its headers, names lower-cased.
fn parse_response(bytes: &[u8], status: u16) -> Vec<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "bad response {other:?}: {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    assert_eq!(response.code, Some(status));
    let body = &bytes[len..];
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8(h.value.to_vec()).expect("ASCII headers");
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    if let Some((_, length)) = headers.iter().find(|(name, _)| name == "content-length") {
        assert_eq!(length.parse::<usize>().ok(), Some(body.len()));
    }
    headers
}
