//! Terraform-style durations for the `timeouts` block: `"90s"`, `"10m"`, `"1h30m"`.

use std::time::Duration;

/// Parses `1h30m`, `10m`, `45s`, `2h` (units h, m, s; at least one part).
pub fn parse(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    let mut parts = 0;
    for ch in text.trim().chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
        parts += 1;
    }
    (digits.is_empty() && parts > 0 && total > 0).then(|| Duration::from_secs(total))
}

/// Writes a duration the way [`parse`] reads it, shortest form: `5m`, `1h30m`, `45s`.
pub fn format(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses() {
        for text in ["5m", "1h30m", "45s", "2h", "1h1m1s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn parses_terraform_durations() {
        assert_eq!(parse("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse("ten minutes"), None);
        assert_eq!(parse("10"), None);
        assert_eq!(parse("0s"), None);
        assert_eq!(parse(""), None);
    }
}
