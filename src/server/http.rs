//! The plain HTTP endpoints: the publish API on the public port; `/metrics`, `/stats`,
//! `/topics/<topic>`, `/healthz`, `/readyz` and the dashboard page on the admin listener
//! (the monitoring ones on the public port too with `public_metrics`).
//!
//! - `POST /publish/<topic>`: the body is the payload. `Content-Type: application/octet-stream`
//!   publishes binary, `application/json` requires one JSON value; otherwise UTF-8 is text (or
//!   JSON when it is one JSON value) and anything else binary. Answers 202
//!   `{"topic":…,"seq":…,"epoch":…}`.
//! - `POST /publish`: a JSON array of `{"topic":…,"data":<JSON value>}` (a string is published
//!   as its text, anything else as JSON). All items are checked (names, JSON, sizes) before any
//!   is published; then each is published on its own, and the answer has one result per item,
//!   in order: `{"topic":…,"seq":…}` or, for one that could not be published now,
//!   `{"topic":…,"error":…,"status":503}`, so a client retries exactly those. 202 when every
//!   item was published, 503 when none was, 207 when some were.
//!
//! - `GET /topics/<topic>`: `{"topic":…,"subscribers":…,"local":…}`, the subscribers on every
//!   node (in a cluster, the other nodes' as of their last heartbeat) and on this one.
//! - `GET /healthz`: `ok`, and in a cluster the link's state (`cluster: up` or `cluster: down`);
//!   503 `failed: reactor N` when a reactor stopped on a backend error.
//! - `GET /readyz`: `ready`, or 503 `not ready: draining` / `not ready: cluster link down`.
//!
//! In a cluster a publish is queued for Redis, which numbers it later: the answers carry no
//! `seq` then.
//!
//! With an API key configured the publish API needs `Authorization: Bearer <key>` (401 without),
//! or a client's token (`auth = jwt`; in `Authorization: Bearer` or `?token=`) that allows
//! publishing to every topic of the request by `client_publish` (403 otherwise): what a client
//! that cannot open a WebSocket publishes with. Browser pages on other origins get the CORS
//! headers of [`super::cors`], from allowed origins only (403 otherwise).

use std::borrow::Cow;
use std::net::SocketAddr;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::auth::{Grants, token};
use super::envelope::{format_of, is_object};
use super::metrics::{PROMETHEUS_CONTENT_TYPE, Prometheus, stats_json};
use super::refusals::Refusal;
use super::state::{Live, Origin, PublishError, Server};
use clarion_engine::Response;
use clarion_protocol::MessageKind;
use clarion_protocol::handshake::Request;
use clarion_pubsub::{Format, Payload, validate_topic};

/// A JSON error body.
pub fn error(status: u16, message: &str) -> Response {
    Response::new(
        status,
        "application/json",
        json!({ "error": message }).to_string(),
    )
}

/// `GET /metrics`.
pub fn metrics(server: &Server) -> Response {
    let (reactors, latencies) = server.metrics();
    let body = Prometheus(&server.snapshot(&reactors, latencies)).to_string();
    Response::new(200, PROMETHEUS_CONTENT_TYPE, body)
}

/// `GET /stats`.
pub fn stats(server: &Server) -> Response {
    let (reactors, latencies) = server.metrics();
    let body = stats_json(&server.snapshot(&reactors, latencies));
    Response::new(200, "application/json", body)
}

/// `GET /healthz`: 200 while every reactor serves, 503 once one stopped on a backend error
/// (its connections are gone; the process should be restarted).
pub fn health(server: &Server) -> Response {
    let failed = server.failed_reactors();
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(usize::to_string).collect();
        let body = format!("failed: reactor {}\n", list.join(", "));
        return Response::new(503, "text/plain", body);
    }
    let body = match server.cluster.as_ref().map(|c| c.stats().up) {
        None => "ok\n",
        Some(true) => "ok\ncluster: up\n",
        Some(false) => "ok\ncluster: down\n",
    };
    Response::new(200, "text/plain", body)
}

/// `GET /readyz`: 200 `ready`, or 503 with the reason (draining, cluster link down).
pub fn ready(server: &Server) -> Response {
    match server.readiness() {
        Ok(()) => Response::new(200, "text/plain", "ready\n"),
        Err(reason) => Response::new(503, "text/plain", format!("not ready: {reason}\n")),
    }
}

/// `GET /dashboard`: the page, which connects back to `/dashboard/ws`.
pub fn dashboard_page() -> Response {
    let mut response = Response::new(200, "text/html; charset=utf-8", super::dashboard::PAGE);
    response.headers.extend([
        ("Cache-Control", "no-store".to_owned()),
        // Everything is inline; the page talks only to its own origin.
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:"
                .to_owned(),
        ),
    ]);
    response
}

/// Whether a browser's request comes from a page of the server's own origin: its `Origin`, if
/// any, names the `Host` it was sent to (what keeps another site's page in an operator's
/// browser from opening the dashboard's WebSocket).
pub fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.header("origin") else {
        return true;
    };
    let host = request.header("host").unwrap_or_default();
    let origin = origin.trim_ascii();
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host.trim_ascii()))
}

/// `GET /topics/<topic>`: the topic's subscribers.
pub fn presence(server: &Server, live: &Live, topic: &str) -> Response {
    if let Err(e) = validate_topic(topic, live.config.max_topic_length) {
        return error(400, &e.to_string());
    }
    let (local, elsewhere) = server.presence(topic);
    let body = json!({ "topic": topic, "subscribers": local + elsewhere, "local": local });
    Response::new(200, "application/json", body.to_string())
}

/// `POST /publish/<topic>` and `POST /publish` from `peer`: checked (origin, then the API key
/// or a client's token), published, and answered with the CORS headers the page's origin needs.
pub fn publish(
    server: &Server,
    live: &Live,
    request: &Request,
    body: &[u8],
    peer: Option<SocketAddr>,
    reactor: usize,
) -> Response {
    let refuse = |status, reason: &str, subject: Option<&str>| {
        server.refusals.log(Refusal {
            path: request.path(),
            peer,
            status,
            reason,
            subject,
        });
        let mut response = error(status, reason);
        if status == 401 {
            response
                .headers
                .push(("WWW-Authenticate", "Bearer".to_owned()));
        }
        response
    };
    let mut response = if !live.origins.allows(request) {
        refuse(403, "origin not allowed", None)
    } else {
        match publisher(live, request) {
            Err(reason) => refuse(401, &reason, None),
            Ok(who) => {
                server.counters[reactor]
                    .bytes_in
                    .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let allowed = |topic: &str| match &who {
                    Publisher::Api => true,
                    Publisher::Client(grants) => live.can_publish(Some(grants), topic),
                };
                let subject = match &who {
                    Publisher::Client(grants) => grants.subject(),
                    Publisher::Api => None,
                };
                let origin = match &who {
                    Publisher::Api => Origin::Api,
                    Publisher::Client(_) => Origin::Client,
                };
                let forbidden = "publishing to this topic is not allowed";
                match request.path().strip_prefix("/publish/") {
                    Some(topic) if !allowed(topic) => refuse(403, forbidden, subject),
                    Some(topic) => {
                        let format = content_format(request, body);
                        publish_one(server, live, origin, topic, format, body)
                    }
                    None => publish_many(server, live, origin, body, &allowed)
                        .unwrap_or_else(|| refuse(403, forbidden, subject)),
                }
            }
        }
    };
    response
        .headers
        .extend(super::cors::headers(request, &live.origins));
    response
}

/// Who publishes over HTTP.
enum Publisher {
    /// The API itself: no key is set, or the request has it.
    Api,
    /// A client, with its token's grants.
    Client(Grants),
}

/// Who the request publishes as: the API (no key set, or the key given), or a client whose
/// token the server accepts (`auth = jwt`); the reason for a 401 otherwise.
fn publisher(live: &Live, request: &Request) -> Result<Publisher, String> {
    let Some(key) = &live.api_key else {
        return Ok(Publisher::Api);
    };
    if key.check(request) {
        return Ok(Publisher::Api);
    }
    match (&live.jwt, token(request)) {
        (Some(jwt), Some(token)) => jwt
            .verify(token)
            .map(Publisher::Client)
            .map_err(|e| format!("not the API key, and a token refused: {e}")),
        _ => Err("missing or wrong API key".to_owned()),
    }
}

/// The format the `Content-Type` asks for; `Err` when the body does not fit it.
fn content_format(request: &Request, body: &[u8]) -> Result<Format, &'static str> {
    let content_type = request.header("content-type").unwrap_or_default();
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let detected = format_of(MessageKind::Text, body);
    if media.eq_ignore_ascii_case(b"application/octet-stream") {
        Ok(Format::Binary)
    } else if media.eq_ignore_ascii_case(b"application/json") {
        match detected {
            Format::Json => Ok(Format::Json),
            _ => Err("the body is not one JSON value"),
        }
    } else {
        Ok(detected)
    }
}

fn publish_one(
    server: &Server,
    live: &Live,
    origin: Origin,
    topic: &str,
    format: Result<Format, &str>,
    body: &[u8],
) -> Response {
    if let Err(e) = validate_topic(topic, live.config.max_topic_length) {
        return error(400, &e.to_string());
    }
    let format = match format {
        Ok(format) => format,
        Err(message) => return error(400, message),
    };
    let max_queued = live.config.max_queued_bytes;
    match server.publish(topic, Payload::new(format, body), origin, max_queued) {
        Ok(seq) => {
            let mut answer = json!({ "topic": topic, "epoch": server.hub.epoch().to_string() });
            if let Some(seq) = seq {
                answer["seq"] = seq.into();
            }
            accepted(answer)
        }
        Err(e) => refused(e),
    }
}

/// One item of `POST /publish`.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Parses and checks a `POST /publish` body (see the module docs), every item before any is
/// published: the topics and payloads in order, or the reason for a 400 answer. A `data` string
/// is published as its text; any other value as JSON, byte for byte as the body holds it, if it
/// is one that strict parsers read back (no `1e999`, no lone surrogate).
pub fn parse_batch(
    body: &[u8],
    max_topic_length: usize,
) -> Result<Vec<(Cow<'_, str>, Payload)>, String> {
    let expected = || "expected a JSON array of {\"topic\":…,\"data\":…} objects".to_owned();
    let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(body) else {
        return Err(expected());
    };
    let items = items
        .into_iter()
        .map(|item| match is_object(item.get().as_bytes()) {
            true => serde_json::from_str::<Item>(item.get()).ok(),
            false => None,
        })
        .collect::<Option<Vec<Item>>>()
        .ok_or_else(expected)?;
    let mut batch = Vec::with_capacity(items.len());
    for item in items {
        if let Err(e) = validate_topic(&item.topic, max_topic_length) {
            return Err(format!("{}: {e}", item.topic));
        }
        let raw = item.data.get();
        let payload = match serde_json::from_str::<Cow<str>>(raw) {
            Ok(text) => Payload::new(Format::Text, text.as_bytes()),
            Err(_) if format_of(MessageKind::Text, raw.as_bytes()) == Format::Json => {
                Payload::new(Format::Json, raw.as_bytes())
            }
            Err(_) => return Err("data is not a JSON value every parser reads".to_owned()),
        };
        batch.push((item.topic, payload));
    }
    Ok(batch)
}

/// `POST /publish`: every item checked (its topic, its size, and whether the publisher may
/// publish to it) before any is published; `None` when one is not allowed. Each item's result
/// is its own: 202 when all were taken, 207 when some, 503 when none.
fn publish_many(
    server: &Server,
    live: &Live,
    origin: Origin,
    body: &[u8],
    allowed: &dyn Fn(&str) -> bool,
) -> Option<Response> {
    let batch = match parse_batch(body, live.config.max_topic_length) {
        Ok(batch) => batch,
        Err(message) => return Some(error(400, &message)),
    };
    if !batch.iter().all(|(topic, _)| allowed(topic)) {
        return None;
    }
    // Too large for any subscriber is the batch's fault: refused whole, before publishing.
    let max_queued = live.config.max_queued_bytes;
    for (topic, payload) in &batch {
        let size = super::envelope::delivery_len(topic, payload);
        if size > max_queued {
            let e = PublishError::TooLarge {
                size,
                max: max_queued,
            };
            return Some(error(413, &format!("{topic}: {e}")));
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    let mut published = 0;
    for (topic, payload) in batch {
        match server.publish(&topic, payload, origin, max_queued) {
            Ok(seq) => {
                published += 1;
                let mut result = json!({ "topic": topic });
                if let Some(seq) = seq {
                    result["seq"] = seq.into();
                }
                results.push(result);
            }
            Err(e) => results.push(json!({
                "topic": topic,
                "error": e.to_string(),
                "status": status_of(e),
            })),
        }
    }
    let status = match published {
        n if n == results.len() => 202,
        0 => 503,
        _ => 207,
    };
    let body = json!({
        "epoch": server.hub.epoch().to_string(),
        "results": results,
    });
    Some(Response::new(status, "application/json", body.to_string()))
}

fn accepted(body: serde_json::Value) -> Response {
    Response::new(202, "application/json", body.to_string())
}

/// The status of a publish refused: 413 when no subscriber could take it, else 503 (the server
/// or the cluster link is behind, or out of topics).
fn status_of(reason: PublishError) -> u16 {
    match reason {
        PublishError::TooLarge { .. } => 413,
        _ => 503,
    }
}

fn refused(reason: PublishError) -> Response {
    error(status_of(reason), &reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_strings_as_text_and_other_values_as_their_json() {
        let body = br#"[{"topic":"a","data":"hi \u00e9"},
                        {"topic":"b/c","extra":[1e999],"data":{"x": [1, 2.5]}}]"#;
        let batch = parse_batch(body, 64).unwrap();
        let got: Vec<(&str, Format, &[u8])> = batch
            .iter()
            .map(|(topic, payload)| (&**topic, payload.format(), payload.bytes()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Format::Text, "hi é".as_bytes()),
                ("b/c", Format::Json, br#"{"x": [1, 2.5]}"#),
            ]
        );
        assert!(parse_batch(b"[]", 64).unwrap().is_empty());
    }

    #[test]
    fn a_batch_with_one_bad_item_is_refused_whole() {
        let bad: [&[u8]; 11] = [
            b"",
            b"{}",
            br#"[["a",1]]"#,
            br#"[{"topic":"a","data":1},["a",1]]"#,
            br#"[{"topic":"a"}]"#,
            br#"[{"data":1}]"#,
            br#"[{"topic":"a","data":1,"topic":"b"}]"#,
            br#"[{"topic":"a","data":1},{"topic":"no spaces","data":1}]"#,
            br#"[{"topic":"aaaaa","data":1}]"#,
            br#"[{"topic":"a","data":1e999}]"#,
            br#"[{"topic":"a","data":"\ud800"}]"#,
        ];
        for body in bad {
            let refused = parse_batch(body, 4);
            assert!(refused.is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }
}
