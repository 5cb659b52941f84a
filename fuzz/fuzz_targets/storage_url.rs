//! Fuzzes what a signed storage URL request can carry (`computearbitrage_storage`):
//! any path and query give an authorization or a refusal, never a panic, and whatever
//! is authorized or parsed is a key inside one workload's namespace that reads back
//! the same.
#![no_main]

use computearbitrage_storage::signed::URL_PATH_PREFIX;
use computearbitrage_storage::{Method, ObjectKey, Prefix, UrlSigner};
use libfuzzer_sys::fuzz_target;

fn inside_a_namespace(key: &ObjectKey) {
    let text = key.to_string();
    assert!(text.starts_with("workloads/"), "{text}");
    assert!(!text.split('/').any(|s| s.is_empty() || s == "." || s == ".."), "{text}");
    assert!(!text.contains('\\') && !text.chars().any(char::is_control), "{text:?}");
    assert_eq!(ObjectKey::parse(&text).ok().as_ref(), Some(key), "{text}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let method = if selector & 1 == 0 { Method::Get } else { Method::Put };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let signer = UrlSigner::new([9; 32]);
    for path in [path.to_string(), format!("{URL_PATH_PREFIX}{path}")] {
        if let Ok(authorized) = signer.verify(method, &path, query, i64::from(selector)) {
            assert_eq!(authorized.method, method);
            inside_a_namespace(&authorized.key);
        }
    }
    if let Ok(key) = ObjectKey::parse(text) {
        inside_a_namespace(&key);
    }
    if let Ok(prefix) = Prefix::parse(text) {
        assert_eq!(Prefix::parse(&prefix.to_string()).ok(), Some(prefix));
    }
});
