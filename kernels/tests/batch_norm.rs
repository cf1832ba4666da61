//! `genrep_kernels::BatchNorm2d` against `candle_nn::BatchNorm` (training and evaluation mode,
//! with and without the fused ReLU): outputs, gradients of input, weight and bias, and the
//! running statistics.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder, VarMap};
use genrep_kernels::BatchNorm2d;

mod common;

use common::rel_err as max_rel;

fn tensor(dims: &[usize], seed: u64, scale: f32, shift: f32) -> Tensor {
    ((common::tensor(dims, seed) * scale as f64).unwrap() + shift as f64).unwrap()
}

/// Both layers over the same initial values: ours and candle_nn's, each in its own VarMap.
fn pair(c: usize, seed: u64) -> (BatchNorm2d, VarMap, BatchNorm, VarMap) {
    let init = |vm: &VarMap| {
        let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
        let _ = vb
            .get_with_hints(c, "weight", candle_nn::Init::Const(1.))
            .unwrap();
        let data = vm.data().lock().unwrap();
        data["weight"].set(&tensor(&[c], seed, 0.5, 1.0)).unwrap();
        drop(data);
        let _ = vb
            .get_with_hints(c, "bias", candle_nn::Init::Const(0.))
            .unwrap();
        let data = vm.data().lock().unwrap();
        data["bias"].set(&tensor(&[c], seed + 1, 0.5, 0.0)).unwrap();
    };
    let (vm1, vm2) = (VarMap::new(), VarMap::new());
    init(&vm1);
    init(&vm2);
    let ours = BatchNorm2d::load(
        c,
        1e-5,
        0.1,
        VarBuilder::from_varmap(&vm1, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let cfg = BatchNormConfig {
        eps: 1e-5,
        remove_mean: true,
        affine: true,
        momentum: 0.1,
    };
    let theirs = candle_nn::batch_norm(
        c,
        cfg,
        VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (ours, vm1, theirs, vm2)
}

#[test]
fn training_mode_matches_candle_nn_with_and_without_relu() {
    for (case, &(b, c, h, w)) in [
        (4usize, 3usize, 5usize, 7usize),
        (9, 16, 7, 7),
        (3, 5, 1, 2),
        (64, 8, 14, 14),
    ]
    .iter()
    .enumerate()
    {
        for relu in [false, true] {
            let (ours, vm1, theirs, vm2) = pair(c, 10 + case as u64);
            // An offset mean makes the variance computation's cancellation visible.
            let x = Var::from_tensor(&tensor(&[b, c, h, w], case as u64, 2.0, 3.0)).unwrap();
            let r = tensor(&[b, c, h, w], 99, 1.0, 0.0);
            let y1 = if relu {
                ours.forward_relu_t(&x, true).unwrap()
            } else {
                ours.forward_t(&x, true).unwrap()
            };
            let y2 = theirs.forward_t(&x, true).unwrap();
            let y2 = if relu { y2.relu().unwrap() } else { y2 };
            assert!(max_rel(&y1, &y2) < 1e-5, "case {case} relu {relu}: output");
            let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let e = max_rel(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert!(e < 1e-4, "case {case} relu {relu}: input gradient {e}");
            for name in ["weight", "bias"] {
                let v1 = vm1.data().lock().unwrap()[name].clone();
                let v2 = vm2.data().lock().unwrap()[name].clone();
                let e = max_rel(g1.get(&v1).unwrap(), g2.get(&v2).unwrap());
                assert!(e < 1e-4, "case {case} relu {relu}: {name} gradient {e}");
            }
            for name in ["running_mean", "running_var"] {
                let v1 = vm1.data().lock().unwrap()[name].as_tensor().clone();
                let v2 = vm2.data().lock().unwrap()[name].as_tensor().clone();
                assert!(max_rel(&v1, &v2) < 1e-5, "case {case}: {name}");
            }
            // Evaluation mode uses the (now updated) running statistics.
            let e1 = ours.forward_t(&x, false).unwrap();
            let e2 = theirs.forward_t(&x, false).unwrap();
            assert!(max_rel(&e1, &e2) < 1e-5, "case {case}: eval output");
        }
    }
}

#[test]
fn a_large_mean_does_not_destroy_the_variance() {
    // Mean 1000, spread 0.01: E[x²] − mean² in f32 would cancel to nothing. Reference: the same
    // normalisation computed in f64.
    let (ours, vm, ..) = pair(2, 3);
    let x = tensor(&[64, 2, 8, 8], 5, 0.01, 1000.0);
    let y = ours.forward_t(&x, true).unwrap();
    let xd = x.to_dtype(DType::F64).unwrap();
    let mean = xd
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let xc = xd.broadcast_sub(&mean).unwrap();
    let var = xc
        .sqr()
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let data = vm.data().lock().unwrap();
    let w = data["weight"]
        .as_tensor()
        .to_dtype(DType::F64)
        .unwrap()
        .reshape((1, 2, 1, 1))
        .unwrap();
    let b = data["bias"]
        .as_tensor()
        .to_dtype(DType::F64)
        .unwrap()
        .reshape((1, 2, 1, 1))
        .unwrap();
    let r = xc
        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&w)
        .unwrap()
        .broadcast_add(&b)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert!(max_rel(&y, &r) < 1e-3, "{}", max_rel(&y, &r));
}

#[test]
fn errors_name_the_problem() {
    let (ours, ..) = pair(4, 1);
    let e = ours
        .forward_t(&tensor(&[2, 3, 4, 4], 1, 1.0, 0.0), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 channels"), "{e}");
    let e = ours
        .forward_t(&tensor(&[1, 4, 1, 1], 1, 1.0, 0.0), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than one value per channel"), "{e}");
}
