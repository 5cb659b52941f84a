//! Pure parsing of what a request says about its workload and credential: the Host,
//! the `X-Workload-Id` header, the `/w/{id}/` path prefix, bearer and `?token=`
//! credentials, and W3C `traceparent`. No I/O, no allocation beyond the result (a new
//! `traceparent` draws from the thread's random generator); the fuzz target
//! (`fuzz/fuzz_targets/parse_request.rs`) drives every function here.

use std::borrow::Cow;

/// Longest workload id accepted (ids are `wl-` + 20 hex today).
pub const MAX_WORKLOAD_ID_LEN: usize = 64;

/// The path prefix that names a workload: `/w/{id}/…`.
pub const PATH_PREFIX: &str = "/w/";

/// Whether `id` can be a workload id: 1–64 of `[a-z0-9_-]`, starting with a letter or
/// digit. Anything else is rejected before it reaches a lookup, a log line or a
/// header. (Ids are `wl-<hex>`; `_` is accepted for ids made before they were
/// DNS-safe.)
pub fn is_workload_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_WORKLOAD_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The host part of a `Host` header or URI authority, lower-cased, without port or
/// a trailing dot. `None` if it is not a plain DNS name or IPv4 address (so CRLF,
/// spaces, userinfo and similar tricks never match a route).
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim();
    // Bracketed IPv6 literals never name a workload.
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            name
        }
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name
            .split('.')
            .any(|label| label.is_empty() || label.len() > 63)
    {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// The workload named by a Host `{id}.{base_domain}`; `None` when the base domain is
/// empty (host routing off) or the host is not exactly one label below it.
pub fn workload_from_host(host: &str, base_domain: &str) -> Option<String> {
    let base = base_domain.trim().trim_end_matches('.');
    if base.is_empty() {
        return None;
    }
    // Lower-cased by `normalize_host`; the base domain is compared without copying it.
    let host = normalize_host(host)?;
    let split = host.len().checked_sub(base.len())?;
    let (front, suffix) = (host.get(..split)?, host.get(split..)?);
    if !suffix.eq_ignore_ascii_case(base) {
        return None;
    }
    let label = front.strip_suffix('.')?;
    is_workload_id(label).then(|| label.to_string())
}

/// The workload named by an `X-Workload-Id` header value.
pub fn workload_from_header(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?.trim();
    is_workload_id(text).then(|| text.to_string())
}

/// `/w/{id}/rest` → (`id`, `/rest`); `/w/{id}` → (`id`, `/`). The rest keeps its
/// query string untouched.
pub fn workload_from_path(path_and_query: &str) -> Option<(String, String)> {
    let after = path_and_query.strip_prefix(PATH_PREFIX)?;
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (id, rest) = after.split_at(end);
    if !is_workload_id(id) {
        return None;
    }
    let rest = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    Some((id.to_string(), rest))
}

/// How the request named its workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Host,
    Header,
    Path,
}

/// The workload a request is for, and the path to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub workload_id: String,
    pub lookup: Lookup,
    /// The path and query to send to the backend (the `/w/{id}` prefix removed).
    pub path_and_query: String,
}

/// Why no target could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Nothing in the request names a workload.
    Unnamed,
    /// Two of Host, header and path name different workloads.
    Conflicting { first: String, second: String },
    /// An `X-Workload-Id` header is present but is not a workload id.
    BadHeader,
}

/// Finds the workload from Host, then `X-Workload-Id`, then the path prefix. Host and
/// header must agree when both are present. A `/w/{id}/` path under a workload already
/// named by Host or header is that application's own path and is forwarded as is; only
/// the path form changes the forwarded path.
pub fn find_target(
    host: Option<&str>,
    header: Option<&[u8]>,
    path_and_query: &str,
    base_domain: &str,
) -> Result<Target, TargetError> {
    let from_host = host.and_then(|h| workload_from_host(h, base_domain));
    let from_header = match header {
        Some(v) => Some(workload_from_header(v).ok_or(TargetError::BadHeader)?),
        None => None,
    };
    let from_path = workload_from_path(path_and_query);
    let mut found: Option<(String, Lookup)> = None;
    for (candidate, lookup) in [
        (from_host, Lookup::Host),
        (from_header, Lookup::Header),
        (from_path.as_ref().map(|(id, _)| id.clone()), Lookup::Path),
    ] {
        let Some(candidate) = candidate else { continue };
        match &found {
            None => found = Some((candidate, lookup)),
            Some((first, _)) if *first != candidate => {
                // A path like `/w/x/` under a workload named by Host or header is
                // ordinary application path, not a second name.
                if lookup == Lookup::Path {
                    continue;
                }
                return Err(TargetError::Conflicting {
                    first: first.clone(),
                    second: candidate,
                });
            }
            Some(_) => {}
        }
    }
    let (workload_id, lookup) = found.ok_or(TargetError::Unnamed)?;
    // Strip the prefix only when the path is how the workload was named, or when it
    // repeats the same id (a client using both forms at once).
    let path_and_query = match from_path {
        Some((id, rest)) if id == workload_id => rest,
        _ => path_and_query.to_string(),
    };
    Ok(Target {
        workload_id,
        lookup,
        path_and_query,
    })
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// Takes the `token` parameter out of a query string: returns it (percent-decoded)
/// and the query without it, so the credential is never forwarded to the workload.
pub fn take_query_token(query: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            // Every `token` pair goes, so a repeated one cannot reach the workload; the
            // first non-empty one is the credential.
            Some(("token", value)) => {
                if token.is_none() {
                    token = percent_decode(value).filter(|t| !t.is_empty());
                }
            }
            _ if pair == "token" => {}
            _ => kept.push(pair),
        }
    }
    (token, kept.join("&"))
}

/// A `Referer` value without the router credential a browser put in the page's URL:
/// `None` when it has none (forward it as it is), else the value with every `token`
/// query pair removed. A page opened with `?token=…` would otherwise hand its token
/// to every request it makes.
pub fn referer_without_token(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let (before, fragment) = match text.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (text, None),
    };
    let (base, query) = before.split_once('?')?;
    let has_token = query
        .split('&')
        .any(|pair| pair == "token" || pair.starts_with("token="));
    if !has_token {
        return None;
    }
    let (_, kept) = take_query_token(query);
    let mut out = String::from(base);
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept);
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out.into_bytes())
}

/// Client headers that claim who the client is: the router sets
/// `X-Forwarded-For/Proto/Host` itself and drops these, so a backend never believes a
/// client about its own address.
pub const CLIENT_CLAIMS: [&str; 10] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// Whether a request with this method may be sent to a backend a second time: the
/// idempotent methods of RFC 9110 §9.2.2. Any other request that reached a backend
/// may have taken effect, so the router never repeats it.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// A request's credential, and its target with the credential taken out.
pub struct Credential<'h, 'p> {
    /// `Authorization: Bearer …`, else the first non-empty `?token=`.
    pub token: Option<Cow<'h, str>>,
    /// The credential came from `Authorization`: that header is the router's, not the
    /// workload's, and is not forwarded. (An application's own `Authorization`, such as
    /// `Basic …`, passes when the credential came in the query.)
    pub from_authorization: bool,
    /// The path to forward, without its query.
    pub path: &'p str,
    /// The query to forward: every `token` pair removed; `None` when nothing is left.
    pub query: Option<String>,
}

/// Reads the credential of a request from its `Authorization` value and target; the
/// `token` query pairs are removed whichever credential is used.
pub fn credential<'h, 'p>(
    authorization: Option<&'h [u8]>,
    path_and_query: &'p str,
) -> Credential<'h, 'p> {
    let bearer = authorization.and_then(bearer_token);
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let (query_token, query) = match query {
        Some(q) => {
            let (token, rest) = take_query_token(q);
            (token, (!rest.is_empty()).then_some(rest))
        }
        None => (None, None),
    };
    Credential {
        token: bearer.map(Cow::Borrowed).or(query_token.map(Cow::Owned)),
        from_authorization: bearer.is_some(),
        path,
        query,
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
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

/// Whether a `traceparent` value is a valid W3C trace context (version 00 format, or
/// a later version whose first four fields parse), so it can be kept as it came.
pub fn is_valid_traceparent(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let mut parts = text.trim().split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2)
}

/// A new `traceparent` (version 00, sampled) for a request that came without one.
pub fn new_traceparent() -> String {
    String::from_utf8_lossy(&new_traceparent_bytes()).into_owned()
}

/// [`new_traceparent`] without allocating: `00-{trace}-{span}-01`, 55 bytes.
pub fn new_traceparent_bytes() -> [u8; 55] {
    use rand::RngCore;
    let mut ids = [0u8; 24];
    let mut rng = rand::thread_rng();
    // All-zero trace or span ids are invalid.
    while ids[..16].iter().all(|b| *b == 0) || ids[16..].iter().all(|b| *b == 0) {
        rng.fill_bytes(&mut ids);
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    // The lengths match by construction (16 and 8 bytes into 32 and 16 hex digits).
    let _ = hex::encode_to_slice(&ids[..16], &mut out[3..35]);
    let _ = hex::encode_to_slice(&ids[16..], &mut out[36..52]);
    out
}

#[cfg(test)]
mod referer_tests {
    use super::*;

    #[test]
    fn the_router_credential_never_leaves_in_a_referer() {
        let strip =
            |v: &str| referer_without_token(v.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(
            strip("http://r/w/wl-1/page?token=caw_x&a=b"),
            Some("http://r/w/wl-1/page?a=b".into())
        );
        assert_eq!(
            strip("http://r/w/wl-1/?token=caw_x"),
            Some("http://r/w/wl-1/".into())
        );
        assert_eq!(
            strip("http://r/p?a=1&token=x&token=y#frag"),
            Some("http://r/p?a=1#frag".into())
        );
        assert_eq!(strip("http://r/p?tokens=1"), None, "another parameter");
        assert_eq!(strip("http://r/p"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routing_ignores_port_case_and_trailing_dot() {
        let id = "w-0123abcd";
        for host in [
            "w-0123abcd.run.example.com",
            "W-0123ABCD.Run.Example.Com",
            "w-0123abcd.run.example.com:8443",
            "w-0123abcd.run.example.com.",
            "w-0123abcd.run.example.com.:80",
        ] {
            assert_eq!(
                workload_from_host(host, "run.example.com").as_deref(),
                Some(id),
                "{host}"
            );
        }
        for host in [
            "run.example.com",
            "a.w-0123abcd.run.example.com",
            "w-0123abcd.run.example.com\r\nX-Evil: 1",
            "w-0123abcd.run.example.com:99999999",
            "w-0123abcd.run.example.com:",
            "user@w-0123abcd.run.example.com",
            "w-0123abcd.evilrun.example.com",
            "w-0123abcd..run.example.com",
            "[::1]:80",
            "",
        ] {
            assert_eq!(
                workload_from_host(host, "run.example.com"),
                None,
                "{host:?}"
            );
        }
        assert_eq!(
            workload_from_host("w-1.run.example.com", ""),
            None,
            "host routing off"
        );
    }

    #[test]
    fn path_prefix_is_stripped_and_keeps_the_query() {
        assert_eq!(
            workload_from_path("/w/w-1/api/v1?x=1"),
            Some(("w-1".into(), "/api/v1?x=1".into()))
        );
        assert_eq!(
            workload_from_path("/w/w-1"),
            Some(("w-1".into(), "/".into()))
        );
        assert_eq!(
            workload_from_path("/w/w-1?x"),
            Some(("w-1".into(), "/?x".into()))
        );
        assert_eq!(workload_from_path("/w/"), None);
        assert_eq!(workload_from_path("/w/UPPER/"), None);
        assert_eq!(workload_from_path("/w/../etc/"), None);
        assert_eq!(workload_from_path("/x/w-1/"), None);
    }

    #[test]
    fn all_three_ways_must_agree() {
        let t = find_target(Some("w-1.r.io"), None, "/a", "r.io").unwrap();
        assert_eq!(
            (t.workload_id.as_str(), t.lookup, t.path_and_query.as_str()),
            ("w-1", Lookup::Host, "/a")
        );
        let t = find_target(Some("127.0.0.1:80"), Some(b"w-2"), "/a", "r.io").unwrap();
        assert_eq!((t.workload_id.as_str(), t.lookup), ("w-2", Lookup::Header));
        let t = find_target(Some("127.0.0.1"), None, "/w/w-3/b?c", "").unwrap();
        assert_eq!(
            (t.workload_id.as_str(), t.lookup, t.path_and_query.as_str()),
            ("w-3", Lookup::Path, "/b?c")
        );
        // The same id twice: fine, and the prefix is still stripped.
        let t = find_target(None, Some(b"w-3"), "/w/w-3/b", "").unwrap();
        assert_eq!(t.path_and_query, "/b");
        // A header and a host that disagree are refused.
        assert!(matches!(
            find_target(Some("w-1.r.io"), Some(b"w-2"), "/", "r.io"),
            Err(TargetError::Conflicting { .. })
        ));
        // Under a workload named by Host or header, `/w/…` is the application's own path.
        let t = find_target(None, Some(b"w-2"), "/w/w-3/b", "").unwrap();
        assert_eq!(
            (t.workload_id.as_str(), t.path_and_query.as_str()),
            ("w-2", "/w/w-3/b")
        );
        let t = find_target(Some("w-1.r.io"), None, "/w/other/x", "r.io").unwrap();
        assert_eq!(
            (t.workload_id.as_str(), t.path_and_query.as_str()),
            ("w-1", "/w/other/x")
        );
        assert_eq!(
            find_target(Some("r.io"), None, "/", "r.io"),
            Err(TargetError::Unnamed)
        );
        assert_eq!(
            find_target(None, Some(b"w-1\r\nx: y"), "/", ""),
            Err(TargetError::BadHeader)
        );
    }

    #[test]
    fn credentials_from_bearer_or_query() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer a\x01b"), None);
        assert_eq!(
            take_query_token("a=1&token=s%2Bx&b=2"),
            (Some("s+x".into()), "a=1&b=2".into())
        );
        assert_eq!(take_query_token("a=1"), (None, "a=1".into()));
        assert_eq!(take_query_token("token="), (None, "".into()));
        assert_eq!(take_query_token("token=%zz"), (None, "".into()));
        // Found by the fuzzer: a repeated token must not survive into the forwarded query.
        assert_eq!(
            take_query_token("token=a&x&token=a"),
            (Some("a".into()), "x".into())
        );
        assert_eq!(
            take_query_token("token=&token=secret"),
            (Some("secret".into()), "".into())
        );
    }

    #[test]
    fn traceparent_is_kept_only_when_valid() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(good));
        assert!(!is_valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ));
        assert!(!is_valid_traceparent(
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(b"garbage"));
        let fresh = new_traceparent();
        assert!(is_valid_traceparent(fresh.as_bytes()), "{fresh}");
        assert_ne!(fresh, new_traceparent());
    }
}
