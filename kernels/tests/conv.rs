//! `genrep_kernels::conv2d` against candle's own `conv2d`, forward and backward, on a table of
//! shapes, plus a finite-difference check of both gradients on a tiny case.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use genrep_kernels::{conv2d, Conv2d};

mod common;

use common::{data, rel_err, tensor};

/// (batch, cin, h, w, cout, k, stride, padding)
const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 3, 8, 8, 5, 3, 1, 1),
    (3, 3, 8, 8, 5, 3, 1, 1),
    (2, 7, 9, 11, 6, 3, 1, 1),
    (3, 5, 9, 9, 7, 3, 2, 1),
    (2, 4, 10, 10, 6, 3, 2, 0),
    (5, 4, 7, 7, 3, 3, 1, 0),
    (1, 16, 4, 4, 8, 1, 1, 0),
    (3, 9, 6, 6, 5, 1, 1, 0),
    (3, 9, 7, 7, 5, 1, 2, 0),
    (2, 6, 5, 5, 4, 1, 1, 1),
    (1, 1, 28, 28, 16, 3, 1, 1),
    (17, 8, 7, 7, 16, 3, 1, 1),
    (9, 16, 14, 14, 32, 3, 2, 1),
    (33, 12, 7, 7, 12, 1, 2, 0),
    (2, 3, 6, 6, 4, 5, 1, 2),
    (40, 4, 3, 3, 6, 3, 1, 1),
    (2, 2, 1, 1, 3, 3, 1, 1),
    // Enough groups of images to run groups in parallel, with a short last group.
    (64, 3, 14, 14, 4, 3, 1, 1),
    (70, 5, 9, 9, 6, 3, 2, 1),
    (45, 6, 8, 8, 5, 1, 1, 0),
    // Kernels wider than the padded input row: some taps read only padding.
    (1, 1, 3, 3, 2, 5, 1, 2),
    (2, 2, 2, 2, 3, 7, 1, 3),
    (2, 3, 1, 1, 2, 5, 2, 2),
    // Large images: the forward pass goes band by band, with a short last band.
    (2, 32, 40, 40, 8, 3, 1, 1),
    (1, 40, 70, 66, 6, 3, 2, 1),
];

#[test]
fn forward_matches_candle_on_a_table_of_shapes() {
    for (i, &(b, cin, h, w, cout, k, s, p)) in SHAPES.iter().enumerate() {
        let x = tensor(&[b, cin, h, w], i as u64);
        let wt = tensor(&[cout, cin, k, k], 100 + i as u64);
        let ours = conv2d(&x, &wt, s, p).unwrap();
        let theirs = x.conv2d(&wt, p, s, 1, 1).unwrap();
        let e = rel_err(&ours, &theirs);
        assert!(e < 1e-5, "shape {:?}: relative error {e}", SHAPES[i]);
    }
}

/// The banded forward adds the bias in every band, and a batch gives each image what it gets
/// alone.
#[test]
fn banded_forward_adds_bias_and_does_not_depend_on_the_batch() {
    let x = tensor(&[3, 32, 40, 40], 1);
    let wt = tensor(&[8, 32, 3, 3], 2);
    let b = tensor(&[8], 3);
    let ours = genrep_kernels::conv2d_bias(&x, &wt, Some(&b), 1, 1).unwrap();
    let theirs = x
        .conv2d(&wt, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 8, 1, 1)).unwrap())
        .unwrap();
    assert!(rel_err(&ours, &theirs) < 1e-5);
    let alone =
        genrep_kernels::conv2d_bias(&x.narrow(0, 1, 1).unwrap(), &wt, Some(&b), 1, 1).unwrap();
    let diff = (ours.narrow(0, 1, 1).unwrap() - alone)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

/// `conv_transpose2d` against candle's, at strides 1–3, odd and even sizes.
#[test]
fn conv_transpose_matches_candle() {
    for (i, (b, cin, h, w, cout, k, s)) in [
        (2, 3, 5, 6, 4, 3, 2),
        (1, 6, 8, 8, 5, 3, 2),
        (3, 2, 4, 3, 3, 3, 1),
        (2, 4, 3, 5, 2, 4, 3),
        (1, 40, 33, 33, 24, 3, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let x = tensor(&[b, cin, h, w], 50 + i as u64);
        let wt = tensor(&[cin, cout, k, k], 60 + i as u64);
        let ours = genrep_kernels::conv_transpose2d(&x, &wt, s).unwrap();
        let theirs = x.conv_transpose2d(&wt, 0, 0, s, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let e = rel_err(&ours, &theirs);
        assert!(e < 1e-5, "case {i}: relative error {e}");
        // f16 computes in f32 and rounds back.
        let half = genrep_kernels::conv_transpose2d(
            &x.to_dtype(DType::F16).unwrap(),
            &wt.to_dtype(DType::F16).unwrap(),
            s,
        )
        .unwrap();
        assert_eq!(half.dtype(), DType::F16);
        assert!(rel_err(&half.to_dtype(DType::F32).unwrap(), &theirs) < 1e-2);
    }
    let e =
        genrep_kernels::conv_transpose2d(&tensor(&[1, 3, 4, 4], 1), &tensor(&[4, 2, 3, 3], 2), 2)
            .unwrap_err()
            .to_string();
    assert!(e.contains("3 channels") && e.contains("expects 4"), "{e}");
    let e =
        genrep_kernels::conv_transpose2d(&tensor(&[1, 3, 4, 4], 1), &tensor(&[3, 2, 3, 3], 2), 0)
            .unwrap_err()
            .to_string();
    assert!(e.contains("stride"), "{e}");
}

#[test]
fn forward_accepts_non_contiguous_and_offset_inputs() {
    // A transposed view (non-contiguous) and a narrowed batch (contiguous with an offset).
    let base = tensor(&[4, 3, 9, 9], 7);
    let wt = tensor(&[5, 3, 3, 3], 8);
    let xt = base.transpose(2, 3).unwrap();
    assert!(!xt.is_contiguous());
    let e = rel_err(
        &conv2d(&xt, &wt, 1, 1).unwrap(),
        &xt.contiguous().unwrap().conv2d(&wt, 1, 1, 1, 1).unwrap(),
    );
    assert!(e < 1e-5, "transposed input: {e}");
    let xn = base.narrow(0, 1, 2).unwrap();
    let e = rel_err(
        &conv2d(&xn, &wt, 2, 1).unwrap(),
        &xn.conv2d(&wt, 1, 2, 1, 1).unwrap(),
    );
    assert!(e < 1e-5, "narrowed input: {e}");
    // A non-contiguous kernel too.
    let wbig = tensor(&[3, 5, 3, 3], 9);
    let wt2 = wbig.transpose(0, 1).unwrap();
    let x = tensor(&[2, 3, 6, 6], 10);
    let e = rel_err(
        &conv2d(&x, &wt2, 1, 1).unwrap(),
        &x.conv2d(&wt2.contiguous().unwrap(), 1, 1, 1, 1).unwrap(),
    );
    assert!(e < 1e-5, "transposed kernel: {e}");
}

/// Loss with a non-uniform upstream gradient: sum(conv(x, w) · r) for a fixed random `r`.
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let r = tensor(y.dims(), seed);
    (y * r).unwrap().sum_all().unwrap()
}

#[test]
fn gradients_match_candle_backward() {
    for (i, &(b, cin, h, w, cout, k, s, p)) in SHAPES.iter().enumerate() {
        let x = Var::from_tensor(&tensor(&[b, cin, h, w], i as u64)).unwrap();
        let wt = Var::from_tensor(&tensor(&[cout, cin, k, k], 100 + i as u64)).unwrap();
        let ours = weighted_sum(&conv2d(&x, &wt, s, p).unwrap(), 200 + i as u64);
        let g_ours = ours.backward().unwrap();
        let theirs = weighted_sum(&x.conv2d(&wt, p, s, 1, 1).unwrap(), 200 + i as u64);
        let g_theirs = theirs.backward().unwrap();
        for (name, v) in [("input", &x), ("kernel", &wt)] {
            let a = g_ours.get(v).unwrap();
            let b = g_theirs.get(v).unwrap();
            let e = rel_err(a, b);
            assert!(
                e < 1e-4,
                "shape {:?}: {name} gradient relative error {e}",
                SHAPES[i]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    // f64 would hide nothing here: the op is f32, so use a step large enough for f32 and a
    // tolerance that still catches a wrong index (which gives O(1) errors).
    for &(s, p) in &[(1usize, 1usize), (2, 1), (1, 0)] {
        let x0 = data(2 * 2 * 5 * 5, 1 + s as u64);
        let w0 = data(3 * 2 * 3 * 3, 2 + p as u64);
        let r = tensor(&[2, 3, (5 + 2 * p - 3) / s + 1, (5 + 2 * p - 3) / s + 1], 3);
        let loss = |xv: &[f32], wv: &[f32]| -> f32 {
            let x = Tensor::from_slice(xv, (2, 2, 5, 5), &Device::Cpu).unwrap();
            let w = Tensor::from_slice(wv, (3, 2, 3, 3), &Device::Cpu).unwrap();
            (conv2d(&x, &w, s, p).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let xv = Var::from_slice(&x0, (2, 2, 5, 5), &Device::Cpu).unwrap();
        let wv = Var::from_slice(&w0, (3, 2, 3, 3), &Device::Cpu).unwrap();
        let l = (conv2d(&xv, &wv, s, p).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = l.backward().unwrap();
        let gx = g
            .get(&xv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gw = g
            .get(&wv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let h = 1e-2f32;
        for i in 0..x0.len() {
            let (mut a, mut b) = (x0.clone(), x0.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&a, &w0) - loss(&b, &w0)) / (2.0 * h);
            assert!(
                (fd - gx[i]).abs() < 2e-3,
                "s{s} p{p} dx[{i}]: fd {fd} vs {}",
                gx[i]
            );
        }
        for i in 0..w0.len() {
            let (mut a, mut b) = (w0.clone(), w0.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (loss(&x0, &a) - loss(&x0, &b)) / (2.0 * h);
            assert!(
                (fd - gw[i]).abs() < 2e-3,
                "s{s} p{p} dw[{i}]: fd {fd} vs {}",
                gw[i]
            );
        }
    }
}

#[test]
fn module_adds_bias_and_half_precision_rounds_back() {
    let x = tensor(&[2, 3, 6, 6], 11);
    let w = tensor(&[4, 3, 3, 3], 12);
    let b = tensor(&[4], 13);
    let layer = Conv2d::new(w.clone(), Some(b.clone()), 1, 1);
    let ours = layer.forward(&x).unwrap();
    let theirs = x
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    assert!(rel_err(&ours, &theirs) < 1e-5);
    let y16 = conv2d(
        &x.to_dtype(DType::BF16).unwrap(),
        &w.to_dtype(DType::BF16).unwrap(),
        1,
        1,
    )
    .unwrap();
    assert_eq!(y16.dtype(), DType::BF16);
    let e = rel_err(
        &y16.to_dtype(DType::F32).unwrap(),
        &x.conv2d(&w, 1, 1, 1, 1).unwrap(),
    );
    assert!(e < 2e-2, "bf16: {e}");
    // The bias broadcasts per channel: the mean over space of (with − without) is the bias.
    let nob = Conv2d::new(w, None, 1, 1).forward(&x).unwrap();
    let d = (ours - nob)
        .unwrap()
        .mean(D::Minus1)
        .unwrap()
        .mean(D::Minus1)
        .unwrap()
        .mean(0)
        .unwrap();
    assert!(rel_err(&d, &b) < 1e-5);
}

#[test]
fn bad_shapes_are_named_errors() {
    let x = tensor(&[2, 3, 6, 6], 1);
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(conv2d(&x, &tensor(&[4, 2, 3, 3], 2), 1, 1)).contains("3 channels"));
    assert!(msg(conv2d(&x, &tensor(&[4, 3, 9, 9], 2), 1, 0)).contains("does not fit"));
    assert!(msg(conv2d(&x, &tensor(&[4, 3, 3, 3], 2), 0, 1)).contains("stride"));
    assert!(msg(conv2d(
        &x.flatten_all().unwrap(),
        &tensor(&[4, 3, 3, 3], 2),
        1,
        1
    ))
    .contains("[B, C, H, W]"));
    let xf64 = x.to_dtype(DType::F64).unwrap();
    assert!(msg(conv2d(&xf64, &tensor(&[4, 3, 3, 3], 2), 1, 1)).contains("dtype"));
}
