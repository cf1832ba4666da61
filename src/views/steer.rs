//! `steer` and `steer_gaussian`: positives moved along the served walks (GenRep's steering
//! views).
//!
//! Positive k draws one coefficient per walk of the set, in the set's order, from its own
//! stream (the law the walk was trained with: see [`Transform::draw_coefficient`]), whether or
//! not the request moves along that walk — so a walk's coefficient is the same under any
//! `walks=` subset. Then `z + Σᵢ sᵢ·s·αᵢ·wᵢ` over the chosen walks (`sᵢ` the walk's own scale,
//! `s` = `steer_scale`), computed in f64 and rounded to f32; `steer_gaussian` then adds the
//! Gaussian offset with σ, drawn after the coefficients.
//!
//! [`Transform::draw_coefficient`]: crate::walks::train::Transform::draw_coefficient

use super::{View, ViewContext, ViewMethod};
use crate::sampler::rng::SampleRng;
use crate::sampler::SamplerSettings;
use crate::walks::set::vectors;
use std::collections::BTreeMap;

/// `steer`, or with `gaussian` `steer_gaussian`.
pub struct Steer {
    pub gaussian: bool,
}

impl ViewMethod for Steer {
    fn positive(
        &self,
        cx: &ViewContext,
        s: &SamplerSettings,
        anchor: &[f32],
        r: &mut SampleRng,
    ) -> View {
        let set = cx
            .walks
            .expect("the parameter table refuses steering without walks");
        let dirs = vectors(set, cx.assets);
        let raw: Vec<f32> = set
            .walks
            .iter()
            .map(|w| w.transform.draw_coefficient(r))
            .collect();
        let mut z: Vec<f64> = anchor.iter().map(|&v| v as f64).collect();
        let mut alphas = BTreeMap::new();
        for &(i, scale) in &s.steer.walks {
            let a = raw[i] * scale * s.steer.scale;
            for (zj, &wj) in z.iter_mut().zip(dirs[i]) {
                *zj += a as f64 * wj as f64;
            }
            alphas.insert(set.walks[i].name.clone(), a);
        }
        if self.gaussian {
            let sigma = s.sigma as f64;
            for zj in z.iter_mut() {
                *zj += sigma * r.truncated_normal(2.0);
            }
        }
        View {
            z: z.into_iter().map(|v| v as f32).collect(),
            offset: None,
            alphas: Some(alphas),
        }
    }
}
