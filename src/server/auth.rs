//! Who may connect and what they may do: HS256 JWTs with topic grants, the API key of the HTTP
//! publish API, and the Origin allowlist. Every check reads a request head; none does I/O.
//!
//! A token comes in `Authorization: Bearer <jwt>` or, for browsers that cannot set headers, in
//! the `token` query parameter (taken as is: a JWT needs no percent-encoding). Its claims:
//! `exp` (required), `sub` (optional), and `subscribe` / `publish`, lists of topic patterns.
//!
//! Patterns: a topic splits into segments at `.` and `/`. In a pattern, `*` matches exactly one
//! non-empty segment and a final `**` matches one or more segments (whatever their separators);
//! any other segment matches itself. Separators must agree: `chat.*` matches `chat.lobby`, not
//! `chat/lobby` or `chat.a.b`; `chat.**` matches both `chat.a` and `chat.a/b`, not `chat`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use clarion_protocol::handshake::Request;

/// Whether WebSocket clients must show a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect, subscribe and (as `client_publish` allows) publish.
    #[default]
    None,
    /// An HS256 JWT is required; its grants decide the topics.
    Jwt,
}

/// Why a request is refused with 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unauthorized {
    /// No token in the request.
    Missing,
    /// The token's `exp` has passed.
    Expired,
    /// Malformed, wrong algorithm, bad signature, or missing or mistyped claims.
    Invalid,
}

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unauthorized::Missing => "missing token",
            Unauthorized::Expired => "expired token",
            Unauthorized::Invalid => "invalid token",
        })
    }
}

impl std::error::Error for Unauthorized {}

/// The claims Clarion reads; others are ignored.
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

/// What a valid token allows. Checking a topic is the caller's, per topic (403 or a
/// `forbidden` error reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    subject: Option<Box<str>>,
    expires_at: u64,
    subscribe: Box<[Box<str>]>,
    publish: Box<[Box<str>]>,
}

impl Grants {
    /// The token's `sub`, for logs.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The token's `exp`, seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether a `subscribe` pattern matches `topic`.
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| pattern_matches(p, topic))
    }

    /// Whether a `publish` pattern matches `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, topic))
    }
}

/// Verifies HS256 JWTs with one shared secret.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("Jwt { .. }")
    }
}

impl Jwt {
    /// A verifier for tokens signed with `secret`; `None` for an empty secret, which anyone
    /// could sign with.
    pub fn new(secret: &[u8]) -> Option<Jwt> {
        if secret.is_empty() {
            return None;
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is required and checked (with jsonwebtoken's 60 s leeway for clock skew); `nbf`
        // is checked when present; Clarion configures no audience to check.
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Some(Jwt {
            key: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Checks the token that `request` carries (see the module docs for where).
    pub fn authenticate(&self, request: &Request) -> Result<Grants, Unauthorized> {
        self.verify(token(request).ok_or(Unauthorized::Missing)?)
    }

    /// Checks one token: signature, algorithm, `exp`, and the claims' shape.
    pub fn verify(&self, token: &[u8]) -> Result<Grants, Unauthorized> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => Unauthorized::Expired,
                _ => Unauthorized::Invalid,
            },
        )?;
        let claims = data.claims;
        let boxed = |list: Vec<String>| list.into_iter().map(String::into_boxed_str).collect();
        Ok(Grants {
            subject: claims.sub.map(String::into_boxed_str),
            expires_at: claims.exp,
            subscribe: boxed(claims.subscribe),
            publish: boxed(claims.publish),
        })
    }
}

/// The token of a request: `Authorization: Bearer` first, else the `token` query parameter.
pub fn token<'a>(request: &Request<'a>) -> Option<&'a [u8]> {
    request
        .header("authorization")
        .and_then(bearer)
        .or_else(|| {
            request
                .query()?
                .split('&')
                .find_map(|pair| pair.strip_prefix("token="))
                .map(str::as_bytes)
                .filter(|token| !token.is_empty())
        })
}

/// The credentials of an `Authorization: Bearer <credentials>` value (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    let credentials = rest.strip_prefix(b" ")?.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !credentials.is_empty()).then_some(credentials)
}

/// Whether a topic pattern matches a topic (see the module docs for the syntax).
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let mut topic = segments(topic);
    for (part, separator) in segments(pattern) {
        if part == "**" && separator.is_none() {
            return topic.next().is_some();
        }
        let Some((segment, topic_separator)) = topic.next() else {
            return false;
        };
        let fits = match part {
            "*" => !segment.is_empty(),
            // `**` only means something at the end; elsewhere it matches nothing.
            "**" => false,
            literal => literal == segment,
        };
        if !fits || separator != topic_separator {
            return false;
        }
    }
    topic.next().is_none()
}

/// Splits at `.` and `/`: each segment with the separator that ends it (`None` for the last).
fn segments(text: &str) -> impl Iterator<Item = (&str, Option<u8>)> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['.', '/']) {
            Some(at) => {
                let (segment, tail) = text.split_at(at);
                rest = tail.get(1..);
                Some((segment, tail.bytes().next()))
            }
            None => {
                rest = None;
                Some((text, None))
            }
        }
    })
}

/// The bearer key of the HTTP publish API.
pub struct ApiKey(Box<[u8]>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// A key; `None` for an empty one, which would match any empty bearer.
    pub fn new(key: &[u8]) -> Option<ApiKey> {
        (!key.is_empty()).then(|| ApiKey(key.into()))
    }

    /// Whether `request` carries `Authorization: Bearer <key>`. The comparison takes the same
    /// time wherever the bytes differ; only the key's length can show through timing.
    pub fn check(&self, request: &Request) -> bool {
        request
            .header("authorization")
            .and_then(bearer)
            .is_some_and(|given| bool::from(given.ct_eq(&self.0)))
    }
}

/// Which browser origins may open WebSockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (the default, and what a `*` entry means).
    Any,
    /// Only these `scheme://host[:port]` origins, compared case-insensitively.
    List(Box<[Box<str>]>),
}

impl Origins {
    /// An allowlist from configured entries: empty, or with a `*`, allows every origin. A
    /// trailing `/` on an entry is ignored.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Origins {
        let entries: Box<[Box<str>]> = entries
            .iter()
            .map(|entry| entry.as_ref().trim().trim_end_matches('/').into())
            .collect();
        if entries.is_empty() || entries.iter().any(|entry| &**entry == "*") {
            Origins::Any
        } else {
            Origins::List(entries)
        }
    }

    /// Whether `request` may proceed: always without an `Origin` header (not a browser),
    /// otherwise when the origin is listed.
    pub fn allows(&self, request: &Request) -> bool {
        match (self, request.header("origin")) {
            (Origins::Any, _) | (_, None) => true,
            (Origins::List(entries), Some(origin)) => entries
                .iter()
                .any(|entry| entry.as_bytes().eq_ignore_ascii_case(origin.trim_ascii())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"test secret";

    fn sign(claims: &Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn with_request<R>(head: &str, f: impl FnOnce(&Request) -> R) -> R {
        let text = format!("{head}\r\nHost: h\r\n\r\n");
        let (request, _) = Request::parse(text.as_bytes(), 8192, 64).unwrap().unwrap();
        f(&request)
    }

    fn jwt() -> Jwt {
        Jwt::new(SECRET).unwrap()
    }

    fn in_an_hour() -> u64 {
        get_current_timestamp() + 3600
    }

    #[test]
    fn valid_token_gives_its_grants() {
        let token = sign(
            &json!({"exp": in_an_hour(), "sub": "ada", "subscribe": ["news.*", "chat.**"],
                    "publish": ["chat.lobby"], "other": 1}),
            SECRET,
        );
        let grants = jwt().verify(token.as_bytes()).unwrap();
        assert_eq!(grants.subject(), Some("ada"));
        assert_eq!(grants.expires_at(), in_an_hour());
        assert!(grants.can_subscribe("news.eu") && grants.can_subscribe("chat.a/b"));
        assert!(!grants.can_subscribe("news.eu.fr") && !grants.can_subscribe("other"));
        assert!(grants.can_publish("chat.lobby") && !grants.can_publish("chat.other"));
        let bare = jwt()
            .verify(sign(&json!({"exp": in_an_hour()}), SECRET).as_bytes())
            .unwrap();
        assert!(bare.subject().is_none() && !bare.can_subscribe("a") && !bare.can_publish("a"));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let jwt = jwt();
        let expired = sign(&json!({"exp": get_current_timestamp() - 3600}), SECRET);
        assert_eq!(jwt.verify(expired.as_bytes()), Err(Unauthorized::Expired));
        let wrong_key = sign(&json!({"exp": in_an_hour()}), b"another secret");
        assert_eq!(jwt.verify(wrong_key.as_bytes()), Err(Unauthorized::Invalid));
        let mut tampered = sign(&json!({"exp": in_an_hour()}), SECRET).into_bytes();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(jwt.verify(&tampered), Err(Unauthorized::Invalid));
        let cases = [
            json!({"sub": "no exp"}),
            json!({"exp": "9999999999"}),
            json!({"exp": in_an_hour(), "nbf": in_an_hour() + 3600}),
            json!({"exp": in_an_hour(), "subscribe": "not a list"}),
            json!({"exp": in_an_hour(), "publish": [1]}),
        ];
        for claims in cases {
            let token = sign(&claims, SECRET);
            assert_eq!(
                jwt.verify(token.as_bytes()),
                Err(Unauthorized::Invalid),
                "{claims}"
            );
        }
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"exp": in_an_hour()}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(jwt.verify(hs512.as_bytes()), Err(Unauthorized::Invalid));
        // alg "none": header {"alg":"none","typ":"JWT"}, claims {"exp":9999999999}, no signature.
        let none = b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(jwt.verify(none), Err(Unauthorized::Invalid));
        for junk in [&b""[..], b"a.b.c", b"...", b"\xff\xfe", &[b'a'; 10_000]] {
            assert_eq!(jwt.verify(junk), Err(Unauthorized::Invalid));
        }
        assert!(Jwt::new(b"").is_none());
    }

    #[test]
    fn token_comes_from_header_or_query() {
        let token = sign(&json!({"exp": in_an_hour(), "subscribe": ["t"]}), SECRET);
        let jwt = jwt();
        let by_query = format!("GET /ws?x=1&token={token} HTTP/1.1");
        assert!(with_request(&by_query, |r| jwt.authenticate(r)).is_ok());
        let by_header = format!("GET /ws HTTP/1.1\r\nAuthorization: bearer  {token} ");
        assert!(with_request(&by_header, |r| jwt.authenticate(r)).is_ok());
        let header_wins = format!("GET /ws?token=junk HTTP/1.1\r\nAuthorization: Bearer {token}");
        assert!(with_request(&header_wins, |r| jwt.authenticate(r)).is_ok());
        for missing in [
            "GET /ws HTTP/1.1",
            "GET /ws?token= HTTP/1.1",
            "GET /ws?tokens=x HTTP/1.1",
            "GET /ws HTTP/1.1\r\nAuthorization: Basic abc",
            "GET /ws HTTP/1.1\r\nAuthorization: Bearer",
            "GET /ws HTTP/1.1\r\nAuthorization: Bearerx",
        ] {
            let result = with_request(missing, |r| jwt.authenticate(r));
            assert_eq!(result, Err(Unauthorized::Missing), "{missing}");
        }
    }

    #[test]
    fn patterns() {
        let cases = [
            ("a", "a", true),
            ("a", "b", false),
            ("a.b", "a.b", true),
            ("a.b", "a/b", false),
            ("a.*", "a.b", true),
            ("a.*", "a.", false),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("*.b", "x.b", true),
            ("*/*", "x/y", true),
            ("*/*", "x.y", false),
            ("a.**", "a.b", true),
            ("a.**", "a.b/c.d", true),
            ("a.**", "a", false),
            ("a/**", "a.b", false),
            ("**", "anything/at.all", true),
            ("a.**.c", "a.b.c", false),
            ("a**", "a**", true),
            ("", "a", false),
            ("a.", "a.", true),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(
                pattern_matches(pattern, topic),
                expected,
                "{pattern} ~ {topic}"
            );
        }
    }

    #[test]
    fn api_key() {
        let key = ApiKey::new(b"s3cret").unwrap();
        let check = |head: &str| with_request(head, |r| key.check(r));
        assert!(check(
            "POST /publish HTTP/1.1\r\nAuthorization: Bearer s3cret"
        ));
        assert!(!check(
            "POST /publish HTTP/1.1\r\nAuthorization: Bearer s3cre"
        ));
        assert!(!check(
            "POST /publish HTTP/1.1\r\nAuthorization: Bearer s3cret2"
        ));
        assert!(!check("POST /publish HTTP/1.1\r\nAuthorization: s3cret"));
        assert!(!check("POST /publish?token=s3cret HTTP/1.1"));
        assert!(ApiKey::new(b"").is_none());
        assert_eq!(format!("{key:?}"), "ApiKey(..)");
    }

    #[test]
    fn origins() {
        let list = Origins::new(&["https://app.example.com/", "http://localhost:3000"]);
        let allows = |origin: &str| {
            let head = format!("GET /ws HTTP/1.1\r\nOrigin: {origin}");
            with_request(&head, |r| list.allows(r))
        };
        assert!(allows("https://app.example.com"));
        assert!(allows("HTTPS://APP.example.com"));
        assert!(allows("http://localhost:3000"));
        assert!(!allows("http://localhost:3001"));
        assert!(!allows("https://app.example.com.evil.net"));
        assert!(!allows("null"));
        assert!(with_request("GET /ws HTTP/1.1", |r| list.allows(r)));
        assert_eq!(Origins::new(&["https://a", "*"]), Origins::Any);
        assert_eq!(Origins::new::<&str>(&[]), Origins::Any);
    }
}
