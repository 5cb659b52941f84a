//! Canonical GPU names. Clouds name the same accelerator differently (GCP
//! `nvidia-tesla-a100`, AWS `A100`); users write any of them in any case.

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

/// Maps a cloud's accelerator name onto its canonical name. Names outside the known set
/// are kept as written (trimmed), so nothing is silently renamed.
pub fn canonical_name(original: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcp_names_map_to_canonical() {
        assert_eq!(canonical_name("nvidia-tesla-a100"), "A100");
        assert_eq!(canonical_name("nvidia-a100-80gb"), "A100-80GB");
        assert_eq!(canonical_name("nvidia-h100-80gb"), "H100");
        assert_eq!(canonical_name("nvidia-h200-141gb"), "H200");
        assert_eq!(canonical_name("nvidia-l4"), "L4");
    }

    #[test]
    fn canonical_names_are_case_insensitive_and_unknown_names_kept() {
        assert_eq!(canonical_name("a10g"), "A10G");
        assert_eq!(canonical_name("T4"), "T4");
        assert_eq!(canonical_name("Radeon MI25"), "Radeon MI25");
    }
}
