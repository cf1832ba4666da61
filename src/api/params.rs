//! Query-string parsing. Values are checked by the parameter table ([`crate::params`]); here
//! unknown and repeated parameters are rejected too (a typo must not silently change the data).

use super::error::ApiError;
use crate::generator::GeneratorSpec;
use crate::params::{self, Group, Limits, SampleRequest};
use genrep_wire::MAX_INDEX;
use std::collections::BTreeMap;

/// A parsed query string: each parameter at most once (under any of its names), all of them
/// allowed here, keyed by canonical name.
pub struct Query {
    map: BTreeMap<String, String>,
}

impl Query {
    /// Accepts the parameters of `groups` (from the table and `spec`'s own inputs) and the
    /// endpoint's own `extra` ones.
    pub fn parse(
        raw: Option<&str>,
        spec: &GeneratorSpec,
        groups: &[Group],
        extra: &[&str],
    ) -> Result<Self, ApiError> {
        let allowed: Vec<_> = groups
            .iter()
            .flat_map(|&g| params::group(spec, g))
            .collect();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(e) = pairs
            .iter()
            .find_map(|(k, _)| params::foreign_knob(spec, k))
        {
            return Err(e.into());
        }
        let map = params::canonical(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &allowed,
            extra,
        )?;
        Ok(Self { map })
    }

    /// An endpoint parameter outside the table, as given.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }

    /// An endpoint parameter outside the table: an integer in `[lo, hi]`.
    pub fn u64_in(&self, k: &str, default: u64, lo: u64, hi: u64) -> Result<u64, ApiError> {
        Ok(params::int_in(
            k,
            self.map.get(k).map(String::as_str),
            default,
            lo,
            hi,
        )?)
    }

    /// A sampling endpoint's query and its sample request: the parameters of `groups` and
    /// `extra`, checked against the served generator and the server's limits.
    pub fn sampling(
        raw: Option<&str>,
        st: &super::AppState,
        groups: &[Group],
        extra: &[&str],
    ) -> Result<(Self, SampleRequest), ApiError> {
        let spec = st.pipeline.spec();
        let q = Self::parse(raw, spec, groups, extra)?;
        let req = q.sample_request(spec, &st.limits)?;
        Ok((q, req))
    }

    /// The sampling settings and encoding of a request, in the namespace of the `prefix`
    /// parameter (where the endpoint allows one) or the default `train`.
    pub fn sample_request(
        &self,
        spec: &GeneratorSpec,
        limits: &Limits,
    ) -> Result<SampleRequest, ApiError> {
        let req = SampleRequest::parse(|k| self.map.get(k).map(String::as_str), spec, limits)?;
        Ok(match self.map.get("prefix") {
            Some(p) => req
                .with_prefix(p)
                .map_err(|e| ApiError::invalid(format!("parameter `prefix`: {e}")))?,
            None => req,
        })
    }

    /// A sample index (`start`, …): must be below the key space.
    pub fn index(&self, k: &str, default: u64) -> Result<u64, ApiError> {
        self.u64_in(k, default, 0, MAX_INDEX - 1)
    }
}

/// Parses `{prefix}-{NNNNNN}.tar` into the prefix (the samples' namespace) and the shard
/// number; `None` when malformed (answered 404).
pub fn parse_shard_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(".tar")?;
    let (prefix, num) = stem.rsplit_once('-')?;
    let num_ok = num.len() >= 6 && num.len() <= 12 && num.chars().all(|c| c.is_ascii_digit());
    if params::check_prefix(prefix).is_ok() && num_ok {
        Some((prefix, num.parse().ok()?))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names() {
        assert_eq!(parse_shard_name("train-000003.tar"), Some(("train", 3)));
        assert_eq!(
            parse_shard_name("my-set_2-000010.tar"),
            Some(("my-set_2", 10))
        );
        assert_eq!(parse_shard_name("train-3.tar"), None);
        assert_eq!(parse_shard_name("train-000003.tgz"), None);
        assert_eq!(parse_shard_name("-000003.tar"), None);
        assert_eq!(parse_shard_name("tr.ain-000003.tar"), None);
        assert_eq!(parse_shard_name("train-00000x.tar"), None);
    }
}
