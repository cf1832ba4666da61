//! Image generators in stages, and what they declare about themselves.
//!
//! A generator turns typed latents into images in two stages, like NVlabs'
//! `forward = synthesis(mapping(z, c, ψ))`: [`Generator::map`] takes the input latent z to the
//! space a view was made in (identity for z; StyleGAN's mapping network for w), then
//! [`Generator::synthesize`] makes images from it. A generator's [`GeneratorSpec`] declares its
//! latent spaces, its own inputs ([`GeneratorSpec::knobs`]: BigGAN's truncation, later
//! StyleGAN's ψ and noise mode) and whether it runs in steps ([`Stepped`]), which jobs may
//! join between (diffusion). Model directories are read by [`registry`].

mod biggan;
mod cdcgan;
pub mod inputs;
pub mod registry;
mod weights;

pub use biggan::{BigGanConfig, BigGanDeep};
pub use cdcgan::{CdcGan, CdcGanConfig};
pub use registry::{load_model_dir, load_model_parts, random_biggan};

use crate::params::decl::{Param, Value};
use crate::sampler::rng::{noise_part, Namespace, SampleRng};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
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

/// A latent space views can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The input latent: what the sampler draws.
    Z,
    /// An intermediate space reached by the generator's mapping stage (StyleGAN's w).
    W,
}

impl Space {
    pub fn as_str(self) -> &'static str {
        match self {
            Space::Z => "z",
            Space::W => "w",
        }
    }
}

/// One latent space of a generator and its size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentSpace {
    pub space: Space,
    pub dim: usize,
}

/// What a generator consumes and produces; served as-is by `/v1/info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeneratorSpec {
    /// Model name (config `name`, else the directory name).
    pub name: String,
    /// Registry key, e.g. `biggan-deep` or `cdcgan`.
    pub architecture: String,
    /// Length of z, the input latent the sampler draws.
    pub latent_dim: usize,
    /// The spaces views can be made in: z first, then what the mapping stage reaches.
    pub spaces: Vec<LatentSpace>,
    /// Number of classes; 0 means unconditional.
    pub num_classes: usize,
    /// Output channels (1 = grayscale, 3 = RGB).
    pub channels: usize,
    /// Output height = width in pixels.
    pub resolution: usize,
    /// The generator's own inputs (query parameters of every sampling endpoint, fields of
    /// `POST /v1/generate`), declared like the sampling table.
    #[serde(serialize_with = "serialize_knobs")]
    pub knobs: &'static [Param],
    /// Steps per image of a stepped generator (jobs join between steps); `None`: one pass.
    pub steps: Option<usize>,
    /// Hex sha256 of `model.safetensors`: identifies the weights in every sample's metadata.
    pub weights_sha256: String,
}

fn serialize_knobs<S: serde::Serializer>(
    knobs: &&'static [Param],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(knobs.len()))?;
    for k in knobs.iter() {
        seq.serialize_element(&k.describe())?;
    }
    seq.end()
}

impl GeneratorSpec {
    /// A one-pass generator with only z and no knobs (families add theirs; test doubles use
    /// it as is).
    pub fn new(
        name: impl Into<String>,
        architecture: impl Into<String>,
        latent_dim: usize,
        num_classes: usize,
        channels: usize,
        resolution: usize,
    ) -> Self {
        Self {
            name: name.into(),
            architecture: architecture.into(),
            latent_dim,
            spaces: vec![LatentSpace {
                space: Space::Z,
                dim: latent_dim,
            }],
            num_classes,
            channels,
            resolution,
            knobs: &[],
            steps: None,
            weights_sha256: String::new(),
        }
    }

    /// The size of latents in `space`, if the generator has it.
    pub fn dim(&self, space: Space) -> Option<usize> {
        self.spaces.iter().find(|s| s.space == space).map(|s| s.dim)
    }

    /// A knob's declaration by name (or alias).
    pub fn knob(&self, name: &str) -> Option<&'static Param> {
        self.knobs.iter().find(|k| k.answers_to(name))
    }
}

/// Values of a generator's knobs, in declaration order. Two jobs can share a forward pass only
/// when their knobs are equal (bit for bit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Knobs(Vec<(&'static str, Value)>);

impl Knobs {
    /// Every knob of `spec` at its default.
    pub fn defaults(spec: &GeneratorSpec) -> Self {
        let limits = crate::params::Limits::default();
        Self(
            spec.knobs
                .iter()
                .map(|k| (k.name, k.value(None, &limits).expect("defaults are valid")))
                .collect(),
        )
    }

    /// Sets a knob (replacing an earlier value).
    pub fn with(mut self, name: &'static str, v: Value) -> Self {
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, v));
        self
    }

    pub fn get(&self, name: &str) -> Option<Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// A number knob's value.
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Value::Float(v) => Some(v),
            Value::Int(v) => Some(v as f64),
            Value::Choice(_) => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Value)> + '_ {
        self.0.iter().copied()
    }

    /// These values completed and checked for `spec`: unknown names and values out of range
    /// are errors, absent knobs take their defaults, the order is the declaration's.
    pub fn resolved(&self, spec: &GeneratorSpec) -> Result<Knobs> {
        if let Some((n, _)) = self.0.iter().find(|(n, _)| spec.knob(n).is_none()) {
            return Err(GeneratorError::Input(format!(
                "{} has no input `{n}` (its inputs: {})",
                spec.name,
                knob_names(spec)
            )));
        }
        let mut out = Knobs::defaults(spec);
        for (name, slot) in out.0.iter_mut() {
            if let Some(v) = self.get(name) {
                let k = spec.knob(name).expect("declared");
                let ok = match (k.kind, v) {
                    (crate::params::decl::Kind::Float { .. }, Value::Float(x)) => k.float_ok(x),
                    (crate::params::decl::Kind::Int { min, max, .. }, Value::Int(x)) => {
                        (min..=max).contains(&x)
                    }
                    (crate::params::decl::Kind::Choice { values, .. }, Value::Choice(c)) => {
                        values.contains(&c)
                    }
                    _ => false,
                };
                if !ok {
                    let msg = match v {
                        Value::Float(x) => k.float_error(&x.to_string()).0,
                        _ => format!("parameter `{name}` = {} is outside its range", v.json()),
                    };
                    return Err(GeneratorError::Input(msg));
                }
                *slot = v;
            }
        }
        Ok(out)
    }
}

/// The names of a generator's knobs, for messages.
pub fn knob_names(spec: &GeneratorSpec) -> String {
    if spec.knobs.is_empty() {
        "none".into()
    } else {
        spec.knobs
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
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

impl ClassInput {
    /// Whether two inputs use the same encoding (and so can be concatenated).
    pub fn same_encoding(&self, other: &ClassInput) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// Rows `[start, end)` of a batch's conditioning (`k` = classes per soft row).
    pub fn rows(&self, start: usize, end: usize, k: usize) -> ClassInput {
        match self {
            ClassInput::None => ClassInput::None,
            ClassInput::Ids(v) => ClassInput::Ids(v[start..end].to_vec()),
            ClassInput::Soft(v) => ClassInput::Soft(v[start * k..end * k].to_vec()),
        }
    }

    /// Appends another input of the same encoding.
    pub fn extend(&mut self, other: &ClassInput) {
        match (self, other) {
            (ClassInput::Ids(all), ClassInput::Ids(v)) => all.extend_from_slice(v),
            (ClassInput::Soft(all), ClassInput::Soft(v)) => all.extend_from_slice(v),
            _ => {}
        }
    }

    /// An empty input of the same encoding.
    pub fn empty_like(&self) -> ClassInput {
        match self {
            ClassInput::None => ClassInput::None,
            ClassInput::Ids(_) => ClassInput::Ids(Vec::new()),
            ClassInput::Soft(_) => ClassInput::Soft(Vec::new()),
        }
    }
}

/// Where one image's generator-internal noise comes from: its sample's own random streams
/// ([`noise_part`]), so noise never depends on which batch the image ran in.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseKey {
    pub namespace: Arc<Namespace>,
    pub seed: u64,
    pub index: u64,
    /// 0 = the anchor, `1 + k` = positive k.
    pub view: u32,
}

impl NoiseKey {
    /// The keys of `POST /v1/generate` rows: namespace `generate`, the request's noise seed,
    /// the row as the index.
    pub fn explicit(seed: u64, rows: usize) -> Vec<NoiseKey> {
        let ns = Arc::new(Namespace::new("generate"));
        (0..rows as u64)
            .map(|index| NoiseKey {
                namespace: ns.clone(),
                seed,
                index,
                view: 0,
            })
            .collect()
    }

    /// `n` standard normal values of stream `stream` (a layer, a step) of this image.
    pub fn normals(&self, stream: u32, n: usize) -> Vec<f32> {
        let mut r = SampleRng::new(
            &self.namespace,
            self.seed,
            noise_part(self.view, stream),
            self.index,
        );
        (0..n).map(|_| r.normal() as f32).collect()
    }
}

/// Typed latents of a batch of images, as the engine hands them to a generator: input latents
/// z (`[n, latent_dim]`, row-major) and the space where synthesis starts. For `space = z` the
/// rows are the final latents; for another space, the generator maps z there and adds `offset`
/// (`[n, dim(space)]`, the view's displacement in that space).
#[derive(Debug, Clone)]
pub struct Latents {
    pub space: Space,
    pub z: Vec<f32>,
    pub offset: Option<Vec<f32>>,
}

/// One batch for a generator: typed latents, conditioning, knobs and each row's noise key.
#[derive(Debug, Clone)]
pub struct Batch {
    pub latents: Latents,
    pub classes: ClassInput,
    pub knobs: Knobs,
    pub noise: Vec<NoiseKey>,
}

impl Batch {
    /// Plain rows of z (`[n, latent_dim]`), with the noise of `POST /v1/generate` at
    /// `noise_seed`.
    pub fn from_z(
        z: Vec<f32>,
        latent_dim: usize,
        classes: ClassInput,
        knobs: Knobs,
        noise_seed: u64,
    ) -> Batch {
        let n = z.len() / latent_dim.max(1);
        Batch {
            latents: Latents {
                space: Space::Z,
                z,
                offset: None,
            },
            classes,
            knobs,
            noise: NoiseKey::explicit(noise_seed, n),
        }
    }

    pub fn len(&self) -> usize {
        self.noise.len()
    }

    pub fn is_empty(&self) -> bool {
        self.noise.is_empty()
    }

    /// Rows `[start, end)`, for passes capped at the device's batch size.
    pub fn rows(&self, spec: &GeneratorSpec, start: usize, end: usize) -> Batch {
        let d = spec.latent_dim;
        let od = spec.dim(self.latents.space).unwrap_or(0);
        Batch {
            latents: Latents {
                space: self.latents.space,
                z: self.latents.z[start * d..end * d].to_vec(),
                offset: self
                    .latents
                    .offset
                    .as_ref()
                    .map(|o| o[start * od..end * od].to_vec()),
            },
            classes: self.classes.rows(start, end, spec.num_classes),
            knobs: self.knobs.clone(),
            noise: self.noise[start..end].to_vec(),
        }
    }

    /// Whether two batches can run as one: same space, offsets, class encoding and knobs.
    pub fn compatible(&self, other: &Batch) -> bool {
        self.latents.space == other.latents.space
            && self.latents.offset.is_some() == other.latents.offset.is_some()
            && self.classes.same_encoding(&other.classes)
            && self.knobs == other.knobs
    }

    /// Concatenates compatible batches (the first one's knobs).
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Batch>) -> Option<Batch> {
        let mut it = parts.into_iter();
        let mut out = it.next()?.clone();
        for b in it {
            out.latents.z.extend_from_slice(&b.latents.z);
            if let (Some(o), Some(p)) = (out.latents.offset.as_mut(), &b.latents.offset) {
                o.extend_from_slice(p);
            }
            out.classes.extend(&b.classes);
            out.noise.extend(b.noise.iter().cloned());
        }
        Some(out)
    }
}

/// Host-side data a generator carries for view methods (learned walk directions, …), by name.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Assets {
    /// No assets (families that carry none).
    pub fn none() -> &'static Assets {
        static NONE: Assets = Assets {
            tensors: BTreeMap::new(),
        };
        &NONE
    }

    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.insert(name.into(), (shape, data));
    }

    /// A tensor's shape and values.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.tensors
            .get(name)
            .map(|(s, d)| (s.as_slice(), d.as_slice()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// What every generator carries besides its layers: its spec, where it computes, its assets.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub spec: GeneratorSpec,
    pub device: Device,
    pub dtype: DType,
    pub assets: Arc<Assets>,
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
                let d = x.dim(1)?;
                let o = Tensor::from_slice(o, (n, d), &Device::Cpu)?
                    .to_device(self.device())?
                    .to_dtype(x.dtype())?;
                (x + o)?
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
