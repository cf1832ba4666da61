//! The contrastive training loop: loader → augment → encoder + head → SimCLR/SupCon loss →
//! SGD/LARS with warm-up + cosine, with checkpoints that resume at the saved loader cursor.

use crate::augment::Augment;
use crate::loader::{next_batch, resolve, Cursor, Loader, LoaderConfig};
use crate::loss::{l2_normalize, nt_xent, supcon};
use crate::model::{build, trainable, Encoder, EncoderConfig};
use crate::optim::{warmup_cosine, Optimizer, Param, Rule};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// SimCLR (positives = the sample's other views) or SupCon (positives = same class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    Simclr,
    Supcon,
}

/// Everything a run needs; saved in every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub source: String,
    pub objective: Objective,
    /// Views per sample used for the loss (anchor + positives; real images are repeated); 0 =
    /// as many as the data offers (fixed by the first batch).
    pub views: usize,
    pub augment: String,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub temperature: f64,
    pub lars: bool,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub seed: u64,
    pub encoder: EncoderConfig,
    pub rank: usize,
    pub world_size: usize,
    pub prefetch: usize,
    pub cache_shards: bool,
    /// Sample-level shuffle window (0 = shard order), see `LoaderConfig::shuffle_buffer`.
    #[serde(default)]
    pub shuffle_buffer: usize,
    /// Bounds on what the data source can make the loader hold or wait for.
    #[serde(default)]
    pub fetch: crate::loader::FetchLimits,
}

/// Saved with the weights: where training stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub cursor: Cursor,
    pub config: TrainConfig,
}

/// One logged step.
#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub samples_per_s: f64,
    pub epoch: u64,
}

/// A training run in progress.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub encoder: Encoder,
    pub varmap: VarMap,
    opt: Optimizer,
    /// The varmap name of each of `opt`'s parameters (the key of its momentum buffer).
    param_names: Vec<String>,
    loader: Loader,
    augment: Augment,
    pub step: usize,
    /// Sample keys of the last step's batch (checks that a resumed run continues where it stopped).
    pub last_keys: Vec<String>,
    device: Device,
}

impl Trainer {
    /// A new run, or one resumed from `checkpoint` (a directory written by [`Trainer::save`]).
    pub fn new(cfg: TrainConfig, checkpoint: Option<&Path>, device: &Device) -> Result<Self> {
        if cfg.views == 1 && cfg.objective == Objective::Simclr {
            bail!("simclr needs at least 2 views per sample (--views)");
        }
        // steps = 0 is allowed: it saves the initial encoder (the random-init reference).
        if cfg.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let augment = Augment::preset(&cfg.augment).with_context(|| {
            format!(
                "unknown augment preset `{}` (known: {})",
                cfg.augment,
                Augment::PRESETS.join(", ")
            )
        })?;
        let (encoder, mut varmap) = build(cfg.encoder.clone(), device)?;
        let (step, cursor, velocities) = match checkpoint {
            Some(dir) => {
                let state = read_state(dir)?;
                if state.config.encoder != cfg.encoder {
                    bail!(
                        "checkpoint {} has encoder {:?}, this run asks for {:?}",
                        dir.display(),
                        state.config.encoder,
                        cfg.encoder
                    );
                }
                varmap
                    .load(dir.join("model.safetensors"))
                    .with_context(|| format!("loading {}/model.safetensors", dir.display()))?;
                let v = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)
                    .with_context(|| {
                    format!("loading {}/optimizer.safetensors", dir.display())
                })?;
                (state.step, state.cursor, Some(v))
            }
            None => (0, Cursor::default(), None),
        };
        let mut names: Vec<(String, candle_core::Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let (param_names, params): (Vec<String>, Vec<Param>) = names
            .into_iter()
            .filter_map(|(n, v)| trainable(&n).map(|decay| (n, Param::new(v, decay))))
            .unzip();
        let rule = if cfg.lars {
            Rule::Lars { eta: 0.001 }
        } else {
            Rule::Sgd
        };
        let mut opt = Optimizer::new(params, rule, cfg.momentum, cfg.weight_decay);
        if let (Some(v), Some(dir)) = (velocities, checkpoint) {
            opt.set_velocities(restore_velocities(&v, &param_names, &opt, dir)?);
        }
        let shards = resolve(&cfg.source)?;
        let lcfg = LoaderConfig {
            rank: cfg.rank,
            world_size: cfg.world_size,
            seed: cfg.seed,
            shuffle: true,
            prefetch: cfg.prefetch,
            cache: cfg.cache_shards,
            shuffle_buffer: cfg.shuffle_buffer,
            policy: crate::loader::FetchPolicy {
                limits: cfg.fetch,
                ..Default::default()
            },
        };
        let loader = Loader::new(shards, lcfg, cursor)?;
        Ok(Self {
            cfg,
            encoder,
            varmap,
            opt,
            param_names,
            loader,
            augment,
            step,
            last_keys: Vec::new(),
            device: device.clone(),
        })
    }

    pub fn cursor(&self) -> Cursor {
        self.loader.cursor()
    }

    /// One optimisation step; returns its log line.
    pub fn step(&mut self) -> Result<StepLog> {
        let t = Instant::now();
        let c = &self.cfg;
        let batch = next_batch(
            &mut self.loader,
            c.batch_size,
            c.views,
            Some(&self.augment),
            c.seed,
            self.step as u64,
            &self.device,
        )?;
        // `views` 0 means "what the data offers": fixed by the first batch, then kept (and saved in
        // checkpoints) so every batch has the same number of views.
        if c.views == 0 {
            self.cfg.views = batch.views.len();
        }
        let c = &self.cfg;
        if c.views < 2 && c.objective == Objective::Simclr {
            bail!(
                "simclr needs at least 2 views per sample, the data offers {}",
                c.views
            );
        }
        let x = Tensor::cat(&batch.views, 0)?;
        check_channels(x.dim(1)?, c.encoder.in_channels)?;
        let z = l2_normalize(&self.encoder.project(&self.encoder.features(&x, true)?)?)?;
        let loss = match c.objective {
            Objective::Simclr => nt_xent(&z, c.views, c.temperature)?,
            Objective::Supcon => {
                let labels = batch
                    .labels
                    .as_ref()
                    .context("supcon needs `cls` labels in every sample")?;
                supcon(&z, c.views, labels, c.temperature)?
            }
        };
        let lr = warmup_cosine(self.step, c.steps, c.warmup_steps, c.lr);
        self.opt.step(&loss.backward()?, lr)?;
        self.step += 1;
        self.last_keys = batch.keys;
        Ok(StepLog {
            step: self.step,
            loss: loss.to_scalar::<f32>()?,
            lr,
            samples_per_s: c.batch_size as f64 / t.elapsed().as_secs_f64(),
            epoch: self.loader.cursor().epoch,
        })
    }

    /// Writes `dir/step-NNNNNNNN/` (weights, optimizer state, state.json) and `dir/latest`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let d = dir.join(format!("step-{:08}", self.step));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        self.varmap.save(d.join("model.safetensors"))?;
        // Momentum buffers by parameter name, so a checkpoint never gives one parameter
        // another's buffer.
        let v: std::collections::HashMap<String, Tensor> = self
            .opt
            .velocities()
            .into_iter()
            .zip(&self.param_names)
            .filter_map(|(v, name)| v.map(|t| (format!("{VELOCITY}{name}"), t)))
            .collect();
        candle_core::safetensors::save(&v, d.join("optimizer.safetensors"))?;
        let state = TrainState {
            step: self.step,
            cursor: self.loader.cursor(),
            config: self.cfg.clone(),
        };
        write_atomic(&d.join("state.json"), &serde_json::to_vec_pretty(&state)?)?;
        // Last, and whole: a run killed at any moment leaves `latest` naming a complete
        // checkpoint (the previous one until this one is written).
        write_atomic(
            &dir.join("latest"),
            d.file_name().unwrap().to_string_lossy().as_bytes(),
        )?;
        Ok(d)
    }
}

/// Key prefix of a parameter's momentum buffer in `optimizer.safetensors`.
const VELOCITY: &str = "velocity.";

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The momentum buffers of a checkpoint for `opt`'s parameters (named `names`), each checked
/// against its parameter's shape. Checkpoints written before buffers were named (`v0`, `v1`, …
/// in the sorted order of the names) are read by position, with the same checks.
fn restore_velocities(
    saved: &std::collections::HashMap<String, Tensor>,
    names: &[String],
    opt: &Optimizer,
    dir: &Path,
) -> Result<Vec<Option<Tensor>>> {
    let legacy = saved.keys().all(|k| !k.starts_with(VELOCITY));
    let mut used = 0;
    let mut out = Vec::with_capacity(names.len());
    for (i, (name, p)) in names.iter().zip(&opt.params).enumerate() {
        let key = if legacy {
            format!("v{i}")
        } else {
            format!("{VELOCITY}{name}")
        };
        let v = saved.get(&key).cloned();
        if let Some(t) = &v {
            used += 1;
            if t.dims() != p.var.dims() {
                bail!(
                    "{}/optimizer.safetensors: the momentum of `{name}` has shape {:?}, the parameter {:?}",
                    dir.display(),
                    t.dims(),
                    p.var.dims()
                );
            }
        }
        out.push(v);
    }
    if used != saved.len() {
        let mut unknown: Vec<&String> = saved
            .keys()
            .filter(|k| {
                !(0..names.len())
                    .any(|i| **k == format!("v{i}") || **k == format!("{VELOCITY}{}", names[i]))
            })
            .collect();
        unknown.sort();
        bail!(
            "{}/optimizer.safetensors holds momentum for parameters this encoder does not have: {unknown:?}",
            dir.display()
        );
    }
    Ok(out)
}

/// Errors unless the data's image channels are what the encoder takes.
pub fn check_channels(data: usize, encoder: usize) -> Result<()> {
    if data != encoder {
        anyhow::bail!(
            "the images have {data} channel(s) but the encoder takes {encoder} (--in-channels {encoder}); \
             use --in-channels {data} for this data"
        );
    }
    Ok(())
}

/// The checkpoint `dir/latest` points to.
pub fn latest_checkpoint(dir: &Path) -> Result<PathBuf> {
    let name = std::fs::read_to_string(dir.join("latest"))
        .with_context(|| format!("no checkpoint in {} (missing `latest`)", dir.display()))?;
    Ok(dir.join(name.trim()))
}

/// Reads `dir/state.json` of a checkpoint.
fn read_state(dir: &Path) -> Result<TrainState> {
    let bytes = std::fs::read(dir.join("state.json"))
        .with_context(|| format!("no checkpoint at {}", dir.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}/state.json is not a genrep-train checkpoint",
            dir.display()
        )
    })
}

/// Loads an encoder from a checkpoint directory (for evaluation).
pub fn load_encoder(ckpt: &Path, device: &Device) -> Result<(Encoder, TrainState)> {
    let state = read_state(ckpt)?;
    let (enc, mut vm) = build(state.config.encoder.clone(), device)?;
    vm.load(ckpt.join("model.safetensors")).with_context(|| {
        format!(
            "{}/model.safetensors does not match encoder {:?}",
            ckpt.display(),
            state.config.encoder
        )
    })?;
    Ok((enc, state))
}

/// Appends one JSON line, creating the file's folder if needed.
pub fn log_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_log_creates_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs/a/metrics.jsonl");
        log_jsonl(&path, &serde_json::json!({"step": 1})).unwrap();
        log_jsonl(&path, &serde_json::json!({"step": 2})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn channel_mismatch_names_the_flag() {
        let e = check_channels(1, 3).unwrap_err().to_string();
        assert!(
            e.contains("1 channel(s)") && e.contains("--in-channels 1"),
            "{e}"
        );
        check_channels(3, 3).unwrap();
    }
}
