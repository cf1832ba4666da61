//! The embedded default generator (`models/mnist-cdcgan`), compiled into the binary so that
//! `genrep serve` works from any working directory with no download and no model path.

use crate::generator::{load_model_parts, Generator, Result};
use candle_core::{DType, Device};
use std::path::Path;

/// `config.json` of the embedded model.
pub const CONFIG: &str = include_str!("../models/mnist-cdcgan/config.json");
/// `model.safetensors` of the embedded model.
pub const WEIGHTS: &[u8] = include_bytes!("../models/mnist-cdcgan/model.safetensors");

/// Loads the embedded default generator.
pub fn load(device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
    load_model_parts(
        CONFIG,
        Path::new("<embedded>/config.json"),
        WEIGHTS,
        Path::new("<embedded>/model.safetensors"),
        "mnist-cdcgan",
        device,
        dtype,
    )
}

/// A short fingerprint of the embedded weights (the first 16 hex digits of their SHA-256):
/// results measured with one generator are not comparable with another's.
pub fn fingerprint() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(WEIGHTS))[..16].to_string()
}
