//! `genrep-train`: contrastive training from genrep streams or shards on disk, and evaluation.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use genrep_client::eval::{
    features, knn_eval, knn_top1, linear_probe, load_labelled_with, num_classes, pixel_features,
};
use genrep_client::loader::{FetchLimits, FetchPolicy};
use genrep_client::model::EncoderConfig;
use genrep_client::train::{
    check_channels, latest_checkpoint, load_encoder, log_jsonl, Objective, TrainConfig, Trainer,
};
use genrep_kernels::device::parse_device;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "genrep-train",
    version,
    about = "SimCLR/SupCon training from genrep views, and evaluation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Pixel augmentation presets (see `augment.rs`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AugmentPreset {
    /// GenRep's: crop 0.2-1, colour jitter 0.4, grayscale 0.2.
    Genrep,
    /// SimCLR's: crop 0.08-1, jitter 0.8, blur.
    Simclr,
    /// None: latent views only.
    None,
}

impl AugmentPreset {
    fn name(self) -> &'static str {
        match self {
            AugmentPreset::Genrep => "genrep",
            AugmentPreset::Simclr => "simclr",
            AugmentPreset::None => "none",
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Train an encoder.
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint: linear probe and kNN top-1 on labelled shards.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Device to compute on: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with
    /// `--features cuda`); the same values as the server's `--device`.
    #[arg(long, env = "GENREP_TRAIN_DEVICE", default_value = "cpu")]
    device: String,
    /// Shards: an http(s) URL pattern such as
    /// `http://host:8080/v1/shards/train-{000000..000099}.tar?seed=1&sigma=0.2&views=2`, local
    /// files (`dir/train-{000000..000009}.tar`) or a directory of `.tar` files; join with `::`.
    #[arg(long, env = "GENREP_TRAIN_SOURCE")]
    source: String,
    /// simclr (positives = the sample's views) or supcon (positives = same `cls`).
    #[arg(long, value_enum, default_value_t = Objective::Simclr)]
    method: Objective,
    /// Views per sample in the loss (anchor + positives). Default: what the data offers (a
    /// server shard requested with `views=K` gives the anchor + K positives; real images give 2,
    /// differing only by augmentation). Asking for more than the data has is an error.
    #[arg(long)]
    views: Option<usize>,
    /// Pixel augmentation preset.
    #[arg(long, value_enum, default_value_t = AugmentPreset::Genrep)]
    augment: AugmentPreset,
    /// Optimisation steps (or give --epochs). `--steps 0 --checkpoint-dir D` writes the encoder
    /// at initialisation: the random-init reference for `eval`.
    #[arg(long)]
    steps: Option<usize>,
    /// Epochs over this rank's shards; needs --samples-per-epoch to size the schedule.
    #[arg(long)]
    epochs: Option<usize>,
    /// Samples in one epoch of this rank's shards (with --epochs).
    #[arg(long)]
    samples_per_epoch: Option<usize>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Base learning rate (GenRep: 0.03·batch/256 with SGD).
    #[arg(long, default_value_t = 0.03)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    temperature: f64,
    /// Use LARS instead of SGD (SimCLR's large-batch optimiser).
    #[arg(long)]
    lars: bool,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f64,
    #[arg(long, default_value_t = 10)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Encoder: channels of the first stage (doubles per stage).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Encoder: residual blocks per stage.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    #[arg(long, default_value_t = 3)]
    stages: usize,
    #[arg(long, default_value_t = 64)]
    proj_dim: usize,
    /// Input channels (1 for the embedded MNIST generator, 3 for RGB generators).
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
    #[arg(long, env = "RANK", default_value_t = 0)]
    rank: usize,
    #[arg(long, env = "WORLD_SIZE", default_value_t = 1)]
    world_size: usize,
    /// Shards downloaded ahead in parallel.
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// Largest tar member (one field of a sample) accepted from a shard, in bytes; a sample
    /// may hold 8 such. Protects the job against a tampered or broken server that claims
    /// gigabytes. Default 64 MiB, five times a 1024×1024 RGB float32 view.
    #[arg(long, env = "GENREP_MAX_MEMBER_BYTES", default_value_t = genrep_client::loader::DEFAULT_MAX_MEMBER_BYTES)]
    max_member_bytes: u64,
    /// Slowest shard transfer accepted, in bytes/s averaged over 30 s: a server below it is
    /// treated as a failed download and retried (0: no minimum). Catches servers that trickle
    /// bytes just often enough to defeat the read timeout.
    #[arg(long, env = "GENREP_MIN_BYTES_PER_S", default_value_t = 1024)]
    min_bytes_per_s: u64,

    /// Keep downloaded shards in memory for later epochs.
    #[arg(long)]
    cache_shards: bool,
    /// Sample-level shuffle, as webdataset's `.shuffle(N)`: read N samples, deliver them in a
    /// seeded random order, repeat; resumes exactly from checkpoints. 0 = shard order (shards
    /// are still shuffled per epoch).
    #[arg(long, default_value_t = 0)]
    shuffle_buffer: usize,
    /// Checkpoint directory (`step-NNNNNNNN/` + `latest`).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Resume from `--checkpoint-dir`'s latest checkpoint (weights, optimizer, loader cursor).
    #[arg(long)]
    resume: bool,
    /// Metrics as JSON lines.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// kNN monitor: labelled train shards (e.g. real digits from `genrep real-data`).
    #[arg(long)]
    knn_train: Option<String>,
    /// kNN monitor: labelled test shards.
    #[arg(long)]
    knn_test: Option<String>,
    #[arg(long, default_value_t = 100)]
    knn_every: usize,
    /// When stderr is not a terminal (nohup, a scheduler, a pipe), print a plain progress line
    /// every N steps instead of the progress bar, which would print nothing until the end.
    #[arg(long, env = "GENREP_TRAIN_LOG_EVERY", default_value_t = 10)]
    log_every: usize,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A checkpoint directory (`step-…`) or a checkpoint root with `latest`.
    #[arg(long, required_unless_present = "raw_pixels")]
    checkpoint: Option<PathBuf>,
    /// Evaluate raw pixels instead of an encoder's features (the reference a learned encoder
    /// must beat), through the same probe and kNN.
    #[arg(long, conflicts_with = "checkpoint")]
    raw_pixels: bool,
    /// Labelled training shards for the probe / kNN memory.
    #[arg(long)]
    train: String,
    /// Labelled held-out shards.
    #[arg(long)]
    test: String,
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Most full-batch steps of the linear probe; it stops earlier once converged.
    #[arg(long, default_value_t = 3000)]
    probe_steps: usize,
    #[arg(long, default_value_t = 0.1)]
    probe_lr: f64,
    /// Device to compute on: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with
    /// `--features cuda`); the same values as the server's `--device`.
    #[arg(long, env = "GENREP_TRAIN_DEVICE", default_value = "cpu")]
    device: String,
    /// Largest tar member (one field of a sample) accepted from a shard, in bytes; a sample
    /// may hold 8 such. Protects the job against a tampered or broken server that claims
    /// gigabytes. Default 64 MiB, five times a 1024×1024 RGB float32 view.
    #[arg(long, env = "GENREP_MAX_MEMBER_BYTES", default_value_t = genrep_client::loader::DEFAULT_MAX_MEMBER_BYTES)]
    max_member_bytes: u64,
    /// Slowest shard transfer accepted, in bytes/s averaged over 30 s: a server below it is
    /// treated as a failed download and retried (0: no minimum). Catches servers that trickle
    /// bytes just often enough to defeat the read timeout.
    #[arg(long, env = "GENREP_MIN_BYTES_PER_S", default_value_t = 1024)]
    min_bytes_per_s: u64,
}

fn fetch_limits(max_member_bytes: u64, min_bytes_per_s: u64) -> Result<FetchLimits> {
    if max_member_bytes < 1024 {
        bail!("--max-member-bytes must be at least 1024");
    }
    Ok(FetchLimits {
        max_member_bytes,
        min_bytes_per_s,
    })
}

fn train(a: TrainArgs) -> Result<()> {
    if a.views == Some(0) {
        bail!("--views must be at least 1 (omit it to use every view the data offers)");
    }
    let dev = parse_device(&a.device)?;
    let objective = a.method;
    let steps = match (a.steps, a.epochs, a.samples_per_epoch) {
        (Some(s), None, _) => s,
        (None, Some(e), Some(n)) => (e * n).div_ceil(a.batch_size),
        (None, Some(_), None) => bail!("--epochs needs --samples-per-epoch"),
        (Some(_), Some(_), _) => bail!("give --steps or --epochs, not both"),
        (None, None, _) => bail!("give --steps or --epochs"),
    };
    let cfg = TrainConfig {
        source: a.source.clone(),
        objective,
        views: a.views.unwrap_or(0),
        augment: a.augment.name().to_string(),
        steps,
        batch_size: a.batch_size,
        lr: a.lr,
        temperature: a.temperature,
        lars: a.lars,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup_steps,
        seed: a.seed,
        encoder: EncoderConfig {
            in_channels: a.in_channels,
            width: a.width,
            depth: a.depth,
            stages: a.stages,
            proj_dim: a.proj_dim,
        },
        rank: a.rank,
        world_size: a.world_size,
        prefetch: a.prefetch,
        cache_shards: a.cache_shards,
        shuffle_buffer: a.shuffle_buffer,
        fetch: fetch_limits(a.max_member_bytes, a.min_bytes_per_s)?,
    };
    let resume_from = if a.resume {
        let dir = a
            .checkpoint_dir
            .as_ref()
            .context("--resume needs --checkpoint-dir")?;
        Some(latest_checkpoint(dir)?)
    } else {
        None
    };
    let mut t = Trainer::new(cfg, resume_from.as_deref(), &dev)?;
    if let Some(p) = &resume_from {
        eprintln!(
            "resumed from {} at step {} (cursor {:?})",
            p.display(),
            t.step,
            t.cursor()
        );
    }
    let knn_sets = match (&a.knn_train, &a.knn_test) {
        (Some(tr), Some(te)) => {
            let policy = FetchPolicy {
                limits: t.cfg.fetch,
                ..Default::default()
            };
            let sets = (
                load_labelled_with(tr, &dev, &policy)?,
                load_labelled_with(te, &dev, &policy)?,
            );
            for set in [&sets.0 .0, &sets.1 .0] {
                check_channels(set.dim(1)?, t.encoder.cfg.in_channels)
                    .context("--knn-train/--knn-test")?;
            }
            Some(sets)
        }
        (None, None) => None,
        _ => bail!("--knn-train and --knn-test go together"),
    };
    // A bar on a terminal; plain lines elsewhere (indicatif draws nothing to a pipe or a file).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if tty {
        indicatif::ProgressBar::new(steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} eta {eta}").unwrap(),
    );
    bar.set_position(t.step as u64);
    let say = |line: String| {
        if tty {
            bar.println(line)
        } else {
            eprintln!("{line}")
        }
    };
    let log_every = a.log_every.max(1);
    let start = Instant::now();
    while t.step < steps {
        let log = t.step()?;
        bar.set_position(log.step as u64);
        bar.set_message(format!(
            "loss {:.4} {:.1} samples/s",
            log.loss, log.samples_per_s
        ));
        if !tty && (log.step % log_every == 0 || log.step == steps) {
            say(format!(
                "step {}/{steps} loss {:.4} lr {:.5} {:.1} samples/s epoch {} elapsed {:.1}s",
                log.step,
                log.loss,
                log.lr,
                log.samples_per_s,
                log.epoch,
                start.elapsed().as_secs_f64()
            ));
        }
        if let Some(m) = &a.metrics {
            log_jsonl(m, &log)?;
        }
        if let Some((tr, te)) = &knn_sets {
            if log.step % a.knn_every == 0 || log.step == steps {
                let acc = knn_eval(&t.encoder, tr, te, 20)?;
                say(format!("step {}: kNN top-1 {acc:.4}", log.step));
                if let Some(m) = &a.metrics {
                    log_jsonl(m, &serde_json::json!({"step": log.step, "knn_top1": acc}))?;
                }
            }
        }
        if let Some(dir) = &a.checkpoint_dir {
            if log.step % a.checkpoint_every == 0 || log.step == steps {
                t.save(dir)?;
            }
        }
    }
    if t.step == 0 {
        // `--steps 0`: the encoder at initialisation, the random-init reference of an evaluation.
        if let Some(dir) = &a.checkpoint_dir {
            t.save(dir)?;
        }
    }
    bar.finish();
    eprintln!(
        "trained {} steps in {:.1}s",
        steps,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    if a.k == 0 {
        bail!("--k must be at least 1 (neighbours in the kNN vote)");
    }
    let dev = parse_device(&a.device)?;
    let policy = FetchPolicy {
        limits: fetch_limits(a.max_member_bytes, a.min_bytes_per_s)?,
        ..Default::default()
    };
    let tr = load_labelled_with(&a.train, &dev, &policy)?;
    let te = load_labelled_with(&a.test, &dev, &policy)?;
    let classes = num_classes(&tr.1, &te.1);
    let (ftr, fte, what) = match &a.checkpoint {
        Some(dir) => {
            let ckpt = if dir.join("state.json").exists() {
                dir.clone()
            } else {
                latest_checkpoint(dir)?
            };
            let (enc, state) = load_encoder(&ckpt, &dev)?;
            for set in [&tr.0, &te.0] {
                check_channels(set.dim(1)?, enc.cfg.in_channels)?;
            }
            (
                features(&enc, &tr.0, 500)?,
                features(&enc, &te.0, 500)?,
                serde_json::json!({"checkpoint": ckpt, "step": state.step}),
            )
        }
        None => (
            pixel_features(&tr.0)?,
            pixel_features(&te.0)?,
            serde_json::json!({"features": "raw_pixels"}),
        ),
    };
    let knn = knn_top1(&ftr, &tr.1, &fte, &te.1, a.k, classes)?;
    let probe = linear_probe(&ftr, &tr.1, &fte, &te.1, classes, a.probe_steps, a.probe_lr)?;
    let mut out = what;
    out["knn_top1"] = knn.into();
    out["linear_top1"] = probe.into();
    out["train_samples"] = tr.1.len().into();
    out["test_samples"] = te.1.len().into();
    println!("{out}");
    Ok(())
}

fn main() {
    // Freed activations stay in the heap for the next step (see genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Train(a) => train(*a),
        Cmd::Eval(a) => eval(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
