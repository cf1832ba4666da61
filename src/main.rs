//! `genrep` command line: parses flags and dispatches to [`genrep::server`], [`genrep::export`]
//! and [`genrep::offline`].

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use genrep::generator::load_model_dir;
use genrep::params::{Limits, SamplingArgs};
use std::path::PathBuf;

/// Compute dtype of the generator.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn candle(self) -> candle_core::DType {
        match self {
            Dtype::F32 => candle_core::DType::F32,
            Dtype::F16 => candle_core::DType::F16,
            Dtype::Bf16 => candle_core::DType::BF16,
        }
    }
}

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
    /// Measure this build on one device and print a JSON report: parity with the committed
    /// references in each dtype, determinism of shard bytes, generator throughput (images/s,
    /// TFLOP/s) and serving throughput (HTTP vs in-process, dynamic batching gain).
    ///
    /// The defaults are the GPU run of `scripts/gpu-check.sh` (a few minutes on one GPU). On a
    /// CPU, pass small models and batches, e.g. `--models tests/fixtures/biggan-tiny --batches 1,4
    /// --dtypes f32`. Exits 1 when a parity or determinism check fails (the report is still
    /// written).
    Check(CheckArgs),
}

#[derive(clap::Args)]
// A flag given again replaces its earlier value (scripts pass defaults, users override them).
#[command(args_override_self = true)]
struct CheckArgs {
    /// `cpu`, or `cuda:N` when built with the `cuda` feature.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    device: String,
    /// The repository's `tests/fixtures` folder (the BigGAN fixture and its PyTorch outputs).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// Dtypes of the parity checks and the throughput sweep.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "f32,f16,bf16",
        action = clap::ArgAction::Set
    )]
    dtypes: Vec<Dtype>,
    /// Throughput models: `deep-128`, `deep-256`, `deep-512` (the package's configs, random
    /// weights) or model directories.
    #[arg(long, value_delimiter = ',', default_value = "deep-128,deep-256", action = clap::ArgAction::Set)]
    models: Vec<String>,
    /// Batch sizes of the throughput sweep; after a batch fails (out of memory), larger ones of
    /// the same model and dtype are skipped.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256", action = clap::ArgAction::Set)]
    batches: Vec<usize>,
    /// Seconds the throughput sweep may take; later entries are reported as skipped, so the
    /// check fits the time a borrowed GPU host gives.
    #[arg(long, default_value_t = 150.0)]
    throughput_budget_s: f64,
    /// Seconds each throughput entry repeats its batch for (after one warm-up pass).
    #[arg(long, default_value_t = 1.0)]
    min_time_s: f64,
    /// Generators of the serving measurements: `embedded`, `deep-128`, …, or `none`.
    #[arg(long, value_delimiter = ',', default_value = "embedded,deep-128", action = clap::ArgAction::Set)]
    serving_models: Vec<String>,
    /// Compute dtype of the serving measurements.
    #[arg(long, value_enum, default_value_t = Dtype::F16)]
    serving_dtype: Dtype,
    /// Seconds of each of the four serving measurements per generator.
    #[arg(long, default_value_t = 5.0)]
    serving_s: f64,
    /// Encoder threads of the serving engines. Default: all cores.
    #[arg(long)]
    encode_threads: Option<usize>,
    /// Seconds the whole check may take: measurements that would start later are reported as
    /// skipped. Default: no deadline.
    #[arg(long)]
    deadline_s: Option<f64>,
    /// Also write the report to this file, after every section (so a run that is cut short
    /// leaves the sections it finished; `"complete": false` until the end).
    #[arg(long)]
    out: Option<PathBuf>,
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
    /// BigGAN's truncation input (selects the BN statistics row), in (0, 1]; default 1.
    /// Generators without it refuse the flag. `--truncation` is its old name.
    #[arg(long = "gen-truncation", visible_alias = "gen_truncation", alias = "truncation")]
    gen_truncation: Option<f64>,
    /// Output .npy: float32 [B, C, H, W] in [-1, 1].
    #[arg(long)]
    out: PathBuf,
    /// Also write a PNG grid of the images (8 per row).
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Device: `cpu`, or `cuda:N` when built with the `cuda` feature.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    device: String,
    /// Compute dtype (f16/bf16 are meant for CUDA).
    #[arg(long, env = "GENREP_DTYPE", value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
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
    /// Half precision halves memory traffic on GPUs; CPU pixels are only reproducible
    /// bit-for-bit in f32.
    #[arg(long, env = "GENREP_DTYPE", value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
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
    /// Open connections at most; beyond it new connections are closed at once. Keeps a flood of
    /// idle sockets from exhausting file descriptors (keep it below `ulimit -n`).
    #[arg(long, env = "GENREP_MAX_CONNECTIONS", default_value_t = 512)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers; slow or half-sent headers
    /// would otherwise hold a connection forever.
    #[arg(long, env = "GENREP_HEADER_READ_TIMEOUT_S", default_value_t = 10)]
    header_read_timeout_s: u64,
    /// Seconds a response write may make no progress (the client stopped reading) before the
    /// connection is closed, which ends its stream and frees its stream slot and queued work.
    /// Long enough for a training job's pauses (checkpoints, evaluation).
    #[arg(long, env = "GENREP_IDLE_TIMEOUT_S", default_value_t = 120)]
    idle_timeout_s: u64,
    /// Seconds a `POST /v1/generate` body may take to arrive in full. A client that declares a
    /// body and sends it slowly (or never) would otherwise hold a connection and a buffer.
    #[arg(long, env = "GENREP_BODY_TIMEOUT_S", default_value_t = 30)]
    body_timeout_s: u64,
    /// On SIGINT/SIGTERM, how long finite shards may take to finish before the process exits
    /// (endless streams end at the next sample boundary at once). `/ready` answers 503 during
    /// the drain; the exit status is non-zero if shards had to be cut.
    #[arg(long, env = "GENREP_DRAIN_TIMEOUT_S", default_value_t = 30)]
    drain_timeout_s: u64,
    /// API keys: a TOML (`[[consumer]]` tables) or JSON (`{"consumer": [...]}`) file of
    /// consumers with `name`, `key` and optional `max_streams`, `max_requests_per_s`, `weight`.
    /// Then every route but /health and /ready needs `Authorization: Bearer KEY` (or
    /// `?token=KEY`). Without it the server is open and each peer address is a consumer.
    #[arg(long, env = "GENREP_API_KEYS")]
    api_keys: Option<PathBuf>,
    /// Open shard/stream responses one consumer (key, or peer address) may hold, so one
    /// client cannot take every stream slot. A key's own `max_streams` overrides it.
    #[arg(long, env = "GENREP_MAX_STREAMS_PER_CONSUMER", default_value_t = 16)]
    max_streams_per_consumer: usize,
    /// Browser origins allowed to call the API (CORS), comma-separated, or `*`. Default: none
    /// (browsers block cross-origin reads; curl and training jobs are unaffected).
    #[arg(long, env = "GENREP_CORS_ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
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
    /// The sampling parameters (from the parameter table: the query parameters' names and
    /// values).
    #[command(flatten)]
    sampling: SamplingArgs,
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

fn load_generator(m: &ModelArgs) -> Result<Box<dyn genrep::generator::Generator>> {
    let device = genrep::device::parse_device(&m.device)?;
    let dtype = m.dtype.candle();
    Ok(match &m.model {
        Some(dir) => load_model_dir(dir, &device, dtype)
            .with_context(|| format!("loading model directory {}", dir.display()))?,
        None => genrep::embedded::load(&device, dtype).context("loading the embedded model")?,
    })
}

/// Checks that a numeric flag lies in `lo..=hi`. Every limit has an upper bound far above any
/// real deployment and below what the structures behind it can count, so a typo (`3e18`) gets
/// this message instead of a panic or an overflow.
fn bounded(flag: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if !(lo..=hi).contains(&v) {
        bail!("{flag} = {v} is out of range: use {lo}..={hi}");
    }
    Ok(())
}

/// Longest timeout any flag takes: a day (past it, deadlines could overflow the clock).
const MAX_TIMEOUT_S: u64 = 86_400;

fn engine_config(e: &EngineArgs) -> Result<genrep::engine::EngineConfig> {
    bounded("--max-batch-size", e.max_batch_size as u64, 1, 1 << 16)?;
    bounded("--max-queue", e.max_queue as u64, 1, 1 << 20)?;
    bounded("--max-batch-wait-ms", e.max_batch_wait_ms, 0, 60_000)?;
    if let Some(t) = e.encode_threads {
        bounded("--encode-threads", t as u64, 1, 4096)?;
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

fn serve(a: ServeArgs) -> Result<()> {
    let streams = genrep::api::auth::MAX_STREAMS as u64;
    bounded(
        "--max-concurrent-streams",
        a.max_concurrent_streams as u64,
        1,
        streams,
    )?;
    bounded(
        "--max-streams-per-consumer",
        a.max_streams_per_consumer as u64,
        1,
        streams,
    )?;
    bounded("--max-views", a.max_views as u64, 1, 1024)?;
    bounded(
        "--max-shard-size",
        a.max_shard_size,
        1,
        genrep_wire::MAX_INDEX,
    )?;
    bounded(
        "--max-generate-latents",
        a.max_generate_latents as u64,
        1,
        1 << 16,
    )?;
    bounded("--max-grid-rows", a.max_grid_rows as u64, 1, 4096)?;
    bounded("--max-connections", a.max_connections as u64, 1, 1 << 20)?;
    bounded(
        "--header-read-timeout-s",
        a.header_read_timeout_s,
        1,
        MAX_TIMEOUT_S,
    )?;
    bounded("--idle-timeout-s", a.idle_timeout_s, 1, MAX_TIMEOUT_S)?;
    bounded("--body-timeout-s", a.body_timeout_s, 1, MAX_TIMEOUT_S)?;
    bounded("--drain-timeout-s", a.drain_timeout_s, 0, MAX_TIMEOUT_S)?;
    let api_keys = match &a.api_keys {
        Some(path) => {
            let keys = genrep::api::auth::read_key_file(path)?;
            if genrep::api::auth::readable_by_others(path) {
                tracing::warn!(
                    "{} is readable by every user of this machine, who can then act as any consumer in it: chmod 600 it",
                    path.display()
                );
            }
            tracing::info!(consumers = keys.len(), "API keys required");
            Some(keys)
        }
        None => None,
    };
    let generator = load_generator(&a.model)?;
    let cfg = engine_config(&a.engine)?;
    tracing::info!(?a.model, ?a.engine, host = %a.host, port = a.port, "starting");
    let opts = genrep::server::ServeOptions {
        host: a.host,
        port: a.port,
        limits: Limits {
            max_views: a.max_views,
            max_shard_size: a.max_shard_size,
            max_concurrent_streams: a.max_concurrent_streams,
            max_generate_latents: a.max_generate_latents,
            max_grid_rows: a.max_grid_rows,
            body_timeout_s: a.body_timeout_s,
            max_streams_per_consumer: a.max_streams_per_consumer,
        },
        connections: genrep::server::ConnectionLimits {
            max_connections: a.max_connections,
            header_read_timeout: std::time::Duration::from_secs(a.header_read_timeout_s),
            idle_timeout: std::time::Duration::from_secs(a.idle_timeout_s),
        },
        drain: std::time::Duration::from_secs(a.drain_timeout_s),
        access: genrep::server::Access {
            api_keys,
            cors_origins: a.cors_origin,
        },
    };
    genrep::server::run(generator, cfg, opts)
}

fn export(a: ExportArgs) -> Result<()> {
    let (first, last) = genrep::export::parse_shard_range(&a.shards)?;
    bounded("--parallel", a.parallel as u64, 1, 1024)?;
    let generator = load_generator(&a.model)?;
    let cfg = engine_config(&a.engine)?;
    genrep::export::run(
        generator,
        cfg,
        genrep::export::ExportOptions {
            out: a.out,
            first,
            last,
            prefix: a.prefix,
            shard_size: a.shard_size,
            parallel: a.parallel,
            sampling: a.sampling.given,
        },
    )
}

fn generate(a: GenerateArgs) -> Result<()> {
    let device = genrep::device::parse_device(&a.device)?;
    let o = genrep::offline::GenerateOptions {
        model: a.model,
        z: a.z,
        class: a.class,
        knobs: a
            .gen_truncation
            .map(|t| ("gen_truncation".to_string(), t))
            .into_iter()
            .collect(),
        out: a.out,
        grid: a.grid,
    };
    genrep::offline::generate(&o, &device, a.dtype.candle())
}

fn check(a: CheckArgs) -> Result<()> {
    use genrep::check::{serving::ServingModel, throughput::ModelChoice};
    let started = std::time::Instant::now();
    let seconds = |v: f64, flag: &str| -> Result<std::time::Duration> {
        std::time::Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("{flag} must be a positive number of seconds, got {v}"))
    };
    if a.batches.is_empty() || a.batches.contains(&0) {
        bail!("--batches must list batch sizes of at least 1");
    }
    if a.dtypes.is_empty() {
        bail!("--dtypes must list at least one dtype");
    }
    if a.encode_threads == Some(0) {
        bail!("--encode-threads must be at least 1");
    }
    let models = a
        .models
        .iter()
        .map(|m| {
            m.parse::<ModelChoice>()
                .map_err(|e| anyhow::anyhow!("--models: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let serving_models = a
        .serving_models
        .iter()
        .filter(|m| m.as_str() != "none")
        .map(|m| {
            m.parse::<ServingModel>()
                .map_err(|e| anyhow::anyhow!("--serving-models: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let o = genrep::check::CheckOptions {
        device: genrep::device::parse_device(&a.device)?,
        device_name: a.device,
        fixtures: a.fixtures,
        dtypes: a.dtypes.iter().map(|d| d.candle()).collect(),
        models,
        batches: a.batches,
        throughput_budget: seconds(a.throughput_budget_s, "--throughput-budget-s")?,
        min_time: seconds(a.min_time_s, "--min-time-s")?,
        serving_models,
        serving_dtype: a.serving_dtype.candle(),
        serving_time: seconds(a.serving_s, "--serving-s")?,
        encode_threads: a.encode_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        deadline: match a.deadline_s {
            Some(s) => Some(started + seconds(s, "--deadline-s")?),
            None => None,
        },
    };
    let write = |report: &serde_json::Value| -> Result<()> {
        if let Some(p) = &a.out {
            // Written whole to a temporary name and renamed, so a kill never leaves half a file.
            let tmp = p.with_extension("json.partial");
            std::fs::write(&tmp, format!("{:#}\n", report))
                .and_then(|_| std::fs::rename(&tmp, p))
                .with_context(|| format!("cannot write the report to {}", p.display()))?;
        }
        Ok(())
    };
    // Fail before measuring when the report cannot be written.
    write(&serde_json::json!({ "complete": false }))?;
    let mut write_error = None;
    let report = genrep::check::run(&o, |r| {
        if let Err(e) = write(r) {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    println!("{report:#}");
    if report["pass"] != true {
        bail!("parity or determinism failed (see the report)");
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
        Command::Check(a) => check(a),
        Command::RealData(a) => {
            genrep::offline::real_data(&a.out, a.shard_size, a.csv.as_deref(), a.seed)
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
