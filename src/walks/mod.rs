//! Steering walks (GenRep's second view method): directions in a generator's latent space
//! learned so that moving along them imitates a pixel edit (zoom, shift, rotation, colour).
//!
//! - [`edits`]: the pixel edits the walks learn to imitate;
//! - [`loss`]: the masked MSE they are trained with;
//! - [`train`]: the training loop (Adam on the walks, the generator frozen);
//! - [`file`]: the walk file and the resumable checkpoint;
//! - [`set`]: the walks a server serves, attached to its generator;
//! - [`measure`]: whether each walk does what it is named for;
//! - [`run_train`] (here): `genrep walks train` — checkpoints, the metrics file, progress.

pub mod edits;
pub mod file;
pub mod loss;
pub mod measure;
pub mod set;
pub mod train;

pub use set::{WalkSet, WalkSpec};

use crate::generator::Generator;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use train::{walk_names, State, TrainConfig};

/// What `genrep walks train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: TrainConfig,
    /// The walk file written at the end.
    pub out: PathBuf,
    /// One JSON line per step: `{"step", "loss", "seconds"}`.
    pub metrics: PathBuf,
    /// Where the training state is saved every `checkpoint_every` steps and at the end.
    pub checkpoint: PathBuf,
    pub checkpoint_every: usize,
    /// Continue from `checkpoint` (same generator and settings; `steps` may be larger).
    pub resume: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub final_loss: f32,
    pub seconds: f64,
}

/// Trains the walks of `opts` for `g` and writes the walk file, the metrics and the checkpoint.
pub fn run_train(g: &dyn Generator, opts: &TrainOptions) -> Result<TrainSummary> {
    let spec = g.spec().clone();
    let sha = spec.weights_sha256.clone();
    let cfg = &opts.config;
    let k = walk_names(&cfg.transforms, spec.channels).len();
    let mut state = if opts.resume {
        file::load_checkpoint(&opts.checkpoint, cfg, &sha)
            .with_context(|| format!("resuming from {}", opts.checkpoint.display()))?
    } else {
        State::init(k, spec.latent_dim, cfg.seed)?
    };
    anyhow::ensure!(
        state.step <= cfg.steps,
        "the checkpoint is at step {}, past --steps {}",
        state.step,
        cfg.steps
    );
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(opts.resume)
        .truncate(!opts.resume)
        .open(&opts.metrics)
        .with_context(|| format!("opening {}", opts.metrics.display()))?;
    // A bar on a terminal; plain log lines elsewhere (indicatif draws nothing to a pipe).
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if tty {
        indicatif::ProgressBar::new(cfg.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_position(state.step as u64);
    let log_every = (cfg.steps / 20).max(1);
    let started = Instant::now();
    tracing::info!(
        model = %spec.name, walks = k, from = state.step, steps = cfg.steps,
        batch = cfg.batch_size, "training walks"
    );
    let final_loss = train::train(g, cfg, &mut state, |step, loss, st| {
        let secs = started.elapsed().as_secs_f64();
        writeln!(
            metrics,
            "{}",
            serde_json::json!({"step": step, "loss": loss, "seconds": secs})
        )?;
        bar.set_position(st.step as u64);
        bar.set_message(format!("loss {loss:.5}"));
        if !tty && (step % log_every == 0 || st.step == cfg.steps) {
            tracing::info!(step, loss, seconds = secs, "walks");
        }
        if st.step % opts.checkpoint_every.max(1) == 0 {
            file::save_checkpoint(&opts.checkpoint, st, cfg, &sha)?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    file::save_checkpoint(&opts.checkpoint, &state, cfg, &sha)?;
    file::WalkFile::save(&opts.out, &state, cfg, &sha, spec.channels, final_loss)?;
    Ok(TrainSummary {
        steps: state.step,
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}
