//! Parity of the BigGAN-PyTorch layout (BigBiGAN's generator) with the reference implementation
//! (`BigGAN.Generator` in eval mode, fp32) on the `bbg-32` fixture: conditional on class ids,
//! BigBiGAN's unconditional use (class 0's shared embedding) through the `--unconditional`
//! conversion, sample 0 alone, and soft class rows; f16/bf16 within stated bounds.

use candle_core::{DType, Device, Tensor};
use genrep::generator::{load_model_dir, ClassInput, Knobs};
use genrep_wire::npy::NpyArray;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bigbigan")
}

fn npy(name: &str) -> NpyArray {
    let p = fixtures().join("bbg-32-io").join(name);
    NpyArray::parse(&std::fs::read(&p).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap()
}

fn f32s(name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = npy(name);
    (a.shape.clone(), a.to_f32().unwrap())
}

fn class_ids() -> Vec<u32> {
    let v = npy("class_ids.npy").to_i64().unwrap();
    v.iter().map(|&c| c as u32).collect()
}

/// max |got − want| / max |want|.
fn rel_err(got: &Tensor, want: &[f32]) -> f32 {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len());
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    d / want.iter().map(|v| v.abs()).fold(0f32, f32::max)
}

/// (conditional ids, unconditional, sample 0 alone) errors of `dtype`.
fn errors(dtype: DType) -> [f32; 3] {
    let (_, z) = f32s("z.npy");
    let knobs = Knobs::default();
    let g = load_model_dir(&fixtures().join("bbg-32"), &Device::Cpu, dtype).unwrap();
    assert_eq!(g.spec().architecture, "biggan-pytorch");
    assert_eq!((g.spec().latent_dim, g.spec().num_classes), (20, 4));
    let img = g
        .generate(&z, &ClassInput::Ids(class_ids()), &knobs)
        .unwrap();
    assert_eq!(img.dims(), [6, 3, 32, 32]);
    let e_cond = rel_err(&img, &f32s("img_classes.npy").1);
    let u = load_model_dir(&fixtures().join("bbg-32-uncond"), &Device::Cpu, dtype).unwrap();
    assert_eq!(u.spec().num_classes, 0);
    let img0 = u.generate(&z, &ClassInput::None, &knobs).unwrap();
    let e_uncond = rel_err(&img0, &f32s("img_class0.npy").1);
    let one = g
        .generate(
            &z[..20],
            &ClassInput::Ids(class_ids()[..1].to_vec()),
            &knobs,
        )
        .unwrap();
    let e_one = rel_err(&one, &f32s("img_classes_batch1.npy").1);
    eprintln!(
        "bbg-32 {dtype:?}: classes {e_cond:.2e}, class 0 {e_uncond:.2e}, batch 1 {e_one:.2e}"
    );
    [e_cond, e_uncond, e_one]
}

#[test]
fn conditional_unconditional_and_batch1_match_the_reference_in_f32() {
    for e in errors(DType::F32) {
        assert!(e <= 1e-5, "{e}");
    }
}

/// Half precision on the CPU: the README's stated bounds.
#[test]
fn half_precision_is_within_its_stated_bounds() {
    for (dtype, bound) in [(DType::F16, 5e-3), (DType::BF16, 3e-2)] {
        for e in errors(dtype) {
            assert!(e <= bound, "{dtype:?}: {e} > {bound}");
        }
    }
}

/// One-hot class rows give what the ids give; the unconditional model refuses classes and the
/// conditional one needs them.
#[test]
fn class_rows_and_class_errors() {
    let (_, z) = f32s("z.npy");
    let knobs = Knobs::default();
    let g = load_model_dir(&fixtures().join("bbg-32"), &Device::Cpu, DType::F32).unwrap();
    let ids = class_ids();
    let mut rows = vec![0f32; ids.len() * 4];
    for (i, &c) in ids.iter().enumerate() {
        rows[i * 4 + c as usize] = 1.0;
    }
    let a = g.generate(&z, &ClassInput::Soft(rows), &knobs).unwrap();
    assert!(rel_err(&a, &f32s("img_classes.npy").1) <= 1e-5);
    let e = g
        .generate(&z, &ClassInput::None, &knobs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("class"), "{e}");
    let u = load_model_dir(&fixtures().join("bbg-32-uncond"), &Device::Cpu, DType::F32).unwrap();
    let e = u
        .generate(&z, &ClassInput::Ids(ids), &knobs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("class"), "{e}");
}
