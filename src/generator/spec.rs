//! What a generator declares about itself: its latent spaces, its own inputs (knobs, declared
//! like the parameter table) and their values.

use super::{GeneratorError, Result};
use crate::params::decl::{Param, Value};

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
    /// The generator's native square size in pixels (what it synthesises).
    pub resolution: usize,
    /// Served image height and width: the native size, or a crop of it (StyleGAN's LSUN-car
    /// rows 64:448 → 512×384).
    pub height: usize,
    pub width: usize,
    /// The generator's own inputs (query parameters of every sampling endpoint, fields of
    /// `POST /v1/generate`), declared like the sampling table.
    #[serde(serialize_with = "serialize_knobs")]
    pub knobs: &'static [Param],
    /// Steps per image of a stepped generator (jobs join between steps); `None`: one pass.
    pub steps: Option<usize>,
    /// Hex sha256 of `model.safetensors`: identifies the weights in every sample's metadata.
    pub weights_sha256: String,
    /// The learned walks served with the weights (`method=steer`); `None` without a walk file.
    pub walks: Option<crate::walks::WalkSet>,
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
            height: resolution,
            width: resolution,
            knobs: &[],
            steps: None,
            weights_sha256: String::new(),
            walks: None,
        }
    }

    /// Floats in one served image (`C·H·W`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
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
