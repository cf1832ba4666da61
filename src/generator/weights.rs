//! Reading `model.safetensors` with shape checks and errors that name the tensor.
//!
//! Why not candle-nn's `VarBuilder`: layers here fold statistics on the host in f32 before the
//! weights reach the device (BN running stats, spectral norm already folded), and a broken
//! file must give a [`GeneratorError`] naming the tensor and both shapes. Layers scope names
//! by prefix (`{prefix}.weight`), as `VarBuilder::pp` would; files are memory-mapped like
//! `VarBuilder::from_mmaped_safetensors`; [`Weights::random`] is the seeded-random backend.

use super::{GeneratorError, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tensors of a model file (memory-mapped, or parsed from bytes), handed to layers one at a
/// time.
/// `Random` hands out seeded random tensors of whatever shape a layer asks for: benchmarks run the
/// full-size architectures without shipping their weights.
pub(crate) struct Weights {
    path: PathBuf,
    source: Source,
    device: Device,
    dtype: DType,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

impl Weights {
    /// From the bytes of a safetensors file; `path` is only used in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| unreadable(path, e))?;
        Ok(Self::of(path, Source::File(tensors), device, dtype, sha256))
    }

    fn of(path: &Path, source: Source, device: &Device, dtype: DType, sha256: String) -> Self {
        Self {
            path: path.to_path_buf(),
            source,
            device: device.clone(),
            dtype,
            sha256,
        }
    }

    /// From a file, memory-mapped: tensors are read when a layer asks for them, so a model's
    /// file is never held in memory next to its layers. The sha256 is streamed from the file.
    pub fn from_file(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let sha256 = sha256_file(path)?;
        // SAFETY: the mapping is only read while the model loads (tensors are copied out); a
        // file changed underneath during those seconds is the documented risk of mmap, the
        // same one candle's `from_mmaped_safetensors` takes.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .map_err(|e| unreadable(path, e))?;
        Ok(Self::of(
            path,
            Source::Mapped(mapped),
            device,
            dtype,
            sha256,
        ))
    }

    /// From tensors read out of another format (a torch checkpoint) in the names the layers ask
    /// for; `path` names the source file in messages, and its sha256 is the model's.
    pub fn from_tensors(
        path: &Path,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let sha256 = sha256_file(path)?;
        Ok(Self::of(path, Source::File(tensors), device, dtype, sha256))
    }

    /// Seeded random weights: N(0, 1/fan_in) for matrices, U(0.5, 1.5) for variances, small
    /// normal values for everything else.
    pub fn random(seed: u64, device: &Device, dtype: DType) -> Self {
        let path = PathBuf::from(format!("<random seed {seed}>"));
        Self::of(
            &path,
            Source::Random(seed),
            device,
            dtype,
            format!("random-{seed}"),
        )
    }

    /// The tensor `name` as f32 on the CPU, checked against `shape`.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = match &self.source {
            Source::Random(seed) => return Ok(random_tensor(*seed, name, shape)?),
            Source::File(tensors) => tensors
                .get(name)
                .ok_or_else(|| GeneratorError::MissingTensor(name.to_string()))?
                .clone(),
            Source::Mapped(m) => {
                let view = m
                    .get(name)
                    .map_err(|_| GeneratorError::MissingTensor(name.to_string()))?;
                if view.shape() != shape {
                    return Err(GeneratorError::Shape {
                        name: name.to_string(),
                        expected: shape.to_vec(),
                        got: view.shape().to_vec(),
                    });
                }
                m.load(name, &Device::Cpu)
                    .map_err(|e| GeneratorError::Weights {
                        path: self.path.clone(),
                        msg: format!("tensor `{name}`: {e}"),
                    })?
            }
        };
        if t.dims() != shape {
            return Err(GeneratorError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        if !t.dtype().is_float() {
            return Err(GeneratorError::Weights {
                path: self.path.clone(),
                msg: format!(
                    "tensor `{name}` has dtype {:?}, expected a float type",
                    t.dtype()
                ),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The tensor `name` on the model's device in the model's dtype, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .host(name, shape)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?)
    }

    /// The tensor `name` as a host vector (small per-channel statistics).
    pub fn vec(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.host(name, shape)?.flatten_all()?.to_vec1::<f32>()?)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

fn unreadable(path: &Path, e: candle_core::Error) -> GeneratorError {
    GeneratorError::Weights {
        path: path.to_path_buf(),
        msg: format!("not a readable safetensors file ({e})"),
    }
}

/// Hex sha256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let io = |err| GeneratorError::Io {
        path: path.to_path_buf(),
        err,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(io)?;
    Ok(hex::encode(h.finalize()))
}

enum Source {
    File(HashMap<String, Tensor>),
    Mapped(candle_core::safetensors::MmapedSafetensors),
    Random(u64),
}

fn random_tensor(seed: u64, name: &str, shape: &[usize]) -> candle_core::Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(h.finalize().into());
    let n: usize = shape.iter().product();
    // Variances (BigGAN-deep's `running_var*`, BigGAN-PyTorch's `stored_var`) must be positive.
    let v: Vec<f32> = if name.contains("running_var") || name.ends_with("stored_var") {
        (0..n).map(|_| rng.random_range(0.5f32..1.5)).collect()
    } else {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let std = if shape.len() >= 2 {
            (1.0 / fan_in as f32).sqrt()
        } else {
            0.1
        };
        (0..n)
            .map(|_| {
                // Box-Muller: a normal sample from two uniforms.
                let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    };
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The workspace's one convolution layer (fast CPU kernels, candle's own conv elsewhere).
pub(crate) use genrep_kernels::Conv2d as Conv;

/// Loads a `k×k`, stride 1, "same"-padded conv2d with optional bias, in the model dtype on the
/// device.
pub(crate) fn conv(
    w: &Weights,
    prefix: &str,
    cin: usize,
    cout: usize,
    k: usize,
    bias: bool,
) -> Result<Conv> {
    let weight = w.get(&format!("{prefix}.weight"), &[cout, cin, k, k])?;
    let bias = if bias {
        Some(w.get(&format!("{prefix}.bias"), &[cout])?)
    } else {
        None
    };
    Ok(Conv::new(weight, bias, 1, k / 2))
}

/// A linear layer `y = x Wᵀ (+ b)`, weight [out, in].
pub(crate) struct Linear {
    pub weight_t: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, prefix: &str, din: usize, dout: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight_t: w
                .get(&format!("{prefix}.weight"), &[dout, din])?
                .t()?
                .contiguous()?,
            bias: if bias {
                Some(w.get(&format!("{prefix}.bias"), &[dout])?)
            } else {
                None
            },
        })
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight_t)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
