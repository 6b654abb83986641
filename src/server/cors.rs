//! Cross-origin access for browser pages served from another origin: the headers that let such
//! a page read a stream or a publish answer, and the answer to its preflight (`OPTIONS`).
//!
//! An origin is allowed by the same `allowed_origins` list that guards WebSocket upgrades (all
//! origins when it is empty or holds `*`). An allowed origin is echoed back (with `Vary:
//! Origin`, so caches keep answers apart); a page sends its token in the `token` query
//! parameter or an `Authorization` header, never a cookie, so no credentials mode is needed.

use clarion_engine::Response;
use clarion_protocol::handshake::Request;

use super::auth::Origins;

/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The headers that let the request's origin read the answer: none for a request without an
/// `Origin` (not a browser) or from an origin not allowed (the caller refuses those).
pub fn headers(request: &Request, origins: &Origins) -> Vec<(&'static str, String)> {
    match request.header("origin") {
        Some(origin) if origins.allows(request) => vec![
            (
                "Access-Control-Allow-Origin",
                String::from_utf8_lossy(origin.trim_ascii()).into_owned(),
            ),
            ("Vary", "Origin".to_owned()),
        ],
        _ => Vec::new(),
    }
}

/// The answer to a preflight for a stream or the publish API: 200 (not 204, which may not
/// carry the `Content-Length` every answer here has) with what a page may send
/// (`GET` and `POST`, the `Authorization`, `Content-Type` and `Last-Event-ID` headers), or 403
/// for an origin not allowed.
pub fn preflight(request: &Request, origins: &Origins) -> Response {
    if !origins.allows(request) {
        return super::http::error(403, "origin not allowed");
    }
    let mut response = Response::new(200, "text/plain", "");
    response.headers = headers(request, origins);
    response.headers.extend([
        (
            "Access-Control-Allow-Methods",
            "GET, POST, OPTIONS".to_owned(),
        ),
        (
            "Access-Control-Allow-Headers",
            "Authorization, Content-Type, Last-Event-ID".to_owned(),
        ),
        ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE.to_owned()),
    ]);
    response
}
