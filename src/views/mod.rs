//! View methods: how a sample's positives are made from its anchor.
//!
//! A method is a [`ViewMethod`]: given the anchor's z, positive k's own random stream and the
//! generator's assets (learned walk directions, …) it returns typed latents — z itself, or z
//! plus an offset in a space the generator's mapping stage reaches (StyleGAN's w). The
//! sampler ([`crate::sampler`]) keeps the random streams and the laws (truncated normals, the
//! stream parts); methods only combine them. [`sample`] draws a whole sample.
//!
//! Built-in methods (the wire's [`Method`]):
//! - `gaussian`: `z + σ·w`, `w` drawn N(0,1) truncated to [-2, 2] (i.e. `σ·w ~ N(0, σ²)`
//!   truncated at ±2σ), computed in f64 and rounded to f32, not re-clipped;
//! - `independent`: a fresh anchor-law latent (same class);
//! - `none`: the anchor itself;
//! - `steer`, `steer_gaussian`: along the served walks ([`steer`]).

pub mod steer;

use crate::generator::{Assets, LatentSpace, Space};
use crate::sampler::rng::{positive_part, SampleRng};
use crate::sampler::{draw_anchor, draw_class, SamplerSettings};
use crate::walks::WalkSet;
pub use genrep_wire::Method;
use std::collections::BTreeMap;

/// What a view method may use besides the sampler's streams.
#[derive(Clone, Copy)]
pub struct ViewContext<'a> {
    /// Length of z.
    pub latent_dim: usize,
    /// The generator's host-side data.
    pub assets: &'a Assets,
    /// The generator's spaces past z and their sizes.
    pub spaces: &'a [LatentSpace],
    /// The served walks (their vectors are in `assets`).
    pub walks: Option<&'a WalkSet>,
}

impl<'a> ViewContext<'a> {
    /// A generator with only z.
    pub fn new(latent_dim: usize, assets: &'a Assets) -> Self {
        Self {
            latent_dim,
            assets,
            spaces: &[],
            walks: None,
        }
    }

    /// The context of a generator's spec: its spaces and walks.
    pub fn of(spec: &'a crate::generator::GeneratorSpec, assets: &'a Assets) -> Self {
        Self {
            latent_dim: spec.latent_dim,
            assets,
            spaces: &spec.spaces,
            walks: spec.walks.as_ref(),
        }
    }

    /// With the generator's spaces (its spec's `spaces`).
    pub fn with_spaces(mut self, spaces: &'a [LatentSpace]) -> Self {
        self.spaces = spaces;
        self
    }

    /// The size of latents in `space`.
    pub fn dim(&self, space: Space) -> Option<usize> {
        match space {
            Space::Z => Some(self.latent_dim),
            s => self.spaces.iter().find(|l| l.space == s).map(|l| l.dim),
        }
    }
}

/// One view's typed latent: z, and for views made past the mapping stage the offset added
/// there.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub z: Vec<f32>,
    /// `Some` for a view in another space than z: the displacement added after mapping.
    pub offset: Option<Vec<f32>>,
    /// `Some` for a steered view: its coefficient along each walk it moved on.
    pub alphas: Option<BTreeMap<String, f32>>,
}

/// A way to make positives.
pub trait ViewMethod: Send + Sync {
    /// The space this method's views live in (where their offsets are added).
    fn space(&self) -> Space {
        Space::Z
    }

    /// Positive k of `anchor` (the anchor's z). `rng` is positive k's own stream (part
    /// `2 + k`), so positive k does not depend on K or on the other positives.
    fn positive(
        &self,
        cx: &ViewContext,
        s: &SamplerSettings,
        anchor: &[f32],
        rng: &mut SampleRng,
    ) -> View;
}

/// `gaussian`.
pub struct Gaussian;
/// `gaussian` with `space=w`: the offset `σ·w` (the same law as in z, `w_dim` values) is added
/// to the anchor's w after the mapping network and ψ, to every row alike.
pub struct GaussianW;
/// `independent`.
pub struct Independent;
/// `none`.
pub struct AnchorOnly;

impl ViewMethod for Gaussian {
    fn positive(&self, _: &ViewContext, s: &SamplerSettings, a: &[f32], r: &mut SampleRng) -> View {
        let sigma = s.sigma as f64;
        View {
            z: a.iter()
                .map(|&z| (z as f64 + sigma * r.truncated_normal(2.0)) as f32)
                .collect(),
            offset: None,
            alphas: None,
        }
    }
}

impl ViewMethod for GaussianW {
    fn space(&self) -> Space {
        Space::W
    }

    fn positive(
        &self,
        cx: &ViewContext,
        s: &SamplerSettings,
        a: &[f32],
        r: &mut SampleRng,
    ) -> View {
        let sigma = s.sigma as f64;
        let d = cx
            .dim(Space::W)
            .expect("space=w is checked against the generator");
        View {
            z: a.to_vec(),
            offset: Some(
                (0..d)
                    .map(|_| (sigma * r.truncated_normal(2.0)) as f32)
                    .collect(),
            ),
            alphas: None,
        }
    }
}

impl ViewMethod for Independent {
    fn positive(
        &self,
        cx: &ViewContext,
        s: &SamplerSettings,
        _: &[f32],
        r: &mut SampleRng,
    ) -> View {
        View {
            z: crate::sampler::anchor_law(r, cx.latent_dim, s.anchor_bound as f64),
            offset: None,
            alphas: None,
        }
    }
}

impl ViewMethod for AnchorOnly {
    fn positive(&self, _: &ViewContext, _: &SamplerSettings, a: &[f32], _: &mut SampleRng) -> View {
        View {
            z: a.to_vec(),
            offset: None,
            alphas: None,
        }
    }
}

/// The implementation of a wire method in a space. Only `gaussian` differs in w: an
/// independent positive is a fresh z either way, and `none` is the anchor.
pub fn builtin(m: Method, space: Space) -> &'static dyn ViewMethod {
    match (m, space) {
        (Method::Gaussian, Space::W) => &GaussianW,
        (Method::Gaussian, Space::Z) => &Gaussian,
        (Method::Independent, _) => &Independent,
        (Method::None, _) => &AnchorOnly,
        // Walks live in z; the parameter table refuses other spaces.
        (Method::Steer, _) => &steer::Steer { gaussian: false },
        (Method::SteerGaussian, _) => &steer::Steer { gaussian: true },
    }
}

/// The latents of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleLatents {
    pub index: u64,
    pub class: Option<u32>,
    /// The space of the positives (the anchor is the same point there: offset zero).
    pub space: Space,
    pub z_anchor: Vec<f32>,
    /// The positives' z, K of them.
    pub z_pos: Vec<Vec<f32>>,
    /// The positives' offsets in `space`, for views past the mapping stage.
    pub offsets: Option<Vec<Vec<f32>>>,
    /// The positives' coefficients along the walks, for steered views.
    pub alphas: Option<Vec<BTreeMap<String, f32>>>,
}

impl SampleLatents {
    /// Anchor then positives, one z row each: the generator's input rows for this sample.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        std::iter::once(self.z_anchor.as_slice()).chain(self.z_pos.iter().map(Vec::as_slice))
    }
}

/// Draws sample `index` of stream `seed` with the settings' method.
pub fn sample(s: &SamplerSettings, cx: &ViewContext, seed: u64, index: u64) -> SampleLatents {
    sample_with(builtin(s.method, s.space), s, cx, seed, index)
}

/// Draws sample `index` of stream `seed` with `method`.
pub fn sample_with(
    method: &dyn ViewMethod,
    s: &SamplerSettings,
    cx: &ViewContext,
    seed: u64,
    index: u64,
) -> SampleLatents {
    let z_anchor = draw_anchor(s, cx.latent_dim, seed, index);
    let mut z_pos = Vec::with_capacity(s.views as usize);
    let mut offsets = Vec::new();
    let mut alphas = Vec::new();
    for k in 0..s.views as u64 {
        let mut r = SampleRng::new(&s.namespace, seed, positive_part(k), index);
        let v = method.positive(cx, s, &z_anchor, &mut r);
        z_pos.push(v.z);
        offsets.extend(v.offset);
        alphas.extend(v.alphas);
    }
    let space = method.space();
    SampleLatents {
        index,
        class: draw_class(s, seed, index),
        space,
        z_anchor,
        z_pos,
        offsets: (space != Space::Z).then_some(offsets),
        alphas: (!alphas.is_empty()).then_some(alphas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::rng::Namespace;

    fn settings(method: Method, views: u32) -> SamplerSettings {
        SamplerSettings {
            namespace: Namespace::new("train"),
            method,
            sigma: 0.2,
            views,
            anchor_bound: 2.0,
            classes: (0..10).collect(),
            space: Space::Z,
            steer: Default::default(),
        }
    }

    fn draw(s: &SamplerSettings, dim: usize, seed: u64, index: u64) -> SampleLatents {
        sample(s, &ViewContext::new(dim, Assets::none()), seed, index)
    }

    #[test]
    fn deterministic_and_law_respected() {
        let s = settings(Method::Gaussian, 3);
        let a = draw(&s, 64, 5, 123);
        assert_eq!(a, draw(&s, 64, 5, 123));
        assert_ne!(a.z_anchor, draw(&s, 64, 5, 124).z_anchor);
        assert!(a.z_anchor.iter().all(|z| z.abs() <= 2.0));
        for p in &a.z_pos {
            for (x, z) in p.iter().zip(&a.z_anchor) {
                assert!((x - z).abs() <= 2.0 * 0.2 + 1e-6);
            }
        }
        // The anchor and positive k do not depend on K or the method.
        let b = draw(&settings(Method::Gaussian, 1), 64, 5, 123);
        assert_eq!(a.z_anchor, b.z_anchor);
        assert_eq!(a.z_pos[0], b.z_pos[0]);
        let n = draw(&settings(Method::None, 2), 64, 5, 123);
        assert_eq!(n.z_pos, vec![a.z_anchor.clone(), a.z_anchor.clone()]);
        let i = draw(&settings(Method::Independent, 2), 64, 5, 123);
        assert_eq!(i.class, a.class);
        assert_ne!(i.z_pos[0], a.z_anchor);
    }

    #[test]
    fn prefixes_are_namespaces() {
        let train = settings(Method::Gaussian, 1);
        let mut val = train.clone();
        val.namespace = Namespace::new("val");
        let (a, b) = (draw(&train, 64, 0, 0), draw(&val, 64, 0, 0));
        assert_ne!(a.z_anchor, b.z_anchor);
        assert_ne!(a.z_pos, b.z_pos);
    }

    #[test]
    fn classes_follow_the_allowed_set() {
        let mut s = settings(Method::Gaussian, 1);
        s.classes = vec![3, 7];
        let seen: std::collections::BTreeSet<_> =
            (0..200).map(|i| draw(&s, 8, 0, i).class.unwrap()).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![3, 7]);
    }

    /// A method using generator-side data: positive k is the anchor plus the asset `shift`
    /// scaled by k's own N(0, 1) draw.
    struct Shift;

    impl ViewMethod for Shift {
        fn positive(
            &self,
            cx: &ViewContext,
            _: &SamplerSettings,
            a: &[f32],
            r: &mut SampleRng,
        ) -> View {
            let (_, shift) = cx.assets.get("shift").expect("the generator ships a shift");
            let s = r.normal() as f32;
            View {
                z: a.iter().zip(shift).map(|(z, d)| z + s * d).collect(),
                offset: None,
                alphas: None,
            }
        }
    }

    #[test]
    fn a_method_reads_the_generators_assets_and_keeps_the_streams() {
        let mut assets = Assets::default();
        assets.insert("shift", vec![4], vec![1.0, 0.0, -1.0, 2.0]);
        let cx = ViewContext::new(4, &assets);
        let s = settings(Method::Gaussian, 2);
        let l = sample_with(&Shift, &s, &cx, 9, 4);
        // Same anchor and class as every other method: the streams are the sampler's.
        let g = sample(&s, &cx, 9, 4);
        assert_eq!((&l.z_anchor, l.class), (&g.z_anchor, g.class));
        assert_eq!((l.space, l.offsets.as_ref()), (Space::Z, None));
        let steps: Vec<f32> = l.z_pos.iter().map(|p| p[0] - l.z_anchor[0]).collect();
        for (p, s) in l.z_pos.iter().zip(&steps) {
            assert_eq!(p[1], l.z_anchor[1]);
            assert!((p[3] - l.z_anchor[3] - 2.0 * s).abs() < 1e-5);
        }
        assert_ne!(steps[0], steps[1]);
    }
}
