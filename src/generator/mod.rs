//! Image generators in stages, and what they declare about themselves.
//!
//! A generator turns typed latents into images in two stages, like NVlabs'
//! `forward = synthesis(mapping(z, c, ψ))`: [`Generator::map`] takes the input latent z to the
//! space a view was made in (identity for z; StyleGAN's mapping network for w), then
//! [`Generator::synthesize`] makes images from it. A generator's [`GeneratorSpec`] declares its
//! latent spaces, its own inputs ([`GeneratorSpec::knobs`]: BigGAN's truncation, later
//! StyleGAN's ψ and noise mode) and whether it runs in steps ([`Stepped`]), which jobs may
//! join between (diffusion). Model directories are read by [`registry`].

mod batch;
mod biggan;
mod biggan_pytorch;
mod cdcgan;
pub mod inputs;
pub mod registry;
mod spec;
mod stylegan2;
mod weights;

pub use batch::{Assets, Batch, ClassInput, Latents, NoiseKey};
pub use biggan::{BigGanConfig, BigGanDeep};
pub use biggan_pytorch::{BigGanPytorch, BigGanPytorchConfig};
pub use cdcgan::{CdcGan, CdcGanConfig};
pub use registry::{
    load_model, load_model_dir, load_model_parts, random_biggan, random_biggan_pytorch,
    random_stylegan2,
};
pub use spec::{knob_names, GeneratorSpec, Knobs, LatentSpace, Space};
pub use stylegan2::{Crop, MappingConfig, NoiseMode, StyleGan2, StyleGan2Config, SynthesisConfig};

use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

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

/// What every generator carries besides its layers: its spec, where it computes, its assets.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub spec: GeneratorSpec,
    pub device: Device,
    pub dtype: DType,
    pub assets: Arc<Assets>,
}

impl ModelInfo {
    /// A family's info: its spec, and the device and dtype its weights were loaded for.
    pub(crate) fn of(spec: GeneratorSpec, w: &weights::Weights) -> Self {
        Self {
            spec,
            device: w.device().clone(),
            dtype: w.dtype(),
            assets: Default::default(),
        }
    }
}

/// A batched image generator owned by one device thread.
pub trait Generator: Send {
    fn info(&self) -> &ModelInfo;
    /// The info for attaching what is loaded next to the weights (walk files); `None` for
    /// generators that take nothing (test doubles).
    fn info_mut(&mut self) -> Option<&mut ModelInfo> {
        None
    }
    fn spec(&self) -> &GeneratorSpec {
        &self.info().spec
    }
    fn device(&self) -> &Device {
        &self.info().device
    }
    fn dtype(&self) -> DType {
        self.info().dtype
    }

    /// Stage 1: input latents `z` (`[B, latent_dim]` on the device) to `space`. Generators
    /// with only z need not implement it.
    fn map(&self, z: &Tensor, classes: &ClassInput, knobs: &Knobs, space: Space) -> Result<Tensor> {
        let _ = (classes, knobs);
        match space {
            Space::Z => Ok(z.clone()),
            s => Err(GeneratorError::Input(format!(
                "{} has no {} space",
                self.spec().name,
                s.as_str()
            ))),
        }
    }

    /// Stage 2: latents in `space` (`[B, dim]` on the device) to images `[B, C, H, W]` f32 on
    /// the CPU, values in [-1, 1]. `noise` has one key per row.
    fn synthesize(
        &self,
        x: &Tensor,
        space: Space,
        classes: &ClassInput,
        knobs: &Knobs,
        noise: &[NoiseKey],
    ) -> Result<Tensor>;

    /// The stages of a stepped generator, which the engine runs one step at a time so jobs
    /// can join between steps; `None` for one-pass generators.
    fn stepped(&self) -> Option<&dyn Stepped> {
        None
    }

    /// The latents of a batch on the device, in its space: `map(z) + offset`.
    fn latents(&self, b: &Batch) -> Result<Tensor> {
        let spec = self.spec();
        let n = b.len();
        if b.latents.is_given() {
            let d = spec.dim(b.latents.space).ok_or_else(|| {
                GeneratorError::Input(format!(
                    "{} has no {} space",
                    spec.name,
                    b.latents.space.as_str()
                ))
            })?;
            let rows = b.latents.offset.as_deref().unwrap_or(&[]);
            return Ok(Tensor::from_slice(rows, (n, d), &Device::Cpu)?
                .to_device(self.device())?
                .to_dtype(self.dtype())?);
        }
        let z = Tensor::from_slice(&b.latents.z, (n, spec.latent_dim), &Device::Cpu)?
            .to_device(self.device())?
            .to_dtype(self.dtype())?;
        let x = match b.latents.space {
            Space::Z => z,
            s => self.map(&z, &b.classes, &b.knobs, s)?,
        };
        Ok(match &b.latents.offset {
            None => x,
            Some(o) => {
                // `[B, D]`, or `[B, rows, D]` for a space with one row per layer (StyleGAN's
                // w+): the offset moves every row alike.
                let d = *x.dims().last().expect("latents have a row dimension");
                let o = Tensor::from_slice(o, (n, d), &Device::Cpu)?
                    .to_device(self.device())?
                    .to_dtype(x.dtype())?;
                match x.rank() {
                    3 => x.broadcast_add(&o.unsqueeze(1)?)?,
                    _ => (x + o)?,
                }
            }
        })
    }

    /// Runs a one-pass generator on a checked batch.
    fn run(&self, b: &Batch) -> Result<Tensor> {
        let x = self.latents(b)?;
        self.synthesize(&x, b.latents.space, &b.classes, &b.knobs, &b.noise)
    }

    /// Convenience for callers holding plain z rows (tools, checks, tests): validates the
    /// inputs, then runs every stage (stepped ones to the end) on latents in z.
    fn generate(&self, z: &[f32], classes: &ClassInput, knobs: &Knobs) -> Result<Tensor> {
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
        let batch = Batch {
            latents: Latents {
                space: Space::Z,
                z: z.to_vec(),
                offset: None,
            },
            classes: classes.clone(),
            knobs: knobs.resolved(spec)?,
            noise: NoiseKey::explicit(0, b),
        };
        match self.stepped() {
            None => self.run(&batch),
            Some(s) => {
                let mut x = s.begin(&batch)?;
                for t in 0..s.steps() {
                    x = s.step(&x, &vec![t; b], &batch)?;
                }
                s.finish(&x, &batch)
            }
        }
    }
}

/// The stages of a generator that makes an image in many steps (a diffusion model): the
/// engine keeps each job's state between steps and lets new jobs join a running batch, so a
/// 50-step batch never holds the device for everyone else. Rows of one call may be at
/// different steps; every noise tensor must come from the rows' [`NoiseKey`]s.
pub trait Stepped {
    /// Steps per image.
    fn steps(&self) -> usize;
    /// The state before step 0 (`[n, …]` on the device).
    fn begin(&self, b: &Batch) -> Result<Tensor>;
    /// One step of each row: row `i` is at step `t[i]` (`< steps()`).
    fn step(&self, x: &Tensor, t: &[usize], b: &Batch) -> Result<Tensor>;
    /// Images `[n, C, H, W]` f32 on the CPU from states that took every step.
    fn finish(&self, x: &Tensor, b: &Batch) -> Result<Tensor>;
}

/// The same class rules as the API and the CLI ([`inputs::class_input`]), for a batch of `batch`.
fn check_classes(spec: &GeneratorSpec, classes: &ClassInput, batch: usize) -> Result<()> {
    let arg = match classes {
        ClassInput::None => inputs::ClassArg::Absent,
        ClassInput::Ids(ids) => inputs::ClassArg::Ids(ids.iter().map(|&c| c as i64).collect()),
        ClassInput::Soft(v) => inputs::ClassArg::Vectors {
            rows: batch,
            cols: v.len().checked_div(batch).unwrap_or(0),
            values: v.clone(),
        },
    };
    inputs::class_input(spec, batch, arg, "class ids", "class vectors")
        .map(drop)
        .map_err(GeneratorError::Input)
}
