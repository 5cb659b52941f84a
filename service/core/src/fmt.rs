//! Formatting helpers for user-facing messages.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `9984` → `"9,984"`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A number without trailing zeros: `4.0` → `"4"`, `0.75` → `"0.75"`.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        let s = format!("{value:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A USD hourly price: `0.0512` → `"$0.0512/h"`.
pub fn price(value: f64) -> String {
    format!("${value:.4}/h")
}

/// Unix seconds → RFC 3339 UTC (`2026-11-01T00:00:00Z`). Out-of-range values clamp to
/// the epoch rather than failing: they only ever come from our own stored data.
pub fn rfc3339(unix_seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// RFC 3339 → unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(9984), "9,984");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(number(4.0), "4");
        assert_eq!(number(0.75), "0.75");
        assert_eq!(number(1360.0), "1360");
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-01T00:00:00Z");
    }
}
