//! The one definition of genrep's wire schema, used by the server and the client.
//!
//! A WebDataset sample is a run of adjacent tar members `{key}.{field}`:
//! `anchor.{fmt}`, `pos0.{fmt}` … `pos{K-1}.{fmt}`, `cls` (conditional generators only) and `json`
//! (a [`SampleMeta`]). The key is the sample index zero-padded to [`KEY_DIGITS`] digits.

pub mod npy;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Width of the zero-padded sample key; indices are limited to `< 10^KEY_DIGITS`.
pub const KEY_DIGITS: usize = 12;
/// Exclusive upper bound of sample indices.
pub const MAX_INDEX: u64 = 1_000_000_000_000;

/// Response header of a finite shard: how many samples it holds (a client checks the count).
pub const SAMPLES_HEADER: &str = "x-genrep-samples";

/// Response header of shards and streams: the index of their first sample.
pub const FIRST_INDEX_HEADER: &str = "x-genrep-first-index";

/// Response header of `/v1/walks.png`: the walk coefficient of each column, comma-separated.
pub const ALPHAS_HEADER: &str = "x-genrep-alphas";

/// Field holding the image of a plain image sample (`genrep real-data` shards, the `tar`
/// answer of `POST /v1/generate`).
pub const IMAGE_FIELD: &str = "png";

/// Tar member (field) holding a sample's class id as ASCII digits.
pub const CLS_FIELD: &str = "cls";

/// Tar member (field) holding a sample's metadata ([`SampleMeta`] as JSON).
pub const JSON_FIELD: &str = "json";

/// How positives are made from the anchor latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// GenRep's Gaussian views: `z + w`, `w ~ N(0, σ²I)` truncated at ±2σ per dimension.
    Gaussian,
    /// Fresh latents of the same class (the paper's "independent" baseline).
    Independent,
    /// Positives equal the anchor (pixel-augmentation-only baseline).
    None,
    /// GenRep's steering views: `z + Σᵢ αᵢ·wᵢ` along learned walks (zoom, shift, rotation,
    /// colour), fresh coefficients αᵢ per positive, same class.
    Steer,
    /// Steering, then the Gaussian offset with σ: `z + Σᵢ αᵢ·wᵢ + w`, `w ~ N(0, σ²I)`
    /// truncated at ±2σ.
    #[serde(rename = "steer_gaussian")]
    SteerGaussian,
}

impl Method {
    pub const ALL: [&'static str; 5] =
        ["gaussian", "independent", "none", "steer", "steer_gaussian"];
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Gaussian => "gaussian",
            Method::Independent => "independent",
            Method::None => "none",
            Method::Steer => "steer",
            Method::SteerGaussian => "steer_gaussian",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gaussian" => Some(Method::Gaussian),
            "independent" => Some(Method::Independent),
            "none" => Some(Method::None),
            "steer" => Some(Method::Steer),
            "steer_gaussian" => Some(Method::SteerGaussian),
            _ => None,
        }
    }

    /// Whether positives move along learned walks (the server needs a walk file).
    pub fn steers(self) -> bool {
        matches!(self, Method::Steer | Method::SteerGaussian)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Image encoding of the view members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpg,
    /// float32 `[C, H, W]` in [-1, 1], the generator's raw output.
    Npy,
}

impl ImageFormat {
    pub const ALL: [&'static str; 3] = ["png", "jpg", "npy"];
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpg => "jpg",
            ImageFormat::Npy => "npy",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "png" => Some(ImageFormat::Png),
            "jpg" | "jpeg" => Some(ImageFormat::Jpg),
            "npy" => Some(ImageFormat::Npy),
            _ => None,
        }
    }
}

/// The `json` member of every sample: everything needed to regenerate its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SampleMeta {
    pub index: u64,
    /// The namespace: the shard prefix (`train` for `/v1/stream` without `prefix`). The same
    /// (seed, index) under two prefixes gives unrelated samples.
    pub prefix: String,
    pub seed: u64,
    /// Class of the anchor and every positive; `None` for unconditional generators.
    pub class: Option<u32>,
    pub method: Method,
    pub sigma: f32,
    /// Number of positives K.
    pub views: u32,
    /// The anchor bound t (query parameter `anchor_bound`; the member keeps the v1 name): every
    /// anchor dimension lies in [-t, t].
    pub truncation: f32,
    /// The generator's truncation input (BigGAN's `gen_truncation`; 1.0 for generators
    /// without one).
    pub gen_truncation: f64,
    pub generator: String,
    pub weights_sha256: String,
    pub z_anchor: Vec<f32>,
    /// One latent per positive, `views` of them.
    pub z_pos: Vec<Vec<f32>>,
    /// The space the positives were made in when it is not z (`w`: StyleGAN's, after the
    /// mapping network and ψ); absent for z-space samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
    /// For positives made in another space: positive k's offset there (added to every row of
    /// the anchor's w); its `z_pos[k]` is then the anchor's z.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<Vec<Vec<f32>>>,
    /// For steered positives: positive k's coefficient along each walk it moved on (walk name
    /// → α, the amount of the walk added to z, scales included); absent for other methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphas: Option<Vec<std::collections::BTreeMap<String, f32>>>,
}

/// Tar key of a sample: its index, zero-padded, no dots.
pub fn sample_key(index: u64) -> String {
    format!("{index:0width$}", width = KEY_DIGITS)
}

/// Tar key of a plain image sample: its position, zero-padded to 6 digits (the digits'
/// index in `genrep real-data` shards, the row in a `POST /v1/generate` tar).
pub fn image_key(i: u64) -> String {
    format!("{i:06}")
}

/// Field stem of the anchor image (the field is `anchor.{ext}`).
pub const ANCHOR_STEM: &str = "anchor";

/// Field stem of positive `k`: `pos0`, `pos1`, …
pub fn pos_stem(k: usize) -> String {
    format!("pos{k}")
}

/// Field name of positive `k` (`pos0`, `pos1`, …) with its extension.
pub fn pos_field(k: usize, fmt: ImageFormat) -> String {
    format!("{}.{}", pos_stem(k), fmt.ext())
}

/// Field name of the anchor image.
pub fn anchor_field(fmt: ImageFormat) -> String {
    format!("{ANCHOR_STEM}.{}", fmt.ext())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_width_without_dots() {
        assert_eq!(sample_key(42), "000000000042");
        assert_eq!(sample_key(MAX_INDEX - 1).len(), KEY_DIGITS);
        assert_eq!(pos_field(3, ImageFormat::Png), "pos3.png");
        assert_eq!(anchor_field(ImageFormat::Jpg), "anchor.jpg");
    }
}
