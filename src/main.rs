//! `genrep` command line: serve, export, generate.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use genrep::format::image::{grid, Image8};
use genrep::format::npy::{self, NpyArray};
use genrep::generator::{load_model_dir, parse_dtype, ClassInput};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "genrep",
    version,
    about = "A pretrained generator served as a streaming multiview dataset"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model directory on given latents and write the images (.npy float32 NCHW, optional PNG grid).
    ///
    /// This is how to check a converted checkpoint against the reference implementation from outside
    /// the test suite: same z, classes and truncation in, compare the arrays.
    Generate(GenerateArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Model directory (config.json + model.safetensors).
    #[arg(long, env = "GENREP_MODEL")]
    model: PathBuf,
    /// Latents: float .npy of shape [B, latent_dim].
    #[arg(long)]
    z: PathBuf,
    /// Classes: integer .npy [B] of class ids, or float .npy [B, num_classes] of (soft) class vectors.
    /// Required for class-conditional generators.
    #[arg(long = "class")]
    class: Option<PathBuf>,
    /// The generator's own truncation input (BigGAN: selects the BN statistics row), in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    truncation: f64,
    /// Output .npy: float32 [B, C, H, W] in [-1, 1].
    #[arg(long)]
    out: PathBuf,
    /// Also write a PNG grid of the images (8 per row).
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Device: `cpu`, or `cuda:N` when built with the `cuda` feature.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 or bf16 (f16/bf16 on CUDA).
    #[arg(long, env = "GENREP_DTYPE", default_value = "f32")]
    dtype: String,
}

fn read_npy(path: &PathBuf, what: &str) -> Result<NpyArray> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    NpyArray::parse(&bytes).with_context(|| format!("{what} file {}", path.display()))
}

fn generate(a: GenerateArgs) -> Result<()> {
    let device = genrep::device::parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let g = load_model_dir(&a.model, &device, dtype)
        .with_context(|| format!("loading model directory {}", a.model.display()))?;
    let spec = g.spec().clone();

    let z = read_npy(&a.z, "--z")?;
    let zf = z
        .to_f32()
        .with_context(|| format!("--z must be a float array, got {}", z.dtype.name()))?;
    if z.shape.len() != 2 || z.shape[1] != spec.latent_dim || z.shape[0] == 0 {
        bail!(
            "--z has shape {:?}, expected [B, {}] with B >= 1 (latent_dim of {})",
            z.shape,
            spec.latent_dim,
            spec.name
        );
    }
    let b = z.shape[0];
    let classes = match (&a.class, spec.num_classes) {
        (None, 0) => ClassInput::None,
        (None, n) => bail!("{} is conditional on {n} classes: pass --class", spec.name),
        (Some(_), 0) => bail!("{} is unconditional: --class must not be given", spec.name),
        (Some(p), n) => {
            let c = read_npy(p, "--class")?;
            if c.dtype.is_float() {
                if c.shape != [b, n] {
                    bail!(
                        "float --class has shape {:?}, expected class vectors [{b}, {n}]",
                        c.shape
                    );
                }
                ClassInput::Soft(c.to_f32().unwrap())
            } else {
                if c.shape != [b] {
                    bail!(
                        "integer --class has shape {:?}, expected class ids [{b}]",
                        c.shape
                    );
                }
                let ids = c.to_i64().unwrap();
                if let Some(bad) = ids.iter().find(|&&v| v < 0 || v as usize >= n) {
                    bail!("--class contains id {bad}, allowed range 0..={}", n - 1);
                }
                ClassInput::Ids(ids.iter().map(|&v| v as u32).collect())
            }
        }
    };
    let out = g.generate(&zf, &classes, a.truncation)?;
    let dims = out.dims().to_vec();
    let data = out.flatten_all()?.to_vec1::<f32>()?;
    std::fs::write(&a.out, npy::write_f32(&dims, &data))
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    eprintln!("wrote {} {:?}", a.out.display(), dims);
    if let Some(gp) = &a.grid {
        let (c, h, w) = (dims[1], dims[2], dims[3]);
        let imgs: Vec<Image8> = data
            .chunks_exact(c * h * w)
            .map(|x| Image8::from_chw(x, c, h, w))
            .collect();
        let rows: Vec<Vec<Image8>> = imgs.chunks(8).map(|r| r.to_vec()).collect();
        std::fs::write(gp, grid(&rows, 2).to_png())
            .with_context(|| format!("cannot write {}", gp.display()))?;
        eprintln!("wrote {}", gp.display());
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Generate(a) => generate(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
