//! Image generators behind one interface, and the registry that loads them from a model directory.
//!
//! A model directory holds `config.json` (with an `architecture` field, or a plain
//! `pytorch-pretrained-biggan` config) and `model.safetensors` with spectral norm already folded
//! into the weights (see `tools/convert_biggan.py`).

mod biggan;
mod cdcgan;
pub mod inputs;
mod weights;

pub use biggan::{BigGanConfig, BigGanDeep};
pub use cdcgan::{CdcGan, CdcGanConfig};

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// Errors from loading or running a generator. Every variant names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("invalid config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("invalid weights file {path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("tensor `{0}` is missing from model.safetensors")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("the generator panicked: {0}")]
    Panicked(String),
    #[error("out of memory: cannot allocate {0}")]
    OutOfMemory(String),
}

/// Reserves room for `n` more elements of `v`, or says how much memory was missing (instead of
/// aborting the process, which is what a failed infallible allocation does).
pub fn try_reserve<T>(v: &mut Vec<T>, n: usize, what: &str) -> Result<()> {
    v.try_reserve_exact(n).map_err(|_| {
        GeneratorError::OutOfMemory(format!(
            "{:.1} MiB for {what}",
            (n as f64) * std::mem::size_of::<T>() as f64 / (1 << 20) as f64
        ))
    })
}

pub type Result<T> = std::result::Result<T, GeneratorError>;

/// What a generator consumes and produces; served as-is by `/v1/info`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct GeneratorSpec {
    /// Model name (config `name`, else the directory name).
    pub name: String,
    /// Registry key, e.g. `biggan-deep` or `cdcgan`.
    pub architecture: String,
    /// Length of z.
    pub latent_dim: usize,
    /// Number of classes; 0 means unconditional.
    pub num_classes: usize,
    /// Output channels (1 = grayscale, 3 = RGB).
    pub channels: usize,
    /// Output height = width in pixels.
    pub resolution: usize,
    /// Whether the generator has a truncation input (BigGAN's BN-statistics truncation).
    pub has_truncation: bool,
    /// Hex sha256 of `model.safetensors`: identifies the weights in every sample's metadata.
    pub weights_sha256: String,
}

/// Class conditioning for a batch.
#[derive(Debug, Clone)]
pub enum ClassInput {
    /// Unconditional generator.
    None,
    /// One class id per sample.
    Ids(Vec<u32>),
    /// Soft class vectors [B, num_classes] (e.g. a mix of two classes), row-major.
    Soft(Vec<f32>),
}

/// What every generator carries besides its layers: its spec and where it computes.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub spec: GeneratorSpec,
    pub device: Device,
    pub dtype: DType,
}

/// A batched image generator owned by one device thread.
pub trait Generator: Send {
    fn info(&self) -> &ModelInfo;
    fn spec(&self) -> &GeneratorSpec {
        &self.info().spec
    }
    fn device(&self) -> &Device {
        &self.info().device
    }
    fn dtype(&self) -> DType {
        self.info().dtype
    }
    /// Runs the generator: `z` is `[B, latent_dim]` (row-major f32), `truncation` is the
    /// generator's own truncation input (ignored by architectures without one).
    /// Returns `[B, C, H, W]` f32 on the CPU, values in [-1, 1].
    fn forward(&self, z: &Tensor, classes: &ClassInput, truncation: f64) -> Result<Tensor>;

    /// Convenience: validates host-side inputs, runs `forward` and returns the image tensor.
    fn generate(&self, z: &[f32], classes: &ClassInput, truncation: f64) -> Result<Tensor> {
        let spec = self.spec();
        let d = spec.latent_dim;
        if z.is_empty() || z.len() % d != 0 {
            return Err(GeneratorError::Input(format!(
                "z has {} values, expected a positive multiple of latent_dim {d}",
                z.len()
            )));
        }
        if let Some(bad) = z.iter().position(|v| !v.is_finite()) {
            return Err(GeneratorError::Input(format!(
                "z[{bad}] is not finite ({})",
                z[bad]
            )));
        }
        let b = z.len() / d;
        check_classes(spec, classes, b)?;
        let zt = Tensor::from_slice(z, (b, d), &Device::Cpu)?;
        let zt = zt.to_device(self.device())?.to_dtype(self.dtype())?;
        self.forward(&zt, classes, truncation)
    }
}

/// The same class rules as the API and the CLI ([`inputs::class_input`]), for a batch of `batch`.
fn check_classes(spec: &GeneratorSpec, classes: &ClassInput, batch: usize) -> Result<()> {
    let arg = match classes {
        ClassInput::None => inputs::ClassArg::Absent,
        ClassInput::Ids(ids) => inputs::ClassArg::Ids(ids.iter().map(|&c| c as i64).collect()),
        ClassInput::Soft(v) => inputs::ClassArg::Vectors {
            rows: batch,
            cols: if batch == 0 { 0 } else { v.len() / batch },
            values: v.clone(),
        },
    };
    inputs::class_input(spec, batch, arg, "class ids", "class vectors")
        .map(drop)
        .map_err(GeneratorError::Input)
}

/// Loads the generator described by `dir/config.json` + `dir/model.safetensors`.
pub fn load_model_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|err| GeneratorError::Io {
        path: cfg_path.clone(),
        err,
    })?;
    let weights_path = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|err| GeneratorError::Io {
        path: weights_path.clone(),
        err,
    })?;
    let default_name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    load_model_parts(
        &text,
        &cfg_path,
        &bytes,
        &weights_path,
        &default_name,
        device,
        dtype,
    )
}

/// Loads a generator from the contents of its two files (paths are only used in messages).
pub fn load_model_parts(
    config_json: &str,
    cfg_path: &Path,
    weights: &[u8],
    weights_path: &Path,
    default_name: &str,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Generator>> {
    let cfg_path = cfg_path.to_path_buf();
    let value: serde_json::Value =
        serde_json::from_str(config_json).map_err(|e| GeneratorError::Config {
            path: cfg_path.clone(),
            msg: e.to_string(),
        })?;
    let arch = match value.get("architecture").and_then(|a| a.as_str()) {
        Some(a) => a.to_string(),
        // A config straight from pytorch-pretrained-biggan has no architecture field.
        None if value.get("layers").is_some()
            && value.get("attention_layer_position").is_some() =>
        {
            "biggan-deep".to_string()
        }
        None => {
            return Err(GeneratorError::Config {
                path: cfg_path,
                msg: "no `architecture` field (known: biggan-deep, cdcgan)".into(),
            })
        }
    };
    if !matches!(arch.as_str(), "biggan-deep" | "cdcgan") {
        return Err(GeneratorError::Unsupported(format!(
            "architecture `{arch}` in {} (known: biggan-deep, cdcgan)",
            cfg_path.display()
        )));
    }
    let tensors = weights::Weights::from_bytes(weights, weights_path, device, dtype)?;
    /// Parses and validates an architecture's config, naming the file in errors.
    fn checked<C: serde::de::DeserializeOwned>(
        value: &serde_json::Value,
        path: &Path,
        validate: impl Fn(&C) -> std::result::Result<(), String>,
    ) -> Result<C> {
        let cfg: C = parse_config(value, path)?;
        validate(&cfg).map_err(|msg| GeneratorError::Config {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }
    match arch.as_str() {
        "biggan-deep" => {
            let cfg = checked(&value, &cfg_path, BigGanConfig::validate)?;
            let name = cfg.name.clone().unwrap_or_else(|| default_name.to_string());
            Ok(Box::new(BigGanDeep::new(cfg, name, &tensors)?))
        }
        _ => {
            let cfg = checked(&value, &cfg_path, CdcGanConfig::validate)?;
            let name = cfg.name.clone().unwrap_or_else(|| default_name.to_string());
            Ok(Box::new(CdcGan::new(cfg, name, &tensors)?))
        }
    }
}

/// A BigGAN-deep of the given config with seeded random weights (benchmarks, smoke tests).
pub fn random_biggan(
    cfg: BigGanConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<BigGanDeep> {
    cfg.validate()
        .map_err(|msg| GeneratorError::Unsupported(format!("BigGAN config: {msg}")))?;
    let name = cfg
        .name
        .clone()
        .unwrap_or_else(|| "biggan-deep-random".into());
    BigGanDeep::new(cfg, name, &weights::Weights::random(seed, device, dtype))
}

/// Deserialises a config; the error names the offending field path.
fn parse_config<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    path: &Path,
) -> Result<T> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| GeneratorError::Config {
        path: path.to_path_buf(),
        msg: format!("field `{}`: {}", e.path(), e.inner()),
    })
}
