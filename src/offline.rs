//! Commands that run a model or write data without a server: `genrep generate` (a model
//! directory on given latents) and `genrep real-data` (the vendored digits as shards).

use crate::data::{self, Split};
use crate::format::image::{grid_of, Image8};
use crate::format::npy::{self, NpyArray};
use crate::generator::inputs::{check_latents, class_input, ClassArg};
use crate::generator::{load_model, Knobs};
use crate::params::Value;
use crate::wds::{image_sample, write_shard, TAR_END};
use anyhow::{Context, Result};
use bytes::Bytes;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

fn read_npy(path: &Path, what: &str) -> Result<NpyArray> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    NpyArray::parse(&bytes).with_context(|| format!("{what} file {}", path.display()))
}

/// What `genrep generate` runs.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub model: PathBuf,
    pub z: PathBuf,
    pub class: Option<PathBuf>,
    /// The generator's inputs by name (`gen_truncation`), as given.
    pub knobs: Vec<(String, f64)>,
    pub out: PathBuf,
    pub grid: Option<PathBuf>,
}

/// Runs a model directory on `.npy` latents (and classes) and writes `[B, C, H, W]` float32.
pub fn generate(o: &GenerateOptions, device: &Device, dtype: DType) -> Result<()> {
    let g = load_model(&o.model, device, dtype)
        .with_context(|| format!("loading model {}", o.model.display()))?;
    let spec = g.spec().clone();
    let z = read_npy(&o.z, "--z")?;
    let zf = z
        .to_f32()
        .with_context(|| format!("--z must be a float array, got {}", z.dtype.name()))?;
    let (b, d) = match z.shape[..] {
        [b, d] => (b, d),
        _ => anyhow::bail!(
            "--z has shape {:?}, expected [B, {}]",
            z.shape,
            spec.latent_dim
        ),
    };
    check_latents(&spec, b, d, &zf, "--z").map_err(anyhow::Error::msg)?;
    let arg = match &o.class {
        None => ClassArg::Absent,
        Some(p) => {
            let c = read_npy(p, "--class")?;
            if c.dtype.is_float() {
                let (rows, cols) = match c.shape[..] {
                    [r, k] => (r, k),
                    _ => (c.shape.first().copied().unwrap_or(0), 0),
                };
                ClassArg::Vectors {
                    rows,
                    cols,
                    values: c.to_f32().unwrap(),
                }
            } else {
                if c.shape != [b] {
                    anyhow::bail!(
                        "integer --class has shape {:?}, expected class ids [{b}]",
                        c.shape
                    );
                }
                ClassArg::Ids(c.to_i64().unwrap())
            }
        }
    };
    let classes =
        class_input(&spec, b, arg, "--class", "float --class").map_err(anyhow::Error::msg)?;
    let mut knobs = Knobs::default();
    for (name, v) in &o.knobs {
        let p = spec.knob(name).with_context(|| {
            format!(
                "--{}: {} has no input `{name}` (its inputs: {})",
                name.replace('_', "-"),
                spec.name,
                crate::generator::knob_names(&spec)
            )
        })?;
        knobs = knobs.with(p.name, Value::Float(*v));
    }
    let out = g.generate(&zf, &classes, &knobs)?;
    let dims = out.dims().to_vec();
    let data = out.flatten_all()?.to_vec1::<f32>()?;
    std::fs::write(&o.out, npy::write_f32(&dims, &data))
        .with_context(|| format!("cannot write {}", o.out.display()))?;
    eprintln!("wrote {} {:?}", o.out.display(), dims);
    if let Some(gp) = &o.grid {
        let (c, h, w) = (dims[1], dims[2], dims[3]);
        let imgs: Vec<Image8> = data
            .chunks_exact(c * h * w)
            .map(|x| Image8::from_chw(x, c, h, w))
            .collect();
        std::fs::write(gp, grid_of(&imgs, 8, 2).to_png())
            .with_context(|| format!("cannot write {}", gp.display()))?;
        eprintln!("wrote {}", gp.display());
    }
    Ok(())
}

/// Writes both splits of the vendored digits as `mnist-{train,test}-NNNNNN.tar` (`png` + `cls`),
/// in the seeded shuffled order of [`data::shuffled_order`].
pub fn real_data(out: &Path, shard_size: usize, csv: Option<&Path>, seed: u64) -> Result<()> {
    if shard_size == 0 {
        anyhow::bail!("--shard-size must be at least 1");
    }
    let csv = csv
        .map(Path::to_path_buf)
        .unwrap_or_else(data::default_path);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for split in [Split::Train, Split::Test] {
        let d = data::load(&csv, split)?;
        let order = data::shuffled_order(d.len(), seed);
        let mut written = 0;
        for (n, chunk) in order.chunks(shard_size).enumerate() {
            let samples = chunk.iter().map(|&i| {
                let img = Image8 {
                    width: 28,
                    height: 28,
                    channels: 1,
                    pixels: d.image(i).to_vec(),
                };
                Ok::<_, std::convert::Infallible>(image_sample(
                    &genrep_wire::image_key(i as u64),
                    img.to_png(),
                    Some(d.labels[i] as u32),
                ))
            });
            let end = std::iter::once(Ok(Bytes::from_static(&TAR_END)));
            let path = out.join(format!("mnist-{}-{n:06}.tar", split.name()));
            write_shard(&path, samples.chain(end), Some(chunk.len() as u64))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            written += 1;
        }
        eprintln!("{}: {} digits in {written} shards", split.name(), d.len());
    }
    Ok(())
}
