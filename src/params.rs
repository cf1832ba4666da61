//! The sampling parameters, defined once: name, type, default, allowed range and documentation.
//!
//! The table drives the HTTP query parser (every sampling endpoint), `genrep export`'s flags (the
//! same names and values, validated by the same code, so files equal served shards), the OpenAPI
//! parameters and the defaults and limits `/v1/info` reports.

use crate::generator::GeneratorSpec;
use crate::sampler::{parse_classes, sample, Method, Namespace, SampleLatents, SamplerSettings};
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
    /// The limits of an offline export: only the table's own ranges apply.
    pub fn offline() -> Self {
        Self {
            max_views: 1024,
            max_shard_size: MAX_INDEX,
            max_concurrent_streams: 1,
            max_generate_latents: 0,
            max_grid_rows: 0,
            body_timeout_s: 0,
            max_streams_per_consumer: 1,
        }
    }
}

/// A parameter's type, default and allowed values.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// An integer in `[min, max]`; `limit` lowers `max` to a server limit.
    Int {
        default: u64,
        min: u64,
        max: u64,
        limit: Option<fn(&Limits) -> u64>,
    },
    /// A finite number in `[min, max]` (`(min, max]` when `min_open`).
    Float {
        default: f64,
        min: f64,
        max: f64,
        min_open: bool,
    },
    /// One of a list of words.
    Choice {
        default: &'static str,
        values: &'static [&'static str],
    },
    /// Class ids and ranges (`0,3,7-9`); default: all classes.
    Classes,
}

/// One parameter of the table.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

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
        kind: Kind::Int { default: 0, min: 0, max: u64::MAX, limit: None },
        doc: "Stream seed (u64): samples are pure functions of (seed, index).",
    }),
    (Group::Sampling, Param {
        name: "method",
        kind: Kind::Choice { default: "gaussian", values: &Method::ALL },
        doc: "How positives are made: gaussian (anchor + sigma-scaled noise), independent (fresh latent, same class), none (the anchor itself).",
    }),
    (Group::Sampling, Param {
        name: "sigma",
        kind: Kind::Float { default: 0.2, min: 0.0, max: 10.0, min_open: false },
        doc: "Positive scale: w ~ N(0, sigma^2), truncated at +-2 sigma.",
    }),
    (Group::Sampling, Param {
        name: "views",
        kind: Kind::Int { default: 1, min: 1, max: 1024, limit: Some(|l| l.max_views as u64) },
        doc: "Positives K per anchor (the server's --max-views caps it).",
    }),
    (Group::Sampling, Param {
        name: "truncation",
        kind: Kind::Float { default: 2.0, min: 0.05, max: 100.0, min_open: false },
        doc: "Anchor bound t: z ~ N(0, I) truncated to [-t, t].",
    }),
    (Group::Sampling, Param {
        name: "gen_truncation",
        kind: Kind::Float { default: DEFAULT_GEN_TRUNCATION, min: 0.0, max: 1.0, min_open: true },
        doc: "The generator's own truncation input (BigGAN's BN statistics row; ignored by cdcgan).",
    }),
    (Group::Sampling, Param {
        name: "classes",
        kind: Kind::Classes,
        doc: "Allowed classes, ids and ranges such as 0,3,7-9; default all.",
    }),
    (Group::Encoding, Param {
        name: "format",
        kind: Kind::Choice { default: "png", values: &ImageFormat::ALL },
        doc: "Image encoding of the views: png, jpg, or npy (float32 [C,H,W] in [-1,1]).",
    }),
    (Group::Encoding, Param {
        name: "quality",
        kind: Kind::Int { default: 90, min: 1, max: 100, limit: None },
        doc: "JPEG quality (format=jpg).",
    }),
];

/// The generator truncation when none is given (sampling endpoints and `POST /v1/generate`).
pub const DEFAULT_GEN_TRUNCATION: f64 = 1.0;

/// Samples per shard when a request gives no `shard_size`.
pub const DEFAULT_SHARD_SIZE: u64 = 1000;

/// The parameters of a group.
pub fn group(g: Group) -> impl Iterator<Item = &'static Param> {
    PARAMS
        .iter()
        .filter(move |(pg, _)| *pg == g)
        .map(|(_, p)| p)
}

/// A parameter of the table by name.
pub fn param(name: &str) -> &'static Param {
    &PARAMS
        .iter()
        .find(|(_, p)| p.name == name)
        .unwrap_or_else(|| panic!("`{name}` is not in the parameter table"))
        .1
}

/// A rejected parameter value; the message names the parameter and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Checks an integer against `[min, max]`.
pub fn int_in(
    name: &str,
    raw: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ParamError> {
    let Some(s) = raw else { return Ok(default) };
    match s.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ParamError(format!(
            "parameter `{name}` must be an integer in [{min}, {max}], got `{s}`"
        ))),
    }
}

impl Param {
    /// The upper bound of an integer parameter under `limits`.
    pub fn int_max(&self, limits: &Limits) -> u64 {
        match self.kind {
            Kind::Int { max, limit, .. } => limit.map_or(max, |f| f(limits).min(max)),
            _ => unreachable!("`{}` is not an integer parameter", self.name),
        }
    }

    fn int(&self, raw: Option<&str>, limits: &Limits) -> Result<u64, ParamError> {
        match self.kind {
            Kind::Int { default, min, .. } => {
                int_in(self.name, raw, default, min, self.int_max(limits))
            }
            _ => unreachable!("`{}` is not an integer parameter", self.name),
        }
    }

    fn float(&self, raw: Option<&str>) -> Result<f64, ParamError> {
        let Kind::Float {
            default,
            min,
            max,
            min_open,
        } = self.kind
        else {
            unreachable!("`{}` is not a number parameter", self.name)
        };
        let Some(s) = raw else { return Ok(default) };
        let v = s.parse::<f64>().ok().filter(|v| v.is_finite());
        match v {
            Some(v) if (if min_open { v > min } else { v >= min }) && v <= max => Ok(v),
            _ => Err(ParamError(format!(
                "parameter `{}` must be a finite number in {}{min}, {max}], got `{s}`",
                self.name,
                if min_open { "(" } else { "[" }
            ))),
        }
    }

    fn choice<'a>(&self, raw: Option<&'a str>) -> Result<&'a str, ParamError> {
        let Kind::Choice { default, values } = self.kind else {
            unreachable!("`{}` is not a choice parameter", self.name)
        };
        let s = raw.unwrap_or(default);
        if values.contains(&s) {
            Ok(s)
        } else {
            Err(ParamError(format!(
                "parameter `{}` must be one of {}, got `{s}`",
                self.name,
                values.join(", ")
            )))
        }
    }

    /// The default as JSON (`null` for "all classes").
    pub fn default_json(&self) -> serde_json::Value {
        match self.kind {
            Kind::Int { default, .. } => default.into(),
            Kind::Float { default, .. } => default.into(),
            Kind::Choice { default, .. } => default.into(),
            Kind::Classes => serde_json::Value::Null,
        }
    }
}

/// What to sample and how to encode it: a request's validated sampling parameters.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub settings: SamplerSettings,
    pub seed: u64,
    pub format: ImageFormat,
    /// JPEG quality (1-100).
    pub quality: u8,
}

impl SampleRequest {
    /// Validates the parameters `get` returns (absent = default) against the table, the
    /// generator and the limits.
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
        Ok(Self {
            settings: SamplerSettings {
                namespace: Namespace::new(DEFAULT_PREFIX),
                method,
                sigma: p("sigma").float(get("sigma"))? as f32,
                views: p("views").int(get("views"), limits)? as u32,
                truncation: p("truncation").float(get("truncation"))? as f32,
                gen_truncation: p("gen_truncation").float(get("gen_truncation"))?,
                classes,
            },
            seed: p("seed").int(get("seed"), limits)?,
            format,
            quality: p("quality").int(get("quality"), limits)? as u8,
        })
    }

    /// [`Self::parse`] over `name → value` pairs.
    pub fn from_pairs(
        pairs: &BTreeMap<String, String>,
        spec: &GeneratorSpec,
        limits: &Limits,
    ) -> Result<Self, ParamError> {
        Self::parse(|k| pairs.get(k).map(String::as_str), spec, limits)
    }

    /// Sets the namespace (shard prefix) after checking it is a valid prefix.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, ParamError> {
        check_prefix(prefix)?;
        self.settings.namespace = Namespace::new(prefix);
        Ok(self)
    }

    pub fn latents(&self, spec: &GeneratorSpec, index: u64) -> SampleLatents {
        sample(&self.settings, spec.latent_dim, self.seed, index)
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
            truncation: s.truncation,
            gen_truncation: s.gen_truncation,
            generator: spec.name.clone(),
            weights_sha256: spec.weights_sha256.clone(),
            z_anchor: l.z_anchor.clone(),
            z_pos: l.z_pos.clone(),
        }
    }
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

/// The defaults of every parameter (and `shard_size`), as `/v1/info` reports them.
pub fn defaults_json() -> serde_json::Value {
    let mut m: serde_json::Map<String, serde_json::Value> = PARAMS
        .iter()
        .filter(|(_, p)| !matches!(p.kind, Kind::Classes))
        .map(|(_, p)| (p.name.to_string(), p.default_json()))
        .collect();
    m.insert("shard_size".into(), DEFAULT_SHARD_SIZE.into());
    m.into()
}

/// `genrep export`'s sampling flags, made from the table: `--seed`, `--method`, … with the same
/// values as the query parameters (the values are checked by [`SampleRequest::parse`]).
#[derive(Debug, Clone, Default)]
pub struct SamplingArgs {
    pub given: BTreeMap<String, String>,
}

impl clap::FromArgMatches for SamplingArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = PARAMS
            .iter()
            .filter_map(|(_, p)| {
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

impl clap::Args for SamplingArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        PARAMS.iter().fold(cmd, |cmd, (_, p)| {
            let default = match p.kind {
                Kind::Classes => "all".to_string(),
                _ => p.default_json().to_string().trim_matches('"').to_string(),
            };
            cmd.arg(
                clap::Arg::new(p.name)
                    .long(p.name)
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
        let spec = GeneratorSpec {
            name: "t".into(),
            architecture: "cdcgan".into(),
            latent_dim: 4,
            num_classes: 10,
            channels: 1,
            resolution: 8,
            has_truncation: false,
            weights_sha256: "x".into(),
        };
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
        let e = SampleRequest::parse(|k| (k == "gen_truncation").then_some("0"), &spec, &limits)
            .unwrap_err();
        assert!(e.0.contains("(0, 1]"), "{e}");
        let d = defaults_json();
        assert_eq!(d["sigma"], 0.2);
        assert_eq!(d["method"], "gaussian");
        assert_eq!(d["shard_size"], 1000);
    }
}
