//! BigGAN-deep, computed exactly as `pytorch-pretrained-biggan` 0.1.1 does.
//!
//! Quirks kept on purpose (they change the pixels): the `gen_z` output is reshaped NHWC and then
//! permuted; skip paths drop channels instead of convolving; the self-attention block sits before
//! config layer `attention_layer_position`; conditional BN uses one of `n_stats` precomputed
//! statistics rows chosen by the truncation, interpolated with the package's swapped weights; the
//! RGB conv computes only the 3 channels that the package keeps.

use super::weights::{conv, Conv, Linear, Weights};
use super::{
    ClassInput, Generator, GeneratorError, GeneratorSpec, Knobs, ModelInfo, NoiseKey, Result, Space,
};
use crate::params::decl::{Kind, Param};
use candle_core::Module;
use candle_core::{DType, Device, Tensor};
use genrep_kernels::fused;
use serde::{Deserialize, Serialize};

/// BigGAN's own input: the truncation that picks (and mixes) its BN statistics rows. It is not
/// the sampler's anchor bound, which truncates z itself.
pub const KNOBS: &[Param] = &[Param {
    name: "gen_truncation",
    aliases: &[],
    kind: Kind::Float {
        default: 1.0,
        min: 0.0,
        max: 1.0,
        min_open: true,
    },
    doc: "BigGAN's truncation input: selects (and interpolates) the BN statistics row.",
}];

/// `config.json` of a BigGAN-deep model directory (the package's fields, plus optional extras).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BigGanConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub output_dim: usize,
    pub z_dim: usize,
    #[serde(default)]
    pub class_embed_dim: Option<usize>,
    pub channel_width: usize,
    pub num_classes: usize,
    /// `(upsample, in_multiplier, out_multiplier)` per block; channels = multiplier × channel_width.
    pub layers: Vec<(bool, usize, usize)>,
    pub attention_layer_position: usize,
    pub eps: f64,
    pub n_stats: usize,
}

impl BigGanConfig {
    /// Rejects configs the reference implementation could not run (or that we do not support).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.z_dim == 0 || self.channel_width == 0 || self.num_classes == 0 {
            return Err("z_dim, channel_width and num_classes must be positive".into());
        }
        if self.layers.is_empty() {
            return Err("`layers` is empty".into());
        }
        // Bounds far above any released model, checked before any product of them is formed
        // (a hostile or corrupted config must get a message naming the field, not an overflow).
        for (field, v, max) in [
            ("z_dim", self.z_dim, 1 << 16),
            (
                "class_embed_dim",
                self.class_embed_dim.unwrap_or(1),
                1 << 16,
            ),
            ("channel_width", self.channel_width, 1 << 14),
            ("num_classes", self.num_classes, 1 << 20),
            ("n_stats", self.n_stats, 1 << 12),
            ("output_dim", self.output_dim, 1 << 16),
            ("layers (count)", self.layers.len(), 64),
            (
                "attention_layer_position",
                self.attention_layer_position,
                64,
            ),
        ] {
            if v > max {
                return Err(format!("{field} = {v} is larger than {max}"));
            }
        }
        if let Some(i) = self
            .layers
            .iter()
            .position(|&(_, a, b)| a == 0 || b == 0 || a > 64 || b > 64)
        {
            return Err(format!(
                "layers[{i}] channel multipliers {:?} must be in 1..=64",
                (self.layers[i].1, self.layers[i].2)
            ));
        }
        if self.layers.iter().filter(|l| l.0).count() > 14 {
            return Err("more than 14 upsampling layers (past 65536 pixels)".into());
        }
        if self.n_stats < 2 {
            return Err(format!("n_stats = {} (must be at least 2)", self.n_stats));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(format!("eps = {} (must be positive)", self.eps));
        }
        if self.layers[0].1 != 16 {
            return Err(format!(
                "layers[0] input multiplier is {}, but gen_z always produces 16 x channel_width channels",
                self.layers[0].1
            ));
        }
        for (i, w) in self.layers.windows(2).enumerate() {
            if w[0].2 != w[1].1 {
                return Err(format!(
                    "layers[{i}] outputs {} x ch but layers[{}] expects {} x ch",
                    w[0].2,
                    i + 1,
                    w[1].1
                ));
            }
        }
        for (i, &(_, cin, cout)) in self.layers.iter().enumerate() {
            let (cin, cout) = (cin * self.channel_width, cout * self.channel_width);
            if cin % 4 != 0 {
                return Err(format!(
                    "layers[{i}] has {cin} input channels, not divisible by 4"
                ));
            }
            if cin != cout && cout != cin / 2 {
                return Err(format!(
                    "layers[{i}] maps {cin} -> {cout} channels; the skip path keeps in/2 channels, so out must equal in or in/2"
                ));
            }
        }
        if self.layers.last().unwrap().2 != 1 {
            return Err("the last layer must output 1 x channel_width channels (the final BN has channel_width features)".into());
        }
        if self.attention_layer_position < self.layers.len() {
            let c = self.layers[self.attention_layer_position].1 * self.channel_width;
            if c % 8 != 0 {
                return Err(format!(
                    "attention over {c} channels: must be divisible by 8"
                ));
            }
        }
        let res = self.resolution();
        if self.output_dim != res {
            return Err(format!(
                "output_dim = {} but the layers upsample 4 -> {res}",
                self.output_dim
            ));
        }
        if self.channel_width < 3 {
            return Err("channel_width must be at least 3 (RGB output)".into());
        }
        Ok(())
    }

    /// The package's BigGAN-deep-128 / -256 / -512 configs (ImageNet, 1000 classes).
    pub fn deep(resolution: usize) -> Option<Self> {
        let mut layers = vec![
            (false, 16, 16),
            (true, 16, 16),
            (false, 16, 16),
            (true, 16, 8),
            (false, 8, 8),
            (true, 8, 4),
            (false, 4, 4),
            (true, 4, 2),
            (false, 2, 2),
            (true, 2, 1),
        ];
        match resolution {
            128 => {}
            256 | 512 => {
                layers.splice(5..6, [(true, 8, 8), (false, 8, 8), (true, 8, 4)]);
                if resolution == 512 {
                    layers.extend([(false, 1, 1), (true, 1, 1)]);
                }
            }
            _ => return None,
        }
        Some(Self {
            name: Some(format!("biggan-deep-{resolution}")),
            output_dim: resolution,
            z_dim: 128,
            class_embed_dim: Some(128),
            channel_width: 128,
            num_classes: 1000,
            layers,
            attention_layer_position: 8,
            eps: 1e-4,
            n_stats: 51,
        })
    }

    pub fn resolution(&self) -> usize {
        4 << self.layers.iter().filter(|l| l.0).count()
    }

    /// Floating-point operations (2 × multiply-adds of the linear, convolution and attention
    /// products) per image: `(executed, package)`. The package computes all `channel_width`
    /// channels of the RGB convolution and keeps 3; we compute only those 3, so `executed` is
    /// lower. Throughput reports use `package` (22.6 / 77.6 GFLOP for BigGAN-deep-128 / -256) so
    /// that TFLOP/s figures of both implementations are proportional to images/s.
    pub fn flops_per_image(&self) -> (f64, f64) {
        let ch = self.channel_width;
        let mut macs = (2 * self.z_dim * 4 * 4 * 16 * ch) as f64;
        let mut r = 4usize;
        for (i, &(up, a, b)) in self.layers.iter().enumerate() {
            let (cin, cout) = ((a * ch) as f64, (b * ch) as f64);
            let mid = cin / 4.0;
            if i == self.attention_layer_position {
                let n = (r * r) as f64;
                // theta, phi (c/8 each), g (c/2), o (c/2 -> c) and the two attention products
                // over the 2×2-pooled keys.
                macs += n * cin * (cin / 8.0 * 2.0 + cin / 2.0 + cin / 2.0)
                    + n * (n / 4.0) * (cin / 8.0 + cin / 2.0);
            }
            macs += (r * r) as f64 * cin * mid;
            if up {
                r *= 2;
            }
            let n = (r * r) as f64;
            macs += n * mid * mid * 9.0 * 2.0 + n * mid * cout;
        }
        let rgb = |out: usize| (r * r * ch * out * 9) as f64;
        (2.0 * (macs + rgb(3)), 2.0 * (macs + rgb(ch)))
    }
}

/// BN statistics for all truncation rows, kept on the host: a truncation picks (and mixes) rows.
struct BnStats {
    means: Vec<f32>,
    vars: Vec<f32>,
    channels: usize,
    n_stats: usize,
    eps: f64,
}

impl BnStats {
    fn load(w: &Weights, prefix: &str, c: usize, n: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            means: w.vec(&format!("{prefix}.running_means"), &[n, c])?,
            vars: w.vec(&format!("{prefix}.running_vars"), &[n, c])?,
            channels: c,
            n_stats: n,
            eps,
        })
    }

    /// `(mean, 1/sqrt(var + eps))` for a truncation, reproducing the package bit for bit in the
    /// row choice: `coef, idx = modf(truncation / (1 / (n_stats - 1)))` in f64, and when `coef != 0`
    /// the mix `m[idx] * coef + m[idx + 1] * (1 - coef)` (weights swapped relative to a lerp).
    fn at(&self, truncation: f64) -> (Vec<f32>, Vec<f32>) {
        let step = 1.0f64 / (self.n_stats as f64 - 1.0);
        let q = truncation / step;
        let mut idx = q.trunc() as usize;
        let mut coef = q - q.trunc();
        // `1.0 / (1.0 / 49.0)` is 49.00000000000001: at the top of the range the quotient can
        // land a rounding error past the last row, where the package would index out of range.
        // That is the last row.
        if idx >= self.n_stats - 1 {
            idx = self.n_stats - 1;
            coef = 0.0;
        }
        let c = self.channels;
        let row = |v: &[f32], r: usize| v[r * c..(r + 1) * c].to_vec();
        let (m, v) = if coef != 0.0 {
            // f32 arithmetic with the scalar rounded to f32, as torch does for `tensor * float`.
            let (a, b) = (coef as f32, (1.0 - coef) as f32);
            let mix = |v: &[f32]| -> Vec<f32> {
                (0..c)
                    .map(|j| v[idx * c + j] * a + v[(idx + 1) * c + j] * b)
                    .collect()
            };
            (mix(&self.means), mix(&self.vars))
        } else {
            (row(&self.means, idx), row(&self.vars, idx))
        };
        let inv = v
            .iter()
            .map(|&x| 1.0 / ((x + self.eps as f32).sqrt()))
            .collect();
        (m, inv)
    }
}

/// Conditional BN: `(x - mean)/sqrt(var + eps) * (1 + scale(cond)) + offset(cond)`.
struct CondBn {
    stats: BnStats,
    scale: Linear,
    offset: Linear,
}

impl CondBn {
    fn load(w: &Weights, p: &str, c: usize, cond: usize, cfg: &BigGanConfig) -> Result<Self> {
        Ok(Self {
            stats: BnStats::load(w, p, c, cfg.n_stats, cfg.eps)?,
            scale: Linear::load(w, &format!("{p}.scale"), cond, c, false)?,
            offset: Linear::load(w, &format!("{p}.offset"), cond, c, false)?,
        })
    }

    /// Per-sample affine `(a, b)` [B, C] such that `bn(x) = x * a + b`, computed in f32.
    fn affine(&self, cond: &Tensor, t: f64, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let (m, inv) = self.stats.at(t);
        let c = m.len();
        let m = Tensor::from_vec(m, (1, c), dev)?;
        let inv = Tensor::from_vec(inv, (1, c), dev)?;
        let gain = (self.scale.forward(cond)?.to_dtype(DType::F32)? + 1.0)?;
        let off = self.offset.forward(cond)?.to_dtype(DType::F32)?;
        let a = gain.broadcast_mul(&inv)?;
        let b = (off - a.broadcast_mul(&m)?)?;
        Ok((a, b))
    }

    /// `relu(bn(x))` in one pass.
    fn forward_relu(&self, x: &Tensor, cond: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let (a, b) = self.affine(cond, t, x.device())?;
        let dt = x.dtype();
        fused::scale_shift(x, &a.to_dtype(dt)?, &b.to_dtype(dt)?, true)
    }
}

struct GenBlock {
    bn: [CondBn; 4],
    conv: [Conv; 4],
    up: bool,
}

impl GenBlock {
    fn forward(&self, x: &Tensor, cond: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let mut h = self.conv[0].forward(&self.bn[0].forward_relu(x, cond, t)?)?;
        h = self.bn[1].forward_relu(&h, cond, t)?;
        if self.up {
            h = fused::upsample_nearest2x(&h)?;
        }
        h = self.conv[1].forward(&h)?;
        h = self.conv[2].forward(&self.bn[2].forward_relu(&h, cond, t)?)?;
        h = self.conv[3].forward(&self.bn[3].forward_relu(&h, cond, t)?)?;
        // The skip path keeps the first `cout` channels of x (all of them when cin = cout).
        fused::add_skip(&h, x, self.up)
    }
}

/// SAGAN self-attention as BigGAN's releases compute it (BigGAN-deep and the BigGAN-PyTorch
/// layout alike): `x + γ·o(g·softmax(θᵀφ)ᵀ)` with φ and g max-pooled ×2.
pub(crate) struct SelfAttn {
    pub(crate) theta: Conv,
    pub(crate) phi: Conv,
    pub(crate) g: Conv,
    pub(crate) o: Conv,
    pub(crate) gamma: Tensor,
}

impl Module for SelfAttn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let theta = self.theta.forward(x)?.reshape((b, c / 8, h * w))?;
        let phi = self
            .phi
            .forward(x)?
            .max_pool2d(2)?
            .reshape((b, c / 8, h * w / 4))?;
        // Transposed operands go to the GEMM as strides: no copies of the [HW, HW/4] map.
        let attn = theta.transpose(1, 2)?.matmul(&phi)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let g = self
            .g
            .forward(x)?
            .max_pool2d(2)?
            .reshape((b, c / 2, h * w / 4))?;
        let attn_g = g
            .matmul(&attn.transpose(1, 2)?)?
            .reshape((b, c / 2, h, w))?;
        let o = self.o.forward(&attn_g)?;
        x + o.broadcast_mul(&self.gamma.reshape((1, 1, 1, 1))?)?
    }
}

enum Layer {
    Block(Box<GenBlock>),
    Attn(SelfAttn),
}

/// BigGAN-deep generator with spectral norm folded into the weights.
pub struct BigGanDeep {
    info: ModelInfo,
    cfg: BigGanConfig,
    /// Class embedding weight transposed: [num_classes, z_dim] (rows are class embeddings).
    embed_t: Tensor,
    gen_z: Linear,
    layers: Vec<Layer>,
    bn_stats: BnStats,
    bn_weight: Vec<f32>,
    bn_bias: Vec<f32>,
    to_rgb: Conv,
}

impl BigGanDeep {
    pub(crate) fn new(cfg: BigGanConfig, name: String, w: &Weights) -> Result<Self> {
        let ch = cfg.channel_width;
        let cond = cfg.z_dim * 2;
        let embed_t = w
            .get("embeddings.weight", &[cfg.z_dim, cfg.num_classes])?
            .t()?
            .contiguous()?;
        let gen_z = Linear::load(w, "generator.gen_z", cond, 4 * 4 * 16 * ch, true)?;
        let mut layers = Vec::new();
        for (i, &(up, cin, cout)) in cfg.layers.iter().enumerate() {
            let (cin, cout) = (cin * ch, cout * ch);
            if i == cfg.attention_layer_position {
                let p = format!("generator.layers.{}", layers.len());
                layers.push(Layer::Attn(SelfAttn {
                    theta: conv(w, &format!("{p}.snconv1x1_theta"), cin, cin / 8, 1, false)?,
                    phi: conv(w, &format!("{p}.snconv1x1_phi"), cin, cin / 8, 1, false)?,
                    g: conv(w, &format!("{p}.snconv1x1_g"), cin, cin / 2, 1, false)?,
                    o: conv(w, &format!("{p}.snconv1x1_o_conv"), cin / 2, cin, 1, false)?,
                    gamma: w.get(&format!("{p}.gamma"), &[1])?,
                }));
            }
            let p = format!("generator.layers.{}", layers.len());
            let mid = cin / 4;
            let bn = |j: usize, c: usize| CondBn::load(w, &format!("{p}.bn_{j}"), c, cond, &cfg);
            let block_conv = |j: usize, a: usize, b: usize, k: usize| {
                conv(w, &format!("{p}.conv_{j}"), a, b, k, true)
            };
            layers.push(Layer::Block(Box::new(GenBlock {
                bn: [bn(0, cin)?, bn(1, mid)?, bn(2, mid)?, bn(3, mid)?],
                conv: [
                    block_conv(0, cin, mid, 1)?,
                    block_conv(1, mid, mid, 3)?,
                    block_conv(2, mid, mid, 3)?,
                    block_conv(3, mid, cout, 1)?,
                ],
                up,
            })));
        }
        let bn_stats = BnStats::load(w, "generator.bn", ch, cfg.n_stats, cfg.eps)?;
        let bn_weight = w.vec("generator.bn.weight", &[ch])?;
        let bn_bias = w.vec("generator.bn.bias", &[ch])?;
        let to_rgb = conv(w, "generator.conv_to_rgb", ch, ch, 3, true)?.narrow_out(3)?;
        let mut spec = GeneratorSpec::new(
            name,
            "biggan-deep",
            cfg.z_dim,
            cfg.num_classes,
            3,
            cfg.resolution(),
        );
        spec.knobs = KNOBS;
        spec.weights_sha256 = w.sha256.clone();
        Ok(Self {
            info: ModelInfo::of(spec, w),
            cfg,
            embed_t,
            gen_z,
            layers,
            bn_stats,
            bn_weight,
            bn_bias,
            to_rgb,
        })
    }

    /// The knobs of a pass at BigGAN truncation `t`.
    pub fn truncation(t: f64) -> Knobs {
        Knobs::default().with("gen_truncation", crate::params::decl::Value::Float(t))
    }

    pub fn config(&self) -> &BigGanConfig {
        &self.cfg
    }

    fn class_embedding(&self, classes: &ClassInput, b: usize) -> Result<Tensor> {
        match classes {
            ClassInput::Ids(ids) => {
                let idx = Tensor::from_slice(ids, ids.len(), &self.info.device)?;
                Ok(self.embed_t.index_select(&idx, 0)?)
            }
            ClassInput::Soft(v) => {
                let cv = Tensor::from_slice(v, (b, self.cfg.num_classes), &Device::Cpu)?
                    .to_device(&self.info.device)?
                    .to_dtype(self.info.dtype)?;
                Ok(cv.matmul(&self.embed_t)?)
            }
            ClassInput::None => Err(GeneratorError::Input("BigGAN-deep needs classes".into())),
        }
    }
}

impl Generator for BigGanDeep {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn info_mut(&mut self) -> Option<&mut ModelInfo> {
        Some(&mut self.info)
    }

    fn synthesize(
        &self,
        z: &Tensor,
        _space: Space,
        classes: &ClassInput,
        knobs: &Knobs,
        _noise: &[NoiseKey],
    ) -> Result<Tensor> {
        let truncation = knobs.float("gen_truncation").unwrap_or(1.0);
        if !(truncation > 0.0 && truncation <= 1.0) {
            return Err(GeneratorError::Input(format!(
                "BigGAN truncation {truncation} outside (0, 1]"
            )));
        }
        let (b, _) = z.dims2()?;
        let embed = self.class_embedding(classes, b)?;
        let cond = Tensor::cat(&[z, &embed], 1)?;
        let ch = self.cfg.channel_width;
        let mut h = self
            .gen_z
            .forward(&cond)?
            .reshape((b, 4, 4, 16 * ch))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        for layer in &self.layers {
            h = match layer {
                Layer::Block(blk) => blk.forward(&h, &cond, truncation)?,
                Layer::Attn(a) => a.forward(&h)?,
            };
        }
        // Final non-conditional BN (eval-mode batch_norm with the truncation's stats row).
        let (m, inv) = self.bn_stats.at(truncation);
        let a: Vec<f32> = (0..ch).map(|j| inv[j] * self.bn_weight[j]).collect();
        let bias: Vec<f32> = (0..ch).map(|j| self.bn_bias[j] - m[j] * a[j]).collect();
        let a = Tensor::from_vec(a, ch, &self.info.device)?.to_dtype(self.info.dtype)?;
        let bias = Tensor::from_vec(bias, ch, &self.info.device)?.to_dtype(self.info.dtype)?;
        h = fused::scale_shift(&h, &a, &bias, true)?;
        let out = self.to_rgb.forward(&h)?.tanh()?;
        Ok(out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: usize) -> BnStats {
        // Row r holds the value r in every channel, so the chosen row is readable.
        let c = 2;
        let means: Vec<f32> = (0..n).flat_map(|r| vec![r as f32; c]).collect();
        BnStats {
            vars: means.clone(),
            means,
            channels: c,
            n_stats: n,
            eps: 0.0,
        }
    }

    #[test]
    fn package_configs_validate() {
        for r in [128, 256, 512] {
            let c = BigGanConfig::deep(r).unwrap();
            c.validate().unwrap();
            assert_eq!(c.resolution(), r);
        }
        // deep-256 has 12 blocks; attention sits before block 8 at 64x64 with 512 channels.
        let c = BigGanConfig::deep(256).unwrap();
        assert_eq!(c.layers.len(), 12);
        assert_eq!(c.layers[8].1 * c.channel_width, 512);
    }

    #[test]
    fn bn_row_selection_matches_the_package() {
        let s = stats(51);
        // Exact grid values hit one row.
        assert_eq!(s.at(1.0).0[0], 50.0);
        assert_eq!(s.at(0.4).0[0], 20.0);
        // Between rows: idx*coef + (idx+1)*(1-coef), the package's swapped weights.
        // 0.47 / 0.02 = 23.5 -> 23*0.5 + 24*0.5.
        let m = s.at(0.47).0[0];
        assert!((m - 23.5).abs() < 1e-3, "{m}");
        // 0.405 -> q = 20.25: swapped mix = 20*0.25 + 21*0.75 = 20.75 (a plain lerp gives 20.25).
        let m = s.at(0.405).0[0];
        assert!((m - 20.75).abs() < 1e-3, "{m}");
    }

    /// `1.0 / (1.0 / (n - 1))` lands a rounding error above `n - 1` for these counts; truncation
    /// 1.0 is the last row, never a read past it.
    #[test]
    fn the_top_of_the_range_is_the_last_row_for_every_n_stats() {
        for n in [2, 3, 50, 51, 99, 104, 108, 1000] {
            let s = stats(n);
            assert_eq!(s.at(1.0).0[0], (n - 1) as f32, "n_stats {n}");
        }
    }

    #[test]
    fn huge_config_values_are_refused_by_name() {
        let mut c = BigGanConfig::deep(128).unwrap();
        c.channel_width = 1 << 62;
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("channel_width") && e.contains("larger than"),
            "{e}"
        );
        let mut c = BigGanConfig::deep(128).unwrap();
        c.layers[2].2 = usize::MAX;
        assert!(c.validate().unwrap_err().contains("layers[2]"));
    }

    #[test]
    fn flops_match_the_published_figures() {
        for (res, package, executed) in [(128, 22.6, 17.9), (256, 77.6, 58.8)] {
            let (e, p) = BigGanConfig::deep(res).unwrap().flops_per_image();
            assert!((p / 1e9 - package).abs() < 0.05, "{res}: {p}");
            assert!((e / 1e9 - executed).abs() < 0.05, "{res}: {e}");
        }
    }
}
