//! The conventions of a workload spec that the API contract and the core share:
//! spellings (the names users may write and the one canonical form of each) and
//! defaults (what an absent field means).
//!
//! The API accepts several spellings of the same thing (`amd64` and `x86_64`,
//! `nvidia-tesla-a100` and `a100`); the service stores and returns the canonical one,
//! and the provider compares canonical forms, so a value read back in another
//! spelling is never a diff. Both the API crate and the core depend on this crate,
//! which depends on nothing.
//!
//! - [`cloud`]: `aws`, `gcp`, `azure` (lower case only).
//! - [`architecture`]: `x86_64` (also `amd64`, `x86-64`) and `arm64` (also `aarch64`).
//! - [`gpu`]: canonical GPU model names and the clouds' own names for them.
//! - [`nearest`]: the known names closest to a misspelt one, for "did you mean".
//! - [`defaults`]: the values of fields a spec leaves out.
//! - [`cidr`]: address ranges (`10.0.0.0/8`), for who may reach a TCP endpoint.

/// The cloud names, canonical and only accepted spelling.
pub const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];

/// The canonical cloud name, if `name` is one.
pub fn cloud(name: &str) -> Option<&'static str> {
    CLOUDS.iter().copied().find(|c| *c == name)
}

/// The canonical architectures.
pub const ARCHITECTURES: [&str; 2] = ["x86_64", "arm64"];

/// The canonical architecture name of any accepted spelling, case-insensitive.
pub fn architecture(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "x86_64" | "amd64" | "x86-64" => Some("x86_64"),
        "arm64" | "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// GPU model names.
pub mod gpu {
    /// The canonical names users filter on.
    pub const CANONICAL: [&str; 11] = [
        "A100",
        "A100-80GB",
        "H100",
        "H200",
        "L4",
        "T4",
        "V100",
        "A10G",
        "A10",
        "K80",
        "M60",
    ];

    /// Maps a cloud's accelerator name, or a canonical name in any case, onto the
    /// canonical name. Names outside the known set are kept as written (trimmed), so
    /// nothing is silently renamed.
    pub fn canonical(original: &str) -> String {
        let trimmed = original.trim();
        let lower = trimmed.to_ascii_lowercase();
        let mapped = match lower.as_str() {
            "nvidia-tesla-a100" => Some("A100"),
            "nvidia-a100-80gb" => Some("A100-80GB"),
            "nvidia-h100-80gb" | "nvidia-h100-mega-80gb" => Some("H100"),
            "nvidia-h200-141gb" => Some("H200"),
            "nvidia-l4" => Some("L4"),
            "nvidia-tesla-t4" => Some("T4"),
            "nvidia-tesla-v100" => Some("V100"),
            "nvidia-tesla-k80" => Some("K80"),
            _ => None,
        };
        if let Some(name) = mapped {
            return name.to_string();
        }
        CANONICAL
            .iter()
            .find(|c| c.eq_ignore_ascii_case(trimmed))
            .map(|c| c.to_string())
            .unwrap_or_else(|| trimmed.to_string())
    }
}

/// What a workload spec means by the fields it leaves out.
pub mod defaults {
    /// The port the workload serves on.
    pub const PORT: u16 = 8080;
    /// What happens when the cloud reclaims the instance.
    pub const ON_INTERRUPTION: &str = "migrate";
    /// What happens to a workload that stays unhealthy: `keep` it (and wait), or
    /// `replace` its instance.
    pub const ON_UNHEALTHY: &str = "keep";
    /// What capacity a workload takes when spot has none: `none`, or `on_demand`.
    pub const FALLBACK: &str = "none";
    /// How long a workload stays UNHEALTHY before `replace` acts.
    pub const REPLACE_UNHEALTHY_AFTER_SECONDS: u32 = 300;
    /// The bounds a spec may ask for.
    pub const REPLACE_UNHEALTHY_AFTER_MIN_SECONDS: u32 = 1;
    pub const REPLACE_UNHEALTHY_AFTER_MAX_SECONDS: u32 = 86_400;
    pub const HEALTH_PATH: &str = "/health";
    pub const HEALTH_INTERVAL_SECONDS: u32 = 30;
    /// The timeout when the interval is at least this long; see [`health_timeout_seconds`].
    pub const HEALTH_TIMEOUT_SECONDS: u32 = 5;
    pub const HEALTH_UNHEALTHY_THRESHOLD: u32 = 3;
    /// How long provisioning may take.
    pub const CREATE_TIMEOUT_SECONDS: u32 = 600;
    /// What the workload is sent on a notice when it names no checkpoint command.
    pub const CHECKPOINT_SIGNAL: &str = "SIGTERM";
    /// Complete checkpoints kept per workload; older ones are deleted.
    pub const CHECKPOINTS_KEPT: u32 = 3;
    /// The longest gap between periodic checkpoints a spec may ask for (a week).
    pub const CHECKPOINT_INTERVAL_MAX_SECONDS: u32 = 604_800;
    /// The most complete checkpoints a spec may ask to keep.
    pub const CHECKPOINTS_KEPT_MAX: u32 = 100;
    /// A `rebalance` block's defaults: another offer 20 % cheaper for an hour.
    pub const REBALANCE_MIN_SAVINGS_PERCENT: f64 = 20.0;
    pub const REBALANCE_MIN_DURATION_SECONDS: u32 = 3600;
    /// The bounds a `rebalance` block may ask for: a move for less than 1 % is churn,
    /// and no offer is 95 % cheaper than another in any catalog we know.
    pub const REBALANCE_MIN_SAVINGS_PERCENT_RANGE: (f64, f64) = (1.0, 95.0);
    /// Zero moves at the next check once the saving is there; a week is the most.
    pub const REBALANCE_MIN_DURATION_MAX_SECONDS: u32 = 604_800;
    /// How long a workload on on-demand capacity (`fallback = "on_demand"`) waits for
    /// a matching spot offer to stay available before it returns to spot, when it has
    /// no `rebalance` block to say so.
    pub const RETURN_TO_SPOT_AFTER_SECONDS: u32 = 600;

    /// The default timeout of a check every `interval_seconds`: 5 s, or the whole
    /// interval when that is shorter, so a check always ends before the next starts.
    pub fn health_timeout_seconds(interval_seconds: u32) -> u32 {
        HEALTH_TIMEOUT_SECONDS.min(interval_seconds.max(1))
    }
}

/// The signals a workload may ask to be told a notice by, with their Linux numbers.
/// A short list on purpose: these are the ones programs handle to shut down or dump
/// state; SIGKILL and SIGSTOP cannot be handled at all.
pub mod signals {
    pub const SUPPORTED: [(&str, i32); 6] = [
        ("SIGTERM", 15),
        ("SIGINT", 2),
        ("SIGHUP", 1),
        ("SIGQUIT", 3),
        ("SIGUSR1", 10),
        ("SIGUSR2", 12),
    ];

    /// The number of a supported signal, by its exact name (`SIGTERM`).
    pub fn number(name: &str) -> Option<i32> {
        SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// The names, for messages: `SIGTERM, SIGINT, …`.
    pub fn names() -> String {
        SUPPORTED
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Address ranges in CIDR notation.
pub mod cidr {
    use std::net::IpAddr;

    /// `address/prefix`, with no bits set past the prefix.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cidr {
        network: IpAddr,
        prefix: u8,
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(prefix: u8, width: u8) -> u128 {
        if prefix == 0 {
            0
        } else {
            let all = if width == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            };
            (all << (width - prefix)) & all
        }
    }

    impl Cidr {
        /// Parses `10.0.0.0/8`, `::1/128`, or a bare address (a single host). The
        /// error says what is wrong and what to write.
        pub fn parse(text: &str) -> Result<Cidr, String> {
            let (address, prefix) = match text.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (text, None),
            };
            let ip: IpAddr = address.trim().parse().map_err(|_| {
                format!("{text:?} is not an address range; write it like \"10.0.0.0/8\" or \"2001:db8::/32\"")
            })?;
            let width = bits(ip).1;
            let prefix = match prefix {
                None => width,
                Some(p) => match p.trim().parse::<u8>() {
                    Ok(n) if n <= width => n,
                    _ => {
                        return Err(format!(
                            "{text:?}: the prefix must be a number from 0 to {width}"
                        ))
                    }
                },
            };
            let (value, _) = bits(ip);
            if value & !mask(prefix, width) != 0 {
                let network = value & mask(prefix, width);
                let canonical = match ip {
                    IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(network as u32)),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(network)),
                };
                return Err(format!(
                    "{text:?} has bits set past its /{prefix}; write the network, {canonical}/{prefix}"
                ));
            }
            Ok(Cidr {
                network: ip,
                prefix,
            })
        }

        /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
        pub fn contains(&self, ip: IpAddr) -> bool {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            let ((have, width), (want, want_width)) = (bits(ip), bits(self.network));
            width == want_width && (have & mask(self.prefix, width)) == want
        }
    }

    impl std::fmt::Display for Cidr {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }

    /// Who may connect to a TCP endpoint when nothing is said: this machine only.
    pub const DEFAULT_TCP_ALLOWED: [&str; 2] = ["127.0.0.0/8", "::1/128"];

    /// The canonical spelling of a range, or the text as it is if it is not one.
    pub fn canonical(text: &str) -> String {
        Cidr::parse(text)
            .map(|c| c.to_string())
            .unwrap_or_else(|_| text.to_string())
    }
}

/// Levenshtein distance, for suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to `limit` of `known` closest to `name` (case-insensitive), nearest first,
/// among those within a third of the name's length (at least 2 edits). Ties keep
/// `known`'s order.
pub fn nearest<'a>(
    name: &str,
    known: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<&'a str> {
    let lower = name.to_ascii_lowercase();
    let budget = (lower.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, usize, &str)> = known
        .into_iter()
        .enumerate()
        .map(|(i, k)| (edit_distance(&lower, &k.to_ascii_lowercase()), i, k))
        .filter(|(d, _, _)| *d <= budget)
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.2 == b.2);
    scored.into_iter().take(limit).map(|(_, _, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_spelling_has_one_canonical_form() {
        for (spelling, canonical) in [
            ("x86_64", "x86_64"),
            ("AMD64", "x86_64"),
            ("x86-64", "x86_64"),
            ("aarch64", "arm64"),
            ("ARM64", "arm64"),
        ] {
            assert_eq!(architecture(spelling), Some(canonical), "{spelling}");
            assert_eq!(architecture(canonical), Some(canonical));
        }
        assert_eq!(architecture("sparc"), None);
    }

    #[test]
    fn gpu_names_map_to_canonical_and_unknown_names_are_kept() {
        assert_eq!(gpu::canonical("nvidia-tesla-a100"), "A100");
        assert_eq!(gpu::canonical("nvidia-a100-80gb"), "A100-80GB");
        assert_eq!(gpu::canonical("nvidia-h100-80gb"), "H100");
        assert_eq!(gpu::canonical("nvidia-h200-141gb"), "H200");
        assert_eq!(gpu::canonical("nvidia-l4"), "L4");
        assert_eq!(gpu::canonical("a10g"), "A10G");
        assert_eq!(gpu::canonical(" T4 "), "T4");
        assert_eq!(gpu::canonical("Radeon MI25"), "Radeon MI25");
        for name in gpu::CANONICAL {
            assert_eq!(
                gpu::canonical(name),
                name,
                "canonical names are fixed points"
            );
        }
    }

    #[test]
    fn ranges_parse_match_and_say_what_is_wrong() {
        use cidr::Cidr;
        let private = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(private.contains("10.1.2.3".parse().unwrap()));
        assert!(private.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!private.contains("11.0.0.1".parse().unwrap()));
        assert!(!private.contains("::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:DB8::/32").unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(
            Cidr::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert!(Cidr::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("write the network, 10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("everyone")
            .unwrap_err()
            .contains("not an address range"));
        assert_eq!(cidr::canonical("0:0::1/128"), "::1/128");
    }

    #[test]
    fn the_default_timeout_fits_any_interval() {
        assert_eq!(defaults::health_timeout_seconds(30), 5);
        assert_eq!(defaults::health_timeout_seconds(5), 5);
        assert_eq!(defaults::health_timeout_seconds(2), 2);
        assert_eq!(defaults::health_timeout_seconds(1), 1);
        assert_eq!(defaults::health_timeout_seconds(0), 1);
    }

    #[test]
    fn nearest_names_are_ranked_by_distance() {
        let regions = ["us-east-1", "us-east-2", "eu-west-1", "us-west-1"];
        // One edit from us-east-1 and from us-west-1, two from us-east-2.
        assert_eq!(
            nearest("us-eest-1", regions, 3),
            vec!["us-east-1", "us-west-1", "us-east-2"]
        );
        assert_eq!(nearest("US-EAST-1", regions, 1), vec!["us-east-1"]);
        assert!(nearest("antarctica-9", regions, 3).is_empty());
        assert_eq!(cloud("aws"), Some("aws"));
        assert_eq!(cloud("AWS"), None);
    }
}
