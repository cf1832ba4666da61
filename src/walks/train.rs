//! Training walks: GenRep's composed-walk recipe for any generator whose forward pass candle can
//! differentiate in z. Each step draws anchors z (truncated at ±2), classes, and one coefficient
//! per sample and walk; the target is the pixel edit of `G(z, y)` (no gradient), the prediction
//! `G(z + Σ αᵢ·wᵢ, y)`, the loss the masked MSE; Adam updates the walks, the generator is frozen.
//!
//! Everything a step draws comes from `(seed, step)` alone, and the optimiser state is saved in
//! the checkpoint, so a run resumed from its checkpoint ends with the same walks as one that
//! never stopped.

use super::edits::{self, Edit};
use super::loss::masked_mse;
use crate::generator::{ClassInput, Generator, Knobs, Space};
use crate::sampler::rng::{Namespace, SampleRng};
use candle_core::{DType, Device, Tensor, Var};

/// A transform a walk learns, with GenRep's coefficient law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Zoom factor in U(0.25, 1) or U(1, 4) (½ each); coefficient `ln(zoom)`.
    Zoom,
    /// Horizontal shift of {−100, −90, …, 100} px at 256 px (scaled to the image); coefficient
    /// shift / 100.
    ShiftX,
    /// Vertical shift, as `ShiftX`.
    ShiftY,
    /// Rotation of {−30, −25, …, 30}°; coefficient angle / 30.
    Rot2d,
    /// An offset per channel in U(−0.5, 0.5) (one walk per channel); coefficient the offset.
    Color,
}

impl Transform {
    pub const ALL: [Transform; 5] = [
        Transform::Zoom,
        Transform::ShiftX,
        Transform::ShiftY,
        Transform::Rot2d,
        Transform::Color,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transform::Zoom => "zoom",
            Transform::ShiftX => "shift_x",
            Transform::ShiftY => "shift_y",
            Transform::Rot2d => "rot2d",
            Transform::Color => "color",
        }
    }

    /// The transform named `s`, or a message listing the known ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|t| t.name()).collect();
                format!("unknown transform `{s}` (known: {})", known.join(", "))
            })
    }

    /// The range of its coefficient (what a steered view draws from), as documented above.
    pub fn alpha_range(self) -> (f32, f32) {
        match self {
            Transform::Zoom => (0.25f32.ln(), 4f32.ln()),
            Transform::ShiftX | Transform::ShiftY | Transform::Rot2d => (-1.0, 1.0),
            Transform::Color => (-0.5, 0.5),
        }
    }
}

/// The walks of a set of transforms, one row per walk: a colour transform has one walk per
/// image channel (`color_0`, …).
pub fn walk_names(transforms: &[Transform], channels: usize) -> Vec<String> {
    let mut out = Vec::new();
    for &t in transforms {
        if t == Transform::Color {
            out.extend((0..channels).map(|c| format!("color_{c}")));
        } else {
            out.push(t.name().to_string());
        }
    }
    out
}

/// A zoom factor: U(0.25, 1) or U(1, 4), ½ each.
fn draw_zoom(rng: &mut SampleRng) -> f32 {
    let u = rng.uniform() as f32;
    if rng.below(2) == 0 {
        0.25 + 0.75 * u
    } else {
        1.0 + 3.0 * u
    }
}

/// A shift coefficient in {−1, −0.9, …, 1} (× 100 px at 256 px).
fn draw_shift(rng: &mut SampleRng) -> f32 {
    (rng.below(21) as f32 - 10.0) / 10.0
}

/// A rotation in {−30, −25, …, 30}°.
fn draw_rot2d_deg(rng: &mut SampleRng) -> f32 {
    rng.below(13) as f32 * 5.0 - 30.0
}

impl Transform {
    /// One coefficient of this transform's walk (one colour channel for `Color`) from the law
    /// it was trained with: what a steered positive moves by at `steer_scale=1`.
    pub fn draw_coefficient(self, rng: &mut SampleRng) -> f32 {
        match self {
            Transform::Zoom => draw_zoom(rng).ln(),
            Transform::ShiftX | Transform::ShiftY => draw_shift(rng),
            Transform::Rot2d => draw_rot2d_deg(rng) / 30.0,
            Transform::Color => rng.uniform() as f32 - 0.5,
        }
    }
}

/// How many edits one training sample combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditMix {
    /// GenRep's composed walk: every transform at once, each with its own coefficient.
    Composed,
    /// One transform per sample, chosen uniformly (the others' coefficients are 0): each walk
    /// learns its own edit without the others' in the target, as gan_steerability trains one
    /// walk per transform, but all in one run.
    Single,
}

impl EditMix {
    pub fn name(self) -> &'static str {
        match self {
            EditMix::Composed => "composed",
            EditMix::Single => "single",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "composed" => Ok(EditMix::Composed),
            "single" => Ok(EditMix::Single),
            _ => Err(format!("`{s}`: use composed or single")),
        }
    }
}

/// One step's draws: coefficients `[B, K]` (walk order) and the matching pixel edits.
pub fn draw_edits(
    transforms: &[Transform],
    channels: usize,
    width: usize,
    rng: &mut SampleRng,
    b: usize,
    mix: EditMix,
) -> (Vec<f32>, Vec<Edit>) {
    let k = walk_names(transforms, channels).len();
    let mut alphas = Vec::with_capacity(b * k);
    let mut out = Vec::with_capacity(b);
    // GenRep's shifts are up to 100 px on 256-px images.
    let px_per_unit = 100.0 * width as f32 / 256.0;
    for _ in 0..b {
        let mut e = Edit::identity();
        for &t in transforms {
            match t {
                Transform::Zoom => {
                    let z = draw_zoom(rng);
                    e.zoom = z;
                    alphas.push(z.ln());
                }
                Transform::ShiftX | Transform::ShiftY => {
                    let a = draw_shift(rng);
                    if t == Transform::ShiftX {
                        e.shift.0 = a * px_per_unit;
                    } else {
                        e.shift.1 = a * px_per_unit;
                    }
                    alphas.push(a);
                }
                Transform::Rot2d => {
                    let deg = draw_rot2d_deg(rng);
                    e.rot2d_deg = deg;
                    alphas.push(deg / 30.0);
                }
                Transform::Color => {
                    e.colour = (0..channels).map(|_| rng.uniform() as f32 - 0.5).collect();
                    alphas.extend_from_slice(&e.colour);
                }
            }
        }
        if mix == EditMix::Single {
            // Every coefficient is drawn either way (the same stream), then all but one
            // transform's are reset to the identity.
            let keep = transforms[rng.below(transforms.len() as u64) as usize];
            let from = alphas.len() - k;
            let row = &mut alphas[from..];
            let mut col = 0;
            for &t in transforms {
                let n = if t == Transform::Color { channels } else { 1 };
                if t != keep {
                    row[col..col + n].fill(0.0);
                    match t {
                        Transform::Zoom => e.zoom = 1.0,
                        Transform::ShiftX => e.shift.0 = 0.0,
                        Transform::ShiftY => e.shift.1 = 0.0,
                        Transform::Rot2d => e.rot2d_deg = 0.0,
                        Transform::Color => e.colour.clear(),
                    }
                }
                col += n;
            }
        }
        out.push(e);
    }
    (alphas, out)
}

/// How a run trains.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub transforms: Vec<Transform>,
    /// Edits per training sample: GenRep's composed walk, or one at a time.
    pub edits: EditMix,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Adam's state for the walks: the walks, both moments and the steps taken.
#[derive(Debug, Clone)]
pub struct State {
    pub walks: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    pub step: usize,
}

impl State {
    /// Walks initialised N(0, 0.1²) from the seed, zero moments.
    pub fn init(k: usize, d: usize, seed: u64) -> candle_core::Result<Self> {
        let mut rng = SampleRng::new(&Namespace::new("walks-init"), seed, 0, 0);
        let w: Vec<f32> = (0..k * d).map(|_| 0.1 * rng.normal() as f32).collect();
        let walks = Tensor::from_vec(w, (k, d), &Device::Cpu)?;
        let zeros = walks.zeros_like()?;
        Ok(Self {
            walks,
            m: zeros.clone(),
            v: zeros,
            step: 0,
        })
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Runs steps `state.step..cfg.steps`, calling `on_step(step, loss)` after each; returns the last
/// loss (NaN when no step ran).
pub fn train(
    g: &dyn Generator,
    cfg: &TrainConfig,
    state: &mut State,
    mut on_step: impl FnMut(usize, f32, &State) -> anyhow::Result<()>,
) -> anyhow::Result<f32> {
    let spec = g.spec().clone();
    let (d, c, w) = (spec.latent_dim, spec.channels, spec.width);
    let names = walk_names(&cfg.transforms, c);
    anyhow::ensure!(
        state.walks.dims() == [names.len(), d],
        "the walks are {:?}, the run needs [{}, {d}]",
        state.walks.dims(),
        names.len()
    );
    let dev = g.info().device.clone();
    let dt = g.info().dtype;
    let ns = Namespace::new("walks-train");
    let mut last = f32::NAN;
    while state.step < cfg.steps {
        let step = state.step;
        let mut rng = SampleRng::new(&ns, cfg.seed, 0, step as u64);
        let b = cfg.batch_size;
        let z: Vec<f32> = (0..b * d)
            .map(|_| rng.truncated_normal(2.0) as f32)
            .collect();
        let classes = if spec.num_classes > 0 {
            ClassInput::Ids(
                (0..b)
                    .map(|_| rng.below(spec.num_classes as u64) as u32)
                    .collect(),
            )
        } else {
            ClassInput::None
        };
        let (alphas, eds) = draw_edits(&cfg.transforms, c, w, &mut rng, b, cfg.edits);
        let z = Tensor::from_vec(z, (b, d), &Device::Cpu)?;
        let knobs = Knobs::default().resolved(&spec)?;
        // The target: the edit of the anchor's image, no gradient.
        let anchor = g.synthesize(
            &z.to_device(&dev)?.to_dtype(dt)?,
            Space::Z,
            &classes,
            &knobs,
            &[],
        )?;
        let dims = anchor.dims4()?;
        let flat: Vec<f32> = anchor.flatten_all()?.to_vec1()?;
        let (target, mask) = edits::apply(&flat, dims, &eds);
        let target = Tensor::from_vec(target, dims, &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (dims.0, dims.2, dims.3), &Device::Cpu)?;
        // The prediction, differentiable in the walks.
        let walks = Var::from_tensor(&state.walks)?;
        let a = Tensor::from_vec(alphas, (b, names.len()), &Device::Cpu)?;
        let moved = super::loss::moved(&z, &a, walks.as_tensor())?;
        let pred = g.synthesize(
            &moved.to_device(&dev)?.to_dtype(dt)?,
            Space::Z,
            &classes,
            &knobs,
            &[],
        )?;
        let loss = masked_mse(&pred, &target, &mask)?;
        let grads = loss.backward().map_err(|e| {
            anyhow::anyhow!(
                "training walks needs the generator's backward pass, and {} has none here ({e})",
                spec.architecture
            )
        })?;
        let grad = grads
            .get(&walks)
            .ok_or_else(|| anyhow::anyhow!("the generator's forward pass gives no gradient to z"))?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?;
        // Adam.
        let t = (step + 1) as f64;
        state.m = ((&state.m * BETA1)? + (&grad * (1.0 - BETA1))?)?;
        state.v = ((&state.v * BETA2)? + (grad.sqr()? * (1.0 - BETA2))?)?;
        let m_hat = (&state.m / (1.0 - BETA1.powf(t)))?;
        let v_hat = (&state.v / (1.0 - BETA2.powf(t)))?;
        let update = (m_hat / (v_hat.sqrt()? + ADAM_EPS)?)?;
        state.walks = (&state.walks - (update * cfg.lr)?)?;
        state.step += 1;
        last = loss.to_dtype(DType::F32)?.to_scalar()?;
        anyhow::ensure!(last.is_finite(), "the loss is {last} at step {step}");
        on_step(step, last, state)?;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(steps: usize) -> TrainConfig {
        TrainConfig {
            transforms: vec![Transform::Zoom, Transform::ShiftX, Transform::Color],
            edits: EditMix::Composed,
            steps,
            batch_size: 4,
            lr: 1e-2,
            seed: 7,
        }
    }

    #[test]
    fn walk_names_expand_colour_per_channel() {
        let t = [Transform::Zoom, Transform::Color, Transform::Rot2d];
        assert_eq!(
            walk_names(&t, 3),
            ["zoom", "color_0", "color_1", "color_2", "rot2d"]
        );
        assert_eq!(walk_names(&t, 1), ["zoom", "color_0", "rot2d"]);
        assert!(Transform::parse("tilt")
            .unwrap_err()
            .contains("known: zoom"));
    }

    #[test]
    fn draws_follow_the_laws_and_match_their_edits() {
        let mut rng = SampleRng::new(&Namespace::new("t"), 1, 0, 0);
        let t = [
            Transform::Zoom,
            Transform::ShiftX,
            Transform::Rot2d,
            Transform::Color,
        ];
        let (a, e) = draw_edits(&t, 1, 28, &mut rng, 200, EditMix::Composed);
        assert_eq!((a.len(), e.len()), (800, 200));
        for (row, ed) in a.chunks(4).zip(&e) {
            assert!((0.25..=4.0).contains(&ed.zoom) && (row[0] - ed.zoom.ln()).abs() < 1e-6);
            assert!((row[1] * 10.0 - (row[1] * 10.0).round()).abs() < 1e-4 && row[1].abs() <= 1.0);
            assert!((ed.shift.0 - row[1] * 100.0 * 28.0 / 256.0).abs() < 1e-4);
            assert!((ed.rot2d_deg - row[2] * 30.0).abs() < 1e-4 && ed.rot2d_deg % 5.0 == 0.0);
            assert!(row[3].abs() <= 0.5 && ed.colour == [row[3]]);
        }
        // Both zoom halves occur.
        assert!(e.iter().any(|x| x.zoom < 1.0) && e.iter().any(|x| x.zoom > 1.0));
        // One edit per sample: exactly one transform's coefficients are kept, and its edit.
        let mut rng = SampleRng::new(&Namespace::new("t"), 1, 0, 0);
        let (a1, e1) = draw_edits(&t, 1, 28, &mut rng, 200, EditMix::Single);
        let mut seen = [0; 4];
        for (row, ed) in a1.chunks(4).zip(&e1) {
            let kept: Vec<usize> = (0..4).filter(|&j| row[j] != 0.0).collect();
            assert!(kept.len() <= 1, "{row:?}");
            for &j in &kept {
                seen[j] += 1;
            }
            assert_eq!(ed.zoom != 1.0, row[0] != 0.0);
            assert_eq!(ed.shift.0 != 0.0, row[1] != 0.0);
            assert_eq!(ed.rot2d_deg != 0.0, row[2] != 0.0);
            assert_eq!(!ed.colour.is_empty(), row[3] != 0.0);
        }
        assert!(
            seen.iter().all(|&n| n > 20),
            "every transform is chosen: {seen:?}"
        );
    }

    /// On the embedded generator: the gradient reaches the walks, the run is a function of the
    /// seed, and stopping after 2 steps then going on gives the walks of 4 uninterrupted steps.
    #[test]
    fn training_is_deterministic_and_resumes_exactly() {
        let g = crate::embedded::load(&Device::Cpu, DType::F32).unwrap();
        let d = g.spec().latent_dim;
        let k = walk_names(&cfg(0).transforms, 1).len();
        let run = |steps: usize, state: &mut State| {
            train(g.as_ref(), &cfg(steps), state, |_, _, _| Ok(())).unwrap()
        };
        let mut a = State::init(k, d, 7).unwrap();
        let la = run(4, &mut a);
        assert!(la.is_finite() && la > 0.0);
        let mut b = State::init(k, d, 7).unwrap();
        run(2, &mut b);
        assert_eq!(b.step, 2);
        let lb = run(4, &mut b);
        assert_eq!(la, lb);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a.walks), flat(&b.walks));
        assert_ne!(
            flat(&a.walks),
            flat(&State::init(k, d, 7).unwrap().walks),
            "the walks moved"
        );
    }
}
