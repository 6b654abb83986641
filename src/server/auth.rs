//! Who may connect and what they may do: JWTs with topic grants (HS256 with a shared secret, or
//! RS256 / ES256 with the signer's public key), the API key of the HTTP publish API, and the
//! Origin allowlist. Every check reads a request head or a token; none does I/O (the public key
//! file is read once, when the verifier is built).
//!
//! A token comes in `Authorization: Bearer <jwt>` or, for browsers that cannot set headers, in
//! the `token` query parameter (taken as is: a JWT needs no percent-encoding); on `/ws` a
//! `refresh` command brings the next one. Its claims: `exp` (required), `nbf` (checked when
//! present), `aud` and `iss` (required and checked when configured), `sub` (optional), and
//! `subscribe` / `publish`, lists of topic patterns.
//!
//! Patterns: a topic splits into segments at `.` and `/`. In a pattern, `*` matches exactly one
//! non-empty segment and a final `**` matches one or more segments (whatever their separators);
//! any other segment matches itself. Separators must agree: `chat.*` matches `chat.lobby`, not
//! `chat/lobby` or `chat.a.b`; `chat.**` matches both `chat.a` and `chat.a/b`, not `chat`.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::config::Secret;
use clarion_protocol::handshake::Request;

/// The shortest HS256 secret accepted: 32 bytes, the 256 bits of the hash (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// The smallest RSA key accepted for RS256 (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

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

/// Why a token is refused (401 before the upgrade; close 4001 or 4003 on `/ws`; an
/// `unauthorized` error to a `refresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unauthorized {
    /// No token in the request.
    Missing,
    /// The token's `exp` (plus the leeway) has passed.
    Expired,
    /// `aud` or `iss` missing, or not one of the configured values.
    NotForUs,
    /// Malformed, wrong algorithm, bad signature, not yet valid (`nbf`), or missing or mistyped
    /// claims.
    Invalid,
}

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unauthorized::Missing => "missing token",
            Unauthorized::Expired => "token expired",
            Unauthorized::NotForUs => "token not meant for this server (aud or iss)",
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
    /// The token's `sub`: for logs, and a `refresh` must keep it.
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

/// How tokens are checked: the `jwt_*` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// HS256: the shared secret, at least [`MIN_SECRET_LEN`] bytes.
    pub secret: Option<Secret>,
    /// RS256 or ES256 (chosen by the key's type): a PEM file with the signer's public key, RSA
    /// of at least [`MIN_RSA_BITS`] or EC P-256.
    pub public_key: Option<PathBuf>,
    /// Accepted `aud` values; when set, a token needs an `aud` holding one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, a token needs one of them as its `iss`.
    pub issuer: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf` (whole seconds). A connection is closed once its
    /// token's `exp` plus this has passed.
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> JwtConfig {
        JwtConfig {
            secret: None,
            public_key: None,
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::from_secs(60),
        }
    }
}

/// Verifies JWTs with one key: an HS256 secret, or an RS256 or ES256 public key.
#[derive(Clone)]
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(f, "Jwt {{ algorithm: {:?}, .. }}", self.algorithm())
    }
}

impl Jwt {
    /// A verifier for `config`, or why the configuration cannot be used (one line, for the
    /// operator): no key or two, a secret shorter than [`MIN_SECRET_LEN`], or a key file that
    /// cannot be read or holds no usable public key.
    pub fn new(config: &JwtConfig) -> Result<Jwt, String> {
        let (algorithm, key) = match (&config.secret, &config.public_key) {
            (Some(_), Some(_)) => {
                return Err("set jwt_secret or jwt_public_key, not both".to_owned());
            }
            (None, None) => {
                return Err("auth = jwt needs a jwt_secret or a jwt_public_key".to_owned());
            }
            (Some(secret), None) => {
                if secret.len() < MIN_SECRET_LEN {
                    return Err(format!(
                        "jwt_secret must be at least {MIN_SECRET_LEN} bytes (HS256 needs a \
                         256-bit key); it has {}",
                        secret.len()
                    ));
                }
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.as_bytes()),
                )
            }
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read jwt_public_key {}: {e}", path.display()))?;
                public_key(&pem).map_err(|e| format!("jwt_public_key {}: {e}", path.display()))?
            }
        };
        let mut validation = Validation::new(algorithm);
        // `exp` is required and checked, `nbf` checked when present, both with the leeway.
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = !config.audience.is_empty();
        if !config.audience.is_empty() {
            validation.set_audience(&config.audience);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if !config.issuer.is_empty() {
            validation.set_issuer(&config.issuer);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        Ok(Jwt {
            key,
            validation,
            leeway: config.leeway.as_secs(),
        })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks the token that `request` carries (see the module docs for where).
    pub fn authenticate(&self, request: &Request) -> Result<Grants, Unauthorized> {
        self.verify(token(request).ok_or(Unauthorized::Missing)?)
    }

    /// Checks one token: signature, algorithm, `exp`, `nbf`, `aud`, `iss`, and the claims'
    /// shape.
    pub fn verify(&self, token: &[u8]) -> Result<Grants, Unauthorized> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => Unauthorized::Expired,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => Unauthorized::NotForUs,
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" || claim == "iss" => {
                    Unauthorized::NotForUs
                }
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

    /// Seconds from `now` (Unix seconds) until a connection holding `grants` must end: its
    /// `exp` plus the leeway. `None` once that has passed.
    pub fn remaining(&self, grants: &Grants, now: u64) -> Option<u64> {
        grants
            .expires_at
            .saturating_add(self.leeway)
            .checked_sub(now)
    }
}

/// The algorithm and verifying key of a PEM public key: RSA (SubjectPublicKeyInfo or PKCS#1)
/// for RS256, EC P-256 (SubjectPublicKeyInfo) for ES256. The key is parsed and checked here,
/// so a bad file stops the start instead of failing every token later.
fn public_key(pem: &str) -> Result<(Algorithm, DecodingKey), String> {
    let rsa = if pem.contains("-----BEGIN RSA PUBLIC KEY-----") {
        Some(rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("bad RSA key: {e}"))?)
    } else {
        rsa::RsaPublicKey::from_public_key_pem(pem).ok()
    };
    if let Some(rsa) = rsa {
        let bits = rsa.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "an RSA key of {bits} bits; RS256 needs at least {MIN_RSA_BITS}"
            ));
        }
        let (n, e) = (rsa.n().to_bytes_be(), rsa.e().to_bytes_be());
        return Ok((
            Algorithm::RS256,
            DecodingKey::from_rsa_raw_components(&n, &e),
        ));
    }
    match p256::PublicKey::from_public_key_pem(pem) {
        Ok(ec) => Ok((
            Algorithm::ES256,
            DecodingKey::from_ec_der(ec.to_encoded_point(false).as_bytes()),
        )),
        Err(_) => Err(
            "not a public key in PEM (BEGIN PUBLIC KEY, RSA or EC P-256; or BEGIN RSA PUBLIC KEY)"
                .to_owned(),
        ),
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

    /// [`ApiKey::check`], or `key=<key>` in the query, taken as is (no percent-decoding): what a
    /// browser can send, which sets no header on a page it opens or on a WebSocket.
    pub fn check_or_query(&self, request: &Request) -> bool {
        self.check(request)
            || request.query().is_some_and(|query| {
                query
                    .split('&')
                    .filter_map(|pair| pair.strip_prefix("key="))
                    .any(|given| bool::from(given.as_bytes().ct_eq(&self.0)))
            })
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

    const SECRET: &[u8] = b"a test secret of 32 bytes or more";

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name)
    }

    /// The DER inside a PEM file (the body's base64), for jsonwebtoken's DER signing keys.
    fn pem_der(name: &str) -> Vec<u8> {
        use base64::Engine;
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }

    fn config(secret: Option<&[u8]>, public_key: Option<&str>) -> JwtConfig {
        JwtConfig {
            secret: secret.map(|s| Secret::from(std::str::from_utf8(s).unwrap())),
            public_key: public_key.map(fixture),
            ..JwtConfig::default()
        }
    }

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
        Jwt::new(&config(Some(SECRET), None)).unwrap()
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
    }

    #[test]
    fn unusable_configurations_are_refused_in_one_line() {
        let refused = |config: JwtConfig| Jwt::new(&config).unwrap_err();
        let short = refused(config(Some(&[b'k'; 31]), None));
        assert!(
            short.starts_with("jwt_secret must be at least 32 bytes"),
            "{short}"
        );
        assert!(refused(config(Some(b""), None)).starts_with("jwt_secret must be at least"));
        assert!(Jwt::new(&config(Some(&[b'k'; 32]), None)).is_ok());
        assert_eq!(
            refused(config(Some(SECRET), Some("rs256-public.pem"))),
            "set jwt_secret or jwt_public_key, not both"
        );
        assert!(refused(config(None, None)).contains("needs a jwt_secret or a jwt_public_key"));
        assert!(refused(config(None, Some("nonexistent.pem"))).starts_with("cannot read"));
        let too_short = refused(config(None, Some("rsa1024-public.pem")));
        assert!(too_short.contains("1024 bits"), "{too_short}");
        for unusable in ["p384-public.pem", "rs256-private.pem", "README.md"] {
            let message = refused(config(None, Some(unusable)));
            assert!(
                message.contains("not a public key"),
                "{unusable}: {message}"
            );
            assert!(!message.contains('\n'));
        }
    }

    fn sign_with(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(algorithm), claims, key).unwrap()
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_the_public_key_only() {
        let claims = json!({"exp": in_an_hour(), "sub": "ada", "subscribe": ["a"]});
        let rsa = EncodingKey::from_rsa_der(&pem_der("rs256-private.pem"));
        let ec = EncodingKey::from_ec_der(&pem_der("es256-private.pem"));
        let rs256 = sign_with(Algorithm::RS256, &rsa, &claims);
        let es256 = sign_with(Algorithm::ES256, &ec, &claims);
        for file in ["rs256-public.pem", "rs256-public-pkcs1.pem"] {
            let jwt = Jwt::new(&config(None, Some(file))).unwrap();
            assert_eq!(jwt.algorithm(), Algorithm::RS256);
            assert!(jwt.verify(rs256.as_bytes()).unwrap().can_subscribe("a"));
            assert_eq!(jwt.verify(es256.as_bytes()), Err(Unauthorized::Invalid));
        }
        let jwt = Jwt::new(&config(None, Some("es256-public.pem"))).unwrap();
        assert_eq!(jwt.algorithm(), Algorithm::ES256);
        assert_eq!(jwt.verify(es256.as_bytes()).unwrap().subject(), Some("ada"));
        assert_eq!(jwt.verify(rs256.as_bytes()), Err(Unauthorized::Invalid));
        // The classic confusion: an HS256 token whose secret is the public key file's text.
        let public = std::fs::read(fixture("rs256-public.pem")).unwrap();
        let confused = sign(&claims, &public);
        let rs = Jwt::new(&config(None, Some("rs256-public.pem"))).unwrap();
        assert_eq!(rs.verify(confused.as_bytes()), Err(Unauthorized::Invalid));
        // A token signed with another key of the right type.
        let other = sign_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(&[7; 32]),
            &claims,
        );
        assert_eq!(jwt.verify(other.as_bytes()), Err(Unauthorized::Invalid));
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let jwt = Jwt::new(&JwtConfig {
            audience: vec!["clarion".into(), "push".into()],
            issuer: vec!["https://auth.example".into()],
            ..config(Some(SECRET), None)
        })
        .unwrap();
        let exp = in_an_hour();
        let check = |claims: Value| jwt.verify(sign(&claims, SECRET).as_bytes()).map(|_| ());
        let iss = "https://auth.example";
        assert_eq!(
            check(json!({"exp": exp, "aud": "push", "iss": iss})),
            Ok(())
        );
        assert_eq!(
            check(json!({"exp": exp, "aud": ["x", "clarion"], "iss": iss})),
            Ok(())
        );
        for claims in [
            json!({"exp": exp, "aud": "other", "iss": iss}),
            json!({"exp": exp, "aud": "push", "iss": "https://evil.example"}),
            json!({"exp": exp, "iss": iss}),
            json!({"exp": exp, "aud": "push"}),
        ] {
            assert_eq!(
                check(claims.clone()),
                Err(Unauthorized::NotForUs),
                "{claims}"
            );
        }
        // Unconfigured, they are not checked (a token may carry them).
        let open = jwt_with_leeway(60);
        let token = sign(&json!({"exp": exp, "aud": "any", "iss": "any"}), SECRET);
        assert!(open.verify(token.as_bytes()).is_ok());
    }

    fn jwt_with_leeway(seconds: u64) -> Jwt {
        Jwt::new(&JwtConfig {
            leeway: Duration::from_secs(seconds),
            ..config(Some(SECRET), None)
        })
        .unwrap()
    }

    #[test]
    fn the_leeway_bounds_acceptance_and_the_time_remaining() {
        let now = get_current_timestamp();
        let token = sign(&json!({"exp": now - 30}), SECRET);
        assert_eq!(
            jwt_with_leeway(10).verify(token.as_bytes()),
            Err(Unauthorized::Expired)
        );
        let jwt = jwt_with_leeway(60);
        let grants = jwt.verify(token.as_bytes()).unwrap();
        assert_eq!(jwt.remaining(&grants, now - 30), Some(60));
        assert_eq!(jwt.remaining(&grants, now + 30), Some(0));
        assert_eq!(jwt.remaining(&grants, now + 31), None);
        let never = jwt
            .verify(sign(&json!({"exp": u64::MAX}), SECRET).as_bytes())
            .unwrap();
        assert_eq!(jwt.remaining(&never, now), Some(u64::MAX - now));
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
        let by_query = |head: &str| with_request(head, |r| key.check_or_query(r));
        assert!(by_query("GET /dashboard?x=1&key=s3cret HTTP/1.1"));
        assert!(by_query(
            "GET /stats HTTP/1.1\r\nAuthorization: Bearer s3cret"
        ));
        assert!(!by_query("GET /dashboard?key=s3cre HTTP/1.1"));
        assert!(!by_query("GET /dashboard?token=s3cret HTTP/1.1"));
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
