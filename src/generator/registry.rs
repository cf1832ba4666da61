//! The model families genrep serves, and loading a model directory into one of them.
//!
//! A model directory holds `config.json` (with an `architecture` field, or a plain
//! `pytorch-pretrained-biggan` config, recognised by its fields) and `model.safetensors` with
//! spectral norm already folded into the weights (see `tools/convert_biggan.py`). The weights
//! file is memory-mapped: tensors are copied out one layer at a time, so loading needs about
//! one model's worth of memory, not two.

use super::weights::Weights;
use super::{
    BigGanConfig, BigGanDeep, BigGanPytorch, BigGanPytorchConfig, CdcGan, CdcGanConfig, Generator,
    GeneratorError, Result, StyleGan2, StyleGan2Config,
};
use crate::params::decl::Param;
use candle_core::{DType, Device};
use std::path::Path;

/// The `architecture` field of `config.json`: one variant per model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// BigGAN-deep (pytorch-pretrained-biggan layout).
    BigganDeep,
    /// The small class-conditional DCGAN of the embedded model.
    Cdcgan,
    /// StyleGAN2 (NVlabs stylegan2-ada-pytorch layout; rosinality checkpoints are converted to it).
    Stylegan2,
    /// BigGAN-PyTorch's layout (BigBiGAN's PyTorch port, BigGAN-PyTorch and StudioGAN releases).
    BigganPytorch,
}

impl Architecture {
    pub const ALL: [Architecture; 4] = [
        Architecture::BigganDeep,
        Architecture::BigganPytorch,
        Architecture::Cdcgan,
        Architecture::Stylegan2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::BigganDeep => "biggan-deep",
            Architecture::Cdcgan => "cdcgan",
            Architecture::Stylegan2 => "stylegan2",
            Architecture::BigganPytorch => "biggan-pytorch",
        }
    }

    /// The family's own inputs (the same for every model of the family).
    pub fn knobs(self) -> &'static [Param] {
        match self {
            Architecture::BigganDeep => super::biggan::KNOBS,
            Architecture::Cdcgan => &[],
            Architecture::Stylegan2 => super::stylegan2::family_knobs(),
            Architecture::BigganPytorch => &[],
        }
    }

    /// Every family's knobs, each name once: the flags `genrep export` accepts before it knows
    /// which model it will load (a knob the loaded model lacks is then an error).
    pub fn all_knobs() -> Vec<&'static Param> {
        let mut out: Vec<&'static Param> = Vec::new();
        for a in Self::ALL {
            for k in a.knobs() {
                if !out.iter().any(|o| o.name == k.name) {
                    out.push(k);
                }
            }
        }
        out
    }

    fn known() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// A parsed `config.json`: the family and its own config.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    BigganDeep(BigGanConfig),
    Cdcgan(CdcGanConfig),
    Stylegan2(StyleGan2Config),
    BigganPytorch(BigGanPytorchConfig),
}

impl ModelConfig {
    /// Parses and validates a config. The tag is read first, then the family's fields through
    /// `serde_path_to_error`, so a bad field is named by its path (an internally tagged serde
    /// enum buffers the content and loses the path).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config_error = |msg: String| GeneratorError::Config {
            path: path.to_path_buf(),
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_error(e.to_string()))?;
        let arch = match value.get("architecture") {
            Some(tag) => serde_json::from_value::<Architecture>(tag.clone()).map_err(|_| {
                GeneratorError::Unsupported(format!(
                    "architecture {tag} in {} (known: {})",
                    path.display(),
                    Architecture::known()
                ))
            })?,
            // A config straight from pytorch-pretrained-biggan has no architecture field.
            None if value.get("layers").is_some()
                && value.get("attention_layer_position").is_some() =>
            {
                Architecture::BigganDeep
            }
            None => {
                return Err(config_error(format!(
                    "no `architecture` field (known: {})",
                    Architecture::known()
                )))
            }
        };
        Ok(match arch {
            Architecture::BigganDeep => {
                ModelConfig::BigganDeep(checked(&value, path, BigGanConfig::validate)?)
            }
            Architecture::Cdcgan => {
                ModelConfig::Cdcgan(checked(&value, path, CdcGanConfig::validate)?)
            }
            Architecture::Stylegan2 => {
                ModelConfig::Stylegan2(checked(&value, path, StyleGan2Config::validate)?)
            }
            Architecture::BigganPytorch => {
                ModelConfig::BigganPytorch(checked(&value, path, BigGanPytorchConfig::validate)?)
            }
        })
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            ModelConfig::BigganDeep(_) => Architecture::BigganDeep,
            ModelConfig::Cdcgan(_) => Architecture::Cdcgan,
            ModelConfig::Stylegan2(_) => Architecture::Stylegan2,
            ModelConfig::BigganPytorch(_) => Architecture::BigganPytorch,
        }
    }

    /// Builds the generator from its weights.
    fn build(self, default_name: &str, w: &Weights) -> Result<Box<dyn Generator>> {
        Ok(match self {
            ModelConfig::BigganDeep(cfg) => {
                let name = cfg.name.clone().unwrap_or_else(|| default_name.into());
                Box::new(BigGanDeep::new(cfg, name, w)?)
            }
            ModelConfig::Cdcgan(cfg) => {
                let name = cfg.name.clone().unwrap_or_else(|| default_name.into());
                Box::new(CdcGan::new(cfg, name, w)?)
            }
            ModelConfig::Stylegan2(cfg) => {
                let name = cfg.name.clone().unwrap_or_else(|| default_name.into());
                Box::new(StyleGan2::new(cfg, name, w)?)
            }
            ModelConfig::BigganPytorch(cfg) => {
                let name = cfg.name.clone().unwrap_or_else(|| default_name.into());
                Box::new(BigGanPytorch::new(cfg, name, w)?)
            }
        })
    }
}

/// Parses and validates a family's config, naming the file and the field in errors.
fn checked<C: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    path: &Path,
    validate: impl Fn(&C) -> std::result::Result<(), String>,
) -> Result<C> {
    let config_error = |msg: String| GeneratorError::Config {
        path: path.to_path_buf(),
        msg,
    };
    let cfg: C = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| config_error(format!("field `{}`: {}", e.path(), e.inner())))?;
    validate(&cfg).map_err(config_error)?;
    Ok(cfg)
}

fn read_config(dir: &Path) -> Result<(String, std::path::PathBuf)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|err| GeneratorError::Io {
        path: cfg_path.clone(),
        err,
    })?;
    Ok((text, cfg_path))
}

/// Loads the generator described by `dir/config.json` + `dir/model.safetensors`.
pub fn load_model_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
    let (text, cfg_path) = read_config(dir)?;
    let cfg = ModelConfig::parse(&text, &cfg_path)?;
    let weights = Weights::from_file(&dir.join("model.safetensors"), device, dtype)?;
    let default_name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    cfg.build(&default_name, &weights)
}

/// Loads what `--model` names: a model directory ([`load_model_dir`]), or a rosinality StyleGAN2
/// checkpoint (`*.pt`, torch.save's zip format) read in place. Anything else is refused with what
/// to do about it.
pub fn load_model(path: &Path, device: &Device, dtype: DType) -> Result<Box<dyn Generator>> {
    if path.is_dir() {
        return load_model_dir(path, device, dtype);
    }
    if !path.exists() {
        return Err(GeneratorError::Io {
            path: path.to_path_buf(),
            err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    if super::stylegan2::rosinality::is_torch_zip(path) {
        return Ok(Box::new(StyleGan2::from_rosinality(path, device, dtype)?));
    }
    Err(GeneratorError::Unsupported(format!(
        "{} is not a model directory (config.json + model.safetensors) or a rosinality \
         StyleGAN2 checkpoint in torch.save's zip format; convert NVlabs pickles and older \
         checkpoints with `python tools/convert_stylegan2.py --checkpoint FILE --out DIR`",
        path.display()
    )))
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
    let cfg = ModelConfig::parse(config_json, cfg_path)?;
    let tensors = Weights::from_bytes(weights, weights_path, device, dtype)?;
    cfg.build(default_name, &tensors)
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
    BigGanDeep::new(cfg, name, &Weights::random(seed, device, dtype))
}

/// A BigGAN-PyTorch generator of the given config with seeded random weights (benchmarks).
pub fn random_biggan_pytorch(
    cfg: BigGanPytorchConfig,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<BigGanPytorch> {
    cfg.validate()
        .map_err(|msg| GeneratorError::Unsupported(format!("BigGAN-PyTorch config: {msg}")))?;
    let name = cfg
        .name
        .clone()
        .unwrap_or_else(|| "biggan-pytorch-random".into());
    BigGanPytorch::new(cfg, name, &Weights::random(seed, device, dtype))
}

/// A StyleGAN2 of the given config with seeded random weights (benchmarks, checks).
pub fn random_stylegan2(
    cfg: StyleGan2Config,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<StyleGan2> {
    cfg.validate()
        .map_err(|msg| GeneratorError::Unsupported(format!("StyleGAN2 config: {msg}")))?;
    let name = cfg
        .name
        .clone()
        .unwrap_or_else(|| "stylegan2-random".into());
    StyleGan2::new(cfg, name, &Weights::random(seed, device, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_architecture_is_named_with_the_known_ones() {
        let e = ModelConfig::parse(r#"{"architecture": "stylegan9"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"stylegan9\"")
                && e.contains("known: biggan-deep, biggan-pytorch, cdcgan, stylegan2"),
            "{e}"
        );
        let e = ModelConfig::parse(r#"{"z_dim": 4}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `architecture` field"), "{e}");
        let e = ModelConfig::parse(r#"{"architecture": 3}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("architecture 3"), "{e}");
    }

    #[test]
    fn a_package_config_is_biggan_deep_and_fields_are_named() {
        let cfg = BigGanConfig::deep(128).unwrap();
        let mut v = serde_json::to_value(&cfg).unwrap();
        let text = v.to_string();
        let parsed = ModelConfig::parse(&text, Path::new("c.json")).unwrap();
        assert_eq!(parsed.architecture(), Architecture::BigganDeep);
        v["n_stats"] = "many".into();
        let e = ModelConfig::parse(&v.to_string(), Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `n_stats`"), "{e}");
    }

    #[test]
    fn export_flags_cover_every_family_knob_once() {
        let names: Vec<_> = Architecture::all_knobs().iter().map(|k| k.name).collect();
        assert_eq!(names, ["gen_truncation", "truncation_cutoff", "noise_mode"]);
    }
}
