//! Generator throughput: images/s and TFLOP/s per (model, dtype, batch). Times include copying
//! the images back to the host (the engine always does; on a GPU it is also the synchronisation
//! point). BigGAN-deep configs, StyleGAN2 paper256 and BigBiGAN-128 run with seeded random
//! weights: speed does not depend on values.

use super::{dtype_name, guarded, CheckOptions};
use crate::generator::{
    load_model_dir, random_biggan, random_biggan_pytorch, random_stylegan2, BigGanConfig,
    BigGanPytorchConfig, ClassInput, Generator, GeneratorError, Knobs, StyleGan2Config,
};
use candle_core::{DType, Device};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A generator to measure.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// The package's BigGAN-deep config at this resolution, random weights.
    Deep(usize),
    /// StyleGAN2 `paper256` (stylegan2-ada-pytorch's 256 px config), random weights.
    StyleGan2Paper256,
    /// BigBiGAN-128 (BigGAN-PyTorch layout), random weights.
    BigBiGan128,
    /// A model directory (config.json + model.safetensors).
    Dir(PathBuf),
}

/// `deep-128` / `deep-256` / `deep-512` → the resolution; `None` for anything else.
pub fn parse_deep(s: &str) -> Option<usize> {
    s.strip_prefix("deep-")?
        .parse::<usize>()
        .ok()
        .filter(|r| BigGanConfig::deep(*r).is_some())
}

/// The package's BigGAN-deep at resolution `r` (one of [`parse_deep`]'s) with seeded random
/// weights: speed does not depend on the values.
pub fn random_deep(
    r: usize,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Generator>, GeneratorError> {
    let cfg = BigGanConfig::deep(r)
        .ok_or_else(|| GeneratorError::Unsupported(format!("BigGAN-deep has no {r} config")))?;
    Ok(Box::new(random_biggan(cfg, 0, device, dtype)?))
}

impl std::str::FromStr for ModelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sg2-256" => return Ok(Self::StyleGan2Paper256),
            "bigbigan-128" => return Ok(Self::BigBiGan128),
            _ => {}
        }
        if s.starts_with("deep-") {
            return parse_deep(s).map(Self::Deep).ok_or_else(|| {
                format!("`{s}`: BigGAN-deep comes in deep-128, deep-256, deep-512")
            });
        }
        let p = PathBuf::from(s);
        if p.join("config.json").is_file() {
            Ok(Self::Dir(p))
        } else {
            Err(format!(
                "`{s}` is none of deep-128/256/512, sg2-256, bigbigan-128, nor a model \
                 directory with a config.json"
            ))
        }
    }
}

impl ModelChoice {
    pub fn name(&self) -> String {
        match self {
            Self::Deep(r) => format!("biggan-deep-{r}"),
            Self::StyleGan2Paper256 => "stylegan2-paper256".into(),
            Self::BigBiGan128 => "bigbigan-128".into(),
            Self::Dir(p) => p.display().to_string(),
        }
    }

    /// The BigGAN config, when the model is a BigGAN-deep (for FLOP counts and for the PyTorch
    /// side of `scripts/gpu-check.sh`, which builds the same network from it).
    pub fn biggan_config(&self) -> Option<BigGanConfig> {
        match self {
            Self::Deep(r) => BigGanConfig::deep(*r),
            Self::StyleGan2Paper256 | Self::BigBiGan128 => None,
            Self::Dir(p) => std::fs::read_to_string(p.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok()),
        }
    }

    pub fn load(
        &self,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn Generator>, GeneratorError> {
        match self {
            Self::Deep(r) => random_deep(*r, device, dtype),
            Self::StyleGan2Paper256 => Ok(Box::new(random_stylegan2(
                StyleGan2Config::paper256(),
                0,
                device,
                dtype,
            )?)),
            Self::BigBiGan128 => Ok(Box::new(random_biggan_pytorch(
                BigGanPytorchConfig::bigbigan_128(),
                0,
                device,
                dtype,
            )?)),
            Self::Dir(p) => load_model_dir(p, device, dtype),
        }
    }
}

/// One timed figure.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub images_per_s: f64,
    /// Timed passes (after one warm-up pass).
    pub passes: usize,
}

/// Images/s of `g` at batch `b`: one warm-up pass, then passes until `min_time` has elapsed.
pub fn images_per_s(
    g: &dyn Generator,
    b: usize,
    min_time: Duration,
) -> Result<Rate, GeneratorError> {
    let spec = g.spec();
    let z: Vec<f32> = (0..b * spec.latent_dim)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let classes = if spec.num_classes == 0 {
        ClassInput::None
    } else {
        ClassInput::Ids((0..b as u32).map(|i| i % spec.num_classes as u32).collect())
    };
    g.generate(&z, &classes, &Knobs::default())?;
    let t = Instant::now();
    let mut passes = 0;
    while passes == 0 || t.elapsed() < min_time {
        std::hint::black_box(g.generate(&z, &classes, &Knobs::default())?);
        passes += 1;
    }
    Ok(Rate {
        images_per_s: (b * passes) as f64 / t.elapsed().as_secs_f64(),
        passes,
    })
}

/// The throughput section: a list of entries, in sweep order (per model: f16, bf16, then f32,
/// so that a spent budget drops the slowest and least-served precision first).
pub fn run(o: &CheckOptions) -> Value {
    let started = Instant::now();
    let out_of_time = || started.elapsed() >= o.throughput_budget || o.past_deadline();
    let dtypes: Vec<DType> = [DType::F16, DType::BF16, DType::F32]
        .into_iter()
        .filter(|d| o.dtypes.contains(d))
        .collect();
    let mut entries = Vec::new();
    let mut models = Vec::new();
    for m in &o.models {
        let cfg = m.biggan_config();
        let gflop = cfg.as_ref().map(|c| c.flops_per_image().1 / 1e9);
        models.push(json!({
            "model": m.name(),
            "gflop_per_image": gflop,
            "gflop_per_image_executed": cfg.as_ref().map(|c| c.flops_per_image().0 / 1e9),
            "config": cfg,
        }));
        for &d in &dtypes {
            let base = json!({ "model": m.name(), "dtype": dtype_name(d) });
            let with = |extra: Value| {
                let mut e = base.clone();
                e.as_object_mut()
                    .expect("object")
                    .extend(extra.as_object().expect("object").clone());
                e
            };
            if out_of_time() {
                entries.extend(o.batches.iter().map(|&b| {
                    with(json!({ "batch": b, "skipped": "out of time (the throughput budget or the check's deadline)" }))
                }));
                continue;
            }
            let g = match guarded(|| m.load(&o.device, d).map_err(|e| e.to_string())) {
                Ok(g) => g,
                Err(e) => {
                    entries.push(with(json!({ "error": format!("loading: {e}") })));
                    continue;
                }
            };
            let mut failed_at = None;
            for &b in &o.batches {
                let e = if let Some(f) = failed_at {
                    with(json!({ "batch": b, "skipped": format!("batch {f} failed") }))
                } else if out_of_time() {
                    with(
                        json!({ "batch": b, "skipped": "out of time (the throughput budget or the check's deadline)" }),
                    )
                } else {
                    match guarded(|| {
                        images_per_s(g.as_ref(), b, o.min_time).map_err(|e| e.to_string())
                    }) {
                        Ok(r) => with(json!({
                            "batch": b,
                            "images_per_s": r.images_per_s,
                            "ms_per_batch": 1e3 * b as f64 / r.images_per_s,
                            "tflops": gflop.map(|g| g * r.images_per_s / 1e3),
                            "passes": r.passes,
                        })),
                        Err(e) => {
                            failed_at = Some(b);
                            with(json!({ "batch": b, "error": e }))
                        }
                    }
                };
                tracing::info!(entry = %e, "throughput");
                entries.push(e);
            }
        }
    }
    json!({
        "models": models,
        "flops_note": "tflops = images/s x gflop_per_image (the package's count, whose RGB convolution computes all channels; genrep computes the 3 it keeps: gflop_per_image_executed)",
        "includes": "the copy of the images to the host",
        "min_time_s": o.min_time.as_secs_f64(),
        "entries": entries,
        "seconds": started.elapsed().as_secs_f64(),
    })
}
