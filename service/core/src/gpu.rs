//! Canonical GPU names. Clouds name the same accelerator differently (GCP
//! `nvidia-tesla-a100`, AWS `A100`); users write any of them in any case. The table
//! lives in `computearbitrage-conventions`, shared with the API contract.

pub use computearbitrage_conventions::gpu::CANONICAL;

/// Maps a cloud's accelerator name onto its canonical name; unknown names are kept.
pub fn canonical_name(original: &str) -> String {
    computearbitrage_conventions::gpu::canonical(original)
}
