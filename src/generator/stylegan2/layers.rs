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

/// The [1,3,3,1] FIR as a depthwise 4×4 kernel for `channels`, with gain 4 (NVlabs'
/// `upfirdn2d(..., gain=4)`: `outer(f, f) / 64 · 4`).
pub(super) fn fir_kernel(
    channels: usize,
    dev: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let f = [1.0f32, 3.0, 3.0, 1.0];
    let k: Vec<f32> = (0..channels)
        .flat_map(|_| (0..16).map(move |i| f[i / 4] * f[i % 4] / 16.0))
        .collect();
    Tensor::from_vec(k, (channels, 1, 4, 4), dev)?.to_dtype(dtype)
}

/// Pads `x` `[B, C, H, W]` with zeros: `before`/`after` on both spatial dims.
pub(super) fn pad2(x: &Tensor, before: usize, after: usize) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, before, after)?
        .pad_with_zeros(3, before, after)
}

/// `op(x, k)` in f32 on the CPU when the model computes in half precision there (candle's CPU
/// convolutions have no f16/bf16 GEMM), in the model dtype elsewhere.
pub(super) fn in_cpu_f32(
    x: &Tensor,
    k: &Tensor,
    op: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() != DType::F32 {
        op(&x.to_dtype(DType::F32)?, &k.to_dtype(DType::F32)?)?.to_dtype(x.dtype())
    } else {
        op(x, k)
    }
}

/// The FIR filter over a padded input: depthwise 4×4 correlation (the filter is symmetric).
pub(super) fn fir(x: &Tensor, kernel: &Tensor) -> candle_core::Result<Tensor> {
    let c = x.dim(1)?;
    in_cpu_f32(x, kernel, |x, k| x.conv2d(k, 0, 1, 1, c))
}

/// NVlabs' `upsample2d`: zero-insert ×2, pad [2, 1], FIR with gain 4.
pub(super) fn upsample2d(x: &Tensor, kernel: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let up = x
        .reshape((b, c, h, 1, w, 1))?
        .pad_with_zeros(3, 0, 1)?
        .pad_with_zeros(5, 0, 1)?
        .reshape((b, c, 2 * h, 2 * w))?;
    fir(&pad2(&up, 2, 1)?, kernel)
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

/// A modulated, demodulated 3×3 conv (optionally up-sampling ×2), noise, bias, lrelu·√2, clamp.
pub(super) struct SynthesisLayer {
    affine: FullyConnected,
    /// The stored weight `[O, I, 3, 3]`, for the shared conv.
    conv: Conv,
    /// `Σ_{kh,kw} W²` transposed: `[I, O]`, so the demodulation coefficients of a batch are
    /// one matmul `rsqrt(s² · Wsq + 1e-8)`.
    wsq: Tensor,
    /// `W` transposed in/out `[I, O, 3, 3]` for the up-sampling (transposed) conv.
    weight_t: Option<Tensor>,
    bias: Tensor,
    noise_strength: f64,
    noise_const: Tensor,
    resolution: usize,
    /// Index of this layer among the noise inputs (the stream of per-sample noise).
    noise_stream: u32,
    clamp: Option<f64>,
    fir: Option<Tensor>,
}

impl SynthesisLayer {
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
        let weight = w.get(&format!("{p}.weight"), &[cout, cin, 3, 3])?;
        let host = w.host(&format!("{p}.weight"), &[cout, cin, 3, 3])?;
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
            weight_t: if up {
                Some(weight.transpose(0, 1)?.contiguous()?)
            } else {
                None
            },
            conv: Conv::new(weight, None, 1, 1),
            wsq,
            bias: w.get(&format!("{p}.bias"), &[cout])?,
            noise_strength: strength[0] as f64,
            noise_const: w.get(&format!("{p}.noise_const"), &[resolution, resolution])?,
            resolution,
            noise_stream,
            clamp: cfg.synthesis_kwargs.conv_clamp,
            fir: if up {
                Some(fir_kernel(cout, w.device(), w.dtype())?)
            } else {
                None
            },
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
        let y = match (&self.weight_t, &self.fir) {
            (Some(wt), Some(k)) => {
                let t = in_cpu_f32(&xs, wt, |x, w| x.conv_transpose2d(w, 0, 0, 2, 1))?;
                fir(&pad2(&t, 1, 1)?, k)?
            }
            _ => self.conv.forward(&xs)?,
        };
        let d = (styles.sqr()?.matmul(&self.wsq)? + 1e-8)?
            .sqrt()?
            .recip()?
            .to_dtype(dt)?;
        let mut y = y.broadcast_mul(&d.unsqueeze(2)?.unsqueeze(3)?)?;
        let r = self.resolution;
        match mode {
            NoiseMode::None => {}
            NoiseMode::Const => {
                let n = (self.noise_const.reshape((1, 1, r, r))? * self.noise_strength)?;
                y = y.broadcast_add(&n)?;
            }
            NoiseMode::Random => {
                let v: Vec<f32> = keys
                    .iter()
                    .flat_map(|k| k.normals(self.noise_stream, r * r))
                    .collect();
                let n = Tensor::from_vec(v, (b, 1, r, r), &Device::Cpu)?
                    .to_device(y.device())?
                    .to_dtype(y.dtype())?;
                y = y.broadcast_add(&(n * self.noise_strength)?)?;
            }
        }
        let y = lrelu(&y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?, 1.0)?;
        match self.clamp {
            Some(c) => y.clamp(-c, c),
            None => Ok(y),
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
    /// The FIR of the image skip (blocks past b4).
    pub(super) fir: Option<Tensor>,
    /// The first w row this block reads.
    pub(super) first_w: usize,
}
