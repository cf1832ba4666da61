//! GenRep view sampling: every sample's class and latents are a pure function of
//! (sampler settings, latent size, seed, index). See README "Sampling algorithm".
//!
//! - class: `classes[below(len)]` from stream part 0 (`below` = multiply-shift of one u64);
//! - anchor: `latent_dim` draws of N(0,1) truncated to [-t, t] (rejection) from part 1;
//! - positive k (part 2 + k): `gaussian`: `z + σ·w`, `w` drawn N(0,1) truncated to [-2, 2]
//!   (i.e. `σ·w ~ N(0, σ²)` truncated at ±2σ), computed in f64 and rounded to f32, not re-clipped;
//!   `independent`: a fresh anchor-law latent (same class); `none`: the anchor itself.
//!
//! Because each part has its own stream, the anchor does not depend on the method, σ or K, and
//! positive k does not depend on K: sweeps over σ compare the same anchors and noise directions.

pub mod rng;

pub use genrep_wire::Method;
pub use rng::Namespace;
use rng::SampleRng;

/// Everything that shapes a sample besides (seed, index).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    /// The shard prefix: samples of different namespaces are unrelated.
    pub namespace: Namespace,
    pub method: Method,
    /// Positive scale σ (gaussian only).
    pub sigma: f32,
    /// Number of positives K.
    pub views: u32,
    /// Anchor truncation bound t > 0.
    pub truncation: f32,
    /// The generator's own truncation input (BigGAN), passed through.
    pub gen_truncation: f64,
    /// Allowed classes (sorted, unique); empty for unconditional generators.
    pub classes: Vec<u32>,
}

/// The latents of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleLatents {
    pub index: u64,
    pub class: Option<u32>,
    pub z_anchor: Vec<f32>,
    pub z_pos: Vec<Vec<f32>>,
}

impl SampleLatents {
    /// Anchor then positives, one row each: the generator's input rows for this sample.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        std::iter::once(self.z_anchor.as_slice()).chain(self.z_pos.iter().map(Vec::as_slice))
    }
}

fn anchor_law(ns: &Namespace, seed: u64, part: u64, index: u64, dim: usize, t: f64) -> Vec<f32> {
    let mut r = SampleRng::new(ns, seed, part, index);
    (0..dim).map(|_| r.truncated_normal(t) as f32).collect()
}

/// Draws sample `index` of stream `seed`.
pub fn sample(s: &SamplerSettings, latent_dim: usize, seed: u64, index: u64) -> SampleLatents {
    let ns = &s.namespace;
    let class = if s.classes.is_empty() {
        None
    } else {
        let mut r = SampleRng::new(ns, seed, 0, index);
        Some(s.classes[r.below(s.classes.len() as u64) as usize])
    };
    let t = s.truncation as f64;
    let z_anchor = anchor_law(ns, seed, 1, index, latent_dim, t);
    let z_pos = (0..s.views as u64)
        .map(|k| match s.method {
            Method::Gaussian => {
                let mut r = SampleRng::new(ns, seed, 2 + k, index);
                let sigma = s.sigma as f64;
                z_anchor
                    .iter()
                    .map(|&z| (z as f64 + sigma * r.truncated_normal(2.0)) as f32)
                    .collect()
            }
            Method::Independent => anchor_law(ns, seed, 2 + k, index, latent_dim, t),
            Method::None => z_anchor.clone(),
        })
        .collect();
    SampleLatents {
        index,
        class,
        z_anchor,
        z_pos,
    }
}

/// Parses a class list such as `0,3,7`, `0-9` or `1-3,8` into sorted unique ids < `n`.
pub fn parse_classes(spec: &str, n: usize) -> Result<Vec<u32>, String> {
    // Error messages quote at most the start of a long list.
    let shown: String = spec.chars().take(64).collect();
    let shown = if shown.len() < spec.len() {
        format!("{shown}…")
    } else {
        shown
    };
    // Ranges are validated and merged before anything is expanded, so the work and the result
    // are bounded by the number of classes, whatever the list repeats or overlaps.
    let mut ranges = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("empty entry in class list `{shown}`"));
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |x: &str| {
            x.parse::<u64>().map_err(|_| {
                let x: String = x.chars().take(32).collect();
                format!("`{x}` in class list `{shown}` is not a class id")
            })
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("range `{a}-{b}` is empty (start > end)"));
        }
        if b >= n as u64 {
            return Err(format!(
                "class {b} out of range: this generator has classes 0..={}",
                n.saturating_sub(1)
            ));
        }
        ranges.push((a as u32, b as u32));
    }
    ranges.sort_unstable();
    let mut out: Vec<u32> = Vec::new();
    for (a, b) in ranges {
        let from = match out.last() {
            Some(&last) if last >= b => continue,
            Some(&last) if last >= a => last + 1,
            _ => a,
        };
        out.extend(from..=b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_lists_are_merged_before_expansion() {
        assert_eq!(
            parse_classes("7-9,0,3,8,2-4", 10).unwrap(),
            [0, 2, 3, 4, 7, 8, 9]
        );
        assert_eq!(
            parse_classes("5, 5,0-9", 10).unwrap(),
            (0..10).collect::<Vec<_>>()
        );
        // 10,826 full ranges of a 1000-class model: 1000 ids, and fast.
        let spec = vec!["0-999"; 10_826].join(",");
        let t = std::time::Instant::now();
        assert_eq!(parse_classes(&spec, 1000).unwrap().len(), 1000);
        assert!(
            t.elapsed() < std::time::Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        let e = parse_classes(&format!("{spec},x"), 1000).unwrap_err();
        assert!(e.len() < 200, "{e}");
    }

    fn settings(method: Method, views: u32) -> SamplerSettings {
        SamplerSettings {
            namespace: Namespace::new("train"),
            method,
            sigma: 0.2,
            views,
            truncation: 2.0,
            gen_truncation: 1.0,
            classes: (0..10).collect(),
        }
    }

    #[test]
    fn deterministic_and_law_respected() {
        let s = settings(Method::Gaussian, 3);
        let a = sample(&s, 64, 5, 123);
        assert_eq!(a, sample(&s, 64, 5, 123));
        assert_ne!(a.z_anchor, sample(&s, 64, 5, 124).z_anchor);
        assert!(a.z_anchor.iter().all(|z| z.abs() <= 2.0));
        for p in &a.z_pos {
            for (x, z) in p.iter().zip(&a.z_anchor) {
                assert!((x - z).abs() <= 2.0 * 0.2 + 1e-6);
            }
        }
        // The anchor and positive k do not depend on K or the method.
        let b = sample(&settings(Method::Gaussian, 1), 64, 5, 123);
        assert_eq!(a.z_anchor, b.z_anchor);
        assert_eq!(a.z_pos[0], b.z_pos[0]);
        let n = sample(&settings(Method::None, 2), 64, 5, 123);
        assert_eq!(n.z_pos, vec![a.z_anchor.clone(), a.z_anchor.clone()]);
        let i = sample(&settings(Method::Independent, 2), 64, 5, 123);
        assert_eq!(i.class, a.class);
        assert_ne!(i.z_pos[0], a.z_anchor);
    }

    #[test]
    fn prefixes_are_namespaces() {
        let train = settings(Method::Gaussian, 1);
        let mut val = train.clone();
        val.namespace = Namespace::new("val");
        let (a, b) = (sample(&train, 64, 0, 0), sample(&val, 64, 0, 0));
        assert_ne!(a.z_anchor, b.z_anchor);
        assert_ne!(a.z_pos, b.z_pos);
    }

    #[test]
    fn classes_follow_the_allowed_set() {
        let mut s = settings(Method::Gaussian, 1);
        s.classes = vec![3, 7];
        let seen: std::collections::BTreeSet<_> = (0..200)
            .map(|i| sample(&s, 8, 0, i).class.unwrap())
            .collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![3, 7]);
    }

    #[test]
    fn class_lists() {
        assert_eq!(parse_classes("0-3,7, 2", 10).unwrap(), vec![0, 1, 2, 3, 7]);
        assert!(parse_classes("10", 10)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_classes("a", 10)
            .unwrap_err()
            .contains("not a class id"));
        assert!(parse_classes("3-1", 10).unwrap_err().contains("empty"));
        assert!(parse_classes("1,,2", 10)
            .unwrap_err()
            .contains("empty entry"));
    }
}
