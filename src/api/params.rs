//! Query-string parsing and validation. Every rejection names the parameter and what is allowed;
//! unknown and repeated parameters are rejected too (a typo must not silently change the data).

use super::error::ApiError;
use super::Limits;
use crate::engine::SampleRequest;
use crate::generator::GeneratorSpec;
use crate::sampler::{parse_classes, Method, SamplerSettings};
use genrep_wire::{ImageFormat, MAX_INDEX};
use std::collections::BTreeMap;

/// Parameters that shape samples (accepted by every sampling endpoint).
pub const SAMPLING: &[&str] = &[
    "seed",
    "method",
    "sigma",
    "views",
    "truncation",
    "gen_truncation",
    "classes",
];
/// Parameters that choose the image encoding.
pub const ENCODING: &[&str] = &["format", "quality"];

/// Default sampling values (also reported by `/v1/info`).
pub mod defaults {
    pub const SEED: u64 = 0;
    pub const METHOD: &str = "gaussian";
    pub const SIGMA: f64 = 0.2;
    pub const VIEWS: u32 = 1;
    pub const TRUNCATION: f64 = 2.0;
    pub const GEN_TRUNCATION: f64 = 1.0;
    pub const FORMAT: &str = "png";
    pub const QUALITY: u8 = 90;
    pub const SHARD_SIZE: u64 = 1000;
}

/// A parsed query string: each parameter at most once, all of them allowed here.
pub struct Query {
    map: BTreeMap<String, String>,
}

impl Query {
    pub fn parse(raw: Option<&str>, allowed: &[&[&str]]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !allowed.iter().any(|set| set.contains(&k.as_ref())) {
                let mut all: Vec<&str> = allowed.iter().flat_map(|s| s.iter().copied()).collect();
                all.sort_unstable();
                return Err(ApiError::invalid(format!(
                    "unknown parameter `{k}` (allowed here: {})",
                    all.join(", ")
                )));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::invalid(format!(
                    "parameter `{k}` given more than once"
                )));
            }
        }
        Ok(Self { map })
    }

    /// Builds a query from `key=value` pairs (the CLI's flags go through the same validation).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            map: pairs.into_iter().collect(),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }

    pub fn u64_in(&self, k: &str, default: u64, lo: u64, hi: u64) -> Result<u64, ApiError> {
        let Some(s) = self.get(k) else {
            return Ok(default);
        };
        match s.parse::<u64>() {
            Ok(v) if (lo..=hi).contains(&v) => Ok(v),
            _ => Err(ApiError::invalid(format!(
                "parameter `{k}` must be an integer in [{lo}, {hi}], got `{s}`"
            ))),
        }
    }

    pub fn f64_in(
        &self,
        k: &str,
        default: f64,
        lo: f64,
        hi: f64,
        lo_open: bool,
    ) -> Result<f64, ApiError> {
        let Some(s) = self.get(k) else {
            return Ok(default);
        };
        let v = s.parse::<f64>().ok().filter(|v| v.is_finite());
        let ok = v.is_some_and(|v| (if lo_open { v > lo } else { v >= lo }) && v <= hi);
        if ok {
            Ok(v.unwrap())
        } else {
            Err(ApiError::invalid(format!(
                "parameter `{k}` must be a finite number in {}{lo}, {hi}], got `{s}`",
                if lo_open { "(" } else { "[" }
            )))
        }
    }

    /// The sampling settings and encoding of a request.
    pub fn sample_request(
        &self,
        spec: &GeneratorSpec,
        limits: &Limits,
    ) -> Result<SampleRequest, ApiError> {
        let seed = self.u64_in("seed", defaults::SEED, 0, u64::MAX)?;
        let method_s = self.get("method").unwrap_or(defaults::METHOD);
        let method = Method::parse(method_s).ok_or_else(|| {
            ApiError::invalid(format!(
                "parameter `method` must be one of {}, got `{method_s}`",
                Method::ALL.join(", ")
            ))
        })?;
        let sigma = self.f64_in("sigma", defaults::SIGMA, 0.0, 10.0, false)? as f32;
        let views =
            self.u64_in("views", defaults::VIEWS as u64, 1, limits.max_views as u64)? as u32;
        let truncation =
            self.f64_in("truncation", defaults::TRUNCATION, 0.05, 100.0, false)? as f32;
        let gen_truncation =
            self.f64_in("gen_truncation", defaults::GEN_TRUNCATION, 0.0, 1.0, true)?;
        let classes = match (self.get("classes"), spec.num_classes) {
            (None, n) => (0..n as u32).collect(),
            (Some(_), 0) => {
                return Err(ApiError::invalid(
                    "parameter `classes`: this generator is unconditional",
                ))
            }
            (Some(s), n) => parse_classes(s, n)
                .map_err(|e| ApiError::invalid(format!("parameter `classes`: {e}")))?,
        };
        let fmt_s = self.get("format").unwrap_or(defaults::FORMAT);
        let format = ImageFormat::parse(fmt_s).ok_or_else(|| {
            ApiError::invalid(format!(
                "parameter `format` must be one of {}, got `{fmt_s}`",
                ImageFormat::ALL.join(", ")
            ))
        })?;
        let quality = self.u64_in("quality", defaults::QUALITY as u64, 1, 100)? as u8;
        Ok(SampleRequest {
            settings: SamplerSettings {
                method,
                sigma,
                views,
                truncation,
                gen_truncation,
                classes,
            },
            seed,
            format,
            quality,
        })
    }

    /// A sample index (`start`, …): must be below the key space.
    pub fn index(&self, k: &str, default: u64) -> Result<u64, ApiError> {
        self.u64_in(k, default, 0, MAX_INDEX - 1)
    }
}

/// Parses `{prefix}-{NNNNNN}.tar` into the shard number; `None` when malformed (answered 404).
pub fn parse_shard_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".tar")?;
    let (prefix, num) = stem.rsplit_once('-')?;
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let num_ok = num.len() >= 6 && num.len() <= 12 && num.chars().all(|c| c.is_ascii_digit());
    if prefix_ok && num_ok {
        num.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(parse_shard_name("train-000003.tar"), Some(3));
        assert_eq!(parse_shard_name("my-set_2-000010.tar"), Some(10));
        assert_eq!(parse_shard_name("train-3.tar"), None);
        assert_eq!(parse_shard_name("train-000003.tgz"), None);
        assert_eq!(parse_shard_name("-000003.tar"), None);
        assert_eq!(parse_shard_name("tr.ain-000003.tar"), None);
        assert_eq!(parse_shard_name("train-00000x.tar"), None);
    }
}
