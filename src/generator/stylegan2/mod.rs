//! StyleGAN2, computed as NVlabs' `stylegan2-ada-pytorch` `Generator` does in fp32 (see
//! `../shared/reference/stylegan2.md`): `forward = synthesis(truncate(mapping(z, c)), noise)`.
//!
//! Every layer is one small type with its gains named: [`FullyConnected`] (equalized learning
//! rate: the stored weight times `lr_mul / sqrt(in)`, the bias times `lr_mul`), [`Mapping`]
//! (pixel norm, optional class embedding, lrelu·√2 layers), [`SynthesisLayer`] (modulated,
//! demodulated 3×3 conv, optionally up-sampling with the [1,3,3,1] FIR, noise, bias, lrelu·√2,
//! clamp), [`ToRgb`] (modulated 1×1 conv without demodulation) and [`Block`]. The batched form
//! of the modulated conv is used (`x·s → shared conv → ·d`): no per-sample weights.

mod config;
mod layers;
pub(crate) mod rosinality;

pub(super) use config::family_knobs;
pub use config::{Crop, MappingConfig, NoiseMode, StyleGan2Config, SynthesisConfig};

use super::weights::Weights;
use super::{
    ClassInput, Generator, GeneratorError, GeneratorSpec, Knobs, LatentSpace, ModelInfo, NoiseKey,
    Result, Space,
};
use crate::params::decl::Value;
use candle_core::{DType, Device, Tensor};
use config::knobs;
use layers::{upsample2d, Block, Mapping, SynthesisLayer, ToRgb};

/// StyleGAN2's generator.
pub struct StyleGan2 {
    info: ModelInfo,
    cfg: StyleGan2Config,
    mapping: Mapping,
    blocks: Vec<Block>,
}

/// Samples of the `w_avg` estimate (rosinality's `mean_latent` uses 4096).
const W_AVG_SAMPLES: usize = 4096;
/// Its seed: the estimate is the same on every load.
const W_AVG_SEED: u64 = 0x5747_4156;

impl StyleGan2 {
    /// A rosinality checkpoint (`*.pt`) read in place ([`rosinality`]). Without a stored
    /// `latent_avg` (rosinality's `train.py` saves none), `w_avg` is estimated as rosinality's
    /// `mean_latent` does: the mean of the mapping over [`W_AVG_SAMPLES`] z ~ N(0, I), seeded.
    pub(crate) fn from_rosinality(
        path: &std::path::Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (cfg, mut tensors) = rosinality::read(path)?;
        let name = cfg.name.clone().unwrap_or_else(|| "stylegan2".into());
        if !tensors.contains_key("mapping.w_avg") {
            tensors.insert(
                "mapping.w_avg".into(),
                Tensor::zeros(cfg.w_dim, DType::F32, &Device::Cpu)?,
            );
            let w = Weights::from_tensors(path, tensors.clone(), &Device::Cpu, DType::F32)?;
            let mapping = Mapping::load(&w, &cfg)?;
            let ns = crate::sampler::rng::Namespace::new("stylegan2-w-avg");
            let mut rng = crate::sampler::rng::SampleRng::new(&ns, W_AVG_SEED, 0, 0);
            let z: Vec<f32> = (0..W_AVG_SAMPLES * cfg.z_dim)
                .map(|_| rng.normal() as f32)
                .collect();
            let z = Tensor::from_vec(z, (W_AVG_SAMPLES, cfg.z_dim), &Device::Cpu)?;
            let avg = mapping.forward(&z, None)?.mean(0)?;
            tensors.insert("mapping.w_avg".into(), avg);
        }
        Self::new(
            cfg,
            name,
            &Weights::from_tensors(path, tensors, device, dtype)?,
        )
    }

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
                    upsample: false,
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
                    upsample: true,
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
            info: ModelInfo::of(spec, w),
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
            img = Some(match img.take() {
                Some(prev) if blk.upsample => (upsample2d(&prev)? + y)?,
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
    fn info_mut(&mut self) -> Option<&mut ModelInfo> {
        Some(&mut self.info)
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
