//! StyleGAN2, computed as NVlabs' `stylegan2-ada-pytorch` `Generator` does in fp32 (see
//! `../shared/reference/stylegan2.md`): `forward = synthesis(truncate(mapping(z, c)), noise)`.
//!
//! Every layer is one small type with its gains named: [`FullyConnected`] (equalized learning
//! rate: the stored weight times `lr_mul / sqrt(in)`, the bias times `lr_mul`), [`Mapping`]
//! (pixel norm, optional class embedding, lrelu·√2 layers), [`SynthesisLayer`] (modulated,
//! demodulated 3×3 conv, optionally up-sampling with the [1,3,3,1] FIR, noise, bias, lrelu·√2,
//! clamp), [`ToRgb`] (modulated 1×1 conv without demodulation) and [`Block`]. The batched form
//! of the modulated conv is used (`x·s → shared conv → ·d`): no per-sample weights.

use super::weights::{Conv, Weights};
use super::{
    ClassInput, Generator, GeneratorError, GeneratorSpec, Knobs, LatentSpace, ModelInfo, NoiseKey,
    Result, Space,
};
use crate::params::decl::{Kind, Param, Value};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

/// How the synthesis layers' noise inputs are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseMode {
    /// The checkpoint's own fixed noise buffers (`noise_const`): GenRep's choice.
    Const,
    /// Fresh noise per image, drawn from the sample's own random streams (the deterministic
    /// counterpart of NVlabs' `random`).
    Random,
    /// No noise.
    None,
}

impl NoiseMode {
    pub const ALL: [&'static str; 3] = ["const", "random", "none"];

    fn as_str(self) -> &'static str {
        match self {
            NoiseMode::Const => "const",
            NoiseMode::Random => "random",
            NoiseMode::None => "none",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "const" => Some(NoiseMode::Const),
            "random" => Some(NoiseMode::Random),
            "none" => Some(NoiseMode::None),
            _ => None,
        }
    }
}

fn default_num_layers() -> usize {
    8
}
fn default_lr_multiplier() -> f64 {
    0.01
}
fn default_channel_base() -> usize {
    32768
}
fn default_channel_max() -> usize {
    512
}
fn default_noise_mode() -> NoiseMode {
    NoiseMode::Const
}

/// The mapping network's constructor arguments (NVlabs `mapping_kwargs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MappingConfig {
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    /// Width of the class embedding (default `w_dim`).
    #[serde(default)]
    pub embed_features: Option<usize>,
    /// Width of the hidden layers (default `w_dim`).
    #[serde(default)]
    pub layer_features: Option<usize>,
    #[serde(default = "default_lr_multiplier")]
    pub lr_multiplier: f64,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            num_layers: default_num_layers(),
            embed_features: None,
            layer_features: None,
            lr_multiplier: default_lr_multiplier(),
        }
    }
}

/// The synthesis network's constructor arguments (NVlabs `synthesis_kwargs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthesisConfig {
    #[serde(default = "default_channel_base")]
    pub channel_base: usize,
    #[serde(default = "default_channel_max")]
    pub channel_max: usize,
    /// Clamp of every conv output (256 in stylegan2-ada configs; none in TF-converted ones).
    #[serde(default)]
    pub conv_clamp: Option<f64>,
    /// Ignored (we compute in the model dtype); accepted because NVlabs configs carry it.
    #[serde(default)]
    pub num_fp16_res: Option<usize>,
    /// Only `skip` (StyleGAN2's generator) is supported.
    #[serde(default)]
    pub architecture: Option<String>,
}

impl Default for SynthesisConfig {
    fn default() -> Self {
        Self {
            channel_base: default_channel_base(),
            channel_max: default_channel_max(),
            conv_clamp: None,
            num_fp16_res: None,
            architecture: None,
        }
    }
}

/// `config.json` of a `stylegan2` model directory: NVlabs' `Generator` arguments plus serving
/// choices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StyleGan2Config {
    #[serde(default)]
    pub name: Option<String>,
    pub z_dim: usize,
    #[serde(default)]
    pub c_dim: usize,
    pub w_dim: usize,
    pub img_resolution: usize,
    pub img_channels: usize,
    #[serde(default)]
    pub mapping_kwargs: MappingConfig,
    #[serde(default)]
    pub synthesis_kwargs: SynthesisConfig,
    /// The noise mode served when a request names none.
    #[serde(default = "default_noise_mode")]
    pub noise_mode: NoiseMode,
    /// A window of the synthesised square that is served (every image, grid and array): e.g.
    /// GenRep's LSUN-car crop `{"top": 64, "left": 0, "height": 384, "width": 512}`.
    #[serde(default)]
    pub crop: Option<Crop>,
}

/// A window of the synthesised image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl StyleGan2Config {
    /// Rejects configs NVlabs' generator could not be built from.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = self.img_resolution;
        if !(4..=1024).contains(&r) || !r.is_power_of_two() {
            return Err(format!(
                "img_resolution = {r}: must be a power of two in 4..=1024"
            ));
        }
        if !(self.img_channels == 1 || self.img_channels == 3) {
            return Err(format!("img_channels = {} (1 or 3)", self.img_channels));
        }
        for (field, v, lo, hi) in [
            ("z_dim", self.z_dim, 1, 1 << 14),
            ("w_dim", self.w_dim, 1, 1 << 14),
            ("c_dim", self.c_dim, 0, 1 << 16),
            (
                "mapping_kwargs.num_layers",
                self.mapping_kwargs.num_layers,
                1,
                64,
            ),
            (
                "mapping_kwargs.embed_features",
                self.mapping_kwargs.embed_features.unwrap_or(1),
                1,
                1 << 14,
            ),
            (
                "mapping_kwargs.layer_features",
                self.mapping_kwargs.layer_features.unwrap_or(1),
                1,
                1 << 14,
            ),
            (
                "synthesis_kwargs.channel_base",
                self.synthesis_kwargs.channel_base,
                4,
                1 << 24,
            ),
            (
                "synthesis_kwargs.channel_max",
                self.synthesis_kwargs.channel_max,
                1,
                1 << 14,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("{field} = {v}: must be in {lo}..={hi}"));
            }
        }
        if self.synthesis_kwargs.channel_base / r == 0 {
            return Err(format!(
                "synthesis_kwargs.channel_base = {} leaves no channels at {r} px (channels at r are channel_base / r)",
                self.synthesis_kwargs.channel_base
            ));
        }
        let lr = self.mapping_kwargs.lr_multiplier;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!(
                "mapping_kwargs.lr_multiplier = {lr}: must be positive"
            ));
        }
        if let Some(c) = self.synthesis_kwargs.conv_clamp {
            if !(c > 0.0 && c.is_finite()) {
                return Err(format!(
                    "synthesis_kwargs.conv_clamp = {c}: must be positive (or null)"
                ));
            }
        }
        if let Some(c) = self.crop {
            let fits = |a: usize, b: usize| a.checked_add(b).is_some_and(|e| e <= r);
            if c.height == 0 || c.width == 0 || !fits(c.top, c.height) || !fits(c.left, c.width) {
                return Err(format!(
                    "crop {c:?} does not fit inside the {r}x{r} image (and must not be empty)"
                ));
            }
        }
        match self.synthesis_kwargs.architecture.as_deref() {
            None | Some("skip") => {}
            Some(a) => {
                return Err(format!(
                    "synthesis_kwargs.architecture = `{a}`: only `skip` (StyleGAN2's generator) is supported"
                ))
            }
        }
        Ok(())
    }

    /// Channels of the block at resolution `r`.
    fn channels(&self, r: usize) -> usize {
        (self.synthesis_kwargs.channel_base / r).min(self.synthesis_kwargs.channel_max)
    }

    /// Block resolutions 4, 8, …, `img_resolution`.
    fn resolutions(&self) -> Vec<usize> {
        (2..=self.img_resolution.trailing_zeros())
            .map(|k| 1 << k)
            .collect()
    }

    /// Rows of w the synthesis network takes: one per conv and one for the last to-RGB.
    pub fn num_ws(&self) -> usize {
        2 * self.img_resolution.trailing_zeros() as usize - 2
    }
}

/// ψ: the truncation of w toward `w_avg` (`gen_truncation`, so BigGAN and StyleGAN share the
/// name of "the generator's truncation"), the rows it applies to, and the noise mode.
fn knobs(noise_default: NoiseMode) -> &'static [Param] {
    const PSI: Param = Param {
        name: "gen_truncation",
        aliases: &[],
        kind: Kind::Float {
            default: 1.0,
            min: -1.0,
            max: 2.0,
            min_open: false,
        },
        doc: "StyleGAN's truncation psi: w_avg + psi·(w − w_avg); 1 = none.",
    };
    const CUTOFF: Param = Param {
        name: "truncation_cutoff",
        aliases: &[],
        kind: Kind::Int {
            default: 0,
            min: 0,
            max: 64,
            limit: None,
        },
        doc: "Apply psi to the first N rows of w only (coarse layers); 0 = all rows.",
    };
    const fn noise(default: &'static str) -> Param {
        Param {
            name: "noise_mode",
            aliases: &[],
            kind: Kind::Choice {
                default,
                values: &NoiseMode::ALL,
            },
            doc: "Noise inputs: const (the checkpoint's buffers), random (drawn from the sample's own streams: still deterministic), none.",
        }
    }
    static CONST: [Param; 3] = [PSI, CUTOFF, noise("const")];
    static RANDOM: [Param; 3] = [PSI, CUTOFF, noise("random")];
    static NONE: [Param; 3] = [PSI, CUTOFF, noise("none")];
    match noise_default {
        NoiseMode::Const => &CONST,
        NoiseMode::Random => &RANDOM,
        NoiseMode::None => &NONE,
    }
}

/// The knobs every StyleGAN2 model declares (with the `const` noise default), for the registry.
pub fn family_knobs() -> &'static [Param] {
    knobs(NoiseMode::Const)
}

/// `leaky_relu(x, 0.2) · √2` (NVlabs' `lrelu` with its default gain).
fn lrelu(x: &Tensor, gain: f64) -> candle_core::Result<Tensor> {
    let pos = x.relu()?;
    let neg = (x - &pos)?;
    (pos + (neg * 0.2)?)? * (gain * std::f64::consts::SQRT_2)
}

/// `x · rsqrt(mean(x², dim 1) + 1e-8)`.
fn normalize_2nd_moment(x: &Tensor) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(1)?;
    x.broadcast_div(&(ms + 1e-8)?.sqrt()?)
}

/// An equalized-learning-rate fully-connected layer: `y = x·(W·wg)ᵀ + b·bg`, `wg = lr/√in`,
/// `bg = lr`, then lrelu·√2 or nothing. Computed in f32 whatever the model dtype (as NVlabs
/// runs its mapping network): these layers are tiny, and styles feed every demodulation.
struct FullyConnected {
    weight_t: Tensor,
    bias: Tensor,
    lrelu: bool,
}

impl FullyConnected {
    fn load(w: &Weights, p: &str, din: usize, dout: usize, lr: f64, lrelu: bool) -> Result<Self> {
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
struct Mapping {
    embed: Option<FullyConnected>,
    layers: Vec<FullyConnected>,
    w_avg: Tensor,
}

impl Mapping {
    fn load(w: &Weights, cfg: &StyleGan2Config) -> Result<Self> {
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
    fn forward(&self, z: &Tensor, c: Option<&Tensor>) -> candle_core::Result<Tensor> {
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
    fn truncate(&self, ws: &Tensor, psi: f64, cutoff: usize) -> candle_core::Result<Tensor> {
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
fn fir_kernel(channels: usize, dev: &Device, dtype: DType) -> candle_core::Result<Tensor> {
    let f = [1.0f32, 3.0, 3.0, 1.0];
    let k: Vec<f32> = (0..channels)
        .flat_map(|_| (0..16).map(move |i| f[i / 4] * f[i % 4] / 16.0))
        .collect();
    Tensor::from_vec(k, (channels, 1, 4, 4), dev)?.to_dtype(dtype)
}

/// Pads `x` `[B, C, H, W]` with zeros: `before`/`after` on both spatial dims.
fn pad2(x: &Tensor, before: usize, after: usize) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, before, after)?
        .pad_with_zeros(3, before, after)
}

/// `op(x, k)` in f32 on the CPU when the model computes in half precision there (candle's CPU
/// convolutions have no f16/bf16 GEMM), in the model dtype elsewhere.
fn in_cpu_f32(
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
fn fir(x: &Tensor, kernel: &Tensor) -> candle_core::Result<Tensor> {
    let c = x.dim(1)?;
    in_cpu_f32(x, kernel, |x, k| x.conv2d(k, 0, 1, 1, c))
}

/// NVlabs' `upsample2d`: zero-insert ×2, pad [2, 1], FIR with gain 4.
fn upsample2d(x: &Tensor, kernel: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let up = x
        .reshape((b, c, h, 1, w, 1))?
        .pad_with_zeros(3, 0, 1)?
        .pad_with_zeros(5, 0, 1)?
        .reshape((b, c, 2 * h, 2 * w))?;
    fir(&pad2(&up, 2, 1)?, kernel)
}

/// `styles = affine(w)`: a fully-connected layer, lr 1.
fn affine(w: &Weights, p: &str, w_dim: usize, channels: usize) -> Result<FullyConnected> {
    FullyConnected::load(w, &format!("{p}.affine"), w_dim, channels, 1.0, false)
}

/// A modulated, demodulated 3×3 conv (optionally up-sampling ×2), noise, bias, lrelu·√2, clamp.
struct SynthesisLayer {
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
    fn load(
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

    fn forward(
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
struct ToRgb {
    affine: FullyConnected,
    conv: Conv,
    gain: f64,
    bias: Tensor,
    clamp: Option<f64>,
}

impl ToRgb {
    fn load(w: &Weights, p: &str, cin: usize, cfg: &StyleGan2Config) -> Result<Self> {
        let c = cfg.img_channels;
        Ok(Self {
            affine: affine(w, p, cfg.w_dim, cin)?,
            conv: Conv::new(w.get(&format!("{p}.weight"), &[c, cin, 1, 1])?, None, 1, 0),
            gain: 1.0 / (cin as f64).sqrt(),
            bias: w.get(&format!("{p}.bias"), &[c])?,
            clamp: cfg.synthesis_kwargs.conv_clamp,
        })
    }

    fn forward(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
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
struct Block {
    konst: Option<Tensor>,
    conv0: Option<SynthesisLayer>,
    conv1: SynthesisLayer,
    torgb: ToRgb,
    /// The FIR of the image skip (blocks past b4).
    fir: Option<Tensor>,
    /// The first w row this block reads.
    first_w: usize,
}

/// StyleGAN2's generator.
pub struct StyleGan2 {
    info: ModelInfo,
    cfg: StyleGan2Config,
    mapping: Mapping,
    blocks: Vec<Block>,
}

impl StyleGan2 {
    pub(crate) fn new(cfg: StyleGan2Config, name: String, w: &Weights) -> Result<Self> {
        let mapping = Mapping::load(w, &cfg)?;
        let mut blocks = Vec::new();
        let mut noise_stream = 0;
        let mut first_w = 0;
        for r in cfg.resolutions() {
            let p = format!("synthesis.b{r}");
            let cout = cfg.channels(r);
            let block = if r == 4 {
                let konst = w.get(&format!("{p}.const"), &[cout, 4, 4])?;
                let conv1 =
                    SynthesisLayer::load(w, &format!("{p}.conv1"), cout, cout, 4, false, 0, &cfg)?;
                noise_stream = 1;
                Block {
                    konst: Some(konst),
                    conv0: None,
                    conv1,
                    torgb: ToRgb::load(w, &format!("{p}.torgb"), cout, &cfg)?,
                    fir: None,
                    first_w,
                }
            } else {
                let cin = cfg.channels(r / 2);
                let conv0 = SynthesisLayer::load(
                    w,
                    &format!("{p}.conv0"),
                    cin,
                    cout,
                    r,
                    true,
                    noise_stream,
                    &cfg,
                )?;
                let conv1 = SynthesisLayer::load(
                    w,
                    &format!("{p}.conv1"),
                    cout,
                    cout,
                    r,
                    false,
                    noise_stream + 1,
                    &cfg,
                )?;
                noise_stream += 2;
                Block {
                    konst: None,
                    conv0: Some(conv0),
                    conv1,
                    torgb: ToRgb::load(w, &format!("{p}.torgb"), cout, &cfg)?,
                    fir: Some(fir_kernel(cfg.img_channels, w.device(), w.dtype())?),
                    first_w,
                }
            };
            // b4 reads rows 0-1; each later block three rows from the previous to-RGB's.
            first_w += if r == 4 { 1 } else { 2 };
            blocks.push(block);
        }
        let mut spec = GeneratorSpec::new(
            name,
            "stylegan2",
            cfg.z_dim,
            cfg.c_dim,
            cfg.img_channels,
            cfg.img_resolution,
        );
        spec.spaces.push(LatentSpace {
            space: Space::W,
            dim: cfg.w_dim,
        });
        spec.knobs = knobs(cfg.noise_mode);
        if let Some(c) = cfg.crop {
            (spec.height, spec.width) = (c.height, c.width);
        }
        spec.weights_sha256 = w.sha256.clone();
        Ok(Self {
            info: ModelInfo {
                spec,
                device: w.device().clone(),
                dtype: w.dtype(),
                assets: Default::default(),
            },
            cfg,
            mapping,
            blocks,
        })
    }

    pub fn config(&self) -> &StyleGan2Config {
        &self.cfg
    }

    /// Knobs of a pass at ψ `psi`, cutoff `cutoff` (0 = all rows) and noise `mode`.
    pub fn knobs(psi: f64, cutoff: u64, mode: NoiseMode) -> Knobs {
        Knobs::default()
            .with("gen_truncation", Value::Float(psi))
            .with("truncation_cutoff", Value::Int(cutoff))
            .with("noise_mode", Value::Choice(mode.as_str()))
    }

    /// The class input as `[B, c_dim]` on the device (ids one-hot, soft rows as given).
    fn class_rows(&self, classes: &ClassInput, b: usize) -> Result<Option<Tensor>> {
        let k = self.cfg.c_dim;
        let dev = &self.info.device;
        let rows = match classes {
            ClassInput::None if k == 0 => return Ok(None),
            ClassInput::None => {
                return Err(GeneratorError::Input(
                    "this StyleGAN2 is conditional: give classes".into(),
                ))
            }
            ClassInput::Ids(ids) => {
                let mut v = vec![0f32; b * k];
                for (i, &c) in ids.iter().enumerate() {
                    v[i * k + c as usize] = 1.0;
                }
                v
            }
            ClassInput::Soft(v) => v.clone(),
        };
        Ok(Some(
            Tensor::from_vec(rows, (b, k), &Device::Cpu)?.to_device(dev)?,
        ))
    }

    /// Truncated ws `[B, num_ws, w_dim]` of z.
    pub fn ws(&self, z: &Tensor, classes: &ClassInput, knobs: &Knobs) -> Result<Tensor> {
        let (b, _) = z.dims2()?;
        let c = self.class_rows(classes, b)?;
        let w = self.mapping.forward(z, c.as_ref())?;
        let ws = w
            .unsqueeze(1)?
            .broadcast_as((b, self.cfg.num_ws(), self.cfg.w_dim))?
            .contiguous()?;
        let psi = knobs.float("gen_truncation").unwrap_or(1.0);
        let cutoff = knobs.float("truncation_cutoff").unwrap_or(0.0) as usize;
        Ok(self.mapping.truncate(&ws, psi, cutoff)?)
    }

    /// Images `[B, C, R, R]` f32 on the CPU from ws `[B, num_ws, w_dim]`.
    pub fn synthesis(&self, ws: &Tensor, knobs: &Knobs, keys: &[NoiseKey]) -> Result<Tensor> {
        let (b, n, _) = ws.dims3()?;
        if n != self.cfg.num_ws() {
            return Err(GeneratorError::Input(format!(
                "ws has {n} rows, expected num_ws = {}",
                self.cfg.num_ws()
            )));
        }
        let mode = match knobs.get("noise_mode") {
            Some(Value::Choice(m)) => NoiseMode::parse(m).unwrap_or(self.cfg.noise_mode),
            _ => self.cfg.noise_mode,
        };
        let row = |i: usize| ws.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        let mut x: Option<Tensor> = None;
        let mut img: Option<Tensor> = None;
        for blk in &self.blocks {
            let i = blk.first_w;
            let h = match (&blk.konst, &blk.conv0, x.take()) {
                (Some(k), _, _) => {
                    let k = k.unsqueeze(0)?.broadcast_as((b, k.dim(0)?, 4, 4))?;
                    blk.conv1.forward(&k.contiguous()?, &row(i)?, mode, keys)?
                }
                (None, Some(c0), Some(prev)) => {
                    let h = c0.forward(&prev, &row(i)?, mode, keys)?;
                    blk.conv1.forward(&h, &row(i + 1)?, mode, keys)?
                }
                _ => unreachable!("blocks past b4 have conv0 and an input"),
            };
            let rgb_row = if blk.konst.is_some() { i + 1 } else { i + 2 };
            let y = blk.torgb.forward(&h, &row(rgb_row)?)?;
            img = Some(match (img.take(), &blk.fir) {
                (Some(prev), Some(k)) => (upsample2d(&prev, k)? + y)?,
                _ => y,
            });
            x = Some(h);
        }
        let mut img = img.expect("at least b4");
        if let Some(c) = self.cfg.crop {
            img = img.narrow(2, c.top, c.height)?.narrow(3, c.left, c.width)?;
        }
        Ok(img
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .contiguous()?)
    }
}

impl Generator for StyleGan2 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// z → w: the mapping network and ψ, all rows alike (then one row: w-space views add
    /// their offset to every row).
    fn map(&self, z: &Tensor, classes: &ClassInput, knobs: &Knobs, space: Space) -> Result<Tensor> {
        match space {
            Space::Z => Ok(z.clone()),
            Space::W => self.ws(z, classes, knobs),
        }
    }

    fn synthesize(
        &self,
        x: &Tensor,
        space: Space,
        classes: &ClassInput,
        knobs: &Knobs,
        noise: &[NoiseKey],
    ) -> Result<Tensor> {
        let ws = match (space, x.rank()) {
            (Space::Z, _) => self.ws(x, classes, knobs)?,
            // w rows given directly: one row for every layer, as the mapping broadcasts it.
            (Space::W, 2) => {
                let (b, d) = x.dims2()?;
                x.unsqueeze(1)?
                    .broadcast_as((b, self.cfg.num_ws(), d))?
                    .contiguous()?
            }
            (Space::W, _) => x.clone(),
        };
        self.synthesis(&ws, knobs, noise)
    }
}
