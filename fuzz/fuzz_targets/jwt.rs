//! JWT verification and topic grants (`server::auth`) on arbitrary bytes: `Jwt::verify` on the
//! input as a token, and on a token made of the input (`<header>\n<claims>`, or claims alone
//! under an HS256 header) signed with the server's secret; `pattern_matches` on a pattern and a
//! topic from the input (`<pattern>\n<topic>`, or the input as both).
//!
//! Invariants: a token is accepted (or found expired) only if its signature is the secret's
//! HS256 MAC of its first two parts and its header says HS256; what is accepted carries its
//! claims' `exp`, `sub` and grants exactly and has not expired; claims that are a well-formed
//! object with a future `exp`, signed with the secret, are accepted. Patterns: one without
//! wildcards matches only itself; a topic matches itself, and still does with any non-empty
//! segment made `*` or any tail of segments made `**`; a match without `**` has the topic's
//! segment count and separators.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clarion::server::auth::{Grants, Jwt, JwtConfig, Unauthorized, pattern_matches};
use jsonwebtoken::{Algorithm, EncodingKey, get_current_timestamp};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{Map, Value};

const SECRET: &[u8] = b"the fuzz target's secret, 32+ bytes";
const HS256_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;
/// The default `jwt_leeway` for `exp` and `nbf`, in seconds.
const LEEWAY: u64 = 60;

fuzz_target!(|data: &[u8]| {
    let jwt = Jwt::new(&JwtConfig {
        secret: Some(std::str::from_utf8(SECRET).expect("UTF-8").into()),
        leeway: std::time::Duration::from_secs(LEEWAY),
        ..JwtConfig::default()
    })
    .expect("a secret");
    check_token(&jwt, data);
    let (header, claims) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (HS256_HEADER, data),
    };
    check_token(&jwt, signed(header, claims).as_bytes());
    if let Some(canonical) = canonical_claims(claims) {
        let token = signed(HS256_HEADER, &canonical);
        let grants = jwt.verify(token.as_bytes());
        assert!(grants.is_ok(), "well-formed claims refused: {grants:?}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let (pattern, topic) = text.split_once('\n').unwrap_or((text, text));
        check_patterns(pattern, topic);
    }
});

/// `<base64 header>.<base64 claims>.<the secret's HS256 signature>`.
fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = EncodingKey::from_secret(SECRET);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs anything");
    format!("{message}.{signature}")
}

/// Verifies `token` and checks the answer against what the token holds.
fn check_token(jwt: &Jwt, token: &[u8]) {
    let before = get_current_timestamp();
    let result = jwt.verify(token);
    let after = get_current_timestamp();
    if result == Err(Unauthorized::Invalid) {
        return;
    }
    assert_ne!(
        result,
        Err(Unauthorized::Missing),
        "verify never says missing"
    );
    // Accepted or expired: the signature was checked first, so it must be the secret's.
    let text = std::str::from_utf8(token).expect("a token that verifies is ASCII");
    let (message, signature) = text.rsplit_once('.').expect("three parts");
    let (header, claims) = message.rsplit_once('.').expect("three parts");
    let expected = signed(&B64.decode(header).unwrap(), &B64.decode(claims).unwrap());
    let expected_signature = expected.rsplit_once('.').unwrap().1;
    assert_eq!(
        B64.decode(signature).ok(),
        B64.decode(expected_signature).ok(),
        "accepted a signature that is not the secret's"
    );
    let header: Header = serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
    assert_eq!(header.alg, "HS256", "accepted another algorithm");
    let claims = B64.decode(claims).unwrap();
    let claims: Claims = serde_json::from_slice(&claims).expect("claims that verify parse");
    match result {
        Ok(grants) => {
            assert!(claims.exp + LEEWAY >= before, "accepted an expired token");
            check_grants(&grants, &claims);
        }
        Err(Unauthorized::Expired) => assert!(claims.exp + LEEWAY < after, "expired too early"),
        Err(other) => unreachable!("{other:?}"),
    }
}

/// What a header that verifies must say.
#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// The claims the server reads, as its documentation states them.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The grants carry the claims exactly.
fn check_grants(grants: &Grants, claims: &Claims) {
    assert_eq!(grants.expires_at(), claims.exp);
    assert_eq!(grants.subject(), claims.sub.as_deref());
    let probes = claims
        .subscribe
        .iter()
        .chain(&claims.publish)
        .map(String::as_str)
        .chain(["a", "a.b", "a/b", "chat.lobby"]);
    for topic in probes {
        let any = |list: &[String]| list.iter().any(|pattern| pattern_matches(pattern, topic));
        assert_eq!(
            grants.can_subscribe(topic),
            any(&claims.subscribe),
            "{topic}"
        );
        assert_eq!(grants.can_publish(topic), any(&claims.publish), "{topic}");
    }
}

/// The claims re-encoded without duplicate keys, if they are an object the server must take: an
/// `exp` at least two leeways ahead, `sub` a string or null, the grant lists lists of strings,
/// and no `nbf` in the future.
fn canonical_claims(claims: &[u8]) -> Option<Vec<u8>> {
    let claims: Map<String, Value> = serde_json::from_slice(claims).ok()?;
    let now = get_current_timestamp();
    let fine = |name: &str, check: &dyn Fn(&Value) -> bool| claims.get(name).is_none_or(check);
    let strings = |v: &Value| v.as_array().is_some_and(|l| l.iter().all(Value::is_string));
    let ok = claims
        .get("exp")
        .and_then(Value::as_u64)
        .is_some_and(|exp| exp > now + 2 * LEEWAY)
        && fine("sub", &|v| v.is_string() || v.is_null())
        && fine("subscribe", &strings)
        && fine("publish", &strings)
        && fine("nbf", &|v| v.as_u64().is_some_and(|nbf| nbf <= now));
    ok.then(|| serde_json::to_vec(&claims).expect("a map serializes"))
}

/// A topic split at `.` and `/`: each segment with the separator that ends it.
fn segments(text: &str) -> Vec<(&str, Option<char>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        match rest.find(['.', '/']) {
            Some(at) => {
                out.push((&rest[..at], rest[at..].chars().next()));
                rest = &rest[at + 1..];
            }
            None => {
                out.push((rest, None));
                return out;
            }
        }
    }
}

fn join(segments: &[(&str, Option<char>)]) -> String {
    let mut out = String::new();
    for (segment, separator) in segments {
        out.push_str(segment);
        out.extend(*separator);
    }
    out
}

fn check_patterns(pattern: &str, topic: &str) {
    let matched = pattern_matches(pattern, topic);
    let parts = segments(pattern);
    if parts.iter().all(|(s, _)| *s != "*" && *s != "**") {
        assert_eq!(matched, pattern == topic, "{pattern:?} ~ {topic:?}");
    }
    if matched && parts.iter().all(|(s, _)| *s != "**") {
        let theirs = segments(topic);
        assert_eq!(parts.len(), theirs.len(), "{pattern:?} ~ {topic:?}");
        for ((p, ps), (t, ts)) in parts.iter().zip(&theirs) {
            assert_eq!(ps, ts, "separators differ: {pattern:?} ~ {topic:?}");
            assert!(*p == "*" || p == t, "{pattern:?} ~ {topic:?}");
        }
    }

    // A topic is its own pattern, unless a `**` segment before its last one makes it a
    // pattern that matches nothing.
    let theirs = segments(topic);
    let inner_globstar = |segments: &[(&str, Option<char>)]| {
        segments
            .iter()
            .rev()
            .skip(1)
            .any(|(segment, _)| *segment == "**")
    };
    if inner_globstar(&theirs) {
        return;
    }
    assert!(pattern_matches(topic, topic), "{topic:?} ~ itself");
    for at in 0..theirs.len().min(16) {
        if !theirs[at].0.is_empty() {
            let mut one = theirs.clone();
            one[at].0 = "*";
            let wild = join(&one);
            assert!(pattern_matches(&wild, topic), "{wild:?} ~ {topic:?}");
        }
        if theirs[at].1.is_some() {
            let tail = format!("{}**", join(&theirs[..=at]));
            assert!(pattern_matches(&tail, topic), "{tail:?} ~ {topic:?}");
        }
    }
}
