//! The HTTP/1.1 opening handshake (RFC 6455 §4), both sides.
//!
//! Server: parse a request head (which may arrive in pieces), tell a WebSocket upgrade from a plain
//! HTTP request, validate the upgrade and compute `Sec-WebSocket-Accept`, write the answer.
//! Client: write the request and check the server's answer.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::deflate::{ClientOffer, Params};

/// The GUID that RFC 6455 appends to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The most headers a request may have, whatever the configuration says (the parser's stack array).
pub const MAX_HEADERS_CAP: usize = 100;

/// A request head that cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The head is longer than allowed (431).
    TooLarge,
    /// More header lines than allowed (431).
    TooManyHeaders,
    /// Not HTTP/1.x, a bad or conflicting `Content-Length`, or an HTTP/1.1 request without
    /// exactly one `Host` (400).
    Malformed,
    /// A body larger than allowed (413).
    BodyTooLarge,
    /// A body without `Content-Length` (chunked): 411.
    LengthRequired,
}

impl HeadError {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed => 400,
            HeadError::BodyTooLarge => 413,
            HeadError::LengthRequired => 411,
        }
    }
}

/// A parsed HTTP/1.x request head, borrowing the bytes it was parsed from.
pub struct Request<'a> {
    method: &'a str,
    target: &'a str,
    minor_version: u8,
    headers: [httparse::Header<'a>; MAX_HEADERS_CAP],
    header_count: usize,
}

impl<'a> Request<'a> {
    /// Parses a head from the start of `buf`. `Ok(None)`: incomplete, read more. `Ok(Some)`: the
    /// request and the length of its head (bytes after it belong to the body or to frames).
    pub fn parse(
        buf: &'a [u8],
        max_head: usize,
        max_headers: usize,
    ) -> Result<Option<(Request<'a>, usize)>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let mut req = httparse::Request::new(&mut headers[..max_headers.min(MAX_HEADERS_CAP)]);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) if buf.len() >= max_head => {
                return Err(HeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(_) => return Err(HeadError::Malformed),
        };
        let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
        else {
            return Err(HeadError::Malformed);
        };
        let header_count = req.headers.len();
        Ok(Some((
            Request {
                method,
                target,
                minor_version,
                headers,
                header_count,
            },
            len,
        )))
    }

    /// The method, such as `GET`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request target as sent: path and query.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.target
            .split_once('?')
            .map_or(self.target, |(path, _)| path)
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// All headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers[..self.header_count]
            .iter()
            .map(|h| (h.name, h.value))
    }

    /// The first header of that name (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the client asks to keep the connection for further requests (RFC 9112 §9.3):
    /// HTTP/1.1 unless it sent `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn wants_keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.minor_version >= 1 || self.has_token("connection", "keep-alive")
    }

    /// The `y` of `HTTP/1.y`.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// Whether any header `name` lists `token` in its comma-separated value (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name).any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The comma-separated tokens of every header `name`, trimmed, empty ones skipped.
    pub fn tokens<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// The value of header `name` when it appears at most once: `Err(())` when it appears
    /// more than once (a field that must be single, such as `Host`, is then unusable).
    fn single(&self, name: &str) -> Result<Option<&'a [u8]>, ()> {
        let mut values = self
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        match (values.next(), values.next()) {
            (value, None) => Ok(value),
            (_, Some(_)) => Err(()),
        }
    }

    /// Checks the `Host` rule of RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or any
    /// request with more than one, is refused with 400 ([`HeadError::Malformed`]).
    pub fn check_host(&self) -> Result<(), HeadError> {
        match self.single("host") {
            Ok(None) if self.minor_version >= 1 => Err(HeadError::Malformed),
            Ok(_) => Ok(()),
            Err(()) => Err(HeadError::Malformed),
        }
    }

    /// The body length announced by `Content-Length` (0 without one), checked against `max`.
    ///
    /// The framing rules of RFC 9112 §6.3: any `Transfer-Encoding` is refused with 411 (chunked
    /// bodies are not decoded), whatever `Content-Length` says, so such a request is never framed
    /// by its `Content-Length`; several `Content-Length` values are accepted only when they are
    /// all the same number, anything else (two different values, the smuggling case) is 400.
    pub fn body_len(&self, max: usize) -> Result<usize, HeadError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HeadError::LengthRequired);
        }
        let mut len = None;
        for (name, value) in self.headers() {
            if !name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            let value: u64 = std::str::from_utf8(value.trim_ascii())
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or(HeadError::Malformed)?;
            if len.is_some_and(|len| len != value) {
                return Err(HeadError::Malformed);
            }
            len = Some(value);
        }
        let len = len.unwrap_or(0);
        if len > max as u64 {
            return Err(HeadError::BodyTooLarge);
        }
        Ok(len as usize)
    }

    /// Whether the client asks for a WebSocket (`Upgrade: websocket`); such requests go through
    /// [`Request::upgrade`], all others are plain HTTP.
    pub fn wants_websocket(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }

    /// The subprotocols the client offers, in its order of preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.tokens("sec-websocket-protocol")
    }

    /// Validates a WebSocket upgrade (RFC 6455 §4.2.1) and computes the accept value.
    pub fn upgrade(&self) -> Result<Accept, Rejection> {
        if self.method != "GET" {
            return Err(Rejection {
                status: 405,
                header: Some(("Allow", "GET")),
            });
        }
        let bad_request = Rejection {
            status: 400,
            header: None,
        };
        if self.minor_version < 1
            || self.check_host().is_err()
            || !self.has_token("connection", "upgrade")
        {
            return Err(bad_request);
        }
        // RFC 6455 §11.3.1 and §11.3.5: the key and the version appear once in a request.
        let version = self
            .single("sec-websocket-version")
            .map_err(|()| bad_request)?;
        if version.map(<[u8]>::trim_ascii) != Some(b"13") {
            return Err(Rejection {
                status: 426,
                header: Some(("Sec-WebSocket-Version", "13")),
            });
        }
        let key = self
            .single("sec-websocket-key")
            .map_err(|()| bad_request)?
            .map(<[u8]>::trim_ascii)
            .ok_or(bad_request)?;
        let mut nonce = [0u8; 18];
        match BASE64.decode_slice(key, &mut nonce) {
            Ok(16) => Ok(Accept::for_key(key)),
            _ => Err(bad_request),
        }
    }
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("target", &self.target())
            .finish()
    }
}

/// The `Sec-WebSocket-Accept` value for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept([u8; 28]);

impl Accept {
    /// base64(SHA-1(key ++ GUID)).
    pub fn for_key(key: &[u8]) -> Accept {
        let mut sha = sha1_smol::Sha1::new();
        sha.update(key);
        sha.update(GUID);
        let mut out = [0u8; 28];
        BASE64
            .encode_slice(sha.digest().bytes(), &mut out)
            .expect("20 bytes encode to 28");
        Accept(out)
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }

    /// Writes the `101 Switching Protocols` answer, with the chosen subprotocol and extensions.
    pub fn write_response(
        &self,
        protocol: Option<&str>,
        extensions: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&self.0);
        for (name, value) in [
            ("Sec-WebSocket-Protocol", protocol),
            ("Sec-WebSocket-Extensions", extensions),
        ] {
            if let Some(value) = value {
                write_header(out, name, value);
            }
        }
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// Why an upgrade request is refused, as an HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 405 or 426.
    pub status: u16,
    /// A header the answer must carry (`Sec-WebSocket-Version: 13` with 426, `Allow` with 405).
    pub header: Option<(&'static str, &'static str)>,
}

impl Rejection {
    /// Writes the answer (which closes the connection).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let headers = self.header.as_slice();
        write_response(
            out,
            self.status,
            headers,
            "text/plain",
            reason(self.status).as_bytes(),
        );
    }
}

/// Writes a complete HTTP/1.1 response that closes the connection after the body.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) {
    write_response_head(
        out,
        status,
        headers,
        content_type,
        body.len(),
        Persistence::Close,
    );
    out.extend_from_slice(body);
}

/// What an HTTP/1.1 response says of the connection behind it (its `Connection` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `Connection: close`: the server closes after this response.
    Close,
    /// No `Connection` header: kept for the next request, HTTP/1.1's default.
    Kept,
    /// `Connection: keep-alive`: kept, said aloud, as an HTTP/1.0 client that asked for it
    /// needs.
    KeepAlive,
}

/// Writes the head of an HTTP/1.1 response whose body is `content_length` bytes (the caller
/// appends the body, or leaves it out for `HEAD`). `headers` must not hold `Content-Type`,
/// `Content-Length` or `Connection`.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    content_length: usize,
    connection: Persistence,
) {
    write_status_and_headers(out, status, headers, content_type);
    write_header(out, "Content-Length", &content_length.to_string());
    match connection {
        Persistence::Close => write_header(out, "Connection", "close"),
        Persistence::KeepAlive => write_header(out, "Connection", "keep-alive"),
        Persistence::Kept => {}
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes the head of an HTTP/1.1 response whose body is streamed (Server-Sent Events, NDJSON):
/// no `Content-Length`, and `Connection: close`, since the body ends only with the connection.
/// `headers` say how the body is framed (`Transfer-Encoding: chunked`, which an HTTP/1.0
/// request must not get: its body then simply runs to the connection's end) and must not hold
/// `Content-Type`, `Content-Length` or `Connection`.
pub fn write_stream_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
) {
    write_status_and_headers(out, status, headers, content_type);
    write_header(out, "Connection", "close");
    out.extend_from_slice(b"\r\n\r\n");
}

/// The status line, `headers` and `Content-Type` of an answer's head, each header line
/// started with its CRLF (the head's end is the caller's).
fn write_status_and_headers(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    for (name, value) in headers {
        write_header(out, name, value);
    }
    write_header(out, "Content-Type", content_type);
}

fn write_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
}

/// The reason phrase for the statuses this server sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The client side: the request to send and the check of the server's answer.
#[derive(Clone, Copy, Debug)]
pub struct ClientHandshake {
    key: [u8; 24],
}

/// Why the server's answer does not open a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// Not an HTTP response, or larger than the limit.
    Malformed,
    /// A status other than 101.
    Status(u16),
    /// 101 without `Upgrade: websocket` and `Connection: upgrade`.
    MissingUpgrade,
    /// `Sec-WebSocket-Accept` does not match the key.
    BadAccept,
    /// `Sec-WebSocket-Extensions` answers something the offer did not allow.
    BadExtension,
}

impl ClientHandshake {
    /// A handshake with this random nonce (the client must pick a fresh one per connection).
    pub fn new(nonce: [u8; 16]) -> ClientHandshake {
        let mut key = [0u8; 24];
        BASE64
            .encode_slice(nonce, &mut key)
            .expect("16 bytes encode to 24");
        ClientHandshake { key }
    }

    /// Writes the upgrade request for `path` on `host`.
    pub fn write_request(
        &self,
        host: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1");
        write_header(out, "Host", host);
        write_header(out, "Upgrade", "websocket");
        write_header(out, "Connection", "Upgrade");
        write_header(out, "Sec-WebSocket-Version", "13");
        write_header(
            out,
            "Sec-WebSocket-Key",
            std::str::from_utf8(&self.key).expect("ASCII"),
        );
        for (name, value) in extra_headers {
            write_header(out, name, value);
        }
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// Checks the answer at the start of `buf`: `Ok(None)` while incomplete, else the length of the
    /// head (bytes after it are already frames).
    pub fn read_response(&self, buf: &[u8]) -> Result<Option<usize>, ClientError> {
        Ok(self.read_response_with(buf, None)?.map(|(len, _)| len))
    }

    /// [`ClientHandshake::read_response`] for a request that carried `offer` (its
    /// [`ClientOffer::header`] as `Sec-WebSocket-Extensions`): also the permessage-deflate
    /// parameters agreed, `None` when the server declined. Without an offer, extensions in the
    /// answer are not checked.
    pub fn read_response_with(
        &self,
        buf: &[u8],
        offer: Option<&ClientOffer>,
    ) -> Result<Option<(usize, Option<Params>)>, ClientError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        let len = match res.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => return Ok(None),
            _ => return Err(ClientError::Malformed),
        };
        match res.code {
            Some(101) => {}
            Some(code) => return Err(ClientError::Status(code)),
            None => return Err(ClientError::Malformed),
        }
        let has = |name: &str, token: &str| {
            res.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case(name)
                    && h.value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
        };
        if !has("upgrade", "websocket") || !has("connection", "upgrade") {
            return Err(ClientError::MissingUpgrade);
        }
        let expected = Accept::for_key(&self.key);
        let accept = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|h| h.value.trim_ascii());
        if accept != Some(expected.as_str().as_bytes()) {
            return Err(ClientError::BadAccept);
        }
        let Some(offer) = offer else {
            return Ok(Some((len, None)));
        };
        let extensions = res
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|h| h.value);
        let params = offer
            .accept(extensions)
            .map_err(|_| ClientError::BadExtension)?;
        Ok(Some((len, params)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] =
        b"GET /chat?x=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(bytes: &[u8]) -> Result<Option<(Request<'_>, usize)>, HeadError> {
        Request::parse(bytes, 8192, 64)
    }

    #[test]
    fn rfc_example_accept_value() {
        assert_eq!(
            Accept::for_key(b"dGhlIHNhbXBsZSBub25jZQ==").as_str(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn good_upgrade_parses_at_every_split() {
        for cut in 0..GOOD.len() {
            assert!(parse(&GOOD[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let mut with_frame = GOOD.to_vec();
        with_frame.extend_from_slice(b"\x81\x80abcd");
        let (req, len) = parse(&with_frame).unwrap().unwrap();
        assert_eq!(len, GOOD.len());
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("x=1"));
        assert!(req.wants_websocket());
        assert_eq!(req.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        assert_eq!(
            req.upgrade().unwrap().as_str(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_stream_head_has_no_length_and_closes() {
        let (request, _) = parse(b"GET /sse HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(request.minor_version(), 0);
        let mut out = Vec::new();
        let headers = [
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-cache"),
        ];
        write_stream_head(&mut out, 200, &headers, "text/event-stream");
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\
              Content-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn keep_alive_is_http_1_1_s_default_and_http_1_0_s_option() {
        for (head, kept) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
        ] {
            let (request, _) = parse(head).unwrap().unwrap();
            let shown = String::from_utf8_lossy(head);
            assert_eq!(request.wants_keep_alive(), kept, "{shown}");
        }
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            200,
            &[("X", "y")],
            "text/plain",
            5,
            Persistence::Kept,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
        );
        out.clear();
        write_response_head(&mut out, 200, &[], "text/plain", 0, Persistence::KeepAlive);
        assert!(out.ends_with(b"Connection: keep-alive\r\n\r\n"));
        out.clear();
        write_response(&mut out, 404, &[], "text/plain", b"no");
        assert!(out.ends_with(b"Connection: close\r\n\r\nno"));
    }

    fn with(replace: &str, by: &str) -> Vec<u8> {
        String::from_utf8(GOOD.to_vec())
            .unwrap()
            .replace(replace, by)
            .into_bytes()
    }

    #[test]
    fn invalid_upgrades_are_rejected_with_the_right_status() {
        let status = |bytes: Vec<u8>| {
            let (req, _) = parse(&bytes).unwrap().unwrap();
            req.upgrade().map(|_| 101).unwrap_or_else(|r| r.status)
        };
        assert_eq!(status(with("GET", "POST")), 405);
        assert_eq!(status(with("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(status(with("keep-alive, Upgrade", "keep-alive")), 400);
        assert_eq!(status(with("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status(with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==")),
            400
        );
        assert_eq!(status(with("dGhlIHNhbXBsZSBub25jZQ==", "!!!")), 400);
        assert_eq!(status(with("Host: server.example.com\r\n", "")), 400);
        assert_eq!(status(with("keep-alive, Upgrade", "UPGRADE")), 101);
        // RFC 6455 §11.3.1, §11.3.5: the key and the version must appear once.
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        assert_eq!(status(with(key, &key.repeat(2))), 400);
        let other_key = "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n";
        assert_eq!(status(with(key, &format!("{key}{other_key}"))), 400);
        let version = "Sec-WebSocket-Version: 13\r\n";
        assert_eq!(status(with(version, &version.repeat(2))), 400);
        let host = "Host: server.example.com\r\n";
        assert_eq!(status(with(host, &host.repeat(2))), 400);
    }

    /// `Ok(len)` of the body, or the error the head gets before routing (as the connection
    /// checks it: `Host`, then the framing).
    fn framing(head: &str) -> Result<usize, HeadError> {
        let (request, _) = parse(head.as_bytes()).unwrap().unwrap();
        request.check_host()?;
        request.body_len(100)
    }

    #[test]
    fn conflicting_content_lengths_are_refused_not_first_wins() {
        let post = |fields: &str| framing(&format!("POST /p HTTP/1.1\r\nHost: h\r\n{fields}\r\n"));
        assert_eq!(post(""), Ok(0));
        assert_eq!(post("Content-Length: 5\r\n"), Ok(5));
        // RFC 9112 §6.3: different values are a smuggling attempt, refused with 400.
        assert_eq!(
            post("Content-Length: 5\r\nContent-Length: 50\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            post("Content-Length: 50\r\nX: y\r\ncontent-length: 5\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            post("Content-Length: 5\r\nContent-Length: x\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(post("Content-Length: 5, 6\r\n"), Err(HeadError::Malformed));
        // The same value twice is one length (RFC 9110 §8.6 allows it).
        assert_eq!(post("Content-Length: 5\r\nContent-Length: 05\r\n"), Ok(5));
        assert_eq!(
            post("Content-Length: 500\r\nContent-Length: 500\r\n"),
            Err(HeadError::BodyTooLarge)
        );
        // Transfer-Encoding is never framed by Content-Length, in either order: 411, closed.
        for fields in [
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
        ] {
            assert_eq!(post(fields), Err(HeadError::LengthRequired), "{fields}");
        }
        assert_eq!(HeadError::LengthRequired.status(), 411);
        assert_eq!(HeadError::Malformed.status(), 400);
    }

    #[test]
    fn http_1_1_needs_exactly_one_host() {
        assert_eq!(framing("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), Ok(0));
        assert_eq!(framing("GET / HTTP/1.1\r\nHost:\r\n\r\n"), Ok(0));
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        // HTTP/1.0 has no Host requirement, but never two.
        assert_eq!(framing("GET / HTTP/1.0\r\n\r\n"), Ok(0));
        assert_eq!(
            framing("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn head_limits() {
        assert_eq!(
            Request::parse(GOOD, 64, 64).err(),
            Some(HeadError::TooLarge)
        );
        assert_eq!(
            Request::parse(&GOOD[..100], 64, 64).err(),
            Some(HeadError::TooLarge)
        );
        assert_eq!(
            Request::parse(GOOD, 8192, 3).err(),
            Some(HeadError::TooManyHeaders)
        );
        assert_eq!(
            Request::parse(b"\x16\x03\x01\x00\xa5", 8192, 64).err(),
            Some(HeadError::Malformed)
        );
    }

    #[test]
    fn client_and_server_agree() {
        let client = ClientHandshake::new(*b"0123456789abcdef");
        let mut request = Vec::new();
        client.write_request("localhost", "/echo", &[], &mut request);
        let (req, _) = parse(&request).unwrap().unwrap();
        let accept = req.upgrade().unwrap();
        let mut response = Vec::new();
        accept.write_response(Some("chat"), None, &mut response);
        assert_eq!(client.read_response(&response), Ok(Some(response.len())));
        let wrong = ClientHandshake::new(*b"fedcba9876543210");
        assert_eq!(wrong.read_response(&response), Err(ClientError::BadAccept));
    }

    #[test]
    fn client_and_server_agree_on_permessage_deflate() {
        use crate::deflate::{self, ClientOffer};
        let client = ClientHandshake::new(*b"0123456789abcdef");
        let offer = ClientOffer::default();
        let mut request = Vec::new();
        let header = offer.header();
        client.write_request(
            "h",
            "/",
            &[("Sec-WebSocket-Extensions", &header)],
            &mut request,
        );
        let (req, _) = parse(&request).unwrap().unwrap();
        let wants = deflate::Wants {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 12,
            client_max_window_bits: 10,
        };
        let offers = req
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"));
        let (server, answer) = deflate::negotiate(offers.map(|(_, v)| v), &wants).unwrap();
        let mut response = Vec::new();
        req.upgrade()
            .unwrap()
            .write_response(None, Some(&answer), &mut response);
        assert_eq!(
            client.read_response_with(&response, Some(&offer)),
            Ok(Some((response.len(), Some(server))))
        );
        // An answer outside the offer fails the handshake.
        let mut bad = Vec::new();
        req.upgrade()
            .unwrap()
            .write_response(None, Some("permessage-deflate; mystery"), &mut bad);
        assert_eq!(
            client.read_response_with(&bad, Some(&offer)),
            Err(ClientError::BadExtension)
        );
    }
}
