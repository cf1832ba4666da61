//! The experiment's protocol (one for every row), its rows, and how one run is carried out:
//! the embedded server on loopback, the real digits as shards, training and evaluation with
//! genrep-client's library — the code behind `genrep-train train` and `genrep-train eval`.

use anyhow::{Context as _, Result};
use candle_core::{Device, Tensor};
use genrep_client::eval::{features, knn_eval, knn_top1, linear_probe, load_labelled};
use genrep_client::eval::{num_classes, pixel_features};
use genrep_client::model::EncoderConfig;
use genrep_client::train::{Objective, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// Default training steps of every row.
pub const STEPS: usize = 160;
/// Default batch (samples; each brings anchor + positives, or two augmentations of a real digit).
pub const BATCH: usize = 128;
/// Default σ sweep of the Gaussian rows (the list; the paper's BigBiGAN sweep is 0.05–0.4).
pub const SIGMAS: [f64; 6] = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6];
/// Default kNN monitor interval.
pub const KNN_EVERY: usize = 40;
/// Default encoder width.
pub const WIDTH: usize = 16;
/// Default linear-probe step cap (as `genrep-train eval`).
pub const PROBE_STEPS: usize = 3000;
/// Real and synthetic shards hold this many samples (the server's default shard size).
const SHARD_SIZE: usize = 1000;

/// Everything that must be equal for two runs to be comparable (cached runs are reused only
/// when the protocol matches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub temperature: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub augment: String,
    pub shuffle_buffer: usize,
    pub width: usize,
    pub depth: usize,
    pub stages: usize,
    pub proj_dim: usize,
    pub knn_every: usize,
    pub knn_k: usize,
    pub probe_steps: usize,
    pub probe_lr: f64,
    /// Identifies the embedded generator's weights (a retrained generator invalidates runs).
    pub generator: String,
    /// The sampler's version (a new sampler draws other latents; runs from an older table
    /// have none recorded and are re-measured).
    #[serde(default)]
    pub sampler: String,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            steps: STEPS,
            batch_size: BATCH,
            lr: 0.03,
            temperature: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            warmup_steps: 10,
            augment: "genrep".into(),
            shuffle_buffer: 1000,
            width: WIDTH,
            depth: 1,
            stages: 3,
            proj_dim: 64,
            knn_every: KNN_EVERY,
            knn_k: 20,
            probe_steps: PROBE_STEPS,
            probe_lr: 0.1,
            generator: genrep::embedded::fingerprint(),
            sampler: genrep::sampler::rng::VERSION.into(),
        }
    }
}

/// What a row trains on.
#[derive(Debug, Clone, PartialEq)]
pub enum RowKind {
    /// A linear classifier on raw pixels (no encoder): the reference an encoder must beat.
    RawPixels,
    /// The encoder at initialisation: the floor.
    RandomInit,
    /// The 4000 real training digits, two pixel augmentations per digit.
    Real,
    /// The embedded generator's shards: `method`, `sigma`, `views` positives per anchor.
    Synthetic {
        method: &'static str,
        sigma: f64,
        views: usize,
    },
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub label: String,
    pub kind: RowKind,
    pub objective: Objective,
}

/// One (row, seed) result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub row: String,
    pub seed: u64,
    pub linear_top1: f32,
    pub knn_top1: f32,
    /// kNN top-1 on the real test digits during training: (step, accuracy).
    pub curve: Vec<(usize, f32)>,
    pub wall_s: f64,
    pub train_samples_per_s: f64,
}

fn row(id: &str, label: &str, kind: RowKind, objective: Objective) -> Row {
    Row {
        id: id.into(),
        label: label.into(),
        kind,
        objective,
    }
}

/// Row id of a Gaussian row.
pub fn gauss_id(sigma: f64, suffix: &str) -> String {
    format!("gauss-{sigma}{suffix}")
}

/// The references, the baselines and the σ sweep (SimCLR, one positive per anchor).
pub fn first_rows(sigmas: &[f64]) -> Vec<Row> {
    use Objective::*;
    let mut rows = vec![
        row(
            "raw-pixels",
            "raw pixels (linear / kNN on pixels)",
            RowKind::RawPixels,
            Simclr,
        ),
        row(
            "random-init",
            "random-init encoder",
            RowKind::RandomInit,
            Simclr,
        ),
        row("real-simclr", "real digits, SimCLR", RowKind::Real, Simclr),
        row("real-supcon", "real digits, SupCon", RowKind::Real, Supcon),
        row(
            "none-simclr",
            "synthetic anchors only (method=none), SimCLR",
            RowKind::Synthetic {
                method: "none",
                sigma: 0.2,
                views: 1,
            },
            Simclr,
        ),
        row(
            "independent-supcon",
            "synthetic independent same-class, SupCon",
            RowKind::Synthetic {
                method: "independent",
                sigma: 0.2,
                views: 1,
            },
            Supcon,
        ),
    ];
    for &sigma in sigmas {
        rows.push(row(
            &gauss_id(sigma, ""),
            &format!("synthetic Gaussian σ={sigma}, SimCLR (K=1)"),
            RowKind::Synthetic {
                method: "gaussian",
                sigma,
                views: 1,
            },
            Simclr,
        ));
    }
    rows
}

/// The rows at the best σ of the sweep: SupCon, and more positives per anchor.
pub fn sigma_star_rows(sigma: f64) -> Vec<Row> {
    let g = |views| RowKind::Synthetic {
        method: "gaussian",
        sigma,
        views,
    };
    vec![
        row(
            &gauss_id(sigma, "-supcon"),
            &format!("synthetic Gaussian σ*={sigma}, SupCon"),
            g(1),
            Objective::Supcon,
        ),
        row(
            &gauss_id(sigma, "-k2"),
            &format!("synthetic Gaussian σ*={sigma}, SimCLR, K=2 positives"),
            g(2),
            Objective::Simclr,
        ),
        row(
            &gauss_id(sigma, "-k4"),
            &format!("synthetic Gaussian σ*={sigma}, SimCLR, K=4 positives"),
            g(4),
            Objective::Simclr,
        ),
    ]
}

/// The real digits as labelled shards (as `genrep real-data` writes them), loaded for evaluation.
pub struct RealData {
    pub train_source: String,
    pub test_source: String,
    pub train: (Tensor, Vec<u32>),
    pub test: (Tensor, Vec<u32>),
}

impl RealData {
    pub fn write(dir: &Path) -> Result<Self> {
        genrep::offline::real_data(dir, SHARD_SIZE, None, 0)?;
        let d = dir.display();
        let train_source = format!("{d}/mnist-train-{{000000..000003}}.tar");
        let test_source = format!("{d}/mnist-test-000000.tar");
        let train = load_labelled(&train_source, &Device::Cpu)?;
        let test = load_labelled(&test_source, &Device::Cpu)?;
        anyhow::ensure!(
            train.1.len() == 4000 && test.1.len() == 1000,
            "expected 4000 + 1000 real digits, found {} + {}",
            train.1.len(),
            test.1.len()
        );
        Ok(Self {
            train_source,
            test_source,
            train,
            test,
        })
    }
}

/// `genrep serve` with the embedded generator, in this process, on a loopback port.
pub struct Server {
    pub base: String,
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Result<Self> {
        let generator = genrep::embedded::load(&Device::Cpu, candle_core::DType::F32)?;
        let cfg = genrep::engine::EngineConfig {
            max_batch_size: 64,
            max_batch_wait: Duration::from_millis(5),
            max_queue: 1024,
            encode_threads: 1,
        };
        let limits = genrep::params::Limits::default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let base = format!("http://{}", listener.local_addr()?);
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let app = genrep::server::app(generator, cfg, limits, token.clone());
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await;
            })
        });
        Ok(Self {
            base,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a run needs besides its row and seed.
pub struct Context<'a> {
    pub proto: &'a Protocol,
    pub real: &'a RealData,
    pub server: &'a Server,
    pub work: &'a Path,
}

impl Context<'_> {
    /// Shard source of a row (empty for rows that train nothing).
    pub fn source(&self, row: &Row, seed: u64) -> String {
        let p = self.proto;
        match row.kind {
            RowKind::Real => self.real.train_source.clone(),
            RowKind::Synthetic {
                method,
                sigma,
                views,
            } => {
                let shards = (p.steps * p.batch_size).div_ceil(SHARD_SIZE).max(1);
                format!(
                    "{}/v1/shards/train-{{000000..{:06}}}.tar?seed={seed}&method={method}&sigma={sigma}&views={views}",
                    self.server.base,
                    shards - 1
                )
            }
            // random-init reads the real shards only to build its (untrained) loader.
            RowKind::RandomInit => self.real.train_source.clone(),
            RowKind::RawPixels => String::new(),
        }
    }

    /// The training configuration of a row (what `genrep-train train` builds from its flags).
    pub fn train_config(&self, row: &Row, seed: u64) -> TrainConfig {
        let p = self.proto;
        TrainConfig {
            source: self.source(row, seed),
            objective: row.objective,
            views: 0,
            augment: p.augment.clone(),
            steps: if row.kind == RowKind::RandomInit {
                0
            } else {
                p.steps
            },
            batch_size: p.batch_size,
            lr: p.lr,
            temperature: p.temperature,
            lars: false,
            momentum: p.momentum,
            weight_decay: p.weight_decay,
            warmup_steps: p.warmup_steps,
            seed,
            encoder: EncoderConfig {
                in_channels: 1,
                width: p.width,
                depth: p.depth,
                stages: p.stages,
                proj_dim: p.proj_dim,
            },
            rank: 0,
            world_size: 1,
            prefetch: 2,
            cache_shards: row.kind == RowKind::Real,
            shuffle_buffer: p.shuffle_buffer,
            fetch: Default::default(),
        }
    }

    /// Trains (unless the row trains nothing) and evaluates one (row, seed).
    pub fn run(&self, row: &Row, seed: u64) -> Result<Run> {
        let p = self.proto;
        let (tr, te) = (&self.real.train, &self.real.test);
        let classes = num_classes(&tr.1, &te.1);
        let start = Instant::now();
        let mut curve = Vec::new();
        let mut train_time = 0.0;
        let (ftr, fte) = if row.kind == RowKind::RawPixels {
            (pixel_features(&tr.0)?, pixel_features(&te.0)?)
        } else {
            let cfg = self.train_config(row, seed);
            let mut t = Trainer::new(cfg, None, &Device::Cpu)
                .with_context(|| format!("row {} seed {seed}", row.id))?;
            while t.step < p.steps && row.kind != RowKind::RandomInit {
                let s = Instant::now();
                let log = t
                    .step()
                    .with_context(|| format!("row {} seed {seed}", row.id))?;
                train_time += s.elapsed().as_secs_f64();
                if log.step % p.knn_every == 0 || log.step == p.steps {
                    curve.push((log.step, knn_eval(&t.encoder, tr, te, p.knn_k)?));
                }
            }
            if row.kind == RowKind::RandomInit {
                curve.push((0, knn_eval(&t.encoder, tr, te, p.knn_k)?));
            }
            (
                features(&t.encoder, &tr.0, 500)?,
                features(&t.encoder, &te.0, 500)?,
            )
        };
        let knn = knn_top1(&ftr, &tr.1, &fte, &te.1, p.knn_k, classes)?;
        let linear = linear_probe(&ftr, &tr.1, &fte, &te.1, classes, p.probe_steps, p.probe_lr)?;
        let trained = if row.kind == RowKind::RandomInit {
            0
        } else {
            p.steps
        };
        Ok(Run {
            row: row.id.clone(),
            seed,
            linear_top1: linear,
            knn_top1: knn,
            curve,
            wall_s: start.elapsed().as_secs_f64(),
            train_samples_per_s: if train_time > 0.0 {
                (trained * p.batch_size) as f64 / train_time
            } else {
                0.0
            },
        })
    }

    /// The equivalent `genrep-train` command lines of a row (for results.md).
    pub fn commands(&self, row: &Row) -> Vec<String> {
        let p = self.proto;
        let ckpt = "runs/$ROW-s$SEED";
        let eval = format!(
            "genrep-train eval --checkpoint {ckpt} --train '{}' --test '{}' --k {} --probe-steps {} --probe-lr {}",
            rel(&self.real.train_source, self.work),
            rel(&self.real.test_source, self.work),
            p.knn_k,
            p.probe_steps,
            p.probe_lr
        );
        match row.kind {
            RowKind::RawPixels => {
                vec![eval.replace(&format!("--checkpoint {ckpt}"), "--raw-pixels")]
            }
            _ => {
                let steps = if row.kind == RowKind::RandomInit {
                    0
                } else {
                    p.steps
                };
                let source = rel(&self.source(row, 0), self.work)
                    .replace(&self.server.base, "http://127.0.0.1:8080")
                    .replace("seed=0", "seed=$SEED");
                let objective = match row.objective {
                    Objective::Simclr => "simclr",
                    Objective::Supcon => "supcon",
                };
                vec![
                    format!(
                        "genrep-train train --source '{source}' --method {objective} --augment {} --steps {steps} --batch-size {} --lr {} --temperature {} --warmup-steps {} --width {} --depth {} --stages {} --proj-dim {} --shuffle-buffer {} --seed $SEED --checkpoint-dir {ckpt}{}",
                        p.augment,
                        p.batch_size,
                        p.lr,
                        p.temperature,
                        p.warmup_steps,
                        p.width,
                        p.depth,
                        p.stages,
                        p.proj_dim,
                        p.shuffle_buffer,
                        if row.kind == RowKind::Real { " --cache-shards" } else { "" }
                    ),
                    eval,
                ]
            }
        }
    }
}

/// A path under the scratch folder, written relative to it (`real/...`).
fn rel(s: &str, work: &Path) -> String {
    let w = work.display().to_string();
    s.replace(&format!("{w}/"), "")
}
