//! The walk file and the training checkpoint, both safetensors with string metadata.
//!
//! A walk file holds one `[latent_dim]` tensor per walk (`zoom`, `shift_x`, `color_0`, …) and
//! says what made it: the generator's weights sha256 (walks belong to one set of weights), the
//! transforms and their coefficient ranges, the training settings and the final loss. The
//! checkpoint holds the walks as one `[K, latent_dim]` tensor with Adam's two moments and the
//! step reached, so `genrep walks train --resume` continues exactly where it stopped.

use super::train::{walk_names, State, TrainConfig, Transform};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The `format` metadata value of a walk file.
pub const FORMAT: &str = "genrep-walks/1";
const CHECKPOINT_FORMAT: &str = "genrep-walks-checkpoint/1";

/// Walks for one generator, loaded from (or about to be written to) a walk file.
#[derive(Debug, Clone)]
pub struct WalkFile {
    /// Walk names, in training order.
    pub names: Vec<String>,
    /// `[K, latent_dim]`, row i is walk `names[i]`.
    pub walks: Tensor,
    /// The metadata (see the module doc).
    pub meta: HashMap<String, String>,
}

fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn write(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| anyhow!("{n}: {e}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| anyhow!("{e}"))?;
    // Written whole, then renamed: a reader never sees half a file.
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Reads a safetensors file into (tensors by name, metadata).
fn read(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    read_bytes(&bytes, path)
}

/// [`read`] of a file's bytes; `path` names it in messages.
fn read_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .with_context(|| format!("{}: unreadable tensors", path.display()))?;
    Ok((tensors, meta))
}

impl WalkFile {
    /// Writes the walks of `state` with their provenance.
    pub fn save(
        path: &Path,
        state: &State,
        cfg: &TrainConfig,
        generator_sha256: &str,
        channels: usize,
        final_loss: f32,
    ) -> Result<()> {
        let names = walk_names(&cfg.transforms, channels);
        let d = state.walks.dim(1)?;
        let mut tensors = Vec::new();
        for (i, n) in names.iter().enumerate() {
            tensors.push((n.clone(), vec![d], to_bytes(&state.walks.get(i)?)?));
        }
        let ranges: serde_json::Map<String, serde_json::Value> = cfg
            .transforms
            .iter()
            .map(|t| {
                let (lo, hi) = t.alpha_range();
                (t.name().to_string(), serde_json::json!([lo, hi]))
            })
            .collect();
        let mut meta = config_meta(cfg, generator_sha256);
        meta.insert("format".into(), FORMAT.into());
        meta.insert("walks".into(), names.join(","));
        meta.insert(
            "alpha_ranges".into(),
            serde_json::Value::Object(ranges).to_string(),
        );
        meta.insert("final_loss".into(), final_loss.to_string());
        write(path, tensors, meta)
    }

    /// Reads a walk file and checks it was made for the weights `generator_sha256` and for
    /// latents of `latent_dim`.
    pub fn load(path: &Path, generator_sha256: &str, latent_dim: usize) -> Result<Self> {
        // A walk file is a few walks of latent_dim floats: anything near this size is not one
        // (and is not read into memory).
        const MAX_BYTES: u64 = 64 << 20;
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len > MAX_BYTES {
            bail!(
                "{}: {len} bytes is not a walk file (they hold a few [latent_dim] tensors; at most {MAX_BYTES} bytes)",
                path.display()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes, path, generator_sha256, latent_dim)
    }

    /// [`Self::load`] of a file's bytes; `path` names it in messages.
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        generator_sha256: &str,
        latent_dim: usize,
    ) -> Result<Self> {
        let (tensors, meta) = read_bytes(bytes, path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            bail!(
                "{}: not a genrep walk file (no `format: {FORMAT}`)",
                path.display()
            );
        }
        let made_for = meta.get("generator_sha256").cloned().unwrap_or_default();
        if made_for != generator_sha256 {
            bail!(
                "{}: these walks were trained for the weights {}, the served model is {}; \
                 train walks for it with `genrep walks train --model …`",
                path.display(),
                short(&made_for),
                short(generator_sha256)
            );
        }
        let names: Vec<String> = meta
            .get("walks")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        if names.is_empty() || names.iter().any(String::is_empty) {
            bail!("{}: the metadata lists no walks", path.display());
        }
        if let Some(n) = names
            .iter()
            .enumerate()
            .find_map(|(i, n)| names[..i].contains(n).then_some(n))
        {
            bail!("{}: walk `{n}` is listed twice", path.display());
        }
        let mut rows = Vec::new();
        for n in &names {
            let t = tensors
                .get(n)
                .ok_or_else(|| anyhow!("{}: walk `{n}` is missing", path.display()))?;
            if t.dims() != [latent_dim] {
                bail!(
                    "{}: walk `{n}` has shape {:?}, the model's latents are [{latent_dim}]",
                    path.display(),
                    t.dims()
                );
            }
            rows.push(t.to_dtype(DType::F32)?);
        }
        Ok(Self {
            names,
            walks: Tensor::stack(&rows, 0)?,
            meta,
        })
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn config_meta(cfg: &TrainConfig, generator_sha256: &str) -> HashMap<String, String> {
    let t: Vec<&str> = cfg.transforms.iter().map(|t| t.name()).collect();
    HashMap::from([
        ("generator_sha256".into(), generator_sha256.into()),
        ("transforms".into(), t.join(",")),
        ("edits".into(), cfg.edits.name().into()),
        ("steps".into(), cfg.steps.to_string()),
        ("batch_size".into(), cfg.batch_size.to_string()),
        ("lr".into(), cfg.lr.to_string()),
        ("seed".into(), cfg.seed.to_string()),
    ])
}

/// Writes the training state (walks, Adam's moments, the step) and the run's settings.
pub fn save_checkpoint(
    path: &Path,
    state: &State,
    cfg: &TrainConfig,
    generator_sha256: &str,
) -> Result<()> {
    let dims = state.walks.dims().to_vec();
    let tensors = vec![
        ("walks".to_string(), dims.clone(), to_bytes(&state.walks)?),
        ("adam_m".to_string(), dims.clone(), to_bytes(&state.m)?),
        ("adam_v".to_string(), dims, to_bytes(&state.v)?),
    ];
    let mut meta = config_meta(cfg, generator_sha256);
    meta.insert("format".into(), CHECKPOINT_FORMAT.into());
    meta.insert("step".into(), state.step.to_string());
    write(path, tensors, meta)
}

/// Reads a checkpoint written by [`save_checkpoint`] for the same generator and settings (the
/// number of steps may grow: a run can be extended).
pub fn load_checkpoint(path: &Path, cfg: &TrainConfig, generator_sha256: &str) -> Result<State> {
    let (tensors, meta) = read(path)?;
    if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        bail!("{}: not a genrep walks checkpoint", path.display());
    }
    let want = config_meta(cfg, generator_sha256);
    for key in [
        "generator_sha256",
        "transforms",
        "edits",
        "batch_size",
        "lr",
        "seed",
    ] {
        if meta.get(key) != want.get(key) {
            bail!(
                "{}: the checkpoint was made with {key} = {}, this run has {}; resume with the \
                 same settings, or start over without --resume",
                path.display(),
                meta.get(key).map(String::as_str).unwrap_or("?"),
                want[key]
            );
        }
    }
    let step: usize = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{}: no step in the checkpoint", path.display()))?;
    let get = |n: &str| -> Result<Tensor> {
        tensors
            .get(n)
            .cloned()
            .ok_or_else(|| anyhow!("{}: `{n}` is missing", path.display()))
    };
    Ok(State {
        walks: get("walks")?,
        m: get("adam_m")?,
        v: get("adam_v")?,
        step,
    })
}

/// The transforms of a comma-separated list.
pub fn parse_transforms(s: &str) -> Result<Vec<Transform>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let t = Transform::parse(part)?;
        if out.contains(&t) {
            return Err(format!("transform `{part}` is listed twice"));
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err("no transforms given".into());
    }
    Ok(out)
}
