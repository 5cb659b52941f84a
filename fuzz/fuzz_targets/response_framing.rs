//! Fuzzes how the fast path frames a backend's response (`computearbitrage_router::head`):
//! the response head, then, for a chunked body, the chunk sizes and spans the relay
//! follows. Besides "never panics" (overflow checks are on): a body `scan_chunked`
//! calls complete ends inside the input, and a chunk size no span fits is refused.
//!
//! Input layout: `<flags byte> head-bytes \0 body-bytes`; bit 0 of the flags means the
//! response answers a HEAD.
#![no_main]

use computearbitrage_router::head::{chunk_size, chunk_span, read_response, scan_chunked, ChunkScan, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (head, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    if let Ok(Some(response)) = read_response(head, flags & 1 == 1, false) {
        assert!(response.len <= head.len());
        if response.framing == Framing::Chunked {
            if let ChunkScan::Complete(n) = scan_chunked(body) {
                assert!(n <= body.len());
            }
        }
    }
    // Any line as a size line.
    let line_end = body.windows(2).position(|w| w == b"\r\n").map(|p| p + 2).unwrap_or(body.len());
    if let Some(size) = chunk_size(&body[..line_end]) {
        match chunk_span(size) {
            Some(span) => assert_eq!(span, size + 2),
            None => assert!(size > u64::MAX - 2),
        }
    }
    if let ChunkScan::Complete(n) = scan_chunked(body) {
        assert!(n <= body.len());
    }
});
