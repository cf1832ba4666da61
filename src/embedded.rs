//! The embedded default generator (`models/mnist-cdcgan`), compiled into the binary so that
//! `genrep serve` works from any working directory with no download and no model path.

use crate::generator::{load_model_parts, Generator, Result};
use candle_core::{DType, Device};
use std::path::Path;

/// `config.json` of the embedded model.
pub const CONFIG: &str = include_str!("../models/mnist-cdcgan/config.json");
/// `model.safetensors` of the embedded model.
pub const WEIGHTS: &[u8] = include_bytes!("../models/mnist-cdcgan/model.safetensors");

/// The walks trained for the embedded weights (`models/mnist-cdcgan/MODEL_CARD.md` says how),
/// served for `method=steer`.
pub const WALKS: &[u8] = include_bytes!("../models/mnist-cdcgan/walks.safetensors");

/// Loads the embedded default generator, with its walks.
pub fn load(device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
    let mut g = load_model_parts(
        CONFIG,
        Path::new("<embedded>/config.json"),
        WEIGHTS,
        Path::new("<embedded>/model.safetensors"),
        "mnist-cdcgan",
        device,
        dtype,
    )?;
    let source = "<embedded>/walks.safetensors";
    let (sha, dim) = (g.spec().weights_sha256.clone(), g.spec().latent_dim);
    crate::walks::file::WalkFile::from_bytes(WALKS, Path::new(source), &sha, dim)
        .and_then(|f| crate::walks::set::attach(g.as_mut(), f, source))
        .map_err(|e| crate::generator::GeneratorError::Weights {
            path: source.into(),
            msg: format!("{e:#}"),
        })?;
    Ok(g)
}

/// A short fingerprint of the embedded weights (the first 16 hex digits of their SHA-256):
/// results measured with one generator are not comparable with another's.
pub fn fingerprint() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(WEIGHTS))[..16].to_string()
}
