//! Fuzzes the fast path's HTTP/1.1 heads (`computearbitrage_router::head`): what the
//! router sends a backend for a client's request head, and what it sends a client for
//! a backend's response head. Besides "never panics", the rewritten heads must parse
//! back whole (nothing smuggled after them), carry the router's own headers exactly
//! once, no hop-by-hop header, and one unambiguous body framing.
//!
//! Input layout: `<flags byte> request-bytes \0 response-bytes`. Flags: bit 0 strips
//! `Authorization` (the router credential came from it), bit 1 means the response
//! answers a HEAD, bit 2 means the client asked to close.
#![no_main]

use computearbitrage_router::head::{
    is_hop_by_hop, read_request, read_response, write_forwarded_request, Forwarding, Framing,
    MAX_HEADERS,
};
use computearbitrage_router::parse::is_valid_traceparent;
use libfuzzer_sys::fuzz_target;

const BACKEND: &str = "10.0.0.1:8080";
const CLIENT_IP: &str = "192.0.2.1";
const WORKLOAD: &str = "wl-fuzz";
const NEW_TRACE: &[u8; 55] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Names the router sets itself on a forwarded request (any the client sent are
/// dropped).
const ROUTER_SET: [&str; 6] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-workload-id",
    "traceparent",
];

/// Claims about the client that only the router may make: a client's own are dropped
/// (written out here, not taken from the router, so the model checks the router).
const CLIENT_CLAIMS_DROPPED: [&str; 7] = [
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(2, |b| *b == 0);
    let request = parts.next().unwrap_or_default();
    let response = parts.next().unwrap_or_default();
    check_request(request, flags & 1 != 0);
    check_response(response, flags & 2 != 0, flags & 4 != 0);
});

fn values<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

fn check_request(raw: &[u8], strip_authorization: bool) {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Some(request)) = read_request(raw, &mut storage) else {
        return;
    };
    assert!(request.len <= raw.len());
    assert!(request.path.starts_with('/'), "{:?}", request.path);
    // The body length comes from one well-formed Content-Length, or is 0.
    let lengths = values(request.headers, "content-length");
    assert!(lengths.len() <= 1, "{lengths:?}");
    match lengths.first() {
        Some(v) => assert_eq!(
            std::str::from_utf8(v).unwrap().trim().parse::<u64>().ok(),
            Some(request.content_length)
        ),
        None => assert_eq!(request.content_length, 0),
    }
    // Whatever could frame a body otherwise, or switch protocols, is left to hyper.
    for name in ["transfer-encoding", "upgrade", "expect", "te", "trailer"] {
        assert!(values(request.headers, name).is_empty(), "{name}");
    }

    let mut out = Vec::new();
    write_forwarded_request(
        &request,
        &Forwarding {
            path: request.path,
            query: None,
            backend: BACKEND,
            client_ip: CLIENT_IP,
            workload_id: WORKLOAD,
            strip_authorization,
            new_traceparent: NEW_TRACE,
        },
        &mut out,
    );
    let mut again = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let mut parsed = httparse::Request::new(&mut again);
    match parsed.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(
            n,
            out.len(),
            "bytes after the forwarded head: {:?}",
            String::from_utf8_lossy(&out)
        ),
        other => panic!(
            "the forwarded head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(parsed.method, Some(request.method));
    assert_eq!(parsed.path, Some(request.path));
    assert_eq!(parsed.version, Some(1));
    let forwarded = parsed.headers;
    let once = |name: &str, expected: &[u8]| {
        assert_eq!(
            values(forwarded, name),
            vec![expected],
            "{name} in {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    once("host", BACKEND.as_bytes());
    once("x-forwarded-for", CLIENT_IP.as_bytes());
    once("x-forwarded-proto", b"http");
    once("x-workload-id", WORKLOAD.as_bytes());
    let trace = values(forwarded, "traceparent");
    assert_eq!(trace.len(), 1);
    assert!(is_valid_traceparent(trace[0]));
    match request.host.filter(|h| !h.is_empty()) {
        Some(h) => once("x-forwarded-host", h.as_bytes()),
        None => assert!(values(forwarded, "x-forwarded-host").is_empty()),
    }
    for h in forwarded.iter() {
        assert!(!is_hop_by_hop(h.name), "hop-by-hop {:?} forwarded", h.name);
    }
    let authorization = values(forwarded, "authorization");
    if strip_authorization {
        assert!(authorization.is_empty());
    } else {
        assert_eq!(authorization, values(request.headers, "authorization"));
    }
    for claim in CLIENT_CLAIMS_DROPPED.iter() {
        assert!(values(forwarded, claim).is_empty(), "the client's {claim} was forwarded");
    }
    // Every other header of the client reaches the backend, in order, unchanged.
    let passes = |h: &&httparse::Header| {
        !is_hop_by_hop(h.name)
            && !ROUTER_SET.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            && !CLIENT_CLAIMS_DROPPED.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            && !h.name.eq_ignore_ascii_case("authorization")
            && !h.name.eq_ignore_ascii_case("tracestate")
    };
    let sent: Vec<(&str, &[u8])> = request
        .headers
        .iter()
        .filter(passes)
        .map(|h| (h.name, h.value))
        .collect();
    let received: Vec<(&str, &[u8])> = forwarded
        .iter()
        .filter(passes)
        .map(|h| (h.name, h.value))
        .collect();
    assert_eq!(sent, received);
}

fn check_response(raw: &[u8], answers_head: bool, client_close: bool) {
    let Ok(Some(response)) = read_response(raw, answers_head, client_close) else {
        return;
    };
    assert!(response.len <= raw.len());
    let out = &response.head;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
    let mut parsed = httparse::Response::new(&mut storage);
    match parsed.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "the rewritten head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(out)
        ),
    }
    assert_eq!(parsed.code, Some(response.status));
    assert_eq!(parsed.version, Some(1));
    let headers = parsed.headers;
    let text = || String::from_utf8_lossy(out).to_string();
    let lengths = values(headers, "content-length");
    let codings = values(headers, "transfer-encoding");
    let connection = values(headers, "connection");
    assert!(lengths.len() <= 1, "{}", text());
    assert!(
        connection.is_empty() || connection == vec![&b"close"[..]],
        "{}",
        text()
    );
    match response.framing {
        Framing::Length(n) => {
            let value = lengths.first().expect("a length framing without a length");
            assert_eq!(std::str::from_utf8(value).unwrap().trim().parse::<u64>().ok(), Some(n));
            assert!(codings.is_empty(), "{}", text());
        }
        Framing::Chunked => {
            assert!(lengths.is_empty(), "a length beside chunked: {}", text());
            let last = codings
                .iter()
                .flat_map(|v| std::str::from_utf8(v).unwrap().split(','))
                .map(str::trim)
                .rfind(|t| !t.is_empty());
            assert!(
                last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")),
                "{}",
                text()
            );
        }
        Framing::UntilClose => {
            assert!(lengths.is_empty() && codings.is_empty(), "{}", text());
            assert_eq!(connection.len(), 1, "{}", text());
        }
        Framing::None => {
            assert!(
                answers_head
                    || (100..200).contains(&response.status)
                    || response.status == 204
                    || response.status == 304,
                "{}",
                text()
            );
            assert!(codings.is_empty(), "{}", text());
        }
    }
    if client_close {
        assert_eq!(connection.len(), 1, "{}", text());
    }
    for h in headers.iter() {
        let framing = h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("trailer");
        let ours = h.name.eq_ignore_ascii_case("connection");
        assert!(
            !is_hop_by_hop(h.name) || (framing && response.framing == Framing::Chunked) || ours,
            "hop-by-hop {:?} relayed: {}",
            h.name,
            text()
        );
    }
}
