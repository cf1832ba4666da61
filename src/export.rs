//! `genrep export`: shards written to disk, byte-identical to what the server sends for the
//! same parameters (same parameter table, same engine, same encoder). Each shard streams sample
//! by sample into a buffered temporary file on a blocking thread and is renamed when complete.

use crate::engine::{Consumer, EngineConfig};
use crate::generator::Generator;
use crate::metrics::Metrics;
use crate::params::{Limits, SampleRequest};
use crate::pipeline::{Pipeline, StreamEnd};
use crate::wds::{write_shard, WriteShardError, TAR_END};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub out: PathBuf,
    /// Shard numbers, inclusive.
    pub first: u64,
    pub last: u64,
    /// Files are `{prefix}-{NNNNNN}.tar`.
    pub prefix: String,
    pub shard_size: u64,
    /// Shards generated at once (they share batches).
    pub parallel: usize,
    /// Sampling parameters by name, as in a query string (checked by the parameter table).
    pub sampling: BTreeMap<String, String>,
}

/// Parses `A..B` (inclusive, like `{A..B}` in a WebDataset URL) or `N`.
pub fn parse_shard_range(s: &str) -> anyhow::Result<(u64, u64)> {
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

/// A shard writer's outcome.
fn settled(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.unwrap_or_else(|e| Err(anyhow::anyhow!("a shard writer failed: {e}")))
}

/// Records the export's first failure and stops every shard: their writers see their
/// producers end early and remove their temporary files (later errors are those consequences).
fn fail(
    failure: &mut Option<anyhow::Error>,
    producers: &[tokio::task::AbortHandle],
    e: anyhow::Error,
) {
    if failure.is_none() {
        for p in producers {
            p.abort();
        }
        *failure = Some(e);
    }
}

/// Writes the shards; progress is counted per sample. The first failure (a write error, a
/// generator error, a producer that panicked) stops the export: shards in progress are
/// abandoned and their temporary files removed, and the error is returned (non-zero exit).
pub fn run(
    generator: Box<dyn Generator>,
    cfg: EngineConfig,
    o: ExportOptions,
) -> anyhow::Result<()> {
    let req = SampleRequest::from_pairs(&o.sampling, generator.spec(), &Limits::offline())
        .map_err(|e| {
            anyhow::anyhow!("{e} (export's sampling flags take the query parameters' values)")
        })?
        .with_prefix(&o.prefix)
        .map_err(|e| anyhow::anyhow!("--prefix: {e}"))?;
    let size = o.shard_size;
    if size == 0 {
        bail!("--shard-size must be at least 1");
    }
    if (o.last + 1)
        .checked_mul(size)
        .is_none_or(|e| e > genrep_wire::MAX_INDEX)
    {
        bail!(
            "--shards {}..{} with --shard-size {size} goes past the last sample index",
            o.first,
            o.last
        );
    }
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create {}", o.out.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let pipeline = Pipeline::start(generator, cfg, Arc::new(Metrics::default()));
        pipeline
            .engine()
            .wait_ready()
            .await
            .context("the generator cannot run; nothing exported")?;
        let req = Arc::new(req);
        let bar = indicatif::ProgressBar::new((o.last - o.first + 1) * size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} samples {per_sec} eta {eta} {msg}",
            )
            .unwrap(),
        );
        let sem = Arc::new(tokio::sync::Semaphore::new(o.parallel.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut producers: Vec<tokio::task::AbortHandle> = Vec::new();
        let mut failure: Option<anyhow::Error> = None;
        'shards: for n in o.first..=o.last {
            // Wait for a free slot; a shard that finished meanwhile may have failed.
            let permit = loop {
                tokio::select! {
                    p = sem.clone().acquire_owned() => break p.expect("never closed"),
                    Some(r) = tasks.join_next() => {
                        if let Err(e) = settled(r) {
                            fail(&mut failure, &producers, e);
                            break 'shards;
                        }
                    }
                }
            };
            let (pipeline, req, bar) = (pipeline.clone(), req.clone(), bar.clone());
            let path = o.out.join(format!("{}-{n:06}.tar", o.prefix));
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let start = n * size;
            let export = Consumer::new("export", "export", 1);
            let producer =
                pipeline.spawn_stream(export, req, start, StreamEnd::Shard(start + size), tx);
            producers.push(producer.abort_handle());
            tasks.spawn_blocking(move || {
                let _permit = permit;
                let chunks = std::iter::from_fn(|| rx.blocking_recv()).inspect(|c| {
                    if matches!(c, Ok(b) if b[..] != TAR_END[..]) {
                        bar.inc(1);
                    }
                });
                write_shard(&path, chunks, Some(size))
                    .map(drop)
                    .map_err(|e| match e {
                        WriteShardError::Io(p, e) => {
                            anyhow::anyhow!("cannot write {}: {e}", p.display())
                        }
                        WriteShardError::Source(e) => {
                            anyhow::anyhow!("generating {}: {e}", path.display())
                        }
                        WriteShardError::Incomplete(m) => anyhow::anyhow!(
                            "generating {}: {m} (its sample producer stopped; see the log)",
                            path.display()
                        ),
                    })
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = settled(r) {
                fail(&mut failure, &producers, e);
            }
        }
        if let Some(e) = failure {
            bar.abandon_with_message("failed");
            return Err(
                e.context("export failed (no incomplete shard was left under a shard name)")
            );
        }
        bar.finish_with_message("done");
        eprintln!(
            "wrote shards {}..={} to {}",
            o.first,
            o.last,
            o.out.display()
        );
        Ok(())
    })
}
