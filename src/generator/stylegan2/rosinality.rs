//! rosinality's StyleGAN2 checkpoints (`*.pt`: `{'g_ema': state_dict, 'latent_avg': [w_dim],
//! ...}`) served without Python: candle's torch-pickle reader gives the tensors, which are renamed
//! to NVlabs' layout (the names `tools/convert_stylegan2.py` writes, so the converted directory
//! and the checkpoint load the same weights) and the config is read off their shapes.
//!
//! Only torch.save's zip format (PyTorch ≥ 1.6) is read; its pickle is parsed as data, never
//! executed. Older files and NVlabs pickles go through the converter.

use super::config::{MappingConfig, NoiseMode, StyleGan2Config, SynthesisConfig};
use crate::generator::{GeneratorError, Result};
use candle_core::pickle::PthTensors;
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The first bytes of a zip archive (torch.save's format since PyTorch 1.6).
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// StyleGAN2 uses 8; the config allows up to 64 (checked before any tensor is read).
const MAX_MAPPING_LAYERS: usize = 64;

/// Whether `path` looks like a torch.save zip file.
pub(crate) fn is_torch_zip(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == ZIP_MAGIC
}

fn bad(path: &Path, msg: impl Into<String>) -> GeneratorError {
    GeneratorError::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The checkpoint's generator: its config (noise mode `const`, named after the file) and its
/// tensors in NVlabs' names, f32 on the host. `mapping.w_avg` is among them only when the file
/// stores `latent_avg`.
pub(crate) fn read(path: &Path) -> Result<(StyleGan2Config, HashMap<String, Tensor>)> {
    let open = |key| {
        PthTensors::new(path, key).map_err(|e| {
            bad(
                path,
                format!("not a readable torch.save zip checkpoint ({e})"),
            )
        })
    };
    let top = open(None)?;
    let g_ema = open(Some("g_ema")).map_err(|_| {
        bad(
            path,
            "the checkpoint has no 'g_ema' (not a rosinality StyleGAN2 checkpoint)",
        )
    })?;
    if g_ema.tensor_infos().is_empty() {
        return Err(bad(
            path,
            if top.tensor_infos().is_empty() {
                "not a readable torch.save zip checkpoint (it holds no pickled tensors)"
            } else {
                "the checkpoint's 'g_ema' holds no tensors (not a rosinality StyleGAN2 checkpoint)"
            },
        ));
    }
    let file_len = std::fs::metadata(path)
        .map_err(|err| GeneratorError::Io {
            path: path.to_path_buf(),
            err,
        })?
        .len();
    let read = std::cell::Cell::new(0);
    let sd = Source {
        path,
        pt: &g_ema,
        file_len,
        read: &read,
    };
    let top = Source {
        path,
        pt: &top,
        file_len,
        read: &read,
    };
    // rosinality's `convert_weight.py` stores it; its `train.py` does not (the caller then
    // estimates it, as rosinality's `mean_latent` does).
    let latent_avg = if top.has("latent_avg") {
        Some(top.get("latent_avg")?)
    } else {
        None
    };

    let n_mlp = (1..=MAX_MAPPING_LAYERS + 1)
        .take_while(|i| sd.has(&format!("style.{i}.weight")))
        .count();
    if n_mlp == 0 {
        return Err(bad(path, "no mapping layers (`style.1.weight`)"));
    }
    if n_mlp > MAX_MAPPING_LAYERS {
        return Err(bad(
            path,
            format!("more than {MAX_MAPPING_LAYERS} mapping layers (`style.N.weight`)"),
        ));
    }
    let first = sd.get("style.1.weight")?;
    let last = sd.get(&format!("style.{n_mlp}.weight"))?;
    let (z_dim, w_dim) = (first.dim(1)?, last.dim(0)?);
    let n_rgb = (0..)
        .take_while(|k| sd.has(&format!("to_rgbs.{k}.conv.weight")))
        .count();
    if n_rgb > 8 {
        return Err(bad(
            path,
            format!("{n_rgb} up-sampling blocks: resolutions past 1024 are not supported"),
        ));
    }
    let resolution = 4usize << n_rgb;

    let mut out = HashMap::new();
    for i in 0..n_mlp {
        for p in ["weight", "bias"] {
            out.insert(
                format!("mapping.fc{i}.{p}"),
                sd.get(&format!("style.{}.{p}", i + 1))?,
            );
        }
    }
    if let Some(avg) = latent_avg {
        out.insert("mapping.w_avg".into(), avg.flatten_all()?);
    }
    let konst = sd.get("input.input")?;
    if konst.rank() != 4 || konst.dim(0)? != 1 {
        return Err(bad(
            path,
            format!(
                "`input.input` has shape {:?}, expected [1, C, 4, 4]",
                konst.dims()
            ),
        ));
    }
    out.insert("synthesis.b4.const".into(), konst.squeeze(0)?);
    let mut add = |dst: &str, src: &str, noise: Option<&str>| -> Result<()> {
        let w = sd.get(&format!("{src}.conv.weight"))?;
        if w.rank() != 5 || w.dim(0)? != 1 {
            return Err(bad(
                path,
                format!(
                    "`{src}.conv.weight` has shape {:?}, expected [1, O, I, k, k]",
                    w.dims()
                ),
            ));
        }
        out.insert(format!("{dst}.weight"), w.squeeze(0)?);
        for p in ["weight", "bias"] {
            out.insert(
                format!("{dst}.affine.{p}"),
                sd.get(&format!("{src}.conv.modulation.{p}"))?,
            );
        }
        match noise {
            Some(n) => {
                out.insert(
                    format!("{dst}.noise_strength"),
                    sd.get(&format!("{src}.noise.weight"))?.flatten_all()?,
                );
                out.insert(
                    format!("{dst}.bias"),
                    sd.get(&format!("{src}.activate.bias"))?,
                );
                let c = sd.get(&format!("noises.{n}"))?;
                match *c.dims() {
                    [1, 1, h, w] => {
                        out.insert(format!("{dst}.noise_const"), c.reshape((h, w))?);
                    }
                    ref d => {
                        return Err(bad(
                            path,
                            format!("`noises.{n}` has shape {d:?}, expected [1, 1, R, R]"),
                        ))
                    }
                }
            }
            // A to-RGB layer: bias [1, C, 1, 1].
            None => {
                out.insert(
                    format!("{dst}.bias"),
                    sd.get(&format!("{src}.bias"))?.flatten_all()?,
                );
            }
        }
        Ok(())
    };
    add("synthesis.b4.conv1", "conv1", Some("noise_0"))?;
    add("synthesis.b4.torgb", "to_rgb1", None)?;
    for k in 0..n_rgb {
        let r = 8 << k;
        add(
            &format!("synthesis.b{r}.conv0"),
            &format!("convs.{}", 2 * k),
            Some(&format!("noise_{}", 2 * k + 1)),
        )?;
        add(
            &format!("synthesis.b{r}.conv1"),
            &format!("convs.{}", 2 * k + 1),
            Some(&format!("noise_{}", 2 * k + 2)),
        )?;
        add(
            &format!("synthesis.b{r}.torgb"),
            &format!("to_rgbs.{k}"),
            None,
        )?;
    }

    let mut channels = BTreeMap::from([(4, konst.dim(1)?)]);
    for k in 0..n_rgb {
        let r = 8 << k;
        channels.insert(r, out[&format!("synthesis.b{r}.conv1.weight")].dim(0)?);
    }
    let (channel_base, channel_max) = channel_rule(&channels).map_err(|m| bad(path, m))?;
    let img_channels = out["synthesis.b4.torgb.weight"].dim(0)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stylegan2".into());
    let cfg = StyleGan2Config {
        name: Some(name),
        z_dim,
        c_dim: 0,
        w_dim,
        img_resolution: resolution,
        img_channels,
        mapping_kwargs: MappingConfig {
            num_layers: n_mlp,
            ..MappingConfig::default()
        },
        // rosinality's layers do not clamp.
        synthesis_kwargs: SynthesisConfig {
            channel_base,
            channel_max,
            conv_clamp: None,
            ..SynthesisConfig::default()
        },
        noise_mode: NoiseMode::Const,
        crop: None,
    };
    cfg.validate().map_err(|m| bad(path, m))?;
    Ok((cfg, out))
}

/// The `g_ema` state dict, with errors that name the tensor.
struct Source<'a> {
    path: &'a Path,
    pt: &'a PthTensors,
    /// The file's size: torch.save stores tensors uncompressed, so all the tensors read from it
    /// together hold no more bytes (names pointing at one storage count each time they are read).
    file_len: u64,
    /// Bytes read so far, shared by every `Source` of the file.
    read: &'a std::cell::Cell<u64>,
}

impl Source<'_> {
    fn has(&self, name: &str) -> bool {
        self.pt.tensor_infos().contains_key(name)
    }

    /// The tensor `name`, f32.
    fn get(&self, name: &str) -> Result<Tensor> {
        // A pickle can claim any shape: check it against the file before anything is allocated.
        if let Some(info) = self.pt.tensor_infos().get(name) {
            let claimed = info
                .layout
                .dims()
                .iter()
                .try_fold(info.dtype.size_in_bytes() as u64, |n, &d| {
                    n.checked_mul(d as u64)
                });
            let total = claimed.and_then(|n| n.checked_add(self.read.get()));
            match total {
                Some(t) if t <= self.file_len => self.read.set(t),
                _ => {
                    return Err(bad(
                        self.path,
                        format!(
                            "tensor `{name}` claims shape {:?}, more than the {}-byte file holds",
                            info.layout.dims(),
                            self.file_len
                        ),
                    ))
                }
            }
            // candle's reader skips `start_offset` bytes where torch counts elements.
            if info.layout.start_offset() != 0 {
                return Err(bad(
                    self.path,
                    format!(
                        "tensor `{name}` is a view into a larger storage; re-save the checkpoint \
                         with contiguous tensors (`.clone()`), or convert it with \
                         tools/convert_stylegan2.py"
                    ),
                ));
            }
        }
        let t = self
            .pt
            .get(name)
            .map_err(|e| bad(self.path, format!("tensor `{name}`: {e}")))?
            .ok_or_else(|| bad(self.path, format!("tensor `{name}` is missing from g_ema")))?;
        if !t.dtype().is_float() {
            return Err(bad(
                self.path,
                format!(
                    "tensor `{name}` has dtype {:?}, expected a float type",
                    t.dtype()
                ),
            ));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// `(channel_base, channel_max)` with `min(base / r, max) == channels[r]` for every block, or a
/// message saying that no such rule gives these widths (the converter's rule, in Rust).
fn channel_rule(channels: &BTreeMap<usize, usize>) -> std::result::Result<(usize, usize), String> {
    let cmax = channels.values().copied().max().unwrap_or(0);
    let below = channels.iter().find(|(_, &c)| c < cmax);
    let base = match below {
        Some((&r, &c)) => c * r,
        None => cmax * channels.keys().copied().max().unwrap_or(4),
    };
    if channels.iter().any(|(&r, &c)| (base / r).min(cmax) != c) {
        return Err(format!(
            "the channel widths {channels:?} (resolution: channels) do not follow \
             min(channel_base / r, channel_max); genrep cannot describe this generator"
        ));
    }
    Ok((base, cmax))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rules_are_found_or_refused() {
        let paper256 = BTreeMap::from([
            (4, 512),
            (8, 512),
            (16, 512),
            (32, 512),
            (64, 256),
            (128, 128),
            (256, 64),
        ]);
        assert_eq!(channel_rule(&paper256), Ok((16384, 512)));
        let flat = BTreeMap::from([(4, 64), (8, 64), (16, 64)]);
        assert_eq!(channel_rule(&flat), Ok((1024, 64)));
        let odd = BTreeMap::from([(4, 64), (8, 48), (16, 64)]);
        assert!(channel_rule(&odd).unwrap_err().contains("do not follow"));
    }
}
