//! Parity: the BigGAN fixture (`tests/fixtures/biggan-tiny`, references computed by
//! pytorch-pretrained-biggan on the CPU), the StyleGAN2 fixtures (NVlabs' own outputs), the
//! BigBiGAN fixture (BigGAN-PyTorch's outputs) and the embedded generator (its committed
//! reference batch) run on the device in each dtype, compared with the references.
//!
//! Tolerances, in output units (images are in [-1, 1]; one 8-bit level is 2/255 ≈ 0.0078):
//! - f32: max |diff| / max |ref| ≤ 1e-4, as the CPU tests require.
//! - f16 (11 significant bits, relative step 4.9e-4): mean |diff| ≤ 0.004 (half a level) and
//!   max |diff| ≤ 0.03 (4 levels).
//! - bf16 (8 significant bits, relative step 3.9e-3, 8× coarser): mean ≤ 0.02 (2.5 levels) and
//!   max ≤ 0.15 (19 levels).
//!
//! The mean is the signal (it moves with every pixel); the max is set by the few pixels where
//! tanh is steep. Measured with candle's CPU f16/bf16 (`genrep check --device cpu`): BigGAN fixture
//! f16 max 0.0015 / mean 0.00026, bf16 max 0.015 / mean 0.0024; embedded f16 max 0.0088 / mean
//! 0.00016, bf16 max 0.055 / mean 0.0011. The bounds leave ≥ 2.7× on the max and ≥ 8× on the
//! mean for a different accumulation order on a GPU, and still catch a wrong kernel (errors of
//! that kind are of order 0.1–1 on the mean).

use super::{dtype_name, guarded, CheckOptions};
use crate::format::npy::NpyArray;
use crate::generator::{load_model_dir, BigGanDeep, ClassInput, Knobs, NoiseMode, StyleGan2};
use candle_core::{DType, Device};
use serde_json::{json, Value};
use std::path::Path;

/// The embedded generator's reference batch (z, y, images computed by PyTorch on the CPU).
const EMBEDDED_REFERENCE: &[u8] =
    include_bytes!("../../models/mnist-cdcgan/reference_batch.safetensors");

/// Differences of `got` against `want`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diff {
    pub max_abs: f32,
    pub mean_abs: f32,
    /// max |diff| / max |want|
    pub max_rel: f32,
}

impl Diff {
    pub fn of(got: &[f32], want: &[f32]) -> Self {
        assert_eq!(got.len(), want.len(), "compared arrays differ in length");
        let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (mut max_abs, mut sum) = (0f32, 0f64);
        for (a, b) in got.iter().zip(want) {
            // NaN must fail the check, not vanish in `max`.
            let d = if a.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            };
            max_abs = max_abs.max(d);
            sum += d as f64;
        }
        Self {
            max_abs,
            mean_abs: (sum / want.len().max(1) as f64) as f32,
            max_rel: max_abs / max_ref.max(f32::MIN_POSITIVE),
        }
    }

    /// The worse of two comparisons, field by field.
    fn worst(self, o: Self) -> Self {
        Self {
            max_abs: self.max_abs.max(o.max_abs),
            mean_abs: self.mean_abs.max(o.mean_abs),
            max_rel: self.max_rel.max(o.max_rel),
        }
    }
}

/// The bounds a dtype must meet (see the module doc for the reasoning).
#[derive(Debug, Clone, Copy)]
pub enum Tolerance {
    Relative(f32),
    Absolute { max: f32, mean: f32 },
}

impl Tolerance {
    pub fn for_dtype(d: DType) -> Self {
        match d {
            DType::F16 => Self::Absolute {
                max: 0.03,
                mean: 0.004,
            },
            DType::BF16 => Self::Absolute {
                max: 0.15,
                mean: 0.02,
            },
            _ => Self::Relative(1e-4),
        }
    }

    /// For outputs no tanh bounds (StyleGAN2's images reach ±10 on the fixture): relative to
    /// max |ref| in every dtype, 4× the CPU's measured f16/bf16 errors (2.3e-3, 1.2e-2).
    pub fn relative_for_dtype(d: DType) -> Self {
        match d {
            DType::F16 => Self::Relative(1e-2),
            DType::BF16 => Self::Relative(5e-2),
            _ => Self::Relative(1e-4),
        }
    }

    pub fn holds(&self, d: &Diff) -> bool {
        match *self {
            Self::Relative(r) => d.max_rel <= r,
            Self::Absolute { max, mean } => d.max_abs <= max && d.mean_abs <= mean,
        }
    }

    fn json(&self) -> Value {
        match *self {
            Self::Relative(r) => json!({ "max_rel": r }),
            Self::Absolute { max, mean } => json!({ "max_abs": max, "mean_abs": mean }),
        }
    }
}

fn entry(d: DType, r: Result<Diff, String>) -> Value {
    entry_with(Tolerance::for_dtype(d), d, r)
}

fn entry_with(tol: Tolerance, d: DType, r: Result<Diff, String>) -> Value {
    match r {
        Ok(diff) => json!({
            "dtype": dtype_name(d),
            "max_abs": diff.max_abs,
            "mean_abs": diff.mean_abs,
            "max_rel": diff.max_rel,
            "tolerance": tol.json(),
            "pass": tol.holds(&diff),
        }),
        Err(e) => json!({ "dtype": dtype_name(d), "error": e, "pass": false }),
    }
}

fn npy(dir: &Path, name: &str) -> anyhow::Result<NpyArray> {
    let p = dir.join(name);
    let bytes = std::fs::read(&p)
        .map_err(|e| anyhow::anyhow!("cannot read fixture {}: {e}", p.display()))?;
    NpyArray::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

/// The fixture's inputs and reference outputs.
struct BigGanCases {
    z: Vec<f32>,
    /// (classes, truncation, reference images)
    cases: Vec<(ClassInput, f64, Vec<f32>)>,
}

fn biggan_cases(fixtures: &Path) -> anyhow::Result<BigGanCases> {
    let io = fixtures.join("biggan-tiny-io");
    let f32s = |name: &str| -> anyhow::Result<Vec<f32>> {
        npy(&io, name)?
            .to_f32()
            .ok_or_else(|| anyhow::anyhow!("fixture {name} is not a float array"))
    };
    let z = f32s("z.npy")?;
    let ids: Vec<u32> = npy(&io, "class_ids.npy")?
        .to_i64()
        .ok_or_else(|| anyhow::anyhow!("fixture class_ids.npy is not an integer array"))?
        .iter()
        .map(|&v| v as u32)
        .collect();
    let soft = f32s("class_soft.npy")?;
    let mut cases = Vec::new();
    for t in ["1.0", "0.4", "0.47", "0.456"] {
        let tv: f64 = t.parse().expect("literal");
        cases.push((
            ClassInput::Ids(ids.clone()),
            tv,
            f32s(&format!("out_onehot_t{t}.npy"))?,
        ));
        cases.push((
            ClassInput::Soft(soft.clone()),
            tv,
            f32s(&format!("out_soft_t{t}.npy"))?,
        ));
    }
    Ok(BigGanCases { z, cases })
}

/// The soft-class reference covers only the first rows of z (as many as it has images).
fn rows(z: &[f32], classes: &ClassInput, latent_dim: usize, num_classes: usize) -> Vec<f32> {
    let n = match classes {
        ClassInput::Ids(ids) => ids.len(),
        ClassInput::Soft(v) => v.len() / num_classes.max(1),
        ClassInput::None => z.len() / latent_dim,
    };
    z[..n * latent_dim].to_vec()
}

fn biggan(fixtures: &Path, cases: &BigGanCases, device: &Device, d: DType) -> Result<Diff, String> {
    let g = load_model_dir(&fixtures.join("biggan-tiny"), device, d).map_err(|e| e.to_string())?;
    let (dim, nc) = (g.spec().latent_dim, g.spec().num_classes);
    let mut worst: Option<Diff> = None;
    for (classes, t, want) in &cases.cases {
        let out = g
            .generate(
                &rows(&cases.z, classes, dim, nc),
                classes,
                &BigGanDeep::truncation(*t),
            )
            .and_then(|x| Ok(x.flatten_all()?.to_vec1::<f32>()?))
            .map_err(|e| e.to_string())?;
        if out.len() != want.len() {
            return Err(format!(
                "{} values, reference has {}",
                out.len(),
                want.len()
            ));
        }
        let diff = Diff::of(&out, want);
        worst = Some(worst.map_or(diff, |w| w.worst(diff)));
    }
    Ok(worst.expect("the fixture has cases"))
}

/// Reference cases of a fixture folder: (model directory, classes, knobs, reference images).
type Cases = Vec<(&'static str, ClassInput, Knobs, &'static str)>;

/// Runs `cases` from `fixtures/<family>`: z from `<io>/z.npy`, the worst difference.
fn fixture_cases(
    dir: &Path,
    io: &str,
    cases: Cases,
    device: &Device,
    d: DType,
) -> Result<Diff, String> {
    let io = dir.join(io);
    let f32s = |name: &str| -> Result<Vec<f32>, String> {
        npy(&io, name)
            .map_err(|e| e.to_string())?
            .to_f32()
            .ok_or_else(|| format!("fixture {name} is not a float array"))
    };
    let z = f32s("z.npy")?;
    let mut worst: Option<Diff> = None;
    for (model, classes, knobs, want) in cases {
        let g = load_model_dir(&dir.join(model), device, d).map_err(|e| e.to_string())?;
        let out = g
            .generate(&z, &classes, &knobs)
            .and_then(|x| Ok(x.flatten_all()?.to_vec1::<f32>()?))
            .map_err(|e| format!("{model}: {e}"))?;
        let want = f32s(want)?;
        if out.len() != want.len() {
            return Err(format!(
                "{model}: {} values, reference has {}",
                out.len(),
                want.len()
            ));
        }
        let diff = Diff::of(&out, &want);
        worst = Some(worst.map_or(diff, |w| w.worst(diff)));
    }
    Ok(worst.expect("every fixture has cases"))
}

/// StyleGAN2: NVlabs' outputs for the unconditional model (ψ 1 and 0.7, `const` noise) and the
/// conditional one (its one-hot classes).
fn stylegan2(fixtures: &Path, device: &Device, d: DType) -> Result<Diff, String> {
    let dir = fixtures.join("stylegan2");
    let knobs = |psi| StyleGan2::knobs(psi, 0, NoiseMode::Const);
    let unc = fixture_cases(
        &dir,
        "sg2-32-uncond-io",
        vec![
            (
                "sg2-32-uncond",
                ClassInput::None,
                knobs(1.0),
                "img_const_psi1.0.npy",
            ),
            (
                "sg2-32-uncond",
                ClassInput::None,
                knobs(0.7),
                "img_const_psi0.7.npy",
            ),
        ],
        device,
        d,
    )?;
    let c = npy(&dir.join("sg2-16-cond-io"), "c.npy")
        .map_err(|e| e.to_string())?
        .to_f32()
        .ok_or("fixture c.npy is not a float array")?;
    let cond = fixture_cases(
        &dir,
        "sg2-16-cond-io",
        vec![(
            "sg2-16-cond",
            ClassInput::Soft(c),
            knobs(1.0),
            "img_const_psi1.0.npy",
        )],
        device,
        d,
    )?;
    Ok(unc.worst(cond))
}

/// BigBiGAN (BigGAN-PyTorch layout): the conditional model on class ids, and the unconditional
/// conversion (class 0's embedding).
fn bigbigan(fixtures: &Path, device: &Device, d: DType) -> Result<Diff, String> {
    let dir = fixtures.join("bigbigan");
    let ids: Vec<u32> = npy(&dir.join("bbg-32-io"), "class_ids.npy")
        .map_err(|e| e.to_string())?
        .to_i64()
        .ok_or("fixture class_ids.npy is not an integer array")?
        .iter()
        .map(|&v| v as u32)
        .collect();
    fixture_cases(
        &dir,
        "bbg-32-io",
        vec![
            (
                "bbg-32",
                ClassInput::Ids(ids),
                Knobs::default(),
                "img_classes.npy",
            ),
            (
                "bbg-32-uncond",
                ClassInput::None,
                Knobs::default(),
                "img_class0.npy",
            ),
        ],
        device,
        d,
    )
}

fn embedded(device: &Device, d: DType) -> Result<Diff, String> {
    let r = candle_core::safetensors::load_buffer(EMBEDDED_REFERENCE, &Device::Cpu)
        .map_err(|e| e.to_string())?;
    let run = || -> Result<Diff, Box<dyn std::error::Error>> {
        let g = crate::embedded::load(device, d)?;
        let z = r["z"].flatten_all()?.to_vec1::<f32>()?;
        let y: Vec<u32> = r["y"].to_vec1::<i64>()?.iter().map(|&v| v as u32).collect();
        let out = g.generate(&z, &ClassInput::Ids(y), &Knobs::default())?;
        let want = r["images"].flatten_all()?.to_vec1::<f32>()?;
        Ok(Diff::of(&out.flatten_all()?.to_vec1::<f32>()?, &want))
    };
    run().map_err(|e| e.to_string())
}

/// The parity section. Fails only when the fixtures cannot be read.
pub fn run(o: &CheckOptions) -> anyhow::Result<Value> {
    let cases = biggan_cases(&o.fixtures).map_err(|e| {
        anyhow::anyhow!("{e} (--fixtures must name the repository's tests/fixtures folder)")
    })?;
    let big: Vec<Value> = o
        .dtypes
        .iter()
        .map(|&d| entry(d, guarded(|| biggan(&o.fixtures, &cases, &o.device, d))))
        .collect();
    let per_dtype = |f: &dyn Fn(DType) -> Result<Diff, String>| -> Vec<Value> {
        o.dtypes
            .iter()
            .map(|&d| entry(d, guarded(|| f(d))))
            .collect()
    };
    let sg2: Vec<Value> = o
        .dtypes
        .iter()
        .map(|&d| {
            let r = guarded(|| stylegan2(&o.fixtures, &o.device, d));
            entry_with(Tolerance::relative_for_dtype(d), d, r)
        })
        .collect();
    let bbg = per_dtype(&|d| bigbigan(&o.fixtures, &o.device, d));
    let emb = per_dtype(&|d| embedded(&o.device, d));
    let pass = big
        .iter()
        .chain(&sg2)
        .chain(&bbg)
        .chain(&emb)
        .all(|e| e["pass"] == true);
    Ok(json!({
        "pass": pass,
        "reference": "CPU f32 outputs committed in the repository (PyTorch for every generator)",
        "biggan_fixture": big,
        "stylegan2_fixture": sg2,
        "bigbigan_fixture": bbg,
        "embedded": emb,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_fails_every_tolerance() {
        let d = Diff::of(&[0.0, f32::NAN], &[0.0, 0.5]);
        assert!(!Tolerance::for_dtype(DType::F32).holds(&d));
        assert!(!Tolerance::for_dtype(DType::BF16).holds(&d));
    }

    #[test]
    fn tolerances_scale_with_the_dtype() {
        let d = Diff::of(&[0.51, -0.2, 0.0, 0.3], &[0.5, -0.2, 0.0, 0.3]);
        assert!(!Tolerance::for_dtype(DType::F32).holds(&d));
        assert!(Tolerance::for_dtype(DType::F16).holds(&d));
        assert!(Tolerance::for_dtype(DType::BF16).holds(&d));
    }
}
