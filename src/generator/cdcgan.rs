//! `cdcgan`: the small class-conditional DCGAN used as genrep's embedded default generator.
//!
//! Mirrors `tools/mnist_common.py::CDCGAN` (eval mode):
//! `[z ++ embed(y)] -> linear -> C0 x s x s -> (cBN, ReLU, up x2, conv3) x 2 -> cBN, ReLU, conv3 -> tanh`,
//! where cBN is BatchNorm with running statistics followed by a per-class gain `1 + g[y]` and bias
//! `b[y]`. Soft class vectors mix the class tables linearly (identical to ids for one-hot rows).

use super::weights::{conv, Conv, Linear, Weights};
use super::{
    ClassInput, Generator, GeneratorError, GeneratorSpec, Knobs, ModelInfo, NoiseKey, Result, Space,
};
use candle_core::Module;
use candle_core::{DType, Device, Tensor};
use genrep_kernels::fused;
use serde::{Deserialize, Serialize};

/// `config.json` of a `cdcgan` model directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdcGanConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub z_dim: usize,
    pub embed_dim: usize,
    pub num_classes: usize,
    /// Channels after the linear layer, after the first and after the second upsampling stage.
    pub channels: Vec<usize>,
    pub out_channels: usize,
    /// Spatial size after the linear layer; the output is `4 * base_size`.
    pub base_size: usize,
    pub bn_eps: f64,
}

impl CdcGanConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels.len() != 3 || self.channels.contains(&0) {
            return Err(format!(
                "`channels` must list 3 positive widths, got {:?}",
                self.channels
            ));
        }
        if self.z_dim == 0 || self.num_classes == 0 || self.base_size == 0 {
            return Err("z_dim, num_classes and base_size must be positive".into());
        }
        // Far above any real model; checked before products of them are formed.
        for (field, v, max) in [
            ("z_dim", self.z_dim, 1 << 16),
            ("embed_dim", self.embed_dim, 1 << 16),
            ("num_classes", self.num_classes, 1 << 20),
            ("channels", *self.channels.iter().max().unwrap(), 1 << 14),
            ("base_size", self.base_size, 1 << 14),
        ] {
            if v > max {
                return Err(format!("{field} = {v} is larger than {max}"));
            }
        }
        if !(self.out_channels == 1 || self.out_channels == 3) {
            return Err(format!("out_channels = {} (1 or 3)", self.out_channels));
        }
        if !(self.bn_eps > 0.0 && self.bn_eps.is_finite()) {
            return Err(format!("bn_eps = {} (must be positive)", self.bn_eps));
        }
        Ok(())
    }
}

struct CondBn {
    /// 1/sqrt(running_var + eps) and -mean/sqrt(var + eps): the BN part folded to `x * a + b`.
    a: Tensor,
    b: Tensor,
    /// Per-class gain and bias tables [num_classes, C].
    gain: Tensor,
    bias: Tensor,
}

impl CondBn {
    fn load(w: &Weights, p: &str, c: usize, cfg: &CdcGanConfig) -> Result<Self> {
        let mean = w.vec(&format!("{p}.bn.running_mean"), &[c])?;
        let var = w.vec(&format!("{p}.bn.running_var"), &[c])?;
        let inv: Vec<f32> = var
            .iter()
            .map(|v| 1.0 / (v + cfg.bn_eps as f32).sqrt())
            .collect();
        let shift: Vec<f32> = mean.iter().zip(&inv).map(|(m, i)| -m * i).collect();
        let t = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, c, &Device::Cpu)?
                .to_dtype(w.dtype())?
                .to_device(w.device())?)
        };
        Ok(Self {
            a: t(inv)?,
            b: t(shift)?,
            gain: w.get(&format!("{p}.gain.weight"), &[cfg.num_classes, c])?,
            bias: w.get(&format!("{p}.bias.weight"), &[cfg.num_classes, c])?,
        })
    }

    /// `relu(((x · a + b) · g + β))` with the per-class `g = 1 + gain[y]`, `β = bias[y]`, as one
    /// per-sample affine map and ReLU (one pass over the activation).
    fn forward_relu(&self, x: &Tensor, cls: &ClassSel) -> candle_core::Result<Tensor> {
        let g = (cls.pick(&self.gain)? + 1.0)?;
        let beta = cls.pick(&self.bias)?;
        let scale = g.broadcast_mul(&self.a)?;
        let shift = (g.broadcast_mul(&self.b)? + beta)?;
        fused::scale_shift(x, &scale, &shift, true)
    }
}

/// Selects rows of per-class tables: by id, or as a soft mix.
enum ClassSel {
    Ids(Tensor),
    Soft(Tensor),
}

impl ClassSel {
    fn pick(&self, table: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            ClassSel::Ids(idx) => table.index_select(idx, 0),
            ClassSel::Soft(v) => v.matmul(table),
        }
    }
}

/// The embedded default generator's architecture.
pub struct CdcGan {
    info: ModelInfo,
    cfg: CdcGanConfig,
    embed: Tensor,
    linear: Linear,
    bn: [CondBn; 3],
    conv1: Conv,
    conv2: Conv,
    conv_out: Conv,
}

impl CdcGan {
    pub(crate) fn new(cfg: CdcGanConfig, name: String, w: &Weights) -> Result<Self> {
        let c = &cfg.channels;
        let s = cfg.base_size;
        let mut spec = GeneratorSpec::new(
            name,
            "cdcgan",
            cfg.z_dim,
            cfg.num_classes,
            cfg.out_channels,
            4 * s,
        );
        spec.weights_sha256 = w.sha256.clone();
        Ok(Self {
            embed: w.get("embed.weight", &[cfg.num_classes, cfg.embed_dim])?,
            linear: Linear::load(w, "linear", cfg.z_dim + cfg.embed_dim, c[0] * s * s, true)?,
            bn: [
                CondBn::load(w, "bn0", c[0], &cfg)?,
                CondBn::load(w, "bn1", c[1], &cfg)?,
                CondBn::load(w, "bn2", c[2], &cfg)?,
            ],
            conv1: conv(w, "conv1", c[0], c[1], 3, true)?,
            conv2: conv(w, "conv2", c[1], c[2], 3, true)?,
            conv_out: conv(w, "conv_out", c[2], cfg.out_channels, 3, true)?,
            info: ModelInfo::of(spec, w),
            cfg,
        })
    }
}

impl Generator for CdcGan {
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
        _knobs: &Knobs,
        _noise: &[NoiseKey],
    ) -> Result<Tensor> {
        let (b, _) = z.dims2()?;
        let sel = match classes {
            ClassInput::Ids(ids) => {
                ClassSel::Ids(Tensor::from_slice(ids, ids.len(), &self.info.device)?)
            }
            ClassInput::Soft(v) => ClassSel::Soft(
                Tensor::from_slice(v, (b, self.cfg.num_classes), &Device::Cpu)?
                    .to_device(&self.info.device)?
                    .to_dtype(self.info.dtype)?,
            ),
            ClassInput::None => return Err(GeneratorError::Input("cdcgan needs classes".into())),
        };
        let s = self.cfg.base_size;
        let cond = Tensor::cat(&[z, &sel.pick(&self.embed)?], 1)?;
        let mut h = self
            .linear
            .forward(&cond)?
            .reshape((b, self.cfg.channels[0], s, s))?;
        h = fused::upsample_nearest2x(&self.bn[0].forward_relu(&h, &sel)?)?;
        h = self.conv1.forward(&h)?;
        h = fused::upsample_nearest2x(&self.bn[1].forward_relu(&h, &sel)?)?;
        h = self.conv2.forward(&h)?;
        h = self.conv_out.forward(&self.bn[2].forward_relu(&h, &sel)?)?;
        Ok(h.tanh()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}
