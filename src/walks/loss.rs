//! GenRep's walk loss: the masked mean squared error between the generator's output at the moved
//! latent and the pixel edit of its output at the anchor,
//! `Σ mask·(G(z + Σᵢ αᵢ·wᵢ, y) − T_α)² / (C · #mask)`, where `#mask` counts the mask's pixels
//! (GenRep's mask has one value per channel, and its `count_nonzero` counts all of them).

use candle_core::{Result, Tensor};

/// The masked MSE of `pred` `[B, C, H, W]` against `target` (same shape, no gradient) with `mask`
/// `[B, H, W]` (1 inside the edited frame). Differentiable in `pred`; a mask with no pixel gives 0.
pub fn masked_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = pred.dims4()?;
    let m = mask.reshape((b, 1, h, w))?.to_dtype(pred.dtype())?;
    let sq = (pred - target.detach())?.sqr()?.broadcast_mul(&m)?;
    let count: f32 = mask
        .sum_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar()?;
    sq.sum_all()? / (c as f64 * count.max(1.0) as f64)
}

/// The moved latents `z + Σᵢ αᵢ·wᵢ`: `z` `[B, D]`, `alphas` `[B, K]` (one coefficient per walk and
/// sample), `walks` `[K, D]` (differentiable).
pub fn moved(z: &Tensor, alphas: &Tensor, walks: &Tensor) -> Result<Tensor> {
    z + alphas.matmul(walks)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    /// A fixed numpy-style reference: two images of 1×2×2, one masked pixel out.
    #[test]
    fn masked_mse_matches_a_hand_computed_value() {
        let pred = t(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 1.0], &[2, 1, 2, 2]);
        let target = t(&[0.0, 2.0, 3.0, 0.0, 0.0, 0.5, 0.0, 0.0], &[2, 1, 2, 2]);
        let mask = t(&[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0], &[2, 2, 2]);
        // Squared errors inside the mask: 1 + 0 + 0 (+ 16 masked out) + 0 + 0.25 + 0 + 1 over 7.
        let l: f32 = masked_mse(&pred, &target, &mask)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((l - 2.25 / 7.0).abs() < 1e-6, "{l}");
        let none = Tensor::zeros((2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let l: f32 = masked_mse(&pred, &target, &none)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(l, 0.0);
    }

    /// The gradient to the walks through a differentiable stand-in generator (a fixed linear map
    /// and tanh) equals central finite differences.
    #[test]
    fn the_gradient_to_the_walks_matches_finite_differences() {
        let dev = Device::Cpu;
        let (b, k, d, c, h, w) = (3, 2, 4, 2, 3, 3);
        let lin = |n: usize, s: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as f32 * 0.731 + s).sin()) * 0.5)
                .collect()
        };
        let g_w = t(&lin(d * c * h * w, 0.3), &[d, c * h * w]);
        let gen = |zz: &Tensor| -> Tensor {
            zz.matmul(&g_w)
                .unwrap()
                .tanh()
                .unwrap()
                .reshape((b, c, h, w))
                .unwrap()
        };
        let z = t(&lin(b * d, 1.1), &[b, d]);
        let alphas = t(&lin(b * k, 2.3), &[b, k]);
        let target = t(&lin(b * c * h * w, 0.7), &[b, c, h, w]);
        let mut mv = vec![1f32; b * h * w];
        mv[4] = 0.0;
        mv[13] = 0.0;
        let mask = t(&mv, &[b, h, w]);
        let w0 = lin(k * d, 4.2);
        let walks = Var::from_slice(&w0, (k, d), &dev).unwrap();
        let loss = |wv: &Tensor| -> Tensor {
            masked_mse(&gen(&moved(&z, &alphas, wv).unwrap()), &target, &mask).unwrap()
        };
        let grads = loss(walks.as_tensor()).backward().unwrap();
        let g: Vec<f32> = grads
            .get(&walks)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let eps = 1e-3f64;
        for i in 0..k * d {
            let at = |delta: f64| -> f64 {
                let mut v: Vec<f64> = w0.iter().map(|&x| x as f64).collect();
                v[i] += delta;
                let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                loss(&t(&v, &[k, d])).to_scalar::<f32>().unwrap() as f64
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (fd - g[i] as f64).abs() <= 2e-3 * fd.abs().max(1e-2),
                "walk element {i}: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }
}
