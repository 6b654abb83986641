//! The `sse` transport, sans I/O: subscribers that read Server-Sent Events (`http://` targets,
//! `GET` with `Accept: text/event-stream`) instead of opening WebSockets, so SSE is measured
//! like WebSocket. The request, the check of the answer's head, and a [`Decoder`] that cuts
//! the body (chunked or running to the connection's end) into events. Its state is a few
//! bytes; a partial event waits in the connection's lent `rx`, as a partial frame does.

use crate::failure::Reason;

/// Writes the request for the stream at `path`.
pub fn write_request(host: &str, path: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    );
}

/// Reads the answer's head from the start of `buf`: `None` while incomplete, else its length
/// and the body's decoder. Anything but `200` with `text/event-stream` is refused.
pub fn read_head(buf: &[u8]) -> Result<Option<(usize, Decoder)>, Reason> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Reason::BadHandshake),
    };
    if response.code != Some(200) {
        return Err(Reason::HttpStatus);
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let event_stream = header("content-type")
        .is_some_and(|v| v.to_ascii_lowercase().starts_with(b"text/event-stream"));
    if !event_stream {
        return Err(Reason::BadHandshake);
    }
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
    Ok(Some((len, Decoder::new(chunked))))
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk's size line (hex digits, maybe an extension, CRLF).
    Size,
    /// In the size line past its digits (an extension), up to its LF.
    SizeRest,
    /// `left` bytes of chunk data to come.
    Data,
    /// `left` bytes of the CRLF that ends a chunk to come.
    DataEnd,
    /// The last chunk came: the body is over.
    Done,
}

/// A stream's body cut into events: 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoder {
    chunked: bool,
    state: Chunk,
    left: u32,
}

/// What feeding a decoder found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fed {
    /// More may come.
    Open,
    /// The body ended (its last chunk).
    Ended,
    /// The callback asked to stop.
    Stopped,
}

impl Decoder {
    /// A decoder for a body chunked or not.
    pub fn new(chunked: bool) -> Decoder {
        Decoder {
            chunked,
            state: Chunk::Size,
            left: 0,
        }
    }

    /// Feeds body bytes: `event(name, data)` for every complete event that has data (`data`
    /// lines joined with `\n`, in `scratch` when there are several); it returns false to stop.
    /// An event cut by a read or a chunk boundary waits in `rx`, which is empty otherwise.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        rx: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        event: &mut impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Fed, Reason> {
        if !self.chunked {
            return Ok(events(input, rx, scratch, event));
        }
        while !input.is_empty() {
            match self.state {
                Chunk::Size => {
                    let byte = input[0];
                    input = &input[1..];
                    match byte {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = (byte as char).to_digit(16).unwrap_or(0);
                            self.left = self
                                .left
                                .checked_mul(16)
                                .and_then(|v| v.checked_add(digit))
                                .ok_or(Reason::Protocol)?;
                        }
                        b'\r' | b';' | b' ' => self.state = Chunk::SizeRest,
                        b'\n' => self.size_line_done(),
                        _ => return Err(Reason::Protocol),
                    }
                }
                Chunk::SizeRest => {
                    let Some(at) = input.iter().position(|&b| b == b'\n') else {
                        return Ok(Fed::Open);
                    };
                    input = &input[at + 1..];
                    self.size_line_done();
                }
                Chunk::Data => {
                    let take = input.len().min(self.left as usize);
                    let (data, rest) = input.split_at(take);
                    input = rest;
                    self.left -= take as u32;
                    if self.left == 0 {
                        self.state = Chunk::DataEnd;
                        self.left = 2;
                    }
                    if events(data, rx, scratch, event) == Fed::Stopped {
                        return Ok(Fed::Stopped);
                    }
                }
                Chunk::DataEnd => {
                    let take = input.len().min(self.left as usize);
                    input = &input[take..];
                    self.left -= take as u32;
                    if self.left == 0 {
                        self.state = Chunk::Size;
                    }
                }
                Chunk::Done => return Ok(Fed::Ended),
            }
        }
        Ok(if self.state == Chunk::Done {
            Fed::Ended
        } else {
            Fed::Open
        })
    }

    fn size_line_done(&mut self) {
        self.state = if self.left == 0 {
            Chunk::Done
        } else {
            Chunk::Data
        };
    }
}

/// Cuts `input` (after what waits in `rx`) into events; the incomplete rest goes to `rx`.
fn events(
    input: &[u8],
    rx: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    event: &mut impl FnMut(&[u8], &[u8]) -> bool,
) -> Fed {
    if rx.is_empty() {
        let used = whole_events(input, scratch, event);
        return match used {
            Some(used) => {
                rx.extend_from_slice(&input[used..]);
                Fed::Open
            }
            None => Fed::Stopped,
        };
    }
    rx.extend_from_slice(input);
    let pending = std::mem::take(rx);
    let used = whole_events(&pending, scratch, event);
    let mut pending = pending;
    match used {
        Some(used) => {
            pending.drain(..used);
            if pending.is_empty() {
                // Give the buffer back: most streams never hold a partial event again.
                *rx = Vec::new();
            } else {
                *rx = pending;
            }
            Fed::Open
        }
        None => Fed::Stopped,
    }
}

/// Handles every whole event (ended by a blank line) at the start of `buf`; how many bytes
/// they took, or `None` when the callback stopped.
fn whole_events(
    buf: &[u8],
    scratch: &mut Vec<u8>,
    event: &mut impl FnMut(&[u8], &[u8]) -> bool,
) -> Option<usize> {
    let mut used = 0;
    while let Some(end) = find_blank_line(&buf[used..]) {
        let block = &buf[used..used + end];
        used += end + 2;
        let (mut name, mut data): (&[u8], Option<&[u8]>) = (b"message", None);
        let mut lines = 0;
        for line in block.split(|&b| b == b'\n') {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => (&line[..at], &line[at + 1..]),
                None => (line, &[][..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match field {
                b"event" => name = value,
                b"data" => {
                    lines += 1;
                    data = match (lines, data) {
                        (1, _) => Some(value),
                        (_, Some(first)) => {
                            if lines == 2 {
                                scratch.clear();
                                scratch.extend_from_slice(first);
                            }
                            scratch.push(b'\n');
                            scratch.extend_from_slice(value);
                            Some(&[][..])
                        }
                        (_, None) => None,
                    };
                }
                _ => {}
            }
        }
        let data = match (lines, data) {
            (0, _) | (_, None) => continue,
            (1, Some(data)) => data,
            _ => &scratch[..],
        };
        if !event(name, data) {
            return None;
        }
    }
    Some(used)
}

/// Where the first `\n\n` starts (the server ends lines with LF only).
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|pair| pair == b"\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunked: bool, pieces: &[&[u8]]) -> (Vec<(String, String)>, Fed) {
        let mut decoder = Decoder::new(chunked);
        let (mut rx, mut scratch, mut got) = (Vec::new(), Vec::new(), Vec::new());
        let mut fed = Fed::Open;
        for piece in pieces {
            fed = decoder
                .feed(piece, &mut rx, &mut scratch, &mut |name, data| {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    got.push((text(name), text(data)));
                    true
                })
                .unwrap();
        }
        (got, fed)
    }

    #[test]
    fn events_across_reads_and_chunks() {
        let body: &[u8] =
            b"retry: 1000\n\nevent: @subscribed\ndata: {}\nid: e:1\n\n: heartbeat\n\n\
                            event: t\ndata: a\ndata: b\nid: e:2\n\n";
        let want = vec![
            ("@subscribed".to_owned(), "{}".to_owned()),
            ("t".to_owned(), "a\nb".to_owned()),
        ];
        for cut in 0..body.len() {
            let (got, _) = decode(false, &[&body[..cut], &body[cut..]]);
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut chunked = Vec::new();
        for part in [&body[..20], &body[20..33], &body[33..]] {
            chunked.extend_from_slice(format!("{:X};ext=1\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        for cut in 0..chunked.len() {
            let (got, fed) = decode(true, &[&chunked[..cut], &chunked[cut..]]);
            assert_eq!((got, fed), (want.clone(), Fed::Ended), "cut at {cut}");
        }
    }

    #[test]
    fn heads_other_than_an_event_stream_are_refused() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nx";
        let (len, decoder) = read_head(ok).unwrap().unwrap();
        assert_eq!((len, decoder), (ok.len() - 1, Decoder::new(true)));
        assert_eq!(read_head(&ok[..20]).unwrap(), None);
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(read_head(refused).unwrap_err(), Reason::HttpStatus);
        let wrong = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
        assert_eq!(read_head(wrong).unwrap_err(), Reason::BadHandshake);
    }
}
