//! The command line: every subcommand's flags (clap, each also an environment variable where a
//! deployment sets it) and the one place they are checked and turned into the library's
//! options. Numeric limits are checked by clap's range parsers as they are parsed, so a typo
//! (`3e18`, `0`) is refused naming the flag and its range; cross-flag rules are in the
//! `*_options` functions below.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use genrep::api::auth::MAX_STREAMS;
use genrep::engine::EngineConfig;
use genrep::generator::{load_model, Generator};
use genrep::params::{Limits, SamplingArgs, MAX_VIEWS};
use genrep_wire::MAX_INDEX;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A count flag in `lo..=hi`: every limit has an upper bound far above any real deployment and
/// below what the structures behind it can count.
fn count(lo: u64, hi: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(lo..=hi)
}

/// Longest timeout any flag takes: a day (past it, deadlines could overflow the clock).
const MAX_TIMEOUT_S: u64 = 86_400;

/// A timeout flag in seconds, `lo..=MAX_TIMEOUT_S`.
fn seconds(lo: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::<u64>::new().range(lo..=MAX_TIMEOUT_S)
}

/// Compute dtype of the generator.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn candle(self) -> candle_core::DType {
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
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the generator over HTTP (shards, streams, inspection, explicit generation).
    Serve(Box<ServeArgs>),
    /// Write shards to disk, byte-identical to what the server sends for the same URL parameters.
    Export(Box<ExportArgs>),
    /// Write the vendored real digits (data/mnist_5k.csv.gz) as WebDataset shards with `png` and
    /// `cls` fields: `mnist-train-*.tar` (4000) and `mnist-test-*.tar` (1000), for the real-data
    /// baseline and linear evaluation.
    RealData(RealDataArgs),
    /// Run a model (directory or rosinality .pt) on given latents and write the images (.npy float32 NCHW, optional PNG grid).
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
    /// Steering walks: latent directions learned from the generator so that moving along them
    /// imitates a pixel edit (zoom, shift, rotation, colour).
    #[command(subcommand)]
    Walks(WalksCommand),
}

#[derive(clap::Subcommand)]
pub enum WalksCommand {
    /// Train walks for a model (GenRep's composed-walk recipe): Adam on the walks, the generator
    /// frozen, the masked MSE between `G(z + Σ αᵢ·wᵢ)` and the pixel edit of `G(z)`.
    Train(Box<WalksTrainArgs>),
    /// Measure what each walk does: over a few hundred anchors and 9 coefficients, the image
    /// statistic its edit changes (zoom: ink spread; shifts: ink centroid; rot2d: axis angle;
    /// colour: channel mean), for the walk's images and for the pixel edit itself. JSON on
    /// stdout.
    Measure(Box<WalksMeasureArgs>),
}

#[derive(clap::Args)]
pub struct WalksMeasureArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The walk file. Default: the model directory's walks.safetensors, or the embedded
    /// model's own.
    #[arg(long)]
    pub walks: Option<PathBuf>,
    /// Anchors moved along each walk.
    #[arg(long, default_value_t = 256, value_parser = count(1, 1 << 16))]
    pub anchors: usize,
    /// Coefficients per walk, evenly spaced over its range.
    #[arg(long, default_value_t = 9, value_parser = count(2, 1024))]
    pub steps: usize,
    /// Seed of the anchors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct WalksTrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The walk file to write (safetensors: one tensor per walk, and what made them).
    #[arg(long)]
    pub out: PathBuf,
    /// Transforms to learn, comma-separated: zoom, shift_x, shift_y, rot2d, color (one walk per
    /// image channel).
    #[arg(long, default_value = "zoom,shift_x,shift_y,rot2d,color")]
    pub transforms: String,
    /// Edits per training sample: `composed` (GenRep: every transform at once) or `single`
    /// (one transform per sample, chosen uniformly: the walks do not learn each other's edits;
    /// on the embedded model the composed recipe left shift_y moving the wrong way).
    #[arg(long, default_value = "composed", value_parser = ["composed", "single"])]
    pub edits: String,
    /// Optimiser steps (GenRep: 5000 at batch 32).
    #[arg(long, default_value_t = 5000, value_parser = count(1, 10_000_000))]
    pub steps: usize,
    /// Anchors per step.
    #[arg(long, default_value_t = 32, value_parser = count(1, 4096))]
    pub batch_size: usize,
    /// Adam's learning rate (GenRep: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Everything a run draws comes from this seed and the step.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save the training state every N steps (and at the end) to `OUT.ckpt`.
    #[arg(long, default_value_t = 100, value_parser = count(1, 10_000_000))]
    pub checkpoint_every: usize,
    /// Continue from `OUT.ckpt` (same model and settings; `--steps` may be larger). The result
    /// is the same as a run that never stopped.
    #[arg(long)]
    pub resume: bool,
    /// The loss curve, one JSON line per step. Default: `OUT.metrics.jsonl`.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
}

/// The library's options of `genrep walks train`.
pub fn walks_train_options(a: &WalksTrainArgs) -> Result<genrep::walks::TrainOptions> {
    if !(a.lr.is_finite() && a.lr > 0.0 && a.lr < 1.0) {
        anyhow::bail!("--lr {}: must be in (0, 1)", a.lr);
    }
    let transforms = genrep::walks::file::parse_transforms(&a.transforms)
        .map_err(|e| anyhow::anyhow!("--transforms: {e}"))?;
    let with_ext = |ext: &str| {
        let mut p = a.out.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    Ok(genrep::walks::TrainOptions {
        config: genrep::walks::train::TrainConfig {
            transforms,
            edits: genrep::walks::train::EditMix::parse(&a.edits).map_err(anyhow::Error::msg)?,
            steps: a.steps,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
        },
        out: a.out.clone(),
        metrics: a
            .metrics
            .clone()
            .unwrap_or_else(|| with_ext(".metrics.jsonl")),
        checkpoint: with_ext(".ckpt"),
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
    })
}

#[derive(clap::Args)]
// A flag given again replaces its earlier value (scripts pass defaults, users override them).
#[command(args_override_self = true)]
pub struct CheckArgs {
    /// `cpu`, or `cuda:N` when built with the `cuda` feature.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// The repository's `tests/fixtures` folder (the BigGAN, StyleGAN2 and BigBiGAN fixtures and
    /// their reference outputs).
    #[arg(long, default_value = "tests/fixtures")]
    pub fixtures: PathBuf,
    /// Dtypes of the parity checks and the throughput sweep.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "f32,f16,bf16",
        action = clap::ArgAction::Set
    )]
    pub dtypes: Vec<Dtype>,
    /// Throughput models: `deep-128`, `deep-256`, `deep-512` (the package's configs), `sg2-256`
    /// (StyleGAN2 paper256), `bigbigan-128` (all with random weights), or model directories.
    #[arg(long, value_delimiter = ',', default_value = "deep-128,sg2-256,bigbigan-128,deep-256", action = clap::ArgAction::Set)]
    pub models: Vec<String>,
    /// Batch sizes of the throughput sweep; after a batch fails (out of memory), larger ones of
    /// the same model and dtype are skipped.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256", action = clap::ArgAction::Set, value_parser = count(1, 1 << 16))]
    pub batches: Vec<usize>,
    /// Seconds the throughput sweep may take; later entries are reported as skipped, so the
    /// check fits the time a borrowed GPU host gives.
    #[arg(long, default_value_t = 150.0)]
    pub throughput_budget_s: f64,
    /// Seconds each throughput entry repeats its batch for (after one warm-up pass).
    #[arg(long, default_value_t = 1.0)]
    pub min_time_s: f64,
    /// Generators of the serving measurements: `embedded`, `deep-128`, …, or `none`.
    #[arg(long, value_delimiter = ',', default_value = "embedded,deep-128", action = clap::ArgAction::Set)]
    pub serving_models: Vec<String>,
    /// Compute dtype of the serving measurements.
    #[arg(long, value_enum, default_value_t = Dtype::F16)]
    pub serving_dtype: Dtype,
    /// Seconds of each of the four serving measurements per generator.
    #[arg(long, default_value_t = 5.0)]
    pub serving_s: f64,
    /// Encoder threads of the serving engines. Default: all cores.
    #[arg(long, value_parser = count(1, 4096))]
    pub encode_threads: Option<usize>,
    /// Seconds the whole check may take: measurements that would start later are reported as
    /// skipped. Default: no deadline.
    #[arg(long)]
    pub deadline_s: Option<f64>,
    /// Also write the report to this file, after every section (so a run that is cut short
    /// leaves the sections it finished; `"complete": false` until the end).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model directory (config.json + model.safetensors), or a rosinality StyleGAN2 checkpoint
    /// (`*.pt`), read in place.
    #[arg(long, env = "GENREP_MODEL")]
    pub model: PathBuf,
    /// Latents: float .npy of shape [B, latent_dim].
    #[arg(long)]
    pub z: PathBuf,
    /// Classes: integer .npy [B] of class ids, or float .npy [B, num_classes] of (soft) class vectors.
    /// Required for class-conditional generators.
    #[arg(long = "class")]
    pub class: Option<PathBuf>,
    /// The generator's truncation: BigGAN's input (selects the BN statistics row) in (0, 1],
    /// StyleGAN2's ψ in [-1, 2]; default 1. Generators without one refuse the flag.
    /// `--truncation` is its old name. StyleGAN2 runs with its model's noise mode (`const`).
    #[arg(
        long = "gen-truncation",
        visible_alias = "gen_truncation",
        alias = "truncation"
    )]
    pub gen_truncation: Option<f64>,
    /// Output .npy: float32 [B, C, H, W] in [-1, 1].
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a PNG grid of the images (8 per row).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Device: `cpu`, or `cuda:N` when built with the `cuda` feature.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Compute dtype (f16/bf16 are meant for CUDA).
    #[arg(long, env = "GENREP_DTYPE", value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// Which generator to run and where.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model directory (config.json + model.safetensors), or a rosinality StyleGAN2 checkpoint
    /// (`*.pt`, read in place: no conversion step). Default: the embedded MNIST generator
    /// compiled into this binary, so a fresh machine serves something meaningful with no download.
    #[arg(long, env = "GENREP_MODEL")]
    pub model: Option<PathBuf>,
    /// `cpu`, or `cuda:N` with `--features cuda`. One thread owns the model on this device.
    #[arg(long, env = "GENREP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Half precision halves memory traffic on GPUs; CPU pixels are only reproducible
    /// bit-for-bit in f32.
    #[arg(long, env = "GENREP_DTYPE", value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// Batching knobs shared by `serve` and `export`.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// Images per generator forward pass. Larger batches raise device utilisation; the queue
    /// fills batches from all connections at once.
    #[arg(long, env = "GENREP_MAX_BATCH_SIZE", default_value_t = 64, value_parser = count(1, 1 << 16))]
    pub max_batch_size: usize,
    /// How long the batcher waits for more work before running a partial batch. A few ms lets
    /// concurrent single-sample requests share a pass without adding visible latency.
    #[arg(long, env = "GENREP_MAX_BATCH_WAIT_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub max_batch_wait_ms: u64,
    /// Jobs (samples) that may wait for the generator. Beyond it single requests get 429 with
    /// Retry-After instead of waiting unboundedly; streams simply slow down.
    #[arg(long, env = "GENREP_MAX_QUEUE", default_value_t = 1024, value_parser = count(1, 1 << 20))]
    pub max_queue: usize,
    /// Threads encoding PNG/JPEG and tar while the device runs the next batch. Default: all cores.
    #[arg(long, env = "GENREP_ENCODE_THREADS", value_parser = count(1, 4096))]
    pub encode_threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to bind. 0.0.0.0 serves other hosts (training jobs usually run elsewhere).
    #[arg(long, env = "GENREP_HOST", default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, env = "GENREP_PORT", default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Open shard/stream responses allowed at once; each holds its permit until its body ends.
    /// Beyond it new streams get 429, which protects the latency of the streams already running.
    #[arg(long, env = "GENREP_MAX_CONCURRENT_STREAMS", default_value_t = 64, value_parser = count(1, MAX_STREAMS as u64))]
    pub max_concurrent_streams: usize,
    /// Largest `views` (positives per anchor) a request may ask for.
    #[arg(long, env = "GENREP_MAX_VIEWS", default_value_t = 16, value_parser = count(1, MAX_VIEWS as u64))]
    pub max_views: usize,
    /// Largest `shard_size` a request may ask for.
    #[arg(long, env = "GENREP_MAX_SHARD_SIZE", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=MAX_INDEX))]
    pub max_shard_size: u64,
    /// Most latents in one `POST /v1/generate`.
    #[arg(long, env = "GENREP_MAX_GENERATE_LATENTS", default_value_t = 256, value_parser = count(1, 1 << 16))]
    pub max_generate_latents: usize,
    /// Most rows in one `/v1/grid.png`.
    #[arg(long, env = "GENREP_MAX_GRID_ROWS", default_value_t = 64, value_parser = count(1, 4096))]
    pub max_grid_rows: usize,
    /// Open connections at most; beyond it new connections are closed at once. Keeps a flood of
    /// idle sockets from exhausting file descriptors (keep it below `ulimit -n`).
    #[arg(long, env = "GENREP_MAX_CONNECTIONS", default_value_t = 512, value_parser = count(1, 1 << 20))]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers; slow or half-sent headers
    /// would otherwise hold a connection forever.
    #[arg(long, env = "GENREP_HEADER_READ_TIMEOUT_S", default_value_t = 10, value_parser = seconds(1))]
    pub header_read_timeout_s: u64,
    /// Seconds a response write may make no progress (the client stopped reading) before the
    /// connection is closed, which ends its stream and frees its stream slot and queued work.
    /// Long enough for a training job's pauses (checkpoints, evaluation).
    #[arg(long, env = "GENREP_IDLE_TIMEOUT_S", default_value_t = 120, value_parser = seconds(1))]
    pub idle_timeout_s: u64,
    /// Seconds a `POST /v1/generate` body may take to arrive in full. A client that declares a
    /// body and sends it slowly (or never) would otherwise hold a connection and a buffer.
    #[arg(long, env = "GENREP_BODY_TIMEOUT_S", default_value_t = 30, value_parser = seconds(1))]
    pub body_timeout_s: u64,
    /// On SIGINT/SIGTERM, how long finite shards may take to finish before the process exits
    /// (endless streams end at the next sample boundary at once). `/ready` answers 503 during
    /// the drain; the exit status is non-zero if shards had to be cut.
    #[arg(long, env = "GENREP_DRAIN_TIMEOUT_S", default_value_t = 30, value_parser = seconds(0))]
    pub drain_timeout_s: u64,
    /// API keys: a TOML (`[[consumer]]` tables) or JSON (`{"consumer": [...]}`) file of
    /// consumers with `name`, `key` and optional `max_streams`, `max_requests_per_s`, `weight`.
    /// Then every route but /health and /ready needs `Authorization: Bearer KEY` (or
    /// `?token=KEY`). Without it the server is open and each peer address is a consumer.
    #[arg(long, env = "GENREP_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Open shard/stream responses one consumer (key, or peer address) may hold, so one
    /// client cannot take every stream slot. A key's own `max_streams` overrides it.
    #[arg(long, env = "GENREP_MAX_STREAMS_PER_CONSUMER", default_value_t = 16, value_parser = count(1, MAX_STREAMS as u64))]
    pub max_streams_per_consumer: usize,
    /// Browser origins allowed to call the API (CORS), comma-separated, or `*`. Default: none
    /// (browsers block cross-origin reads; curl and training jobs are unaffected).
    #[arg(long, env = "GENREP_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// A walk file (`genrep walks train --out FILE`) for `method=steer`, made for the served
    /// weights. Default: the model directory's walks.safetensors, or the embedded model's own.
    #[arg(long, visible_alias = "walk-file", env = "GENREP_WALKS")]
    pub walks: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Shard numbers, inclusive: `A..B` (like `{A..B}` in a WebDataset URL) or a single `N`.
    #[arg(long)]
    pub shards: String,
    /// File name prefix: files are `{prefix}-{NNNNNN}.tar`.
    #[arg(long, default_value = "train")]
    pub prefix: String,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_INDEX))]
    pub shard_size: u64,
    /// The sampling parameters (from the parameter table: the query parameters' names and
    /// values).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Shards generated at once (they share batches).
    #[arg(long, default_value_t = 2, value_parser = count(1, 1024))]
    pub parallel: usize,
    /// A walk file for `--method steer` (serve's `--walks`; here `--walks` is the sampling
    /// parameter choosing among them). Default: the model directory's walks.safetensors, or
    /// the embedded model's own.
    #[arg(long, env = "GENREP_WALK_FILE")]
    pub walk_file: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(clap::Args, Debug)]
pub struct RealDataArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000, value_parser = count(1, 1 << 30))]
    pub shard_size: usize,
    /// The gzipped CSV (784 pixel columns + label). Default: data/mnist_5k.csv.gz of the source tree.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Seed of the order digits are written in (shuffled, so that shards and batches mix
    /// classes; a sample's key stays its index in the split).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl ModelArgs {
    /// Loads the model directory or checkpoint, or the embedded generator.
    pub fn load(&self) -> Result<Box<dyn Generator>> {
        let device = genrep::device::parse_device(&self.device)?;
        let dtype = self.dtype.candle();
        Ok(match &self.model {
            Some(path) => load_model(path, &device, dtype)
                .with_context(|| format!("loading model {}", path.display()))?,
            None => genrep::embedded::load(&device, dtype).context("loading the embedded model")?,
        })
    }

    /// [`Self::load`], then the walks served with it (`walks`, else the ones next to the model).
    pub fn load_with_walks(&self, walks: Option<&Path>) -> Result<Box<dyn Generator>> {
        let mut g = self.load()?;
        if let Some(from) = genrep::walks::set::load_for(g.as_mut(), self.model.as_deref(), walks)
            .context("loading the walks")?
        {
            let n = g.spec().walks.as_ref().map_or(0, |w| w.walks.len());
            tracing::info!(walks = n, %from, "steering walks loaded");
        }
        Ok(g)
    }
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_size: self.max_batch_size,
            max_batch_wait: Duration::from_millis(self.max_batch_wait_ms),
            max_queue: self.max_queue,
            encode_threads: self
                .encode_threads
                .unwrap_or_else(EngineConfig::default_encode_threads),
        }
    }
}

/// `genrep serve`'s options, the key file read and checked.
pub fn serve_options(a: &ServeArgs) -> Result<genrep::server::ServeOptions> {
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
    Ok(genrep::server::ServeOptions {
        host: a.host.clone(),
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
            header_read_timeout: Duration::from_secs(a.header_read_timeout_s),
            idle_timeout: Duration::from_secs(a.idle_timeout_s),
        },
        drain: Duration::from_secs(a.drain_timeout_s),
        access: genrep::server::Access {
            api_keys,
            cors_origins: a.cors_origin.clone(),
        },
    })
}

/// `genrep export`'s options.
pub fn export_options(a: &ExportArgs) -> Result<genrep::export::ExportOptions> {
    let (first, last) = genrep::export::parse_shard_range(&a.shards)?;
    Ok(genrep::export::ExportOptions {
        out: a.out.clone(),
        first,
        last,
        prefix: a.prefix.clone(),
        shard_size: a.shard_size,
        parallel: a.parallel,
        sampling: a.sampling.given.clone(),
    })
}

/// `genrep generate`'s options.
pub fn generate_options(a: &GenerateArgs) -> genrep::offline::GenerateOptions {
    genrep::offline::GenerateOptions {
        model: a.model.clone(),
        z: a.z.clone(),
        class: a.class.clone(),
        knobs: a
            .gen_truncation
            .map(|t| ("gen_truncation".to_string(), t))
            .into_iter()
            .collect(),
        out: a.out.clone(),
        grid: a.grid.clone(),
    }
}

/// `genrep check`'s options; `started` anchors `--deadline-s`.
pub fn check_options(
    a: &CheckArgs,
    started: std::time::Instant,
) -> Result<genrep::check::CheckOptions> {
    use genrep::check::{serving::ServingModel, throughput::ModelChoice};
    let seconds = |v: f64, flag: &str| -> Result<Duration> {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("{flag} must be a positive number of seconds, got {v}"))
    };
    if a.batches.is_empty() {
        bail!("--batches must list batch sizes of at least 1");
    }
    if a.dtypes.is_empty() {
        bail!("--dtypes must list at least one dtype");
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
    Ok(genrep::check::CheckOptions {
        device: genrep::device::parse_device(&a.device)?,
        device_name: a.device.clone(),
        fixtures: a.fixtures.clone(),
        dtypes: a.dtypes.iter().map(|d| d.candle()).collect(),
        models,
        batches: a.batches.clone(),
        throughput_budget: seconds(a.throughput_budget_s, "--throughput-budget-s")?,
        min_time: seconds(a.min_time_s, "--min-time-s")?,
        serving_models,
        serving_dtype: a.serving_dtype.candle(),
        serving_time: seconds(a.serving_s, "--serving-s")?,
        encode_threads: a
            .encode_threads
            .unwrap_or_else(EngineConfig::default_encode_threads),
        deadline: match a.deadline_s {
            Some(s) => Some(started + seconds(s, "--deadline-s")?),
            None => None,
        },
    })
}
