//! ResNet-style encoder (configurable depth, width, input channels) with a projection MLP head.
//! BatchNorm runs in training mode during training (batch statistics, running stats updated) and
//! uses the running statistics for evaluation.

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use genrep_kernels::{BatchNorm2d as BatchNorm, Conv2d};
use serde::{Deserialize, Serialize};

/// Encoder shape; saved next to the weights in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub in_channels: usize,
    /// Channels of the first stage; stage s has `width · 2^s`.
    pub width: usize,
    /// Residual blocks per stage.
    pub depth: usize,
    /// Number of stages (each after the first halves the resolution).
    pub stages: usize,
    /// Output size of the projection head.
    pub proj_dim: usize,
}

impl EncoderConfig {
    pub fn feature_dim(&self) -> usize {
        self.width << (self.stages - 1)
    }
}

/// A bias-free `k×k` conv with "same" padding; initialised and named as `candle_nn`'s
/// `conv2d_no_bias` (Kaiming normal, `weight`), so checkpoints are unchanged.
fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let w = vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    Ok(Conv2d::new(w, None, stride, k / 2))
}

/// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1), named as `candle_nn`'s.
fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::load(c, 1e-5, 0.1, vb)
}

struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn1: bn(cout, vb.pp("bn1"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            bn2: bn(cout, vb.pp("bn2"))?,
            shortcut: if stride != 1 || cin != cout {
                Some((
                    conv(cin, cout, 1, stride, vb.pp("down"))?,
                    bn(cout, vb.pp("down_bn"))?,
                ))
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?;
        let h = self.bn2.forward_t(&self.conv2.forward(&h)?, train)?;
        let s = match &self.shortcut {
            Some((c, b)) => b.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        (h + s)?.relu()
    }
}

/// Encoder + projection head.
pub struct Encoder {
    pub cfg: EncoderConfig,
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    head1: Linear,
    head2: Linear,
}

impl Encoder {
    pub fn new(cfg: EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut cin = cfg.width;
        for s in 0..cfg.stages {
            let cout = cfg.width << s;
            for d in 0..cfg.depth {
                let stride = if s > 0 && d == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("stage{s}.block{d}")),
                )?);
                cin = cout;
            }
        }
        let f = cfg.feature_dim();
        Ok(Self {
            stem: conv(cfg.in_channels, cfg.width, 3, 1, vb.pp("stem"))?,
            stem_bn: bn(cfg.width, vb.pp("stem_bn"))?,
            blocks,
            head1: linear(f, f, vb.pp("head1"))?,
            head2: linear(f, cfg.proj_dim, vb.pp("head2"))?,
            cfg,
        })
    }

    /// Pooled features [B, feature_dim] of images [B, C, H, W] in [0, 1].
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = ((x - 0.5)? * 2.0)?;
        let mut h = self
            .stem_bn
            .forward_relu_t(&self.stem.forward(&x)?, train)?;
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        h.mean((2, 3))
    }

    /// Projection-head output [B, proj_dim] (not normalised).
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        self.head2.forward(&self.head1.forward(features)?.relu()?)
    }
}

/// A freshly initialised encoder and the VarMap holding its variables.
pub fn build(cfg: EncoderConfig, device: &Device) -> Result<(Encoder, VarMap)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
    let enc = Encoder::new(cfg, vb)?;
    Ok((enc, vm))
}

/// Whether a variable is trained (BN running statistics are not) and whether it is decayed.
pub fn trainable(name: &str) -> Option<bool> {
    if name.ends_with("running_mean") || name.ends_with("running_var") {
        return None;
    }
    let is_bn = name.contains("bn");
    Some(name.ends_with(".weight") && !is_bn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_bn_modes() {
        let cfg = EncoderConfig {
            in_channels: 1,
            width: 8,
            depth: 1,
            stages: 3,
            proj_dim: 16,
        };
        let (enc, vm) = build(cfg, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &Device::Cpu).unwrap();
        let f = enc.features(&x, true).unwrap();
        assert_eq!(f.dims(), &[4, 32]);
        assert_eq!(enc.project(&f).unwrap().dims(), &[4, 16]);
        // Training-mode forward moved the running mean away from 0; eval mode is deterministic.
        let data = vm.data().lock().unwrap();
        let rm = data["stem_bn.running_mean"]
            .as_tensor()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(rm > 0.0);
        drop(data);
        let a = enc.features(&x, false).unwrap().to_vec2::<f32>().unwrap();
        let b = enc.features(&x, false).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
