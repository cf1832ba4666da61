//! StyleGAN2 parity with NVlabs' own `Generator` (stylegan2-ada-pytorch, fp32) on the reference
//! fixtures: the converted model directories (from the NVlabs pickle and, for the unconditional
//! one, from rosinality's `.pt`) and that `.pt` read in place reproduce the mapping (`ws` for ψ 1.0/0.7, with and without
//! cutoff) and the synthesis (`const` and `none` noise, batch 6 and batch 1).

use candle_core::{DType, Device, Tensor};
use genrep::generator::{
    load_model, load_model_dir, ClassInput, Knobs, NoiseMode, Space, StyleGan2,
};
use genrep_wire::npy::NpyArray;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stylegan2")
}

fn npy(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let a = NpyArray::parse(&bytes).unwrap();
    (a.shape.clone(), a.to_f32().unwrap())
}

fn tensor(dir: &Path, name: &str) -> Tensor {
    let (shape, v) = npy(dir, name);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |got − want| / max |want|.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let max = |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let d = max((got - want).unwrap()).to_scalar::<f32>().unwrap();
    d / max(want.clone()).to_scalar::<f32>().unwrap()
}

struct Case {
    name: &'static str,
    psi: f64,
    cutoff: u64,
}

const CASES: [Case; 4] = [
    Case {
        name: "psi1.0",
        psi: 1.0,
        cutoff: 0,
    },
    Case {
        name: "psi1.0_cut2",
        psi: 1.0,
        cutoff: 2,
    },
    Case {
        name: "psi0.7",
        psi: 0.7,
        cutoff: 0,
    },
    Case {
        name: "psi0.7_cut2",
        psi: 0.7,
        cutoff: 2,
    },
];

/// Runs every case of `io` on `model`; returns the worst (mapping, synthesis, z → image) errors.
fn check(model: &str, io: &str, classes: impl Fn(&Path) -> ClassInput, dtype: DType) -> [f32; 3] {
    let dir = fixtures().join(model);
    let io = fixtures().join(io);
    let g = load_model(&dir, &Device::Cpu, dtype).unwrap();
    assert_eq!(g.spec().architecture, "stylegan2");
    let z = tensor(&io, "z.npy").to_dtype(dtype).unwrap();
    let c = classes(&io);
    let mut worst = [0f32; 3];
    for case in CASES {
        for mode in [NoiseMode::Const, NoiseMode::None] {
            let knobs = StyleGan2::knobs(case.psi, case.cutoff, mode);
            let ws = g.map(&z, &c, &knobs, Space::W).unwrap();
            let ws_ref = tensor(&io, &format!("ws_{}.npy", case.name));
            let e_map = rel_err(&ws.to_dtype(DType::F32).unwrap(), &ws_ref);
            let mode_name = if mode == NoiseMode::Const {
                "const"
            } else {
                "none"
            };
            let img_ref = tensor(&io, &format!("img_{mode_name}_{}.npy", case.name));
            let img = g
                .synthesize(&ws_ref.to_dtype(dtype).unwrap(), Space::W, &c, &knobs, &[])
                .unwrap();
            let e_syn = rel_err(&img, &img_ref);
            let (_, zv) = npy(&io, "z.npy");
            let full = g.generate(&zv, &c, &knobs).unwrap();
            let e_full = rel_err(&full, &img_ref);
            eprintln!(
                "{model} {:?} {} {mode_name}: mapping {e_map:.2e}, synthesis {e_syn:.2e}, z→image {e_full:.2e}",
                dtype, case.name
            );
            for (w, e) in worst.iter_mut().zip([e_map, e_syn, e_full]) {
                *w = w.max(e);
            }
        }
    }
    // Batch 1 (NVlabs' fused path) agrees with our batched form too.
    let ws1 = tensor(&io, "ws_psi1.0.npy").narrow(0, 0, 1).unwrap();
    let c1 = match &c {
        ClassInput::None => ClassInput::None,
        ClassInput::Ids(v) => ClassInput::Ids(v[..1].to_vec()),
        ClassInput::Soft(v) => ClassInput::Soft(v[..g.spec().num_classes].to_vec()),
    };
    let knobs = StyleGan2::knobs(1.0, 0, NoiseMode::Const);
    let img = g
        .synthesize(&ws1.to_dtype(dtype).unwrap(), Space::W, &c1, &knobs, &[])
        .unwrap();
    let e = rel_err(&img, &tensor(&io, "img_const_psi1.0_batch1.npy"));
    eprintln!("{model} {dtype:?} batch 1: synthesis {e:.2e}");
    worst[1] = worst[1].max(e);
    worst
}

fn unconditional(_: &Path) -> ClassInput {
    ClassInput::None
}

/// The one-hot rows of `c.npy` as class ids.
fn class_ids(io: &Path) -> ClassInput {
    let (shape, v) = npy(io, "c.npy");
    let k = shape[1];
    ClassInput::Ids(
        v.chunks(k)
            .map(|r| r.iter().position(|&x| x == 1.0).unwrap() as u32)
            .collect(),
    )
}

fn class_rows(io: &Path) -> ClassInput {
    ClassInput::Soft(npy(io, "c.npy").1)
}

#[test]
fn nvlabs_pickle_conversion_matches_the_reference_in_f32() {
    let [m, s, f] = check(
        "sg2-32-uncond",
        "sg2-32-uncond-io",
        unconditional,
        DType::F32,
    );
    assert!(m <= 1e-5 && s <= 1e-5 && f <= 1e-5, "{m} {s} {f}");
}

#[test]
fn rosinality_conversion_matches_the_reference_in_f32() {
    let [m, s, f] = check(
        "sg2-32-uncond-rosinality",
        "sg2-32-uncond-io",
        unconditional,
        DType::F32,
    );
    assert!(m <= 1e-5 && s <= 1e-5 && f <= 1e-5, "{m} {s} {f}");
}

/// rosinality's `.pt` served in place (`--model file.pt`): the reference's outputs, and exactly
/// what its converted directory gives.
#[test]
fn rosinality_checkpoint_read_in_place_matches_the_reference_and_its_conversion() {
    let pt = "../stylegan2-pt/sg2-32-uncond.pt";
    let [m, s, f] = check(pt, "sg2-32-uncond-io", unconditional, DType::F32);
    assert!(m <= 1e-5 && s <= 1e-5 && f <= 1e-5, "{m} {s} {f}");
    let io = fixtures().join("sg2-32-uncond-io");
    let (_, z) = npy(&io, "z.npy");
    let run = |path: PathBuf| {
        let g = load_model(&path, &Device::Cpu, DType::F32).unwrap();
        g.generate(&z, &unconditional(&io), &Knobs::default())
            .unwrap()
    };
    let a = run(fixtures().join(pt));
    let b = run(fixtures().join("sg2-32-uncond-rosinality"));
    assert_eq!(rel_err(&a, &b), 0.0);
}

/// A `.pt` without `latent_avg` (what rosinality's `train.py` saves) loads with `w_avg`
/// estimated from the mapping: at ψ = 1 (which does not read it) the images are the reference's;
/// at ψ = 0.7 they move towards the estimate, and the same on every load.
#[test]
fn rosinality_checkpoint_without_latent_avg_estimates_it() {
    let io = fixtures().join("sg2-32-uncond-io");
    let (_, z) = npy(&io, "z.npy");
    let path = fixtures().join("../stylegan2-pt/sg2-32-uncond-no-latent-avg.pt");
    let g = load_model(&path, &Device::Cpu, DType::F32).unwrap();
    let run = |psi| {
        g.generate(
            &z,
            &ClassInput::None,
            &StyleGan2::knobs(psi, 0, NoiseMode::Const),
        )
        .unwrap()
    };
    let e = rel_err(&run(1.0), &tensor(&io, "img_const_psi1.0.npy"));
    assert!(e <= 1e-5, "{e}");
    let (a, b) = (run(0.7), run(1.0));
    assert!(rel_err(&a, &b) > 1e-3, "ψ = 0.7 must move the images");
    let again = load_model(&path, &Device::Cpu, DType::F32).unwrap();
    let c = again
        .generate(
            &z,
            &ClassInput::None,
            &StyleGan2::knobs(0.7, 0, NoiseMode::Const),
        )
        .unwrap();
    assert_eq!(rel_err(&a, &c), 0.0, "the estimate is seeded");
}

#[test]
fn conditional_model_matches_with_ids_and_with_class_rows() {
    for classes in [class_ids as fn(&Path) -> ClassInput, class_rows] {
        let [m, s, f] = check("sg2-16-cond", "sg2-16-cond-io", classes, DType::F32);
        assert!(m <= 1e-5 && s <= 1e-5 && f <= 1e-5, "{m} {s} {f}");
    }
}

/// Half precision on the CPU: within the bounds the README states (the mapping's 8 layers and
/// the demodulation are where the rounding accumulates).
#[test]
fn half_precision_is_within_its_stated_bounds() {
    for (dtype, bound) in [(DType::F16, 5e-3), (DType::BF16, 3e-2)] {
        let [m, s, f] = check("sg2-32-uncond", "sg2-32-uncond-io", unconditional, dtype);
        assert!(
            m <= bound && s <= bound && f <= bound,
            "{dtype:?}: {m} {s} {f}"
        );
    }
}

/// Knobs out of range are refused, naming the knob.
#[test]
fn bad_knobs_are_named() {
    let g = load_model_dir(&fixtures().join("sg2-32-uncond"), &Device::Cpu, DType::F32).unwrap();
    let z = vec![0.1f32; 32];
    let e = g
        .generate(
            &z,
            &ClassInput::None,
            &StyleGan2::knobs(3.0, 0, NoiseMode::Const),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("gen_truncation"), "{e}");
    let e = g
        .generate(&z, &ClassInput::Ids(vec![0]), &Knobs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unconditional"), "{e}");
}
