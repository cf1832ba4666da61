//! The sampling parameters, defined once: name, type, default, allowed range and documentation.
//!
//! The table ([`PARAMS`], plus the served generator's own inputs from its spec, see [`table`])
//! drives the HTTP query parser (every sampling endpoint), `genrep export`'s flags (the same
//! names and values, validated by the same code, so files equal served shards), the OpenAPI
//! parameters and the defaults and limits `/v1/info` reports.

pub mod decl;

pub use decl::{int_in, Kind, Param, ParamError, Value};

use crate::generator::{knob_names, GeneratorSpec, Knobs};
use crate::sampler::{parse_classes, Method, Namespace, SamplerSettings, SteerSettings};
use crate::views::{SampleLatents, ViewContext};
use genrep_wire::{ImageFormat, SampleMeta, MAX_INDEX};
use std::collections::BTreeMap;

/// Request limits (server flags), reported by `/v1/info` and used by the table's ranges.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    pub max_views: usize,
    pub max_shard_size: u64,
    pub max_concurrent_streams: usize,
    pub max_generate_latents: usize,
    pub max_grid_rows: usize,
    /// Seconds a request body (`POST /v1/generate`) may take to arrive.
    pub body_timeout_s: u64,
    /// Open shard/stream responses one consumer may hold (API keys may set their own).
    pub max_streams_per_consumer: usize,
}

impl Default for Limits {
    /// The server's defaults (`genrep serve --help`).
    fn default() -> Self {
        Self {
            max_views: 16,
            max_shard_size: 100_000,
            max_concurrent_streams: 64,
            max_generate_latents: 256,
            max_grid_rows: 64,
            body_timeout_s: 30,
            max_streams_per_consumer: 16,
        }
    }
}

impl Limits {
    /// The limits of an offline export: the server's defaults, with only the table's own
    /// ranges on `views` and the shard size (nothing is shared, so no server cap applies).
    pub fn offline() -> Self {
        Self {
            max_views: MAX_VIEWS,
            max_shard_size: MAX_INDEX,
            ..Self::default()
        }
    }
}

/// The most positives any request or export may ask for (the table's own bound on `views`).
pub const MAX_VIEWS: usize = 1024;

/// Which group a parameter belongs to: every sampling endpoint takes [`Group::Sampling`]; the
/// tar endpoints also take [`Group::Encoding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Sampling,
    Encoding,
}

/// The table.
pub const PARAMS: &[(Group, Param)] = &[
    (Group::Sampling, Param {
        name: "seed",
        aliases: &[],
        kind: Kind::Int { default: 0, min: 0, max: u64::MAX, limit: None },
        doc: "Stream seed (u64): samples are pure functions of (seed, index).",
    }),
    (Group::Sampling, Param {
        name: "method",
        aliases: &[],
        kind: Kind::Choice { default: "gaussian", values: &Method::ALL },
        doc: "How positives are made: gaussian (anchor + sigma-scaled noise), independent (fresh latent, same class), none (the anchor itself), steer (the anchor moved along learned walks: zoom, shift, rotation, colour), steer_gaussian (steer, then the gaussian offset).",
    }),
    (Group::Sampling, Param {
        name: "sigma",
        aliases: &[],
        kind: Kind::Float { default: 0.2, min: 0.0, max: 10.0, min_open: false },
        doc: "Positive scale: w ~ N(0, sigma^2), truncated at +-2 sigma.",
    }),
    (Group::Sampling, Param {
        name: "views",
        aliases: &[],
        kind: Kind::Int { default: 1, min: 1, max: MAX_VIEWS as u64, limit: Some(|l| l.max_views as u64) },
        doc: "Positives K per anchor (the server's --max-views caps it).",
    }),
    (Group::Sampling, Param {
        name: "anchor_bound",
        aliases: &["truncation"],
        kind: Kind::Float { default: 2.0, min: 0.05, max: 100.0, min_open: false },
        doc: "Anchor bound t: z ~ N(0, I) truncated to [-t, t] (`truncation` is its old name; the json member keeps it).",
    }),
    (Group::Sampling, Param {
        name: "space",
        aliases: &[],
        kind: Kind::Choice { default: "z", values: &["z", "w"] },
        doc: "Where positives are made: z (every generator) or w (StyleGAN2: the anchor's w after the mapping network and psi, plus the offset).",
    }),
    (Group::Sampling, Param {
        name: "walks",
        aliases: &[],
        kind: Kind::Walks,
        doc: "Walks steered positives move along (method=steer, steer_gaussian): names from /v1/info, comma-separated, each with an optional scale in [0, 4] (zoom,shift_x:0.5; color = every colour walk); default every served walk at scale 1.",
    }),
    (Group::Sampling, Param {
        name: "steer_scale",
        aliases: &[],
        kind: Kind::Float { default: 1.0, min: 0.0, max: 4.0, min_open: false },
        doc: "Multiplies every walk coefficient of a steered positive (1 = the ranges the walks were trained on, listed in /v1/info).",
    }),
    (Group::Sampling, Param {
        name: "classes",
        aliases: &[],
        kind: Kind::Classes,
        doc: "Allowed classes, ids and ranges such as 0,3,7-9; default all.",
    }),
    (Group::Encoding, Param {
        name: "format",
        aliases: &[],
        kind: Kind::Choice { default: "png", values: &ImageFormat::ALL },
        doc: "Image encoding of the views: png, jpg, or npy (float32 [C,H,W] in [-1,1]).",
    }),
    (Group::Encoding, Param {
        name: "quality",
        aliases: &[],
        kind: Kind::Int { default: 90, min: 1, max: 100, limit: None },
        doc: "JPEG quality (format=jpg).",
    }),
];

/// The `gen_truncation` member of a sample's json for generators without that input (the v1
/// schema has the member for every generator; 1.0 is "no truncation").
pub const DEFAULT_GEN_TRUNCATION: f64 = 1.0;

/// Samples per shard when a request gives no `shard_size`.
pub const DEFAULT_SHARD_SIZE: u64 = 1000;

/// The parameters of a group for a generator: the table's, then (for sampling) the generator's
/// own inputs.
pub fn group(spec: &GeneratorSpec, g: Group) -> Vec<&'static Param> {
    let mut out: Vec<&'static Param> = PARAMS
        .iter()
        .filter(|(pg, _)| *pg == g)
        .map(|(_, p)| p)
        .collect();
    if g == Group::Sampling {
        out.extend(spec.knobs.iter());
    }
    out
}

/// Every parameter for a generator, with its group.
pub fn table(spec: &GeneratorSpec) -> Vec<(Group, &'static Param)> {
    [Group::Sampling, Group::Encoding]
        .into_iter()
        .flat_map(|g| group(spec, g).into_iter().map(move |p| (g, p)))
        .collect()
}

/// The error for `name` when it is another family's input that `spec` lacks (so the message
/// says so instead of calling it unknown).
pub fn foreign_knob(spec: &GeneratorSpec, name: &str) -> Option<ParamError> {
    let foreign = spec.knob(name).is_none()
        && crate::generator::registry::Architecture::all_knobs()
            .iter()
            .any(|p| p.answers_to(name));
    foreign.then(|| {
        ParamError(format!(
            "parameter `{name}`: {} ({}) has no such input (its inputs: {})",
            spec.name,
            spec.architecture,
            knob_names(spec)
        ))
    })
}

/// A parameter of the table (not a generator's) by name.
pub fn param(name: &str) -> &'static Param {
    &PARAMS
        .iter()
        .find(|(_, p)| p.name == name)
        .unwrap_or_else(|| panic!("`{name}` is not in the parameter table"))
        .1
}

/// Given `name → value` pairs with canonical names and aliases, the pairs under canonical
/// names; `params` are the parameters allowed, `extra` names taken as they are. Unknown names
/// and a parameter given twice (under two spellings too) are errors.
pub fn canonical<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    params: &[&'static Param],
    extra: &[&str],
) -> Result<BTreeMap<String, String>, ParamError> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        let (name, label) = match params.iter().find(|p| p.answers_to(k)) {
            Some(p) => (p.name, p.label()),
            None if extra.contains(&k) => (k, format!("`{k}`")),
            None => {
                let mut all: Vec<&str> = params
                    .iter()
                    .map(|p| p.name)
                    .chain(extra.iter().copied())
                    .collect();
                all.sort_unstable();
                return Err(ParamError(format!(
                    "unknown parameter `{k}` (allowed here: {})",
                    all.join(", ")
                )));
            }
        };
        if map.insert(name.to_string(), v.to_string()).is_some() {
            return Err(ParamError(format!(
                "parameter {label} given more than once"
            )));
        }
    }
    Ok(map)
}

/// What to sample and how to encode it: a request's validated sampling parameters.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub settings: SamplerSettings,
    /// The generator's own inputs.
    pub knobs: Knobs,
    pub seed: u64,
    pub format: ImageFormat,
    /// JPEG quality (1-100).
    pub quality: u8,
}

impl SampleRequest {
    /// Validates the parameters `get` returns by canonical name (absent = default) against the
    /// table, the generator and the limits.
    pub fn parse<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        spec: &GeneratorSpec,
        limits: &Limits,
    ) -> Result<Self, ParamError> {
        let p = param;
        let method =
            Method::parse(p("method").choice(get("method"))?).expect("checked by the table");
        let format =
            ImageFormat::parse(p("format").choice(get("format"))?).expect("checked by the table");
        let classes = match (get("classes"), spec.num_classes) {
            (None, n) => (0..n as u32).collect(),
            (Some(_), 0) => {
                return Err(ParamError(
                    "parameter `classes`: this generator is unconditional".into(),
                ))
            }
            (Some(s), n) => {
                parse_classes(s, n).map_err(|e| ParamError(format!("parameter `classes`: {e}")))?
            }
        };
        let space = match p("space").choice(get("space"))? {
            "w" => crate::generator::Space::W,
            _ => crate::generator::Space::Z,
        };
        if spec.dim(space).is_none() {
            let have: Vec<&str> = spec.spaces.iter().map(|s| s.space.as_str()).collect();
            return Err(ParamError(format!(
                "parameter `space`: {} has no {} space (its spaces: {})",
                spec.name,
                space.as_str(),
                have.join(", ")
            )));
        }
        let steer = steer_settings(&get, spec, method, space)?;
        let mut knobs = Knobs::default();
        for k in spec.knobs {
            knobs = knobs.with(k.name, k.value(get(k.name), limits)?);
        }
        Ok(Self {
            settings: SamplerSettings {
                namespace: Namespace::new(DEFAULT_PREFIX),
                method,
                sigma: p("sigma").float(get("sigma"))? as f32,
                views: p("views").int(get("views"), limits)? as u32,
                anchor_bound: p("anchor_bound").float(get("anchor_bound"))? as f32,
                classes,
                space,
                steer,
            },
            knobs,
            seed: p("seed").int(get("seed"), limits)?,
            format,
            quality: p("quality").int(get("quality"), limits)? as u8,
        })
    }

    /// [`Self::parse`] over `name → value` pairs (aliases allowed). A generator input the
    /// generator does not have is named as such.
    pub fn from_pairs(
        pairs: &BTreeMap<String, String>,
        spec: &GeneratorSpec,
        limits: &Limits,
    ) -> Result<Self, ParamError> {
        if let Some(e) = pairs.keys().find_map(|k| foreign_knob(spec, k)) {
            return Err(e);
        }
        let known: Vec<&'static Param> = table(spec).into_iter().map(|(_, p)| p).collect();
        let pairs = canonical(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &known,
            &[],
        )?;
        Self::parse(|k| pairs.get(k).map(String::as_str), spec, limits)
    }

    /// Sets the namespace (shard prefix) after checking it is a valid prefix.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, ParamError> {
        check_prefix(prefix)?;
        self.settings.namespace = Namespace::new(prefix);
        Ok(self)
    }

    /// Sample `index` with the settings' (built-in) view method.
    pub fn latents(&self, cx: &ViewContext, index: u64) -> SampleLatents {
        crate::views::sample(&self.settings, cx, self.seed, index)
    }

    pub fn meta(&self, spec: &GeneratorSpec, l: &SampleLatents) -> SampleMeta {
        let s = &self.settings;
        SampleMeta {
            index: l.index,
            prefix: s.namespace.name().to_string(),
            seed: self.seed,
            class: l.class,
            method: s.method,
            sigma: s.sigma,
            views: s.views,
            truncation: s.anchor_bound,
            gen_truncation: self
                .knobs
                .float("gen_truncation")
                .unwrap_or(DEFAULT_GEN_TRUNCATION),
            generator: spec.name.clone(),
            weights_sha256: spec.weights_sha256.clone(),
            z_anchor: l.z_anchor.clone(),
            z_pos: l.z_pos.clone(),
            space: (l.space != crate::generator::Space::Z).then(|| l.space.as_str().to_string()),
            offsets: l.offsets.clone(),
            alphas: l.alphas.clone(),
        }
    }
}

/// The walks and scales of a request, checked against the served walks: steering needs walks
/// (the message says how to get them) and moves in z; `walks=` names served walks.
fn steer_settings<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    spec: &GeneratorSpec,
    method: Method,
    space: crate::generator::Space,
) -> Result<SteerSettings, ParamError> {
    let scale = param("steer_scale").float(get("steer_scale"))? as f32;
    let set = match &spec.walks {
        Some(set) => set,
        None if method.steers() || get("walks").is_some() => {
            let what = if method.steers() {
                format!("method `{method}`")
            } else {
                "parameter `walks`".to_string()
            };
            return Err(ParamError(format!(
                "{what}: {}",
                crate::walks::set::no_walks_message(&spec.name)
            )));
        }
        None => {
            return Ok(SteerSettings {
                walks: vec![],
                scale,
            })
        }
    };
    if method.steers() && space != crate::generator::Space::Z {
        return Err(ParamError(format!(
            "method `{method}`: the walks move z, so steered views are made with space=z"
        )));
    }
    let walks = match get("walks") {
        Some(list) => crate::walks::set::parse_walk_list(list, set)
            .map_err(|e| ParamError(format!("parameter `walks`: {e}")))?,
        None => (0..set.walks.len()).map(|i| (i, 1.0)).collect(),
    };
    Ok(SteerSettings { walks, scale })
}

/// The namespace of requests that name none (`/v1/stream`, `/v1/samples`, `/v1/grid.png`
/// without `prefix`): the same samples as the shards `train-*.tar`.
pub const DEFAULT_PREFIX: &str = "train";

/// A shard prefix / namespace: 1-64 ASCII letters, digits, `_` or `-`.
pub fn check_prefix(prefix: &str) -> Result<(), ParamError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ParamError(format!(
            "prefix `{prefix}`: use 1-64 ASCII letters, digits, `_` or `-`"
        )))
    }
}

/// The defaults of every parameter for a generator (and `shard_size`), as `/v1/info` reports
/// them.
pub fn defaults_json(spec: &GeneratorSpec) -> serde_json::Value {
    let mut m: serde_json::Map<String, serde_json::Value> = table(spec)
        .into_iter()
        .filter(|(_, p)| !p.is_list())
        .map(|(_, p)| (p.name.to_string(), p.default_json()))
        .collect();
    m.insert("shard_size".into(), DEFAULT_SHARD_SIZE.into());
    m.into()
}

/// `genrep export`'s sampling flags, made from the table and every family's inputs (the model
/// is loaded after the flags are parsed): `--seed`, `--method`, … with the same values as the
/// query parameters (the values are checked by [`SampleRequest::from_pairs`]).
#[derive(Debug, Clone, Default)]
pub struct SamplingArgs {
    pub given: BTreeMap<String, String>,
}

impl clap::FromArgMatches for SamplingArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = export_params()
            .into_iter()
            .filter_map(|p| {
                m.get_one::<String>(p.name)
                    .map(|v| (p.name.to_string(), v.clone()))
            })
            .collect();
        Ok(Self { given })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The parameters `genrep export` takes as flags.
fn export_params() -> Vec<&'static Param> {
    PARAMS
        .iter()
        .map(|(_, p)| p)
        .chain(crate::generator::registry::Architecture::all_knobs())
        .collect()
}

impl clap::Args for SamplingArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        export_params().into_iter().fold(cmd, |cmd, p| {
            let default = if p.is_list() {
                "all".to_string()
            } else {
                p.default_json().to_string().trim_matches('"').to_string()
            };
            cmd.arg(
                clap::Arg::new(p.name)
                    .long(p.name)
                    .aliases(p.aliases)
                    .value_name("VALUE")
                    // `--sigma -1` must reach the table's check (and its message), not clap's.
                    .allow_negative_numbers(true)
                    .help(format!(
                        "{} [query parameter `{}`; default {default}]",
                        p.doc, p.name
                    )),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_defaults_parse_and_limits_apply() {
        let mut spec = GeneratorSpec::new("t", "cdcgan", 4, 10, 1, 8);
        let limits = Limits {
            max_views: 3,
            ..Limits::offline()
        };
        let r = SampleRequest::parse(|_| None, &spec, &limits).unwrap();
        assert_eq!((r.seed, r.settings.views, r.quality), (0, 1, 90));
        assert_eq!(r.settings.classes.len(), 10);
        let e =
            SampleRequest::parse(|k| (k == "views").then_some("4"), &spec, &limits).unwrap_err();
        assert_eq!(
            e.0,
            "parameter `views` must be an integer in [1, 3], got `4`"
        );
        let d = defaults_json(&spec);
        assert_eq!(d["sigma"], 0.2);
        assert_eq!(d["method"], "gaussian");
        assert_eq!(d["shard_size"], 1000);
        assert!(d.get("gen_truncation").is_none());
        // A family's input is a parameter only for generators that have it.
        let pairs = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let e =
            SampleRequest::from_pairs(&pairs("gen_truncation", "0.5"), &spec, &limits).unwrap_err();
        assert!(e.0.contains("has no such input"), "{e}");
        spec.knobs = crate::generator::registry::Architecture::BigganDeep.knobs();
        let e = SampleRequest::parse(|k| (k == "gen_truncation").then_some("0"), &spec, &limits)
            .unwrap_err();
        assert!(e.0.contains("(0, 1]"), "{e}");
        let r = SampleRequest::from_pairs(&pairs("gen_truncation", "0.5"), &spec, &limits).unwrap();
        assert_eq!(r.knobs.float("gen_truncation"), Some(0.5));
        assert_eq!(defaults_json(&spec)["gen_truncation"], 1.0);
        // The old spelling of the anchor bound still works, but not next to the new one.
        let r = SampleRequest::from_pairs(&pairs("truncation", "1.5"), &spec, &limits).unwrap();
        assert_eq!(r.settings.anchor_bound, 1.5);
        let both = BTreeMap::from([
            ("truncation".to_string(), "1".to_string()),
            ("anchor_bound".to_string(), "1".to_string()),
        ]);
        let e = SampleRequest::from_pairs(&both, &spec, &limits).unwrap_err();
        assert!(e.0.contains("given more than once"), "{e}");
    }
}
