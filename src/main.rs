//! `genrep` command line: the flags ([`cli`]) and the dispatch to [`genrep::server`],
//! [`genrep::export`], [`genrep::offline`], [`genrep::check`] and [`genrep::walks`].

mod cli;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{Cli, Command};

fn serve(a: cli::ServeArgs) -> Result<()> {
    let opts = cli::serve_options(&a)?;
    let generator = a.model.load_with_walks(a.walks.as_deref())?;
    tracing::info!(?a.model, ?a.engine, host = %a.host, port = a.port, "starting");
    genrep::server::run(generator, a.engine.config(), opts)
}

fn export(a: cli::ExportArgs) -> Result<()> {
    let opts = cli::export_options(&a)?;
    let g = a.model.load_with_walks(a.walk_file.as_deref())?;
    genrep::export::run(g, a.engine.config(), opts)
}

fn generate(a: cli::GenerateArgs) -> Result<()> {
    let device = genrep::device::parse_device(&a.device)?;
    genrep::offline::generate(&cli::generate_options(&a), &device, a.dtype.candle())
}

fn check(a: cli::CheckArgs) -> Result<()> {
    let o = cli::check_options(&a, std::time::Instant::now())?;
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

fn walks_measure(a: cli::WalksMeasureArgs) -> Result<()> {
    let g = a.model.load_with_walks(a.walks.as_deref())?;
    let set = g.spec().walks.clone().ok_or_else(|| {
        anyhow::anyhow!("{}", genrep::walks::set::no_walks_message(&g.spec().name))
    })?;
    let effects = genrep::walks::measure::measure(g.as_ref(), &set, a.anchors, a.steps, a.seed)?;
    println!(
        "{:#}",
        serde_json::json!({
            "model": g.spec().name,
            "weights_sha256": g.spec().weights_sha256,
            "walks": set.source,
            "anchors": a.anchors,
            "seed": a.seed,
            "effects": effects,
        })
    );
    Ok(())
}

fn walks_train(a: cli::WalksTrainArgs) -> Result<()> {
    let opts = cli::walks_train_options(&a)?;
    let g = a.model.load()?;
    let s = genrep::walks::run_train(g.as_ref(), &opts)?;
    println!(
        "wrote {} ({} steps, final loss {:.5}, {:.1} s)",
        opts.out.display(),
        s.steps,
        s.final_loss,
        s.seconds
    );
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
    let res = match Cli::parse().cmd {
        Command::Generate(a) => generate(a),
        Command::Serve(a) => serve(*a),
        Command::Export(a) => export(*a),
        Command::Check(a) => check(a),
        Command::Walks(cli::WalksCommand::Train(a)) => walks_train(*a),
        Command::Walks(cli::WalksCommand::Measure(a)) => walks_measure(*a),
        Command::RealData(a) => {
            genrep::offline::real_data(&a.out, a.shard_size, a.csv.as_deref(), a.seed)
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
