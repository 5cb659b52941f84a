//! HTTP/1.1 heads as the fast path reads and rewrites them: pure functions over bytes
//! (no I/O, no routing), so that the fuzz target can check what reaches a backend and
//! what reaches a client.
//!
//! A request head is either taken whole by the fast path or refused with
//! [`NotFast`], in which case hyper reads the same bytes and answers; the rules of
//! what is refused live in [`read_request`]. A response head is rewritten, or refused
//! with [`BadResponse`] (the router answers 502, or closes if the client already has
//! part of the answer).

/// Most header lines a head may have here; a longer head goes to hyper.
pub const MAX_HEADERS: usize = 96;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and the
/// `Proxy-*` credentials meant for this hop; lower case. Neither proxy path forwards
/// them.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is one of [`HOP_BY_HOP`], in any case.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The request is not for the fast path: hyper takes the connection from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFast;

/// What the fast path needs of a plain HTTP/1.1 request head.
#[derive(Debug)]
pub struct RequestHead<'b, 'h> {
    /// Bytes of the head, up to and including the empty line.
    pub len: usize,
    pub method: &'b str,
    /// The request target, origin form (starts with `/`).
    pub path: &'b str,
    pub host: Option<&'b str>,
    pub workload_header: Option<&'b [u8]>,
    pub authorization: Option<&'b [u8]>,
    pub traceparent: Option<&'b [u8]>,
    /// The body length (0 without `Content-Length`).
    pub content_length: u64,
    /// The client asked to close after this exchange.
    pub close: bool,
    pub headers: &'h [httparse::Header<'b>],
}

/// Reads one request head from `buf`: `Ok(None)` while it is incomplete, [`NotFast`]
/// for anything the fast path does not relay itself: not HTTP/1.1, `CONNECT` or a
/// target not in origin form, a repeated Host, `X-Workload-Id`, `Authorization`,
/// `traceparent` or `Content-Length`, a malformed length, any transfer coding,
/// `Upgrade`, `Expect`, `TE`, `Trailer`, a `Connection` option other than `close` and
/// `keep-alive`, or a head hyper must judge (malformed, too many headers).
pub fn read_request<'b, 'h>(
    buf: &'b [u8],
    storage: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<Option<RequestHead<'b, 'h>>, NotFast> {
    let mut request = httparse::Request::new(storage);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(NotFast),
    };
    let (Some(method), Some(path), Some(1)) = (request.method, request.path, request.version)
    else {
        return Err(NotFast);
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return Err(NotFast);
    }
    let headers: &'h [httparse::Header<'b>] = request.headers;
    let mut head = RequestHead {
        len,
        method,
        path,
        host: None,
        workload_header: None,
        authorization: None,
        traceparent: None,
        content_length: 0,
        close: false,
        headers,
    };
    let mut host = None;
    let mut content_length = None;
    let once = |slot: &Option<&[u8]>| if slot.is_some() { Err(NotFast) } else { Ok(()) };
    for h in headers {
        match h.name {
            n if n.eq_ignore_ascii_case("host") => {
                once(&host)?;
                host = Some(h.value);
            }
            n if n.eq_ignore_ascii_case("x-workload-id") => {
                once(&head.workload_header)?;
                head.workload_header = Some(h.value);
            }
            n if n.eq_ignore_ascii_case("authorization") => {
                once(&head.authorization)?;
                head.authorization = Some(h.value);
            }
            n if n.eq_ignore_ascii_case("traceparent") => {
                once(&head.traceparent)?;
                head.traceparent = Some(h.value);
            }
            n if n.eq_ignore_ascii_case("content-length") => {
                if content_length.is_some() {
                    return Err(NotFast);
                }
                content_length = Some(parse_length(h.value).ok_or(NotFast)?);
            }
            n if n.eq_ignore_ascii_case("transfer-encoding")
                || n.eq_ignore_ascii_case("upgrade")
                || n.eq_ignore_ascii_case("expect")
                || n.eq_ignore_ascii_case("te")
                || n.eq_ignore_ascii_case("trailer") =>
            {
                return Err(NotFast);
            }
            n if n.eq_ignore_ascii_case("connection") => {
                for token in std::str::from_utf8(h.value)
                    .map_err(|_| NotFast)?
                    .split(',')
                {
                    match token.trim() {
                        t if t.eq_ignore_ascii_case("close") => head.close = true,
                        t if t.eq_ignore_ascii_case("keep-alive") || t.is_empty() => {}
                        // Other options name headers to drop: rare, left to hyper.
                        _ => return Err(NotFast),
                    }
                }
            }
            _ => {}
        }
    }
    head.host = match host {
        Some(v) => Some(std::str::from_utf8(v).map_err(|_| NotFast)?),
        None => None,
    };
    head.content_length = content_length.unwrap_or(0);
    Ok(Some(head))
}

/// A `Content-Length` value: ASCII digits only (optional surrounding whitespace), no
/// sign, no list.
fn parse_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Where and how a request is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The path to send, without the `/w/{id}` prefix when that named the workload.
    pub path: &'a str,
    /// The query to send, with any `token=` credential removed; `None` for none.
    pub query: Option<&'a str>,
    /// The backend's `host:port`, sent as `Host`.
    pub backend: &'a str,
    pub client_ip: &'a str,
    pub workload_id: &'a str,
    /// Drop `Authorization`: it carried the router credential.
    pub strip_authorization: bool,
    /// A fresh `traceparent`, used when the request has no valid one.
    pub new_traceparent: &'a [u8; 55],
}

/// Appends the head to send to the backend: the client's end-to-end headers, then
/// `Host`, `X-Forwarded-For/Proto/Host`, `X-Workload-Id` and `traceparent` set by the
/// router (any the client sent are dropped, and so are `Forwarded` and `X-Real-IP`), a
/// `Referer` without the router's `token`, and the empty line.
pub fn write_forwarded_request(head: &RequestHead<'_, '_>, to: &Forwarding<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(to.path.as_bytes());
    if let Some(q) = to.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let keep_trace = head
        .traceparent
        .is_some_and(crate::parse::is_valid_traceparent);
    for h in head.headers {
        let n = h.name;
        if is_hop_by_hop(n)
            || n.eq_ignore_ascii_case("host")
            || n.eq_ignore_ascii_case("x-workload-id")
            || crate::parse::CLIENT_CLAIMS
                .iter()
                .any(|c| n.eq_ignore_ascii_case(c))
            || n.eq_ignore_ascii_case("traceparent")
            || (!keep_trace && n.eq_ignore_ascii_case("tracestate"))
            || (to.strip_authorization && n.eq_ignore_ascii_case("authorization"))
        {
            continue;
        }
        if n.eq_ignore_ascii_case("referer") {
            if let Some(clean) = crate::parse::referer_without_token(h.value) {
                put_header(out, n, &clean);
                continue;
            }
        }
        put_header(out, n, h.value);
    }
    put_header(out, "host", to.backend.as_bytes());
    put_header(out, "x-forwarded-for", to.client_ip.as_bytes());
    put_header(out, "x-forwarded-proto", b"http");
    if let Some(h) = head.host.filter(|h| !h.is_empty()) {
        put_header(out, "x-forwarded-host", h.as_bytes());
    }
    put_header(out, "x-workload-id", to.workload_id.as_bytes());
    match head.traceparent.filter(|_| keep_trace) {
        Some(t) => put_header(out, "traceparent", t),
        None => put_header(out, "traceparent", to.new_traceparent),
    }
    out.extend_from_slice(b"\r\n");
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The size a chunk's size line (`1a;name=value\r\n`) declares; `None` for one that is
/// malformed or past any real body (more than 16 hex digits).
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text
        .trim_end_matches(['\r', '\n'])
        .split(';')
        .next()?
        .trim();
    if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// The bytes after a size line: the chunk and its CRLF. `None` when that does not fit
/// in a u64 (a size such as `ffffffffffffffff`): an error, never a wrap-around.
pub fn chunk_span(size: u64) -> Option<u64> {
    size.checked_add(2)
}

/// What [`scan_chunked`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkScan {
    /// The body ends after this many bytes (last chunk and trailers included).
    Complete(usize),
    NeedMore,
    Invalid,
}

/// Walks a chunked body with the fast path's rules ([`chunk_size`], [`chunk_span`]),
/// for tests and the fuzzer: where it ends, or that it is malformed.
pub fn scan_chunked(body: &[u8]) -> ChunkScan {
    let line = |from: usize| -> Option<usize> {
        body.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p + 2)
    };
    let mut at = 0usize;
    loop {
        let Some(end) = line(at) else {
            return ChunkScan::NeedMore;
        };
        let Some(size) = chunk_size(&body[at..end]) else {
            return ChunkScan::Invalid;
        };
        if size == 0 {
            // Trailers up to the empty line.
            let mut t = end;
            loop {
                let Some(next) = line(t) else {
                    return ChunkScan::NeedMore;
                };
                if next - t == 2 {
                    return ChunkScan::Complete(next);
                }
                t = next;
            }
        }
        let Some(span) = chunk_span(size) else {
            return ChunkScan::Invalid;
        };
        let Some(next) = u64::try_from(end).ok().and_then(|e| e.checked_add(span)) else {
            return ChunkScan::Invalid;
        };
        if next > body.len() as u64 {
            return ChunkScan::NeedMore;
        }
        let next = next as usize;
        if &body[next - 2..next] != b"\r\n" {
            return ChunkScan::Invalid;
        }
        at = next;
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304, an answer to HEAD).
    None,
    Length(u64),
    Chunked,
    /// Until the backend closes; the client connection closes after it.
    UntilClose,
}

/// A response head, rewritten for the client.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the backend's head, consumed from the buffer.
    pub len: usize,
    /// The head to write to the client.
    pub head: Vec<u8>,
    pub status: u16,
    pub framing: Framing,
    /// The backend closes its connection after this response.
    pub backend_close: bool,
}

/// A response head the router will not relay: malformed, or framed ambiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse;

/// Reads one response head from `buf` (`Ok(None)` while incomplete) and rewrites it:
/// hop-by-hop headers are dropped, except that a chunked body keeps its
/// `Transfer-Encoding` and `Trailer` because it is relayed as it is framed. Ambiguous
/// framing is refused as RFC 9112 §6.3 asks of a proxy: differing `Content-Length`
/// values or a malformed one. With a transfer coding, `Content-Length` is dropped; a
/// coding that does not end in `chunked` is read until close.
pub fn read_response(
    buf: &[u8],
    answers_head: bool,
    client_close: bool,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    let status = response.code.ok_or(BadResponse)?;
    let reason = response.reason.unwrap_or("");
    let mut length = None;
    let mut codings = false;
    let mut chunked = false;
    let mut backend_close = response.version == Some(0);
    for h in response.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(h.value).ok_or(BadResponse)?;
            if length.is_some_and(|l| l != value) {
                return Err(BadResponse);
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding of all Transfer-Encoding lines decides.
            codings = true;
            let text = std::str::from_utf8(h.value).map_err(|_| BadResponse)?;
            if let Some(last) = text.split(',').map(str::trim).rfind(|t| !t.is_empty()) {
                chunked = last.eq_ignore_ascii_case("chunked");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            backend_close |= std::str::from_utf8(h.value)
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                .unwrap_or(true);
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 || answers_head
    {
        Framing::None
    } else if codings {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };

    let mut head = Vec::with_capacity(len + 32);
    // httparse accepts only three-digit codes.
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for h in response.headers.iter() {
        let name = h.name;
        let keep = if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("trailer")
        {
            framing == Framing::Chunked
        } else if name.eq_ignore_ascii_case("content-length") {
            // One line, and none beside a transfer coding. (A HEAD, 204 or 304
            // answer keeps it: it describes the body it does not carry.)
            !codings && !std::mem::replace(&mut length_written, true)
        } else {
            !is_hop_by_hop(name)
        };
        if keep {
            put_header(&mut head, name, h.value);
        }
    }
    if client_close || framing == Framing::UntilClose {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        len,
        head,
        status,
        framing,
        backend_close,
    }))
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_read_strictly_and_never_overflow() {
        assert_eq!(chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(chunk_size(b"1A;name=v\r\n"), Some(26));
        assert_eq!(chunk_size(b"0\r\n"), Some(0));
        assert_eq!(chunk_size(b"zz\r\n"), None);
        assert_eq!(chunk_size(b"-1\r\n"), None);
        assert_eq!(chunk_size(b"\r\n"), None);
        assert_eq!(chunk_size(b"10000000000000000\r\n"), None, "17 digits");
        let huge = chunk_size(b"ffffffffffffffff\r\n").unwrap();
        assert_eq!(chunk_span(huge), None, "size + 2 would wrap");
        assert_eq!(
            scan_chunked(b"ffffffffffffffff\r\nab\r\n0\r\n\r\n"),
            ChunkScan::Invalid
        );
        assert_eq!(
            scan_chunked(b"2\r\nab\r\n0\r\n\r\n"),
            ChunkScan::Complete(12)
        );
        assert_eq!(
            scan_chunked(b"2\r\nab\r\n0\r\nx: y\r\n\r\nextra"),
            ChunkScan::Complete(18)
        );
        assert_eq!(scan_chunked(b"2\r\nabc\r\n"), ChunkScan::Invalid);
        assert_eq!(scan_chunked(b"5\r\nab"), ChunkScan::NeedMore);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(text: &str) -> Result<Option<ResponseHead>, BadResponse> {
        read_response(text.as_bytes(), false, false)
    }

    #[test]
    fn ambiguous_response_lengths_are_refused() {
        assert_eq!(
            response("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n")
                .unwrap_err(),
            BadResponse
        );
        assert_eq!(
            response("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n").unwrap_err(),
            BadResponse
        );
        // The same value twice is one length, sent once.
        let same = response("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(same.framing, Framing::Length(3));
        let text = String::from_utf8(same.head).unwrap();
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
    }

    #[test]
    fn a_transfer_coding_overrides_the_length() {
        let chunked = response(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(chunked.framing, Framing::Chunked);
        let text = String::from_utf8(chunked.head).unwrap();
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("transfer-encoding: gzip, chunked"), "{text}");

        let gzip_only =
            response("HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: gzip\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(gzip_only.framing, Framing::UntilClose);
        let text = String::from_utf8(gzip_only.head).unwrap();
        assert!(!text.contains("content-length") && !text.contains("transfer-encoding"));
        assert!(text.contains("connection: close"), "{text}");
    }

    #[test]
    fn forwarded_requests_carry_router_headers_once() {
        let raw = b"GET /w/wl-1/a?x=1 HTTP/1.1\r\nHost: wl-1.example\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: keep-alive\r\nAuthorization: Bearer t\r\nAccept: */*\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = read_request(raw, &mut storage).unwrap().unwrap();
        assert_eq!(head.len, raw.len());
        let trace = crate::parse::new_traceparent_bytes();
        let mut out = Vec::new();
        write_forwarded_request(
            &head,
            &Forwarding {
                path: "/a",
                query: Some("x=1"),
                backend: "10.0.0.1:8080",
                client_ip: "127.0.0.1",
                workload_id: "wl-1",
                strip_authorization: true,
                new_traceparent: &trace,
            },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("GET /a?x=1 HTTP/1.1\r\nAccept: */*\r\n"),
            "{text}"
        );
        for once in [
            "host: 10.0.0.1:8080",
            "x-forwarded-for: 127.0.0.1",
            "x-workload-id: wl-1",
            "x-forwarded-host: wl-1.example",
        ] {
            assert_eq!(text.matches(once).count(), 1, "{once}: {text}");
        }
        assert!(
            !text.contains("6.6.6.6") && !text.contains("Bearer") && !text.contains("keep-alive")
        );
    }

    #[test]
    fn requests_the_fast_path_leaves_to_hyper() {
        for raw in [
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:1 HTTP/1.1\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nconnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
        ] {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            assert_eq!(
                read_request(raw.as_bytes(), &mut storage).unwrap_err(),
                NotFast,
                "{raw:?}"
            );
        }
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(read_request(b"GET / HTTP/1.1\r\nhost: a\r\n", &mut storage)
            .unwrap()
            .is_none());
    }
}
