//! The clouds we place on and the CPU architectures we distinguish.

use std::fmt;

/// A cloud provider. Stored as one byte in the catalog.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Cloud {
    Aws = 0,
    Azure = 1,
    Gcp = 2,
}

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Aws, Cloud::Azure, Cloud::Gcp];

    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
            Cloud::Gcp => "gcp",
        }
    }

    /// Parses a canonical, lower-case cloud name.
    pub fn parse(name: &str) -> Option<Cloud> {
        Cloud::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// CPU architecture of an instance type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Architecture {
    X86_64 = 0,
    Arm64 = 1,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// Accepts the names users write: `x86_64`/`amd64` and `arm64`/`aarch64`.
    pub fn parse(name: &str) -> Option<Architecture> {
        match computearbitrage_conventions::architecture(name)? {
            "x86_64" => Some(Architecture::X86_64),
            _ => Some(Architecture::Arm64),
        }
    }

    /// The architecture of an instance type, from each cloud's naming rules. Price
    /// catalogs do not carry it, and every arm64 family is named distinctively.
    pub fn of_instance_type(cloud: Cloud, instance_type: &str) -> Architecture {
        let family = instance_type.split(['.', '-', '_']).next().unwrap_or("");
        let arm = match cloud {
            // Graviton families carry a `g` after the generation digit: m7g, c6gn, r8gd, t4g, x2gd.
            Cloud::Aws => {
                let after_digit = family
                    .char_indices()
                    .find(|(_, c)| c.is_ascii_digit())
                    .map(|(i, _)| &family[i + 1..])
                    .unwrap_or("");
                after_digit.starts_with('g') && !family.starts_with('g') || family == "a1"
            }
            // Tau T2A and Axion C4A / N4A.
            Cloud::Gcp => matches!(family, "t2a" | "c4a" | "n4a"),
            // Ampere Altra sizes have a `p` feature letter: Standard_D2ps_v5, Standard_E4pds_v5.
            Cloud::Azure => {
                let size = instance_type.split('_').nth(1).unwrap_or("");
                let letters: String = size
                    .chars()
                    .skip_while(|c| c.is_ascii_alphabetic())
                    .skip_while(|c| c.is_ascii_digit())
                    .collect();
                letters.starts_with('p')
            }
        };
        if arm {
            Architecture::Arm64
        } else {
            Architecture::X86_64
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_follows_naming_rules() {
        use Architecture::*;
        let cases = [
            (Cloud::Aws, "m7g.large", Arm64),
            (Cloud::Aws, "c6gn.xlarge", Arm64),
            (Cloud::Aws, "t4g.micro", Arm64),
            (Cloud::Aws, "g5.xlarge", X86_64),
            (Cloud::Aws, "g4dn.xlarge", X86_64),
            (Cloud::Aws, "m6i.large", X86_64),
            (Cloud::Gcp, "t2a-standard-4", Arm64),
            (Cloud::Gcp, "c4a-highcpu-8", Arm64),
            (Cloud::Gcp, "n2-standard-4", X86_64),
            (Cloud::Azure, "Standard_D2ps_v5", Arm64),
            (Cloud::Azure, "Standard_E4pds_v5", Arm64),
            (Cloud::Azure, "Standard_D2s_v5", X86_64),
            (Cloud::Azure, "Basic_A0", X86_64),
        ];
        for (cloud, ty, want) in cases {
            assert_eq!(
                Architecture::of_instance_type(cloud, ty),
                want,
                "{cloud} {ty}"
            );
        }
    }
}
