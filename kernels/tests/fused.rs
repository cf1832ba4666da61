//! The fused element-wise ops and the conv bias against the candle ops they replace, forward and
//! backward.

use candle_core::{Tensor, Var};
use genrep_kernels::fused::{add_skip, scale_shift, upsample_nearest2x};
use genrep_kernels::{conv2d_bias, Conv2d};

mod common;

use common::{max_abs_diff, tensor};

/// Gradients of `sum(f(vars) · r)` for each var.
fn grads(vars: &[&Var], y: &Tensor, seed: u64) -> Vec<Tensor> {
    let r = tensor(y.dims(), seed);
    let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter().map(|v| g.get(v).unwrap().clone()).collect()
}

#[test]
fn upsample_matches_candle_forward_and_backward() {
    for dims in [[2, 3, 4, 5], [1, 1, 1, 1], [3, 2, 7, 3]] {
        let x = Var::from_tensor(&tensor(&dims, 1)).unwrap();
        let ours = upsample_nearest2x(&x).unwrap();
        let theirs = x.upsample_nearest2d(2 * dims[2], 2 * dims[3]).unwrap();
        assert_eq!(max_abs_diff(&ours, &theirs), 0.0, "{dims:?}");
        let g1 = grads(&[&x], &ours, 2);
        let g2 = grads(&[&x], &theirs, 2);
        assert!(max_abs_diff(&g1[0], &g2[0]) < 1e-6, "{dims:?}");
    }
    // Non-contiguous input.
    let x = tensor(&[2, 3, 4, 5], 3).transpose(2, 3).unwrap();
    let theirs = x.contiguous().unwrap().upsample_nearest2d(10, 8).unwrap();
    assert_eq!(max_abs_diff(&upsample_nearest2x(&x).unwrap(), &theirs), 0.0);
}

#[test]
fn scale_shift_matches_composed_ops() {
    let (b, c) = (3, 4);
    for per_sample in [true, false] {
        for relu in [true, false] {
            let x = Var::from_tensor(&tensor(&[b, c, 5, 6], 4)).unwrap();
            let ad: &[usize] = if per_sample { &[b, c] } else { &[c] };
            let a = Var::from_tensor(&tensor(ad, 5)).unwrap();
            let s = Var::from_tensor(&tensor(ad, 6)).unwrap();
            let ours = scale_shift(&x, &a, &s, relu).unwrap();
            let shape = if per_sample {
                (b, c, 1, 1)
            } else {
                (1, c, 1, 1)
            };
            let y = x
                .broadcast_mul(&a.reshape(shape).unwrap())
                .unwrap()
                .broadcast_add(&s.reshape(shape).unwrap())
                .unwrap();
            let theirs = if relu { y.relu().unwrap() } else { y };
            assert_eq!(max_abs_diff(&ours, &theirs), 0.0);
            if per_sample {
                let g1 = grads(&[&x, &a, &s], &ours, 7);
                let g2 = grads(&[&x, &a, &s], &theirs, 7);
                for (i, (p, q)) in g1.iter().zip(&g2).enumerate() {
                    assert!(max_abs_diff(p, q) < 1e-5, "relu {relu}: gradient {i}");
                }
            }
        }
    }
    let e = scale_shift(
        &tensor(&[2, 3, 2, 2], 1),
        &tensor(&[4], 1),
        &tensor(&[3], 1),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("scale has shape [4]"), "{e}");
}

#[test]
fn add_skip_matches_narrow_upsample_add() {
    for (up, cx) in [(false, 4), (false, 8), (true, 4), (true, 8)] {
        let f = if up { 2 } else { 1 };
        let h = Var::from_tensor(&tensor(&[2, 4, 3 * f, 5 * f], 8)).unwrap();
        let x = Var::from_tensor(&tensor(&[2, cx, 3, 5], 9)).unwrap();
        let ours = add_skip(&h, &x, up).unwrap();
        let mut s = x.narrow(1, 0, 4).unwrap();
        if up {
            s = s.upsample_nearest2d(6, 10).unwrap();
        }
        let theirs = (h.as_tensor() + s).unwrap();
        assert_eq!(max_abs_diff(&ours, &theirs), 0.0, "up {up} cx {cx}");
        let g1 = grads(&[&h, &x], &ours, 10);
        let g2 = grads(&[&h, &x], &theirs, 10);
        for (i, (p, q)) in g1.iter().zip(&g2).enumerate() {
            assert!(max_abs_diff(p, q) < 1e-5, "up {up} cx {cx}: gradient {i}");
        }
    }
    let e = add_skip(&tensor(&[2, 4, 6, 6], 1), &tensor(&[2, 2, 3, 3], 1), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot take the skip path"), "{e}");
}

#[test]
fn conv_bias_forward_and_gradient() {
    let x = Var::from_tensor(&tensor(&[3, 4, 6, 6], 11)).unwrap();
    let w = Var::from_tensor(&tensor(&[5, 4, 3, 3], 12)).unwrap();
    let b = Var::from_tensor(&tensor(&[5], 13)).unwrap();
    let ours = conv2d_bias(&x, &w, Some(&b), 2, 1).unwrap();
    let theirs = x
        .conv2d(&w, 1, 2, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap())
        .unwrap();
    assert!(max_abs_diff(&ours, &theirs) < 1e-5);
    let g1 = grads(&[&x, &w, &b], &ours, 14);
    let g2 = grads(&[&x, &w, &b], &theirs, 14);
    for (i, (p, q)) in g1.iter().zip(&g2).enumerate() {
        assert!(max_abs_diff(p, q) < 1e-4, "gradient {i}");
    }
    // The module keeps the first n output channels when narrowed.
    let m = Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), 1, 1)
        .narrow_out(2)
        .unwrap();
    use candle_core::Module;
    let y = m.forward(&x).unwrap();
    let full = conv2d_bias(&x, &w, Some(&b), 1, 1).unwrap();
    assert_eq!(max_abs_diff(&y, &full.narrow(1, 0, 2).unwrap()), 0.0);
    let e = conv2d_bias(&x, &w, Some(&tensor(&[4], 1)), 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias has shape [4]"), "{e}");
}

/// The fused StyleGAN2 epilogue equals the composed candle ops (with and without noise, per-
/// sample and shared noise, with and without clamp).
#[test]
fn modulated_epilogue_matches_composed_ops() {
    use candle_core::{DType, Device, Tensor};
    let dev = Device::Cpu;
    let (b, c, h, w) = (2, 3, 4, 5);
    let y = Tensor::randn(0f32, 2.0, (b, c, h, w), &dev).unwrap();
    let d = Tensor::randn(1f32, 0.3, (b, c), &dev).unwrap();
    let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
    for noise in [None, Some((1, 0.7f32)), Some((b, 0.3))] {
        let n = noise.map(|(nb, s)| {
            (Tensor::randn(0f32, 1.0, (nb, h * w), &dev).unwrap() * s as f64).unwrap()
        });
        for clamp in [None, Some(1.5)] {
            let got =
                genrep_kernels::fused::modulated_epilogue(&y, &d, n.as_ref(), &bias, 1.41, clamp)
                    .unwrap();
            // The composed reference: the same op on f64 (off the f32 CPU path).
            let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let want = genrep_kernels::fused::modulated_epilogue(
                &f(&y),
                &f(&d),
                n.as_ref().map(f).as_ref(),
                &f(&bias),
                1.41,
                clamp,
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-5, "{noise:?} {clamp:?}: {err}");
        }
    }
}

/// The interleaving epilogue of a polyphase up-sampling conv equals interleaving first.
#[test]
fn modulated_epilogue_up_interleaves_the_phases() {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let (b, c, h, w) = (2, 3, 4, 5);
    let y = Tensor::randn(0f32, 2.0, (b, 4 * c, h, w), &dev).unwrap();
    let d = Tensor::randn(1f32, 0.3, (b, c), &dev).unwrap();
    let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
    let inter = y
        .reshape((b, 2, 2, c, h, w))
        .unwrap()
        .permute((0, 3, 4, 1, 5, 2))
        .unwrap()
        .reshape((b, c, 2 * h, 2 * w))
        .unwrap();
    for nb in [0, 1, b] {
        let n = (nb > 0).then(|| Tensor::randn(0f32, 1.0, (nb, 4 * h * w), &dev).unwrap());
        let got = genrep_kernels::fused::modulated_epilogue_up(
            &y,
            &d,
            n.as_ref(),
            &bias,
            1.41,
            Some(2.0),
        )
        .unwrap();
        let want = genrep_kernels::fused::modulated_epilogue(
            &inter,
            &d,
            n.as_ref(),
            &bias,
            1.41,
            Some(2.0),
        )
        .unwrap();
        assert_eq!(got.dims(), [b, c, 2 * h, 2 * w]);
        let err = max_abs_diff(&got, &want);
        assert_eq!(err, 0.0, "noise batch {nb}");
    }
}

/// The filtering epilogue of a transposed up-sampling conv equals the FIR composed from candle
/// ops (in f64, off the fused path), then the plain epilogue; and the FIR itself is the 4×4
/// filter with a zero border.
#[test]
fn modulated_epilogue_fir_up_filters_then_applies_the_epilogue() {
    use candle_core::{DType, Device, Tensor};
    use genrep_kernels::fused::{modulated_epilogue, modulated_epilogue_fir_up};
    let dev = Device::Cpu;
    let fir = [0.25f32, 0.75, 0.75, 0.25];
    for (b, c, h, w) in [(2, 3, 4, 5), (1, 2, 1, 1), (2, 1, 3, 2), (1, 4, 16, 16)] {
        let (th, tw) = (2 * h + 1, 2 * w + 1);
        let y = Tensor::randn(0f32, 2.0, (b, c, th, tw), &dev).unwrap();
        let d = Tensor::randn(1f32, 0.3, (b, c), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        // The 4×4 filter by definition, on the host.
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let mut filtered = vec![0f32; b * c * 4 * h * w];
        for p in 0..b * c {
            for oy in 0..2 * h {
                for ox in 0..2 * w {
                    let mut acc = 0f64;
                    for (py, &fy) in fir.iter().enumerate() {
                        for (px, &fx) in fir.iter().enumerate() {
                            let (iy, ix) = (oy + py, ox + px);
                            if (1..=th).contains(&iy) && (1..=tw).contains(&ix) {
                                let v = yv[(p * th + iy - 1) * tw + ix - 1];
                                acc += (fy * fx * v) as f64;
                            }
                        }
                    }
                    filtered[(p * 2 * h + oy) * 2 * w + ox] = acc as f32;
                }
            }
        }
        let filtered = Tensor::from_vec(filtered, (b, c, 2 * h, 2 * w), &dev).unwrap();
        for nb in [0, 1, b] {
            let n = (nb > 0).then(|| Tensor::randn(0f32, 1.0, (nb, 4 * h * w), &dev).unwrap());
            let want =
                modulated_epilogue(&filtered, &d, n.as_ref(), &bias, 1.41, Some(2.0)).unwrap();
            let got =
                modulated_epilogue_fir_up(&y, fir, &d, n.as_ref(), &bias, 1.41, Some(2.0)).unwrap();
            assert_eq!(got.dims(), [b, c, 2 * h, 2 * w]);
            assert!(
                max_abs_diff(&got, &want) < 1e-5,
                "{:?} noise {nb}",
                (b, c, h, w)
            );
            // The composed form (f64, off the fused path) agrees.
            let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let composed = modulated_epilogue_fir_up(
                &f(&y),
                fir,
                &f(&d),
                n.as_ref().map(f).as_ref(),
                &f(&bias),
                1.41,
                Some(2.0),
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
            assert!(
                max_abs_diff(&composed, &want) < 1e-5,
                "{:?} composed",
                (b, c, h, w)
            );
        }
    }
    let even = Tensor::zeros((1, 1, 4, 5), DType::F32, &dev).unwrap();
    let d = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
    let bias = Tensor::zeros(1, DType::F32, &dev).unwrap();
    let e = modulated_epilogue_fir_up(&even, fir, &d, None, &bias, 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("odd-sized"), "{e}");
}

/// A 1×1 input (no 2×2 output) is refused with a message, not a panic.
#[test]
fn modulated_epilogue_fir_up_refuses_a_one_pixel_input() {
    use candle_core::{DType, Device, Tensor};
    let dev = Device::Cpu;
    let y = Tensor::zeros((1, 1, 1, 1), DType::F32, &dev).unwrap();
    let d = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
    let bias = Tensor::zeros(1, DType::F32, &dev).unwrap();
    let fir = [0.25f32, 0.75, 0.75, 0.25];
    let e = genrep_kernels::fused::modulated_epilogue_fir_up(&y, fir, &d, None, &bias, 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least"), "{e}");
}
