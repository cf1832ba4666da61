//! The generator of Andrew Brock's BigGAN-PyTorch layout (`BigGAN.py`'s `Generator`): BigBiGAN's
//! PyTorch port (GenRep's ImageNet-1K generator), BigGAN-PyTorch's own releases, StudioGAN's
//! BigGAN. It differs from BigGAN-deep (`biggan.rs`) in its blocks (two 3×3 convs and a 1×1
//! shortcut, no bottleneck), its hierarchical z (one chunk per block, concatenated to the shared
//! class embedding), its channel-major first reshape, and its plain stored-statistics BNs (no
//! truncation rows). Spectral norm is folded into the weights by `tools/convert_bigbigan.py`.

use super::biggan::SelfAttn;
use super::weights::{conv, Conv, Linear, Weights};
use super::{
    ClassInput, Generator, GeneratorError, GeneratorSpec, Knobs, ModelInfo, NoiseKey, Result, Space,
};
use candle_core::{DType, Device, Module, Tensor};
use genrep_kernels::fused;
use serde::{Deserialize, Serialize};

/// `config.json` of a BigGAN-PyTorch model directory: the constructor arguments of
/// `BigGAN.Generator` that change the forward pass (their names as there), plus how to serve it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BigGanPytorchConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// Channel width multiplier.
    #[serde(rename = "G_ch")]
    pub g_ch: usize,
    /// Length of z (hierarchical: rounded down to a multiple of the number of chunks, as
    /// BigGAN-PyTorch does).
    pub dim_z: usize,
    /// 32, 64, 128, 256 or 512.
    pub resolution: usize,
    /// Resolutions with self-attention after their block, `_`-separated (`"64"`, `"16_32"`);
    /// `"0"` or empty for none.
    #[serde(rename = "G_attn", default = "default_attn")]
    pub g_attn: String,
    pub n_classes: usize,
    /// One class embedding shared by every conditional BN (else each BN embeds the class).
    #[serde(rename = "G_shared", default = "yes")]
    pub g_shared: bool,
    /// Width of the shared embedding; 0 = `dim_z`.
    #[serde(default)]
    pub shared_dim: usize,
    /// Hierarchical z: chunk 0 feeds the first linear layer, chunk i+1 block i's BNs.
    #[serde(default)]
    pub hier: bool,
    /// The conditional BNs' epsilon (the output BN uses 1e-5, as the reference does).
    #[serde(rename = "BN_eps", default = "default_bn_eps")]
    pub bn_eps: f64,
    /// Serve unconditionally with this class's embedding for every sample (BigBiGAN: 0).
    #[serde(default)]
    pub unconditional_class: Option<usize>,
    /// Checked when present: only ReLU, `bn` and plain stored statistics are this layout.
    #[serde(rename = "G_activation", default)]
    pub g_activation: Option<String>,
    #[serde(default)]
    pub norm_style: Option<String>,
    #[serde(default)]
    pub mybn: bool,
    #[serde(default)]
    pub cross_replica: bool,
    #[serde(default = "default_bottom_width")]
    pub bottom_width: usize,
}

fn default_attn() -> String {
    "64".into()
}
fn yes() -> bool {
    true
}
fn default_bn_eps() -> f64 {
    1e-5
}
fn default_bottom_width() -> usize {
    4
}

/// The largest resolution with self-attention (the released models use 64).
const MAX_ATTENTION_RES: usize = 128;

/// The output BN's epsilon: `layers.bn`'s default, which `Generator` does not override.
const OUTPUT_BN_EPS: f64 = 1e-5;

impl BigGanPytorchConfig {
    /// BigBiGAN (`gan_load.py`): 128 px, `G_ch` 96, z ∈ R^120 hierarchical, attention at 64,
    /// served unconditionally with class 0's embedding.
    pub fn bigbigan_128() -> Self {
        Self {
            name: Some("bigbigan-128".into()),
            g_ch: 96,
            dim_z: 120,
            resolution: 128,
            g_attn: "64".into(),
            n_classes: 1000,
            g_shared: true,
            shared_dim: 128,
            hier: true,
            bn_eps: 1e-4,
            unconditional_class: Some(0),
            g_activation: None,
            norm_style: None,
            mybn: false,
            cross_replica: false,
            bottom_width: 4,
        }
    }

    /// Per block: (in, out, output resolution), as `G_arch` lays them out.
    pub fn blocks(&self) -> Vec<(usize, usize, usize)> {
        let mult: &[(usize, usize)] = match self.resolution {
            32 => &[(4, 4), (4, 4), (4, 4)],
            64 => &[(16, 16), (16, 8), (8, 4), (4, 2)],
            128 => &[(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)],
            256 => &[(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)],
            _ => &[(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1), (1, 1)],
        };
        mult.iter()
            .enumerate()
            .map(|(i, &(a, b))| (a * self.g_ch, b * self.g_ch, 8 << i))
            .collect()
    }

    /// The resolutions `G_attn` names (one no block outputs, like `0`, adds nothing, as in
    /// `G_arch`).
    fn attention(&self) -> std::result::Result<Vec<usize>, String> {
        self.g_attn
            .split('_')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| format!("G_attn = {:?}: `{s}` is not a resolution", self.g_attn))
            })
            .collect()
    }

    /// Number of z chunks (1 without `hier`) and the chunk length.
    pub fn z_chunks(&self) -> (usize, usize) {
        if self.hier {
            let slots = self.blocks().len() + 1;
            (slots, self.dim_z / slots)
        } else {
            (1, self.dim_z)
        }
    }

    /// The z length the generator reads.
    pub fn latent_dim(&self) -> usize {
        let (n, c) = self.z_chunks();
        n * c
    }

    fn shared_width(&self) -> usize {
        if self.shared_dim > 0 {
            self.shared_dim
        } else {
            self.dim_z
        }
    }

    /// Width of each conditional BN's input.
    fn cond_dim(&self) -> usize {
        match (self.g_shared, self.hier) {
            (true, true) => self.shared_width() + self.z_chunks().1,
            (true, false) => self.shared_width(),
            (false, _) => self.n_classes,
        }
    }

    /// Rejects what BigGAN-PyTorch's generator could not be built from, or genrep does not run.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if ![32, 64, 128, 256, 512].contains(&self.resolution) {
            return Err(format!(
                "resolution = {}: the layout has 32, 64, 128, 256 and 512",
                self.resolution
            ));
        }
        if self.g_ch == 0 || self.g_ch > 1024 {
            return Err(format!("G_ch = {}: must be in 1..=1024", self.g_ch));
        }
        let attn = self.attention()?;
        for &(_, cout, res) in &self.blocks() {
            // The attention map holds (res²)²/4 values per sample: 268 MB at 128 px, 4.3 GB at 256.
            if attn.contains(&res) && res > MAX_ATTENTION_RES {
                return Err(format!(
                    "G_attn = {:?}: attention at {res}×{res} needs {} GB per sample; genrep runs \
                     attention up to {MAX_ATTENTION_RES}×{MAX_ATTENTION_RES}",
                    self.g_attn,
                    (res * res * res * res / 4 * 4) >> 30
                ));
            }
            if attn.contains(&res) && cout % 8 != 0 {
                return Err(format!(
                    "attention at {res}×{res} needs a multiple of 8 channels, the block has {cout}"
                ));
            }
        }
        if self.dim_z == 0 || self.dim_z > 4096 || self.shared_dim > 4096 {
            return Err("dim_z must be in 1..=4096 and shared_dim in 0..=4096".into());
        }
        if self.n_classes == 0 || self.n_classes > 100_000 {
            return Err(format!(
                "n_classes = {}: must be in 1..=100000",
                self.n_classes
            ));
        }
        if self.hier && self.z_chunks().1 == 0 {
            return Err(format!(
                "dim_z = {} is shorter than its {} hierarchical chunks",
                self.dim_z,
                self.z_chunks().0
            ));
        }
        if self.hier && !self.g_shared {
            return Err("hier without G_shared: BigGAN-PyTorch cannot run it either".into());
        }
        if !(self.bn_eps > 0.0 && self.bn_eps < 1.0) {
            return Err(format!("BN_eps = {}: must be in (0, 1)", self.bn_eps));
        }
        if let Some(k) = self.unconditional_class {
            if k >= self.n_classes {
                return Err(format!(
                    "unconditional_class = {k}: the model has {} classes",
                    self.n_classes
                ));
            }
        }
        if let Some(a) = &self.g_activation {
            if !a.eq_ignore_ascii_case("relu") {
                return Err(format!("G_activation = {a:?}: only ReLU is supported"));
            }
        }
        if let Some(n) = &self.norm_style {
            if n != "bn" {
                return Err(format!("norm_style = {n:?}: only \"bn\" is supported"));
            }
        }
        if self.mybn || self.cross_replica {
            return Err("mybn / cross_replica batch norms are not supported".into());
        }
        if self.bottom_width != 4 {
            return Err(format!(
                "bottom_width = {}: G_arch's layouts start at 4",
                self.bottom_width
            ));
        }
        Ok(())
    }
}

/// Eval-mode BN with the stored statistics, then `gain·x̂ + bias`, as one per-sample affine.
struct StoredBn {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl StoredBn {
    fn load(w: &Weights, p: &str, c: usize, eps: f64) -> Result<Self> {
        let mean = w.vec(&format!("{p}.stored_mean"), &[c])?;
        let var = w.vec(&format!("{p}.stored_var"), &[c])?;
        let inv_std = var
            .iter()
            .map(|&v| 1.0 / ((v as f64 + eps).sqrt()) as f32)
            .collect();
        Ok(Self { mean, inv_std })
    }

    /// `(a, b)` with `bn(x)·gain + bias = x·a + b`, for `gain`, `bias` `[B | 1, C]` (f32).
    fn affine(&self, gain: &Tensor, bias: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let c = self.mean.len();
        let dev = gain.device();
        let inv = Tensor::from_slice(&self.inv_std, (1, c), dev)?;
        let mean = Tensor::from_slice(&self.mean, (1, c), dev)?;
        let a = gain.broadcast_mul(&inv)?;
        let b = (bias.broadcast_sub(&a.broadcast_mul(&mean)?))?;
        Ok((a, b))
    }
}

/// `ccbn`: `bn(x)·(1 + gain(y)) + bias(y)`, the linears without bias (an embedding of the class
/// when the model has no shared embedding: then `y` is the one-hot/soft class row).
struct CondBn {
    bn: StoredBn,
    gain: Linear,
    bias: Linear,
}

impl CondBn {
    fn load(w: &Weights, p: &str, c: usize, cfg: &BigGanPytorchConfig) -> Result<Self> {
        let lin = |name: &str| -> Result<Linear> {
            let q = format!("{p}.{name}");
            if cfg.g_shared {
                Linear::load(w, &q, cfg.cond_dim(), c, false)
            } else {
                // nn.Embedding(n_classes, c): rows are classes, so the weight is already Wᵀ.
                Ok(Linear {
                    weight_t: w.get(&format!("{q}.weight"), &[cfg.n_classes, c])?,
                    bias: None,
                })
            }
        };
        Ok(Self {
            bn: StoredBn::load(w, p, c, cfg.bn_eps)?,
            gain: lin("gain")?,
            bias: lin("bias")?,
        })
    }

    /// `relu(ccbn(x, y))` in one pass.
    fn forward_relu(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let gain = (self.gain.forward(y)?.to_dtype(DType::F32)? + 1.0)?;
        let bias = self.bias.forward(y)?.to_dtype(DType::F32)?;
        let (a, b) = self.bn.affine(&gain, &bias)?;
        let dt = x.dtype();
        fused::scale_shift(x, &a.to_dtype(dt)?, &b.to_dtype(dt)?, true)
    }
}

/// `GBlock`: `relu∘bn1 → ↑2 → conv1 → relu∘bn2 → conv2`, plus the 1×1 shortcut of the
/// up-sampled input. The shortcut runs before the up-sampling: a 1×1 conv commutes with nearest
/// up-sampling, at a quarter of the multiply-adds.
struct GBlock {
    bn1: CondBn,
    bn2: CondBn,
    conv1: Conv,
    conv2: Conv,
    conv_sc: Conv,
    attention: Option<SelfAttn>,
}

impl GBlock {
    fn forward(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let h = fused::upsample_nearest2x(&self.bn1.forward_relu(x, y)?)?;
        let h = self.conv1.forward(&h)?;
        let h = self.conv2.forward(&self.bn2.forward_relu(&h, y)?)?;
        let out = fused::add_skip(&h, &self.conv_sc.forward(x)?, true)?;
        match &self.attention {
            Some(a) => a.forward(&out),
            None => Ok(out),
        }
    }
}

/// A BigGAN-PyTorch generator with spectral norm folded into its weights.
pub struct BigGanPytorch {
    info: ModelInfo,
    cfg: BigGanPytorchConfig,
    /// `shared.weight` `[n_classes, shared_dim]` (rows are classes); `None` without G_shared.
    shared: Option<Tensor>,
    linear: Linear,
    blocks: Vec<GBlock>,
    out_bn: (Tensor, Tensor),
    out_conv: Conv,
}

impl BigGanPytorch {
    pub(crate) fn new(cfg: BigGanPytorchConfig, name: String, w: &Weights) -> Result<Self> {
        let attn = cfg.attention().map_err(GeneratorError::Unsupported)?;
        let shared = cfg
            .g_shared
            .then(|| w.get("shared.weight", &[cfg.n_classes, cfg.shared_width()]))
            .transpose()?;
        let blocks_cfg = cfg.blocks();
        let c0 = blocks_cfg[0].0;
        let (_, chunk) = cfg.z_chunks();
        let linear = Linear::load(w, "linear", chunk, c0 * 16, true)?;
        let mut blocks = Vec::new();
        for (i, &(cin, cout, res)) in blocks_cfg.iter().enumerate() {
            let p = format!("blocks.{i}.0");
            let attention = if attn.contains(&res) {
                let a = format!("blocks.{i}.1");
                let c = |n: &str, a_in, a_out| conv(w, &format!("{a}.{n}"), a_in, a_out, 1, false);
                Some(SelfAttn {
                    theta: c("theta", cout, cout / 8)?,
                    phi: c("phi", cout, cout / 8)?,
                    g: c("g", cout, cout / 2)?,
                    o: c("o", cout / 2, cout)?,
                    gamma: w.get(&format!("{a}.gamma"), &[1])?,
                })
            } else {
                None
            };
            blocks.push(GBlock {
                bn1: CondBn::load(w, &format!("{p}.bn1"), cin, &cfg)?,
                bn2: CondBn::load(w, &format!("{p}.bn2"), cout, &cfg)?,
                conv1: conv(w, &format!("{p}.conv1"), cin, cout, 3, true)?,
                conv2: conv(w, &format!("{p}.conv2"), cout, cout, 3, true)?,
                conv_sc: conv(w, &format!("{p}.conv_sc"), cin, cout, 1, true)?,
                attention,
            });
        }
        let last = blocks_cfg[blocks_cfg.len() - 1].1;
        let bn = StoredBn::load(w, "output_layer.0", last, OUTPUT_BN_EPS)?;
        let gain = Tensor::from_vec(
            w.vec("output_layer.0.gain", &[last])?,
            (1, last),
            &Device::Cpu,
        )?;
        let bias = Tensor::from_vec(
            w.vec("output_layer.0.bias", &[last])?,
            (1, last),
            &Device::Cpu,
        )?;
        let (a, b) = bn.affine(&gain, &bias)?;
        let on_dev = |t: Tensor| -> Result<Tensor> {
            Ok(t.flatten_all()?
                .to_dtype(w.dtype())?
                .to_device(w.device())?)
        };
        let out_bn = (on_dev(a)?, on_dev(b)?);
        let out_conv = conv(w, "output_layer.2", last, 3, 3, true)?;
        let classes = if cfg.unconditional_class.is_some() {
            0
        } else {
            cfg.n_classes
        };
        let mut spec = GeneratorSpec::new(
            name,
            "biggan-pytorch",
            cfg.latent_dim(),
            classes,
            3,
            cfg.resolution,
        );
        spec.weights_sha256 = w.sha256.clone();
        Ok(Self {
            info: ModelInfo::of(spec, w),
            cfg,
            shared,
            linear,
            blocks,
            out_bn,
            out_conv,
        })
    }

    pub fn config(&self) -> &BigGanPytorchConfig {
        &self.cfg
    }

    /// The class input of every conditional BN before z chunks join it: the shared embedding of
    /// the classes (or of the served class when unconditional), else their one-hot/soft rows.
    fn class_rows(&self, classes: &ClassInput, b: usize) -> Result<Tensor> {
        let dev = &self.info.device;
        let n = self.cfg.n_classes;
        let ids_ok = |ids: &[u32]| -> Result<()> {
            if ids.len() != b {
                return Err(GeneratorError::Input(format!(
                    "{} class ids for {b} latents",
                    ids.len()
                )));
            }
            match ids.iter().find(|&&k| k as usize >= n) {
                Some(k) => Err(GeneratorError::Input(format!(
                    "class {k} out of range: the model has {n} classes"
                ))),
                None => Ok(()),
            }
        };
        if let ClassInput::Ids(ids) = classes {
            ids_ok(ids)?;
        }
        let rows = match (classes, self.cfg.unconditional_class) {
            (ClassInput::None, Some(k)) => Rows::Ids(vec![k as u32; b]),
            (ClassInput::Ids(ids), None) => Rows::Ids(ids.clone()),
            (ClassInput::Soft(v), None) => Rows::Soft(
                Tensor::from_slice(v, (b, n), &Device::Cpu)?
                    .to_device(dev)?
                    .to_dtype(self.info.dtype)?,
            ),
            (ClassInput::None, None) => {
                return Err(GeneratorError::Input("this BigGAN needs classes".into()))
            }
            (_, Some(_)) => {
                return Err(GeneratorError::Input(
                    "this BigGAN is served unconditionally: it takes no classes".into(),
                ))
            }
        };
        Ok(match (rows, &self.shared) {
            (Rows::Ids(ids), Some(e)) => {
                e.index_select(&Tensor::from_slice(&ids, ids.len(), dev)?, 0)?
            }
            (Rows::Soft(c), Some(e)) => c.matmul(e)?,
            (Rows::Ids(ids), None) => {
                let mut v = vec![0f32; b * n];
                for (i, &k) in ids.iter().enumerate() {
                    v[i * n + k as usize] = 1.0;
                }
                Tensor::from_vec(v, (b, n), &Device::Cpu)?
                    .to_device(dev)?
                    .to_dtype(self.info.dtype)?
            }
            (Rows::Soft(c), None) => c,
        })
    }
}

enum Rows {
    Ids(Vec<u32>),
    Soft(Tensor),
}

impl Generator for BigGanPytorch {
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
        let y = self.class_rows(classes, b)?;
        let (slots, chunk) = self.cfg.z_chunks();
        let z0 = z.narrow(1, 0, chunk)?;
        let c0 = self.cfg.blocks()[0].0;
        let mut h = self.linear.forward(&z0)?.reshape((b, c0, 4, 4))?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let yi = if slots > 1 {
                Tensor::cat(&[&y, &z.narrow(1, (i + 1) * chunk, chunk)?], 1)?
            } else {
                y.clone()
            };
            h = blk.forward(&h, &yi)?;
        }
        h = fused::scale_shift(&h, &self.out_bn.0, &self.out_bn.1, true)?;
        let out = self.out_conv.forward(&h)?.tanh()?;
        Ok(out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bigbigan_preset_validates_and_lays_out_as_gan_load_does() {
        let c = BigGanPytorchConfig::bigbigan_128();
        c.validate().unwrap();
        assert_eq!(c.z_chunks(), (6, 20));
        assert_eq!(c.cond_dim(), 148);
        let b = c.blocks();
        assert_eq!(b.first(), Some(&(1536, 1536, 8)));
        assert_eq!(b.last(), Some(&(192, 96, 128)));
    }

    /// The layouts without a reference fixture (flat z, per-BN class embeddings, 64 px) build
    /// and run on random weights: the right shapes, finite values, ids and one-hot rows alike.
    #[test]
    fn flat_z_and_unshared_embeddings_run() {
        let cfg = BigGanPytorchConfig {
            name: None,
            g_ch: 8,
            dim_z: 16,
            resolution: 64,
            g_attn: "32".into(),
            n_classes: 3,
            g_shared: false,
            shared_dim: 0,
            hier: false,
            bn_eps: 1e-4,
            unconditional_class: None,
            ..BigGanPytorchConfig::bigbigan_128()
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.cond_dim(), 3);
        let g = crate::generator::random_biggan_pytorch(cfg, 1, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(g.spec().latent_dim, 16);
        let z: Vec<f32> = (0..32).map(|i| ((i as f32) * 0.37).sin()).collect();
        let knobs = Knobs::default();
        let a = g
            .generate(&z, &ClassInput::Ids(vec![2, 0]), &knobs)
            .unwrap();
        assert_eq!(a.dims(), [2, 3, 64, 64]);
        let va: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert!(va.iter().all(|v| v.is_finite()));
        let rows = vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let b = g.generate(&z, &ClassInput::Soft(rows), &knobs).unwrap();
        let vb: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d = va
            .iter()
            .zip(&vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "ids and one-hot rows differ by {d}");
        // The model's own guard, below the API's validation: no panic on a bad id.
        let zt = Tensor::from_vec(z, (2, 16), &Device::Cpu).unwrap();
        let e = g
            .synthesize(&zt, Space::Z, &ClassInput::Ids(vec![3, 0]), &knobs, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("class 3 out of range"), "{e}");
    }

    #[test]
    fn attention_past_128_px_is_refused_before_anything_is_allocated() {
        let c = BigGanPytorchConfig {
            resolution: 512,
            g_attn: "64_256".into(),
            ..BigGanPytorchConfig::bigbigan_128()
        };
        let e = c.validate().unwrap_err();
        assert!(e.contains("256×256") && e.contains("up to 128"), "{e}");
    }
}
