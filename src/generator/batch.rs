//! What a generator runs on: a batch of typed latents with their conditioning, knob values
//! and per-row noise keys, and the host-side assets view methods read.

use super::{GeneratorSpec, Knobs, Space};
use crate::sampler::rng::{noise_part, Namespace, SampleRng};
use std::collections::BTreeMap;
use std::sync::Arc;

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
/// (`[n, dim(space)]`, the view's displacement in that space). Latents given directly in
/// another space (explicit w rows) have no z: see [`Latents::given`].
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

impl Latents {
    /// Rows given directly in `space` (`[n, dim(space)]`): nothing to map.
    pub fn given(space: Space, rows: Vec<f32>) -> Self {
        Self {
            space,
            z: Vec::new(),
            offset: Some(rows),
        }
    }

    /// Whether these are rows given in their space (no z to map).
    pub fn is_given(&self) -> bool {
        self.z.is_empty() && self.space != Space::Z
    }
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
        let d = if self.latents.is_given() {
            0
        } else {
            spec.latent_dim
        };
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
            && self.latents.is_given() == other.latents.is_given()
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
