//! GenRep's claim at small scale, end to end with genrep's own tools: the embedded MNIST
//! generator served on loopback, encoders trained by genrep-client on its multiview shards or on
//! the 4000 real training digits, judged by a linear probe and kNN on the 1000 real test digits.
//!
//! One command (from the repository root):
//!
//! ```text
//! cargo run --release -p genrep-mnist-experiment
//! ```
//!
//! writes `experiments/mnist/results.{md,json}` and the plots `sigma.png` and `steps.png`.
//! Finished runs are kept in `results.json` and skipped when the command is run again with the
//! same protocol, so an interrupted table resumes where it stopped.

mod plot;
mod protocol;
mod report;

use anyhow::{bail, Context, Result};
use clap::Parser;
use protocol::{Protocol, Row, Run};
use std::path::PathBuf;
use std::time::Instant;

/// Command-line options: the protocol (same for every row) and where things go.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where results.md, results.json and the plots are written.
    #[arg(long, default_value = "experiments/mnist")]
    out: PathBuf,
    /// Scratch folder for the real-digit shards and checkpoints (default: a temporary folder).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Training steps of every row.
    #[arg(long, default_value_t = protocol::STEPS)]
    steps: usize,
    /// Samples per batch (anchors; each brings its views).
    #[arg(long, default_value_t = protocol::BATCH)]
    batch_size: usize,
    /// Seeds per row (0, 1, …): the encoder's initialisation, augmentations, data order and,
    /// for synthetic rows, the dataset seed of the shard URLs.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// σ values of the Gaussian sweep.
    #[arg(long, value_delimiter = ',', default_values_t = protocol::SIGMAS.to_vec())]
    sigmas: Vec<f64>,
    /// kNN monitor interval (the accuracy-vs-steps plot).
    #[arg(long, default_value_t = protocol::KNN_EVERY)]
    knn_every: usize,
    /// Encoder width (channels of the first stage).
    #[arg(long, default_value_t = protocol::WIDTH)]
    width: usize,
    /// Most full-batch steps of the linear probe (it stops earlier once converged).
    #[arg(long, default_value_t = protocol::PROBE_STEPS)]
    probe_steps: usize,
    /// Only these rows (ids as in results.md, e.g. `real-simclr,gauss-0.2`); default all.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Forget runs kept in results.json and train every row again.
    #[arg(long)]
    fresh: bool,
}

fn main() {
    genrep_kernels::tune_allocator();
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    if a.seeds == 0 || a.batch_size == 0 || a.knn_every == 0 {
        bail!("--seeds, --batch-size and --knn-every must be at least 1");
    }
    if a.sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--sigmas must be positive numbers");
    }
    let proto = Protocol {
        steps: a.steps,
        batch_size: a.batch_size,
        knn_every: a.knn_every,
        width: a.width,
        probe_steps: a.probe_steps,
        ..Protocol::default()
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let tmp;
    let work = match &a.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let json_path = a.out.join("results.json");
    let mut runs: Vec<Run> = if a.fresh {
        Vec::new()
    } else {
        report::load_runs(&json_path, &proto)?
    };
    let started = Instant::now();

    let real = protocol::RealData::write(&work.join("real"))?;
    let server = protocol::Server::start()?;
    eprintln!(
        "embedded generator on {}; real digits in {}",
        server.base,
        work.display()
    );
    let ctx = protocol::Context {
        proto: &proto,
        real: &real,
        server: &server,
        work: &work,
    };
    let wanted = |id: &str| a.rows.is_empty() || a.rows.iter().any(|r| r == id);
    let run_rows = |rows: Vec<Row>, runs: &mut Vec<Run>| -> Result<()> {
        for row in rows.into_iter().filter(|r| wanted(&r.id)) {
            for seed in 0..a.seeds {
                if runs.iter().any(|r| r.row == row.id && r.seed == seed) {
                    continue;
                }
                let t = Instant::now();
                let run = ctx.run(&row, seed)?;
                eprintln!(
                    "{:<22} seed {seed}: linear {:.4} kNN {:.4} ({:.0}s)",
                    row.id,
                    run.linear_top1,
                    run.knn_top1,
                    t.elapsed().as_secs_f64()
                );
                runs.push(run);
                report::write_json(&json_path, &proto, None, &[], runs)?;
            }
        }
        Ok(())
    };
    // References and baselines first, then the σ sweep; the σ* rows depend on the sweep.
    run_rows(protocol::first_rows(&a.sigmas), &mut runs)?;
    let sigma_star = report::best_sigma(&runs, &a.sigmas)
        .context("no Gaussian sweep results to choose σ* from (include gauss-* rows)")?;
    eprintln!("sigma* = {sigma_star}");
    run_rows(protocol::sigma_star_rows(sigma_star), &mut runs)?;

    let rows: Vec<Row> = protocol::first_rows(&a.sigmas)
        .into_iter()
        .chain(protocol::sigma_star_rows(sigma_star))
        .filter(|r| wanted(&r.id))
        .collect();
    let summary = report::summarise(&rows, &runs, a.seeds);
    let commands: Vec<(String, Vec<String>)> = rows
        .iter()
        .map(|r| (r.id.clone(), ctx.commands(r)))
        .collect();
    report::write_json(&json_path, &proto, Some(sigma_star), &summary, &runs)?;
    plot::sigma_sweep(&a.out.join("sigma.png"), &summary, &a.sigmas)?;
    plot::steps(&a.out.join("steps.png"), &summary)?;
    std::fs::write(
        a.out.join("results.md"),
        report::markdown(&proto, &summary, sigma_star, a.seeds, &commands, &runs),
    )?;
    eprintln!(
        "wrote results.md, results.json, sigma.png and steps.png in {} ({:.1} min this time)",
        a.out.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
