//! GenRep sampling laws and random streams: every sample's class and latents are a pure
//! function of (sampler settings, latent size, seed, index). See README "Sampling algorithm".
//!
//! - class: `classes[below(len)]` from stream part 0 (`below` = multiply-shift of one u64);
//! - anchor: `latent_dim` draws of N(0,1) truncated to [-t, t] (rejection) from part 1;
//! - positive k: part 2 + k, used by the view method ([`crate::views`]);
//! - generator-internal noise: parts from 2^63 ([`rng::noise_part`]).
//!
//! Because each part has its own stream, the anchor does not depend on the method, σ or K, and
//! positive k does not depend on K: sweeps over σ compare the same anchors and noise directions.

pub mod rng;

pub use genrep_wire::Method;
pub use rng::Namespace;
use rng::{SampleRng, ANCHOR_PART, CLASS_PART};

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
    /// Anchor bound t > 0: every anchor dimension lies in [-t, t].
    pub anchor_bound: f32,
    /// Allowed classes (sorted, unique); empty for unconditional generators.
    pub classes: Vec<u32>,
    /// Where positives are made: z, or a space the generator's mapping stage reaches.
    pub space: crate::generator::Space,
    /// Which walks steered positives move along, and how far (steer methods only).
    pub steer: SteerSettings,
}

/// The walks of `method=steer`: positions in the served walk set with their own scale, and
/// the scale of every coefficient.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SteerSettings {
    /// `(walk, scale)`, in the set's order.
    pub walks: Vec<(usize, f32)>,
    /// `steer_scale`: multiplies every coefficient.
    pub scale: f32,
}

/// `dim` draws of N(0, 1) truncated to [-t, t] from `r`: the anchor law.
pub fn anchor_law(r: &mut SampleRng, dim: usize, t: f64) -> Vec<f32> {
    (0..dim).map(|_| r.truncated_normal(t) as f32).collect()
}

/// The class of sample `index` (`None` for unconditional generators).
pub fn draw_class(s: &SamplerSettings, seed: u64, index: u64) -> Option<u32> {
    if s.classes.is_empty() {
        return None;
    }
    let mut r = SampleRng::new(&s.namespace, seed, CLASS_PART, index);
    Some(s.classes[r.below(s.classes.len() as u64) as usize])
}

/// The anchor latent of sample `index`.
pub fn draw_anchor(s: &SamplerSettings, latent_dim: usize, seed: u64, index: u64) -> Vec<f32> {
    let mut r = SampleRng::new(&s.namespace, seed, ANCHOR_PART, index);
    anchor_law(&mut r, latent_dim, s.anchor_bound as f64)
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
