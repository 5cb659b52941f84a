//! Fuzzes the router's request parsing (`computearbitrage_router::parse`): Host,
//! `X-Workload-Id`, the `/w/{id}/` path prefix, bearer and `?token=` credentials (and
//! `credential`, which picks between them) and
//! `traceparent`. Besides "never panics", it checks the properties the router relies
//! on when it puts these values into routes, headers, logs and forwarded URLs.
//!
//! Input layout (kept simple so seeds are readable text):
//!
//! ```text
//! <flags byte> host \0 x-workload-id \0 path-and-query \0 base-domain \0 authorization \0 traceparent
//! ```
//!
//! Bit 0 of the flags byte: a Host is present; bit 1: an `X-Workload-Id` header is
//! present (so `'3'` means both). Missing fields are empty. Text fields are decoded
//! lossily as UTF-8; the header values stay raw bytes.
#![no_main]

use computearbitrage_router::parse::{
    bearer_token, credential, find_target, is_valid_traceparent, is_workload_id, normalize_host,
    take_query_token, workload_from_header, workload_from_host, workload_from_path, Lookup,
    TargetError, MAX_WORKLOAD_ID_LEN, PATH_PREFIX,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(6, |b| *b == 0);
    let mut next = || fields.next().unwrap_or_default();
    let host_raw = next();
    let header = next();
    let path_raw = next();
    let base_raw = next();
    let authorization = next();
    let traceparent = next();

    let host = String::from_utf8_lossy(host_raw);
    let path_and_query = String::from_utf8_lossy(path_raw);
    let base_domain = String::from_utf8_lossy(base_raw);
    let host_opt = (flags & 1 != 0).then_some(&*host);
    let header_opt = (flags & 2 != 0).then_some(header);

    check_workload_id(&host);
    check_workload_id(&path_and_query);
    check_host(&host, &base_domain);
    check_host(&base_domain, &host);
    let from_header = check_header(header);
    check_path(&path_and_query);
    check_find_target(
        host_opt,
        header_opt,
        &path_and_query,
        &base_domain,
        from_header,
    );
    check_query(&path_and_query);
    if let Some((_, query)) = path_and_query.split_once('?') {
        check_query(query);
    }
    check_bearer(authorization);
    check_credential(authorization, &path_and_query);
    check_bearer(header);
    check_traceparent(traceparent);
    check_traceparent(header);
});

/// `is_workload_id` against its specification: 1–64 of `[a-z0-9_-]`, first a letter
/// or digit. An id that passes is safe in a header, a log line and a URL.
fn check_workload_id(text: &str) {
    let spec = (1..=MAX_WORKLOAD_ID_LEN).contains(&text.len())
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    assert_eq!(is_workload_id(text), spec, "is_workload_id({text:?})");
}

/// Every id any lookup hands out must be a workload id.
fn assert_id(id: &str, from: &str) {
    assert!(is_workload_id(id), "{from} returned a non-id {id:?}");
}

fn check_host(host: &str, base_domain: &str) {
    let normalized = normalize_host(host);
    if let Some(n) = &normalized {
        assert!(
            !n.is_empty() && n.len() <= 253,
            "normalize_host({host:?}) = {n:?}"
        );
        assert!(
            n.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'_' | b'.')),
            "normalize_host({host:?}) = {n:?}: not a lower-case DNS name"
        );
        assert!(
            !n.ends_with('.') && !n.starts_with('.'),
            "normalize_host({host:?}) = {n:?}"
        );
        assert!(
            n.split('.').all(|label| (1..=63).contains(&label.len())),
            "normalize_host({host:?}) = {n:?}: bad label"
        );
        assert_eq!(
            normalize_host(n).as_deref(),
            Some(n.as_str()),
            "normalize_host is not idempotent on {host:?}"
        );
        // Case never matters.
        assert_eq!(
            normalize_host(&host.to_ascii_uppercase()),
            normalized,
            "{host:?}"
        );
    }

    let from_host = workload_from_host(host, base_domain);
    if let Some(id) = &from_host {
        assert_id(id, "workload_from_host");
        // Exactly one label below the (normalized) base domain.
        let base = base_domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        assert!(!base.is_empty());
        assert_eq!(
            normalized.as_deref(),
            Some(format!("{id}.{base}").as_str()),
            "workload_from_host({host:?}, {base_domain:?}) = {id:?}"
        );
    }
    if base_domain.trim().trim_end_matches('.').is_empty() {
        assert_eq!(from_host, None, "host routing is off without a base domain");
    }
    if normalized.is_none() {
        assert_eq!(
            from_host, None,
            "{host:?} is not a host name but named a workload"
        );
    }
}

fn check_header(value: &[u8]) -> Option<String> {
    let id = workload_from_header(value);
    if let Some(id) = &id {
        assert_id(id, "workload_from_header");
        let text = std::str::from_utf8(value).expect("an id came from non-UTF-8");
        assert_eq!(text.trim(), id, "workload_from_header({value:?})");
    }
    id
}

fn check_path(path_and_query: &str) -> Option<(String, String)> {
    let found = workload_from_path(path_and_query);
    match &found {
        Some((id, rest)) => {
            assert_id(id, "workload_from_path");
            assert!(
                rest.starts_with('/'),
                "workload_from_path({path_and_query:?}) rest {rest:?}"
            );
            // Only the `/w/{id}` prefix is removed; the rest (query included) is kept.
            assert!(path_and_query.starts_with(&format!("{PATH_PREFIX}{id}")));
            let after = &path_and_query[PATH_PREFIX.len() + id.len()..];
            assert!(
                after.is_empty() || after.starts_with(['/', '?']),
                "{path_and_query:?}"
            );
            if after.starts_with('/') {
                assert_eq!(rest, after, "{path_and_query:?}");
            } else {
                assert_eq!(*rest, format!("/{after}"), "{path_and_query:?}");
            }
        }
        None => {
            if let Some(after) = path_and_query.strip_prefix(PATH_PREFIX) {
                let end = after.find(['/', '?']).unwrap_or(after.len());
                assert!(
                    !is_workload_id(&after[..end]),
                    "missed the id in {path_and_query:?}"
                );
            }
        }
    }
    found
}

fn check_find_target(
    host: Option<&str>,
    header: Option<&[u8]>,
    path_and_query: &str,
    base_domain: &str,
    header_id: Option<String>,
) {
    let from_host = host.and_then(|h| workload_from_host(h, base_domain));
    let from_header = header.and(header_id);
    let from_path = workload_from_path(path_and_query);
    let result = find_target(host, header, path_and_query, base_domain);
    let ctx = || format!("find_target({host:?}, {header:?}, {path_and_query:?}, {base_domain:?})");
    if header.is_some() && from_header.is_none() {
        // A header that is not an id is refused, whatever else names a workload.
        assert_eq!(result, Err(TargetError::BadHeader), "{}", ctx());
    }
    match result {
        Ok(t) => {
            assert_id(&t.workload_id, "find_target");
            // Whatever named the workload, nothing present names another one, except a
            // path under a Host- or header-named workload (it is the app's own path).
            if let Some(id) = &from_host {
                assert_eq!(&t.workload_id, id, "{}", ctx());
            }
            if let Some(id) = &from_header {
                assert_eq!(&t.workload_id, id, "{}", ctx());
            }
            let expected_lookup = if from_host.is_some() {
                Lookup::Host
            } else if from_header.is_some() {
                Lookup::Header
            } else {
                Lookup::Path
            };
            assert_eq!(t.lookup, expected_lookup, "{}", ctx());
            match &from_path {
                Some((id, rest)) if *id == t.workload_id => {
                    assert_eq!(&t.path_and_query, rest, "{}", ctx());
                }
                _ => {
                    assert_ne!(t.lookup, Lookup::Path, "{}", ctx());
                    assert_eq!(t.path_and_query, path_and_query, "{}", ctx());
                }
            }
            if t.lookup == Lookup::Path {
                assert!(t.path_and_query.starts_with('/'), "{}: {t:?}", ctx());
            }
            if path_and_query.starts_with('/') {
                assert!(t.path_and_query.starts_with('/'), "{}: {t:?}", ctx());
            }
        }
        Err(TargetError::BadHeader) => {
            assert!(header.is_some() && from_header.is_none(), "{}", ctx());
        }
        Err(TargetError::Conflicting { first, second }) => {
            // These go into the error response: they must be ids.
            assert_id(&first, "find_target (conflict)");
            assert_id(&second, "find_target (conflict)");
            assert_ne!(first, second, "{}", ctx());
            assert_eq!(from_host.as_ref(), Some(&first), "{}", ctx());
            assert_eq!(from_header.as_ref(), Some(&second), "{}", ctx());
        }
        Err(TargetError::Unnamed) => {
            assert!(
                from_host.is_none() && header.is_none() && from_path.is_none(),
                "{}",
                ctx()
            );
        }
    }
}

/// Percent-decoding of a query value (`+` is a space), the reference for the token
/// `take_query_token` returns. Like the router it reads the two characters after `%`
/// with `u8::from_str_radix`, which also takes a sign: `%+1` is 0x01 (harmless).
fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (a, b) = (*bytes.get(i + 1)?, *bytes.get(i + 2)?);
                let digit = |c: u8| (c as char).to_digit(16);
                let byte = match (a, digit(a), digit(b)) {
                    (_, Some(hi), Some(lo)) => hi * 16 + lo,
                    (b'+', None, Some(lo)) => lo,
                    _ => return None,
                };
                out.push(byte as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `take_query_token` takes the credential out of the forwarded query: what is left is
/// the original pairs in order, minus `token` pairs, and never carries the credential
/// it took.
fn check_query(query: &str) {
    let (token, rest) = take_query_token(query);
    let pairs: Vec<&str> = query.split('&').collect();
    let kept: Vec<&str> = rest.split('&').collect();
    // `rest` is a subsequence of the original pairs (nothing invented or altered).
    let mut it = pairs.iter();
    for pair in &kept {
        if rest.is_empty() {
            break;
        }
        assert!(
            it.any(|p| p == pair),
            "take_query_token({query:?}) kept {pair:?} from nowhere"
        );
    }
    assert!(
        !kept.contains(&"token"),
        "take_query_token({query:?}) forwarded a bare token: {rest:?}"
    );
    // Every pair that is not a `token` pair is kept, in order.
    let is_token_pair =
        |p: &&str| *p == "token" || p.split_once('=').is_some_and(|(k, _)| k == "token");
    let others: Vec<&str> = pairs
        .iter()
        .copied()
        .filter(|p| !is_token_pair(p))
        .collect();
    if rest.is_empty() {
        assert!(
            others.join("&").is_empty(),
            "take_query_token({query:?}) dropped {others:?}"
        );
    } else {
        let kept_others: Vec<&str> = kept.iter().copied().filter(|p| !is_token_pair(p)).collect();
        assert_eq!(
            kept_others, others,
            "take_query_token({query:?}) = {rest:?}"
        );
    }
    if let Some(t) = &token {
        assert!(
            !t.is_empty(),
            "take_query_token({query:?}) returned an empty token"
        );
        // The token is the decoding of one of the `token=` values...
        assert!(
            pairs.iter().any(|p| p
                .strip_prefix("token=")
                .is_some_and(|v| decode(v).as_deref() == Some(t.as_str()))),
            "take_query_token({query:?}) = {t:?}, which no token= pair decodes to"
        );
        // ...and that credential is not forwarded to the workload.
        for pair in &kept {
            if let Some(v) = pair.strip_prefix("token=") {
                assert_ne!(
                    decode(v).as_deref(),
                    Some(t.as_str()),
                    "take_query_token({query:?}) took {t:?} but still forwards it in {rest:?}"
                );
            }
        }
        assert_ne!(
            take_query_token(&rest).0.as_deref(),
            Some(t.as_str()),
            "take_query_token({query:?}): the rest {rest:?} yields the same token again"
        );
    }
}

fn check_bearer(value: &[u8]) {
    let Some(token) = bearer_token(value) else {
        return;
    };
    assert!(!token.is_empty(), "bearer_token({value:?}) is empty");
    assert!(
        token.bytes().all(|b| b.is_ascii_graphic()),
        "bearer_token({value:?}) = {token:?}: whitespace, control or non-ASCII"
    );
    let text = std::str::from_utf8(value).expect("a token came from non-UTF-8");
    let (scheme, after) = text.split_once(' ').expect("no scheme");
    assert!(
        scheme.eq_ignore_ascii_case("bearer"),
        "bearer_token({value:?})"
    );
    assert_eq!(after.trim(), token, "bearer_token({value:?})");
}

/// `credential`: a bearer token wins over `?token=`; the path and query to forward are
/// the target's, split at the first `?`, with no `token` pair left in the query.
fn check_credential(authorization: &[u8], path_and_query: &str) {
    let found = credential(Some(authorization), path_and_query);
    let bearer = bearer_token(authorization);
    assert_eq!(found.from_authorization, bearer.is_some(), "{authorization:?}");
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    assert_eq!(found.path, path, "credential(.., {path_and_query:?}).path");
    let from_query = query.and_then(|q| take_query_token(q).0);
    assert_eq!(
        found.token.as_deref(),
        bearer.or(from_query.as_deref()),
        "credential({authorization:?}, {path_and_query:?}).token"
    );
    if let Some(rest) = &found.query {
        assert!(
            !rest.is_empty()
                && rest
                    .split('&')
                    .all(|pair| pair != "token" && !pair.starts_with("token=")),
            "credential(.., {path_and_query:?}) forwards the query {rest:?}"
        );
    }
    assert_eq!(
        found.query.is_none(),
        query.is_none_or(|q| take_query_token(q).1.is_empty()),
        "credential(.., {path_and_query:?}).query"
    );
}

/// `is_valid_traceparent` against the W3C Trace Context rules: version 00 is exactly
/// `00-{32 hex}-{16 hex}-{2 hex}`, lower-case, ids not all zero; a later version
/// (not `ff`) has those first four fields and, if longer, a `-` after the flags.
fn check_traceparent(value: &[u8]) {
    let valid = is_valid_traceparent(value);
    let spec = std::str::from_utf8(value).is_ok_and(|text| {
        let t = text.trim().as_bytes();
        let hex = |s: &[u8]| {
            s.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        };
        let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
        t.len() >= 55
            && hex(&t[0..2])
            && &t[0..2] != b"ff"
            && t[2] == b'-'
            && hex(&t[3..35])
            && nonzero(&t[3..35])
            && t[35] == b'-'
            && hex(&t[36..52])
            && nonzero(&t[36..52])
            && t[52] == b'-'
            && hex(&t[53..55])
            && if &t[0..2] == b"00" {
                t.len() == 55
            } else {
                t.len() == 55 || t[55] == b'-'
            }
    });
    assert_eq!(valid, spec, "is_valid_traceparent({value:?})");
}
