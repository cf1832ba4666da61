//! StyleGAN2's layers, each one small type with its gains named: the equalized-lr
//! fully-connected layer, the mapping network, the FIR filters, the modulated synthesis layer,
//! to-RGB and the block that holds them.

use super::config::{NoiseMode, StyleGan2Config};
use crate::generator::weights::{Conv, Weights};
use crate::generator::{NoiseKey, Result};
use candle_core::{DType, Device, Module, Tensor};

/// `leaky_relu(x, 0.2) · √2` (NVlabs' `lrelu` with its default gain).
pub(super) fn lrelu(x: &Tensor, gain: f64) -> candle_core::Result<Tensor> {
    let pos = x.relu()?;
    let neg = (x - &pos)?;
    (pos + (neg * 0.2)?)? * (gain * std::f64::consts::SQRT_2)
}

/// `x · rsqrt(mean(x², dim 1) + 1e-8)`.
pub(super) fn normalize_2nd_moment(x: &Tensor) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(1)?;
    x.broadcast_div(&(ms + 1e-8)?.sqrt()?)
}

/// An equalized-learning-rate fully-connected layer: `y = x·(W·wg)ᵀ + b·bg`, `wg = lr/√in`,
/// `bg = lr`, then lrelu·√2 or nothing. Computed in f32 whatever the model dtype (as NVlabs
/// runs its mapping network): these layers are tiny, and styles feed every demodulation.
pub(super) struct FullyConnected {
    weight_t: Tensor,
    bias: Tensor,
    lrelu: bool,
}

impl FullyConnected {
    pub(super) fn load(
        w: &Weights,
        p: &str,
        din: usize,
        dout: usize,
        lr: f64,
        lrelu: bool,
    ) -> Result<Self> {
        let dev = w.device();
        let weight = w
            .host(&format!("{p}.weight"), &[dout, din])?
            .to_device(dev)?;
        let bias = w.host(&format!("{p}.bias"), &[dout])?.to_device(dev)?;
        Ok(Self {
            weight_t: (weight * (lr / (din as f64).sqrt()))?.t()?.contiguous()?,
            bias: (bias * lr)?,
            lrelu,
        })
    }
}

impl Module for FullyConnected {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x
            .to_dtype(DType::F32)?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?;
        if self.lrelu {
            lrelu(&y, 1.0)
        } else {
            Ok(y)
        }
    }
}

/// z (and c) → w.
pub(super) struct Mapping {
    embed: Option<FullyConnected>,
    layers: Vec<FullyConnected>,
    w_avg: Tensor,
}

impl Mapping {
    pub(super) fn load(w: &Weights, cfg: &StyleGan2Config) -> Result<Self> {
        let m = &cfg.mapping_kwargs;
        let embed_features = if cfg.c_dim == 0 {
            0
        } else {
            m.embed_features.unwrap_or(cfg.w_dim)
        };
        let hidden = m.layer_features.unwrap_or(cfg.w_dim);
        let embed = if cfg.c_dim > 0 {
            Some(FullyConnected::load(
                w,
                "mapping.embed",
                cfg.c_dim,
                embed_features,
                1.0,
                false,
            )?)
        } else {
            None
        };
        let mut widths = vec![cfg.z_dim + embed_features];
        widths.extend(std::iter::repeat_n(hidden, m.num_layers - 1));
        widths.push(cfg.w_dim);
        let layers = (0..m.num_layers)
            .map(|i| {
                FullyConnected::load(
                    w,
                    &format!("mapping.fc{i}"),
                    widths[i],
                    widths[i + 1],
                    m.lr_multiplier,
                    true,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embed,
            layers,
            w_avg: w
                .host("mapping.w_avg", &[cfg.w_dim])?
                .to_device(w.device())?,
        })
    }

    /// w `[B, w_dim]` before truncation.
    pub(super) fn forward(&self, z: &Tensor, c: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut x = normalize_2nd_moment(&z.to_dtype(DType::F32)?)?;
        if let (Some(embed), Some(c)) = (&self.embed, c) {
            let y = normalize_2nd_moment(&embed.forward(c)?)?;
            x = Tensor::cat(&[&x, &y], 1)?;
        }
        for l in &self.layers {
            x = l.forward(&x)?;
        }
        Ok(x)
    }

    /// `w_avg + ψ·(w − w_avg)` on rows `[0, cutoff)` (all rows when `cutoff` is 0) of
    /// `ws` `[B, num_ws, w_dim]`.
    pub(super) fn truncate(
        &self,
        ws: &Tensor,
        psi: f64,
        cutoff: usize,
    ) -> candle_core::Result<Tensor> {
        if psi == 1.0 {
            return Ok(ws.clone());
        }
        let (_, n, _) = ws.dims3()?;
        let rows = if cutoff == 0 { n } else { cutoff.min(n) };
        let avg = self.w_avg.reshape((1, 1, ()))?;
        let head = ws.narrow(1, 0, rows)?;
        let head = avg.broadcast_add(&(head.broadcast_sub(&avg)? * psi)?)?;
        if rows == n {
            Ok(head)
        } else {
            Tensor::cat(&[&head, &ws.narrow(1, rows, n - rows)?], 1)
        }
    }
}

/// The FIR [1,3,3,1] with the up-sampling gain 2 per axis (NVlabs' `gain=4` on the 2-D filter
/// `outer(f, f) / 64`).
const FIR: [f64; 4] = [0.25, 0.75, 0.75, 0.25];

/// The up-sampling conv as four stride-1 3×3 convs, one per output phase, stacked as `4·O`
/// output channels (phase-major: `(φy, φx, o)`).
///
/// NVlabs computes `FIR(pad₁(conv_transpose₂(x, W)))`. Along one axis the composition is
/// `y[m] = Σᵢ x[i]·K[m − 2i]` with `K[d] = Σ_{k − q + 1 = d} W[k]·FIR[q]`, `d ∈ [−2, 3]`, so the
/// output row `2a + φ` is the correlation of `x` (padding 1) with `G_φ[t] = K[2 − 2t + φ]`:
/// the same sums with no zero-inserted input, no transposed conv and no separate filter pass,
/// for the FLOPs of one 3×3 conv at the output size.
pub(super) fn polyphase_up_kernel(w: &Tensor) -> candle_core::Result<Tensor> {
    let (o, i, kh, kw) = w.dims4()?;
    assert_eq!((kh, kw), (3, 3), "StyleGAN2's convs are 3×3");
    let w: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    // K[d] for d = dk − 2 (dk ∈ 0..6), per axis: the taps (k, q) with k − q + 1 = d.
    let taps = |d: i64| -> Vec<(usize, f64)> {
        (0..3)
            .filter_map(|k: i64| {
                let q = k + 1 - d;
                (0..4).contains(&q).then(|| (k as usize, FIR[q as usize]))
            })
            .collect()
    };
    let mut out = vec![0f64; 4 * o * i * 9];
    for (py, px) in [(0usize, 0usize), (0, 1), (1, 0), (1, 1)] {
        let phase = py * 2 + px;
        for ty in 0..3 {
            let dy = 2 - 2 * ty as i64 + py as i64;
            for tx in 0..3 {
                let dx = 2 - 2 * tx as i64 + px as i64;
                for (ky, fy) in taps(dy) {
                    for (kx, fx) in taps(dx) {
                        for oo in 0..o {
                            for ii in 0..i {
                                let src = ((oo * i + ii) * 3 + ky) * 3 + kx;
                                let dst = (((phase * o + oo) * i + ii) * 3 + ty) * 3 + tx;
                                out[dst] += w[src] * fy * fx;
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (4 * o, i, 3, 3), &Device::Cpu)?.to_dtype(DType::F32)
}

/// NVlabs' `upsample2d` (zero-insert ×2, pad [2, 1], the 4×4 FIR with gain 4) in its
/// polyphase form, axis by axis: even outputs `(x[a−1] + 3·x[a]) / 4`, odd outputs
/// `(3·x[a] + x[a+1]) / 4`, zeros past the edges.
pub(super) fn upsample2d(x: &Tensor) -> candle_core::Result<Tensor> {
    let up_axis = |x: &Tensor, dim: usize| -> candle_core::Result<Tensor> {
        let n = x.dim(dim)?;
        let prev = x.pad_with_zeros(dim, 1, 0)?.narrow(dim, 0, n)?;
        let next = x.pad_with_zeros(dim, 0, 1)?.narrow(dim, 1, n)?;
        let x3 = (x * 0.75)?;
        let even = ((prev * 0.25)? + &x3)?;
        let odd = (x3 + (next * 0.25)?)?;
        // Interleave along `dim`: stack as a new axis right after it, then merge the two.
        let mut shape = x.dims().to_vec();
        shape[dim] *= 2;
        Tensor::stack(&[&even, &odd], dim + 1)?.reshape(shape)
    };
    up_axis(&up_axis(x, 2)?, 3)
}

/// `styles = affine(w)`: a fully-connected layer, lr 1.
pub(super) fn affine(
    w: &Weights,
    p: &str,
    w_dim: usize,
    channels: usize,
) -> Result<FullyConnected> {
    FullyConnected::load(w, &format!("{p}.affine"), w_dim, channels, 1.0, false)
}

/// How a synthesis layer's 3×3 conv runs.
enum ConvForm {
    /// Stride 1 at the layer's resolution.
    Same(Conv),
    /// Up-sampling ×2 as NVlabs computes it: the stride-2 transposed conv (kernel `[I, O, 3, 3]`),
    /// then the FIR, which the epilogue applies in its pass. The CPU form: a quarter of the
    /// multiply-adds of the polyphase form.
    Transposed(Tensor),
    /// Up-sampling ×2 as one stride-1 conv with the four phase kernels
    /// ([`polyphase_up_kernel`]): the form for devices with a fast conv (cuDNN), where one conv
    /// of four times the multiply-adds beats a transposed conv and a filter pass.
    Polyphase(Conv),
}

/// A modulated, demodulated 3×3 conv (optionally up-sampling ×2), noise, bias, lrelu·√2, clamp.
pub(super) struct SynthesisLayer {
    affine: FullyConnected,
    conv: ConvForm,
    /// `Σ_{kh,kw} W²` transposed: `[I, O]`, so the demodulation coefficients of a batch are
    /// one matmul `rsqrt(s² · Wsq + 1e-8)`.
    wsq: Tensor,
    bias: Tensor,
    noise_strength: f64,
    /// `noise_const · noise_strength`, `[1, R·R]`.
    noise_const: Tensor,
    resolution: usize,
    /// Index of this layer among the noise inputs (the stream of per-sample noise).
    noise_stream: u32,
    clamp: Option<f64>,
}

impl SynthesisLayer {
    /// The layer `p`; an up-sampling one in the [`ConvForm`] its device runs fastest.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load(
        w: &Weights,
        p: &str,
        cin: usize,
        cout: usize,
        resolution: usize,
        up: bool,
        noise_stream: u32,
        cfg: &StyleGan2Config,
    ) -> Result<Self> {
        let polyphase = !w.device().is_cpu();
        Self::load_as(
            w,
            p,
            cin,
            cout,
            resolution,
            up,
            noise_stream,
            cfg,
            polyphase,
        )
    }

    /// [`Self::load`] with the up-sampling form chosen by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load_as(
        w: &Weights,
        p: &str,
        cin: usize,
        cout: usize,
        resolution: usize,
        up: bool,
        noise_stream: u32,
        cfg: &StyleGan2Config,
        polyphase: bool,
    ) -> Result<Self> {
        let host = w.host(&format!("{p}.weight"), &[cout, cin, 3, 3])?;
        let on_device =
            |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(w.dtype())?.to_device(w.device())?) };
        let conv = match (up, polyphase) {
            (false, _) => ConvForm::Same(Conv::new(on_device(host.clone())?, None, 1, 1)),
            (true, false) => ConvForm::Transposed(on_device(host.transpose(0, 1)?.contiguous()?)?),
            (true, true) => ConvForm::Polyphase(Conv::new(
                on_device(polyphase_up_kernel(&host)?)?,
                None,
                1,
                1,
            )),
        };
        let wsq = host
            .sqr()?
            .sum((2, 3))?
            .t()?
            .contiguous()?
            .to_device(w.device())?;
        // A scalar in NVlabs; stored as `[1]` (safetensors has no 0-d tensors everywhere).
        let strength = w.vec(&format!("{p}.noise_strength"), &[1])?;
        Ok(Self {
            affine: affine(w, p, cfg.w_dim, cin)?,
            conv,
            wsq,
            bias: w.get(&format!("{p}.bias"), &[cout])?,
            noise_strength: strength[0] as f64,
            // Scaled once: `const` noise is the same for every pass.
            noise_const: (w
                .get(&format!("{p}.noise_const"), &[resolution, resolution])?
                .reshape((1, resolution * resolution))?
                * strength[0] as f64)?,
            resolution,
            noise_stream,
            clamp: cfg.synthesis_kwargs.conv_clamp,
        })
    }

    pub(super) fn forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        mode: NoiseMode,
        keys: &[NoiseKey],
    ) -> candle_core::Result<Tensor> {
        let (b, _, _, _) = x.dims4()?;
        let dt = x.dtype();
        let styles = self.affine.forward(w)?;
        let xs = x.broadcast_mul(&styles.to_dtype(dt)?.unsqueeze(2)?.unsqueeze(3)?)?;
        let d = (styles.sqr()?.matmul(&self.wsq)? + 1e-8)?
            .sqrt()?
            .recip()?
            .to_dtype(dt)?;
        let r = self.resolution;
        let noise = match mode {
            NoiseMode::None => None,
            NoiseMode::Const => Some(self.noise_const.clone()),
            NoiseMode::Random => {
                let v: Vec<f32> = keys
                    .iter()
                    .flat_map(|k| k.normals(self.noise_stream, r * r))
                    .collect();
                let n = Tensor::from_vec(v, (b, r * r), &Device::Cpu)?
                    .to_device(x.device())?
                    .to_dtype(dt)?;
                Some((n * self.noise_strength)?)
            }
        };
        // y·d + noise + bias, lrelu·√2, clamp: one pass (which also filters a transposed conv's
        // output, or interleaves the four phases of a polyphase one).
        let (gain, noise) = (std::f64::consts::SQRT_2, noise.as_ref());
        use genrep_kernels::fused::{
            modulated_epilogue, modulated_epilogue_fir_up, modulated_epilogue_up,
        };
        match &self.conv {
            ConvForm::Same(conv) => {
                modulated_epilogue(&conv.forward(&xs)?, &d, noise, &self.bias, gain, self.clamp)
            }
            ConvForm::Transposed(k) => {
                // genrep's transposed conv has no backward; candle's (slower) has, for training
                // through the generator (steering walks).
                let y = if xs.track_op() {
                    xs.conv_transpose2d(k, 0, 0, 2, 1)?
                } else {
                    genrep_kernels::conv_transpose2d(&xs, k, 2)?
                };
                let fir = FIR.map(|f| f as f32);
                modulated_epilogue_fir_up(&y, fir, &d, noise, &self.bias, gain, self.clamp)
            }
            ConvForm::Polyphase(conv) => {
                let y = conv.forward(&xs)?;
                modulated_epilogue_up(&y, &d, noise, &self.bias, gain, self.clamp)
            }
        }
    }
}

/// A modulated 1×1 conv without demodulation, `styles · 1/√C_in`, plus bias, clamp.
pub(super) struct ToRgb {
    affine: FullyConnected,
    conv: Conv,
    gain: f64,
    bias: Tensor,
    clamp: Option<f64>,
}

impl ToRgb {
    pub(super) fn load(w: &Weights, p: &str, cin: usize, cfg: &StyleGan2Config) -> Result<Self> {
        let c = cfg.img_channels;
        Ok(Self {
            affine: affine(w, p, cfg.w_dim, cin)?,
            conv: Conv::new(w.get(&format!("{p}.weight"), &[c, cin, 1, 1])?, None, 1, 0),
            gain: 1.0 / (cin as f64).sqrt(),
            bias: w.get(&format!("{p}.bias"), &[c])?,
            clamp: cfg.synthesis_kwargs.conv_clamp,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let styles = (self.affine.forward(w)? * self.gain)?.to_dtype(x.dtype())?;
        let xs = x.broadcast_mul(&styles.unsqueeze(2)?.unsqueeze(3)?)?;
        let y = self
            .conv
            .forward(&xs)?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        match self.clamp {
            Some(c) => y.clamp(-c, c),
            None => Ok(y),
        }
    }
}

/// One synthesis block: `b4` (const → conv1 → to-RGB) or `b{r}` (conv0 ↑ → conv1 → to-RGB,
/// added to the up-sampled image).
pub(super) struct Block {
    pub(super) konst: Option<Tensor>,
    pub(super) conv0: Option<SynthesisLayer>,
    pub(super) conv1: SynthesisLayer,
    pub(super) torgb: ToRgb,
    /// Whether the image skip is up-sampled into this block (blocks past b4).
    pub(super) upsample: bool,
    /// The first w row this block reads.
    pub(super) first_w: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// With an input that needs a gradient (training walks through the generator), every layer
    /// form runs its differentiable ops and gives the same values as the one-pass kernels, and
    /// the gradient reaches the input.
    #[test]
    fn differentiable_forms_match_the_fused_ones_and_give_gradients() {
        let cfg = StyleGan2Config::paper256();
        let w = Weights::random(3, &Device::Cpu, DType::F32);
        let (cin, cout, r) = (4, 5, 8);
        for (up, polyphase) in [(false, false), (true, false), (true, true)] {
            let layer =
                SynthesisLayer::load_as(&w, "b8.conv0", cin, cout, r, up, 1, &cfg, polyphase)
                    .unwrap();
            let side = if up { r / 2 } else { r };
            let x = Tensor::randn(0f32, 1.0, (2, cin, side, side), &Device::Cpu).unwrap();
            let ws = Tensor::randn(0f32, 1.0, (2, cfg.w_dim), &Device::Cpu).unwrap();
            let plain = layer.forward(&x, &ws, NoiseMode::Const, &[]).unwrap();
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let tracked = layer
                .forward(var.as_tensor(), &ws, NoiseMode::Const, &[])
                .unwrap();
            let scale = max_abs(&plain);
            let diff = max_abs(&(&plain - &tracked).unwrap());
            assert!(
                diff <= 1e-5 * scale,
                "up {up} polyphase {polyphase}: {diff} of {scale}"
            );
            let g = tracked
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gx = g.get(&var).expect("the gradient reaches the input");
            let norm = gx
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite() && norm > 0.0, "up {up}: gradient {norm}");
        }
    }

    /// The polyphase form (the GPU's) and the transposed form (the CPU's) of an up-sampling layer
    /// compute the same thing; the fixtures' parity test runs only the CPU's.
    #[test]
    fn both_up_sampling_forms_agree() {
        let cfg = StyleGan2Config::paper256();
        let w = Weights::random(7, &Device::Cpu, DType::F32);
        let (cin, cout, r) = (6, 5, 16);
        let load = |polyphase| {
            SynthesisLayer::load_as(&w, "b16.conv0", cin, cout, r, true, 1, &cfg, polyphase)
                .unwrap()
        };
        let (poly, trans) = (load(true), load(false));
        assert!(matches!(poly.conv, ConvForm::Polyphase(_)));
        assert!(matches!(trans.conv, ConvForm::Transposed(_)));
        let x = Tensor::randn(0f32, 1.0, (3, cin, r / 2, r / 2), &Device::Cpu).unwrap();
        let ws = Tensor::randn(0f32, 1.0, (3, cfg.w_dim), &Device::Cpu).unwrap();
        for mode in [NoiseMode::Const, NoiseMode::None] {
            let a = poly.forward(&x, &ws, mode, &[]).unwrap();
            let b = trans.forward(&x, &ws, mode, &[]).unwrap();
            assert_eq!(a.dims(), [3, cout, r, r]);
            assert_eq!(a.dims(), b.dims());
            let scale = max_abs(&a);
            let diff = max_abs(&(a - b).unwrap());
            assert!(
                scale > 0.1 && diff <= 1e-5 * scale,
                "{mode:?}: {diff} of {scale}"
            );
        }
    }
}
