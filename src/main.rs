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
    /// Serve the generator over HTTP (shards, streams, inspection, explicit generation).
    Serve(Box<ServeArgs>),
    /// Write shards to disk, byte-identical to what the server sends for the same URL parameters.
    Export(Box<ExportArgs>),
    /// Write the vendored real digits (data/mnist_5k.csv.gz) as WebDataset shards with `png` and
    /// `cls` fields: `mnist-train-*.tar` (4000) and `mnist-test-*.tar` (1000), for the real-data
    /// baseline and linear evaluation.
    RealData(RealDataArgs),
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

/// Which generator to run and where.
#[derive(clap::Args, Debug)]
struct ModelArgs {
    /// Model directory (config.json + model.safetensors). Default: the embedded MNIST generator
    /// compiled into this binary, so a fresh machine serves something meaningful with no download.
    #[arg(long, env = "GENREP_MODEL")]
    model: Option<PathBuf>,
    /// `cpu`, or `cuda:N` with `--features cuda`. One thread owns the model on this device.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16. Half precision halves memory traffic on GPUs; CPU pixels are only
    /// reproducible bit-for-bit in f32.
    #[arg(long, env = "GENREP_DTYPE", default_value = "f32")]
    dtype: String,
}

/// Batching knobs shared by `serve` and `export`.
#[derive(clap::Args, Debug)]
struct EngineArgs {
    /// Images per generator forward pass. Larger batches raise device utilisation; the queue
    /// fills batches from all connections at once.
    #[arg(long, env = "GENREP_MAX_BATCH_SIZE", default_value_t = 64)]
    max_batch_size: usize,
    /// How long the batcher waits for more work before running a partial batch. A few ms lets
    /// concurrent single-sample requests share a pass without adding visible latency.
    #[arg(long, env = "GENREP_MAX_BATCH_WAIT_MS", default_value_t = 5)]
    max_batch_wait_ms: u64,
    /// Jobs (samples) that may wait for the generator. Beyond it single requests get 429 with
    /// Retry-After instead of waiting unboundedly; streams simply slow down.
    #[arg(long, env = "GENREP_MAX_QUEUE", default_value_t = 1024)]
    max_queue: usize,
    /// Threads encoding PNG/JPEG and tar while the device runs the next batch. Default: all cores.
    #[arg(long, env = "GENREP_ENCODE_THREADS")]
    encode_threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to bind. 0.0.0.0 serves other hosts (training jobs usually run elsewhere).
    #[arg(long, env = "GENREP_HOST", default_value = "0.0.0.0")]
    host: String,
    #[arg(long, env = "GENREP_PORT", default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Open shard/stream responses allowed at once; each holds its permit until its body ends.
    /// Beyond it new streams get 429, which protects the latency of the streams already running.
    #[arg(long, env = "GENREP_MAX_CONCURRENT_STREAMS", default_value_t = 64)]
    max_concurrent_streams: usize,
    /// Largest `views` (positives per anchor) a request may ask for.
    #[arg(long, env = "GENREP_MAX_VIEWS", default_value_t = 16)]
    max_views: usize,
    /// Largest `shard_size` a request may ask for.
    #[arg(long, env = "GENREP_MAX_SHARD_SIZE", default_value_t = 100_000)]
    max_shard_size: u64,
    /// Most latents in one `POST /v1/generate`.
    #[arg(long, env = "GENREP_MAX_GENERATE_LATENTS", default_value_t = 256)]
    max_generate_latents: usize,
    /// Most rows in one `/v1/grid.png`.
    #[arg(long, env = "GENREP_MAX_GRID_ROWS", default_value_t = 64)]
    max_grid_rows: usize,
    /// On SIGINT/SIGTERM, how long finite shards may take to finish before the process exits
    /// (endless streams end at the next sample boundary at once).
    #[arg(long, env = "GENREP_DRAIN_TIMEOUT_S", default_value_t = 30)]
    drain_timeout_s: u64,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Shard numbers, inclusive: `A..B` (like `{A..B}` in a WebDataset URL) or a single `N`.
    #[arg(long)]
    shards: String,
    /// File name prefix: files are `{prefix}-{NNNNNN}.tar`.
    #[arg(long, default_value = "train")]
    prefix: String,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    shard_size: u64,
    #[arg(long)]
    seed: Option<String>,
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    sigma: Option<String>,
    #[arg(long)]
    views: Option<String>,
    #[arg(long)]
    truncation: Option<String>,
    #[arg(long)]
    gen_truncation: Option<String>,
    #[arg(long)]
    classes: Option<String>,
    #[arg(long)]
    format: Option<String>,
    #[arg(long)]
    quality: Option<String>,
    /// Shards generated at once (they share batches).
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args, Debug)]
struct RealDataArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// The gzipped CSV (784 pixel columns + label). Default: data/mnist_5k.csv.gz of the source tree.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Seed of the order digits are written in (shuffled, so that shards and batches mix
    /// classes; a sample's key stays its index in the split).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn real_data(a: RealDataArgs) -> Result<()> {
    use genrep::data::{self, Split};
    if a.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    let csv = a.csv.clone().unwrap_or_else(data::default_path);
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    for split in [Split::Train, Split::Test] {
        let d = data::load(&csv, split)?;
        let order = data::shuffled_order(d.len(), a.seed);
        let mut written = 0;
        for (n, chunk) in order.chunks(a.shard_size).enumerate() {
            let mut buf = Vec::new();
            for &i in chunk {
                let img = Image8 {
                    width: 28,
                    height: 28,
                    channels: 1,
                    pixels: d.image(i).to_vec(),
                };
                let members = [
                    ("png".to_string(), bytes::Bytes::from(img.to_png())),
                    (
                        "cls".to_string(),
                        bytes::Bytes::from(d.labels[i].to_string()),
                    ),
                ];
                buf.extend_from_slice(&genrep::wds::sample_tar(&format!("{i:06}"), &members));
            }
            buf.extend_from_slice(&genrep::wds::TAR_END);
            let path = a.out.join(format!("mnist-{}-{n:06}.tar", split.name()));
            std::fs::write(&path, buf)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written += 1;
        }
        eprintln!("{}: {} digits in {written} shards", split.name(), d.len());
    }
    Ok(())
}

fn load_generator(m: &ModelArgs) -> Result<Box<dyn genrep::generator::Generator>> {
    let device = genrep::device::parse_device(&m.device)?;
    let dtype = parse_dtype(&m.dtype)?;
    Ok(match &m.model {
        Some(dir) => load_model_dir(dir, &device, dtype)
            .with_context(|| format!("loading model directory {}", dir.display()))?,
        None => genrep::embedded::load(&device, dtype).context("loading the embedded model")?,
    })
}

fn engine_config(e: &EngineArgs) -> Result<genrep::engine::EngineConfig> {
    if e.max_batch_size == 0 {
        bail!("--max-batch-size must be at least 1");
    }
    if e.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    if e.encode_threads == Some(0) {
        bail!("--encode-threads must be at least 1");
    }
    Ok(genrep::engine::EngineConfig {
        max_batch_size: e.max_batch_size,
        max_batch_wait: std::time::Duration::from_millis(e.max_batch_wait_ms),
        max_queue: e.max_queue,
        encode_threads: e.encode_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
    })
}

async fn shutdown_signal(token: tokio_util::sync::CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested: /ready is 503, streams end at the next sample boundary");
    token.cancel();
}

fn serve(a: ServeArgs) -> Result<()> {
    if a.max_concurrent_streams == 0 || a.max_views == 0 || a.max_shard_size == 0 {
        bail!("--max-concurrent-streams, --max-views and --max-shard-size must be at least 1");
    }
    let generator = load_generator(&a.model)?;
    let cfg = engine_config(&a.engine)?;
    tracing::info!(?a.model, ?a.engine, host = %a.host, port = a.port, "starting");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let metrics = std::sync::Arc::new(genrep::metrics::Metrics::default());
        let engine = genrep::engine::Engine::start(generator, cfg, metrics);
        let limits = genrep::api::Limits {
            max_views: a.max_views,
            max_shard_size: a.max_shard_size,
            max_concurrent_streams: a.max_concurrent_streams,
            max_generate_latents: a.max_generate_latents,
            max_grid_rows: a.max_grid_rows,
        };
        let token = tokio_util::sync::CancellationToken::new();
        let state = genrep::api::AppState::new(engine, limits, token.clone());
        let app = genrep::api::router(state);
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        tokio::spawn(shutdown_signal(token.clone()));
        let drain = std::time::Duration::from_secs(a.drain_timeout_s);
        let wait = token.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { wait.cancelled().await });
        let deadline = async {
            token.cancelled().await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            r = server => r.context("server error")?,
            _ = deadline => tracing::warn!("drain timeout: closing remaining connections"),
        }
        tracing::info!("bye");
        Ok(())
    })
}

fn parse_shard_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let parse = |x: &str| {
        x.parse::<u64>()
            .with_context(|| format!("--shards: `{x}` is not a shard number (expected A..B or N)"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        bail!("--shards: {a}..{b} is empty (start > end)");
    }
    Ok((a, b))
}

fn export(a: ExportArgs) -> Result<()> {
    let (first, last) = parse_shard_range(&a.shards)?;
    let name_ok = !a.prefix.is_empty()
        && a.prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        bail!("--prefix must be letters, digits, `_` or `-`");
    }
    let generator = load_generator(&a.model)?;
    let spec = generator.spec().clone();
    let cfg = engine_config(&a.engine)?;
    // The same validation as the HTTP query string, so files equal the served shards.
    let pairs = [
        ("seed", &a.seed),
        ("method", &a.method),
        ("sigma", &a.sigma),
        ("views", &a.views),
        ("truncation", &a.truncation),
        ("gen_truncation", &a.gen_truncation),
        ("classes", &a.classes),
        ("format", &a.format),
        ("quality", &a.quality),
    ];
    let q = genrep::api::params::Query::from_pairs(
        pairs
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone()))),
    );
    let limits = genrep::api::Limits {
        max_views: 1024,
        max_shard_size: u64::MAX,
        max_concurrent_streams: 1,
        max_generate_latents: 0,
        max_grid_rows: 0,
    };
    let req = q
        .sample_request(&spec, &limits)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let size = a.shard_size;
    if size == 0 {
        bail!("--shard-size must be at least 1");
    }
    if (last + 1)
        .checked_mul(size)
        .is_none_or(|e| e > genrep_wire::MAX_INDEX)
    {
        bail!("--shards {first}..{last} with --shard-size {size} goes past the last sample index");
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let metrics = std::sync::Arc::new(genrep::metrics::Metrics::default());
        let engine = genrep::engine::Engine::start(generator, cfg, metrics);
        let req = std::sync::Arc::new(req);
        let total = (last - first + 1) * size;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} samples {per_sec} eta {eta} {msg}",
            )
            .unwrap(),
        );
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(a.parallel.max(1)));
        let mut tasks = Vec::new();
        for n in first..=last {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (engine, req, bar) = (engine.clone(), req.clone(), bar.clone());
            let path = a.out.join(format!("{}-{n:06}.tar", a.prefix));
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let (tx, mut rx) = tokio::sync::mpsc::channel(8);
                let start = n * size;
                let prod = tokio::spawn(genrep::engine::produce(
                    engine,
                    req,
                    start,
                    genrep::engine::StreamEnd::Shard(start + size),
                    tx,
                    tokio_util::sync::CancellationToken::new(),
                ));
                let tmp = path.with_extension("tar.partial");
                let mut buf = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    let chunk = chunk.with_context(|| format!("generating {}", path.display()))?;
                    if chunk.len() != 1024 || chunk.iter().any(|&b| b != 0) {
                        bar.inc(1);
                    }
                    buf.extend_from_slice(&chunk);
                }
                prod.await?;
                // Write then rename: an interrupted export never leaves a short shard behind.
                std::fs::write(&tmp, &buf)
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, &path)?;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        bar.finish_with_message("done");
        eprintln!("wrote shards {first}..={last} to {}", a.out.display());
        Ok(())
    })
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
    // Freed activations stay in the heap for the next batch (see genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Command::Generate(a) => generate(a),
        Command::Serve(a) => serve(*a),
        Command::Export(a) => export(*a),
        Command::RealData(a) => real_data(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
