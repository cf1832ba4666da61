//! Aggregation over seeds, results.json (kept between invocations) and results.md, including
//! the paper's claims checked against the measured figures.

use crate::protocol::{gauss_id, Protocol, Row, Run};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Mean and sample standard deviation over seeds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len() as f64;
        if xs.is_empty() {
            return Self::default();
        }
        let mean = xs.iter().sum::<f64>() / n;
        let var = if xs.len() > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            mean,
            std: var.sqrt(),
        }
    }
    fn pct(&self) -> String {
        format!("{:.1} ± {:.1}", 100.0 * self.mean, 100.0 * self.std)
    }
}

/// One row of the table, over its seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowSummary {
    pub id: String,
    pub label: String,
    pub seeds: usize,
    pub linear_top1: Stat,
    pub knn_top1: Stat,
    pub wall_s: Stat,
    pub train_samples_per_s: f64,
    /// Mean kNN top-1 over seeds at each monitored step.
    pub curve: Vec<(usize, f64)>,
}

#[derive(Serialize, Deserialize)]
struct ResultsFile {
    protocol: Protocol,
    sigma_star: Option<f64>,
    rows: Vec<RowSummary>,
    runs: Vec<Run>,
}

/// Runs kept in `path` under the same protocol (none if the file is missing or the protocol
/// changed).
pub fn load_runs(path: &Path, proto: &Protocol) -> Result<Vec<Run>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let file: ResultsFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not readable", path.display()))?;
    if &file.protocol != proto {
        eprintln!(
            "{}: recorded under another protocol or generator; training every row again",
            path.display()
        );
        return Ok(Vec::new());
    }
    eprintln!(
        "{}: reusing {} finished runs",
        path.display(),
        file.runs.len()
    );
    Ok(file.runs)
}

/// Writes results.json (atomically: a crash never leaves half a file).
pub fn write_json(
    path: &Path,
    proto: &Protocol,
    sigma_star: Option<f64>,
    rows: &[RowSummary],
    runs: &[Run],
) -> Result<()> {
    let file = ResultsFile {
        protocol: proto.clone(),
        sigma_star,
        rows: rows.to_vec(),
        runs: runs.to_vec(),
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&file)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The σ of the sweep with the best mean linear-probe accuracy.
pub fn best_sigma(runs: &[Run], sigmas: &[f64]) -> Option<f64> {
    sigmas
        .iter()
        .filter_map(|&s| {
            let acc: Vec<f64> = runs
                .iter()
                .filter(|r| r.row == gauss_id(s, ""))
                .map(|r| r.linear_top1 as f64)
                .collect();
            (!acc.is_empty()).then(|| (s, Stat::of(&acc).mean))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| s)
}

/// Per-row statistics over the seeds `0..seeds`.
pub fn summarise(rows: &[Row], runs: &[Run], seeds: u64) -> Vec<RowSummary> {
    rows.iter()
        .filter_map(|row| {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.row == row.id && r.seed < seeds)
                .collect();
            if rs.is_empty() {
                return None;
            }
            let stat =
                |f: &dyn Fn(&Run) -> f64| Stat::of(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let mut curve = Vec::new();
            for (i, &(step, _)) in rs[0].curve.iter().enumerate() {
                let accs: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.curve.get(i).map(|c| c.1 as f64))
                    .collect();
                curve.push((step, Stat::of(&accs).mean));
            }
            Some(RowSummary {
                id: row.id.clone(),
                label: row.label.clone(),
                seeds: rs.len(),
                linear_top1: stat(&|r| r.linear_top1 as f64),
                knn_top1: stat(&|r| r.knn_top1 as f64),
                wall_s: stat(&|r| r.wall_s),
                train_samples_per_s: stat(&|r| r.train_samples_per_s).mean,
                curve,
            })
        })
        .collect()
}

fn find<'a>(s: &'a [RowSummary], id: &str) -> Option<&'a RowSummary> {
    s.iter().find(|r| r.id == id)
}

/// How a claim compares two rows.
#[derive(Clone, Copy)]
enum Claim {
    /// `a` is better than `b`.
    Beats,
    /// `a` is not worse than `b` (within noise or better).
    Rivals,
}

/// One claim of the paper, checked on the measured means with the seeds' spread in view.
fn claim(
    out: &mut String,
    text: &str,
    kind: Claim,
    a: Option<&RowSummary>,
    b: Option<&RowSummary>,
) {
    let (Some(a), Some(b)) = (a, b) else {
        return;
    };
    let d = a.linear_top1.mean - b.linear_top1.mean;
    let spread = a.linear_top1.std.max(b.linear_top1.std);
    let verdict = match kind {
        Claim::Beats if d > spread => "holds",
        Claim::Beats if d < -spread => "does not hold (reversed)",
        Claim::Beats => "not resolved (within one standard deviation)",
        Claim::Rivals if d > spread => "holds (better)",
        Claim::Rivals if d >= -spread => "holds (within one standard deviation)",
        Claim::Rivals => "does not hold",
    };
    let _ = writeln!(
        out,
        "- {text}: `{}` {} vs `{}` {} → Δ {:+.1} points: **{verdict}**.",
        a.id,
        a.linear_top1.pct(),
        b.id,
        b.linear_top1.pct(),
        100.0 * d
    );
}

/// results.md: the protocol, the table, the claims and the exact commands.
pub fn markdown(
    proto: &Protocol,
    summary: &[RowSummary],
    sigma_star: f64,
    seeds: u64,
    commands: &[(String, Vec<String>)],
    runs: &[Run],
) -> String {
    let mut o = String::new();
    let total: f64 = runs.iter().map(|r| r.wall_s).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(o, "# GenRep on MNIST: synthetic views vs real digits\n");
    let _ = writeln!(
        o,
        "Written by `cargo run --release -p genrep-mnist-experiment` (see `experiments/mnist/README.md`). \
         Every row trains the same encoder (ResNet-style, width {}, {} stage(s) of {} block(s), projection {}) for \
         **{} steps × batch {}** with the same pixel augmentations (`{}`), SGD lr {} (momentum {}, weight decay {}, \
         {} warm-up steps, cosine), temperature {}, a {}-sample shuffle buffer; then a linear probe \
         (softmax regression on frozen features, ≤ {} full-batch steps) and a kNN (k = {}) are fitted on the \
         **4000 real training digits** and scored on the **1000 real test digits**. Mean ± sample std over \
         {seeds} seeds (seed = encoder init, augmentations, data order and, for synthetic rows, the shard URLs' \
         `seed`). Generator: the embedded `mnist-cdcgan` (weights {}); sampler `{}`.\n",
        proto.width,
        proto.stages,
        proto.depth,
        proto.proj_dim,
        proto.steps,
        proto.batch_size,
        proto.augment,
        proto.lr,
        proto.momentum,
        proto.weight_decay,
        proto.warmup_steps,
        proto.temperature,
        proto.shuffle_buffer,
        proto.probe_steps,
        proto.knn_k,
        proto.generator,
        proto.sampler,
    );
    let _ = writeln!(
        o,
        "Wall time: **{:.1} min** for all {} runs on this machine ({cores} cores), training and \
         evaluation included; σ* = **{sigma_star}** (best mean linear probe of the σ sweep).\n",
        total / 60.0,
        runs.len()
    );
    let _ = writeln!(
        o,
        "| row | id | linear probe top-1 (%) | kNN top-1 (%) | wall s / run | train samples/s |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for r in summary {
        let _ = writeln!(
            o,
            "| {} | `{}` | {} | {} | {:.0} | {} |",
            r.label,
            r.id,
            r.linear_top1.pct(),
            r.knn_top1.pct(),
            r.wall_s.mean,
            if r.train_samples_per_s > 0.0 {
                format!("{:.0}", r.train_samples_per_s)
            } else {
                "–".into()
            }
        );
    }
    let _ = writeln!(
        o,
        "\n![σ sweep](sigma.png)\n\n![kNN accuracy vs steps](steps.png)\n"
    );

    let _ = writeln!(
        o,
        "## The paper's claims, checked on these figures (linear probe)\n"
    );
    let _ = writeln!(
        o,
        "A claim *holds* when the difference of means exceeds the larger of the two rows' standard \
         deviations.\n"
    );
    let star = gauss_id(sigma_star, "");
    let row = |id: &str| find(summary, id);
    claim(
        &mut o,
        "Synthetic views rival real data, SimCLR (Gaussian σ* vs the real digits)",
        Claim::Rivals,
        row(&star),
        row("real-simclr"),
    );
    claim(
        &mut o,
        "Synthetic views rival real data, SupCon (Gaussian σ* vs the real digits)",
        Claim::Rivals,
        row(&gauss_id(sigma_star, "-supcon")),
        row("real-supcon"),
    );
    claim(
        &mut o,
        "Gaussian latent views beat anchor-only (σ* vs method=none, both SimCLR)",
        Claim::Beats,
        row(&star),
        row("none-simclr"),
    );
    let sweep: Vec<&RowSummary> = summary
        .iter()
        .filter(|r| r.id.starts_with("gauss-") && r.id[6..].parse::<f64>().is_ok())
        .collect();
    if sweep.len() >= 3 {
        let peak = sweep
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.linear_top1.mean.total_cmp(&b.1.linear_top1.mean))
            .map_or(0, |(i, _)| i);
        let best = sweep[peak];
        // The peak must stand above both ends of the sweep by more than the noise.
        let above = |edge: &RowSummary| {
            best.linear_top1.mean - edge.linear_top1.mean
                > best.linear_top1.std.max(edge.linear_top1.std)
        };
        let (low, high) = (above(sweep[0]), above(sweep[sweep.len() - 1]));
        let verdict = match (peak > 0 && peak + 1 < sweep.len(), low, high) {
            (true, true, true) => "holds",
            (true, false, true) => {
                "half holds: accuracy falls at the largest σ, but below the peak the sweep is flat within one standard deviation"
            }
            (true, true, false) => {
                "half holds: accuracy falls at the smallest σ, but above the peak the sweep is flat within one standard deviation"
            }
            (true, false, false) => "not resolved: the sweep is flat within one standard deviation",
            (false, ..) => "does not hold: the best σ is at an end of the sweep",
        };
        let _ = writeln!(
            o,
            "- Inverse U in σ: best σ = {} ({}): **{verdict}**.",
            &best.id[6..],
            sweep
                .iter()
                .map(|r| format!("σ {}: {}", &r.id[6..], r.linear_top1.pct()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    claim(
        &mut o,
        "SupCon ≥ SimCLR on synthetic data (at σ*)",
        Claim::Rivals,
        row(&gauss_id(sigma_star, "-supcon")),
        row(&star),
    );
    claim(
        &mut o,
        "More positives help (K=2 vs K=1 at σ*)",
        Claim::Beats,
        row(&gauss_id(sigma_star, "-k2")),
        row(&star),
    );
    claim(
        &mut o,
        "More positives help (K=4 vs K=1 at σ*)",
        Claim::Beats,
        row(&gauss_id(sigma_star, "-k4")),
        row(&star),
    );
    claim(
        &mut o,
        "Latent neighbours beat independent same-class positives (σ* SupCon vs independent SupCon)",
        Claim::Beats,
        row(&gauss_id(sigma_star, "-supcon")),
        row("independent-supcon"),
    );
    claim(
        &mut o,
        "Training helps at all (real SimCLR vs random init)",
        Claim::Beats,
        row("real-simclr"),
        row("random-init"),
    );
    claim(
        &mut o,
        "The best encoder beats a linear classifier on raw pixels",
        Claim::Beats,
        summary
            .iter()
            .filter(|r| r.id != "raw-pixels")
            .max_by(|a, b| a.linear_top1.mean.total_cmp(&b.linear_top1.mean)),
        row("raw-pixels"),
    );

    let _ = writeln!(o, "\n## Exact commands\n");
    let _ = writeln!(
        o,
        "The experiment runs the server and the client's training and evaluation in one process (the \
         same code as the CLI). With a server started by `genrep serve --port 8080` and the real digits \
         written by `genrep real-data --out real`, each row is equivalent to (for `SEED` in 0..{}):\n",
        seeds
    );
    for (id, cmds) in commands {
        let _ = writeln!(o, "`{id}`:\n```sh");
        for c in cmds {
            let _ = writeln!(o, "{}", c.replace("$ROW", id));
        }
        let _ = writeln!(o, "```");
    }
    o
}
