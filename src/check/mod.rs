//! `genrep check`: what this build does on one device, as one JSON report — the command a GPU
//! host runs from a carried binary (`scripts/gpu-check.sh`), and that CI runs on the CPU so it
//! cannot rot.
//!
//! Sections: [`parity`] (fixtures and the embedded model against committed CPU references, in each
//! dtype), [`determinism`] (shard bytes across runs and batch sizes), [`throughput`] (BigGAN-deep
//! images/s and TFLOP/s over dtypes and batch sizes) and [`serving`] (HTTP against in-process, and
//! the gain of dynamic batching).

pub mod determinism;
pub mod parity;
pub mod serving;
pub mod throughput;

use crate::engine::{Consumer, EngineConfig};
use crate::generator::{Generator, GeneratorError};
use crate::metrics::Metrics;
use crate::params::SampleRequest;
use crate::pipeline::{Pipeline, StreamEnd};
use candle_core::{DType, Device};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure, and where.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The `--device` string (reported as given).
    pub device_name: String,
    pub device: Device,
    /// Folder holding `biggan-tiny/` and `biggan-tiny-io/` (the repository's `tests/fixtures`).
    pub fixtures: PathBuf,
    pub dtypes: Vec<DType>,
    /// Generators for the throughput sweep.
    pub models: Vec<throughput::ModelChoice>,
    pub batches: Vec<usize>,
    /// Wall time the throughput sweep may take; entries after it are reported as skipped.
    pub throughput_budget: Duration,
    /// Time each throughput entry is repeated for (after a warm-up pass).
    pub min_time: Duration,
    /// Generators whose serving figures are measured (empty: no serving section).
    pub serving_models: Vec<serving::ServingModel>,
    /// Compute dtype of the serving measurements.
    pub serving_dtype: DType,
    /// Length of each serving measurement.
    pub serving_time: Duration,
    pub encode_threads: usize,
    /// When the check must end: later throughput entries and serving measurements are reported as
    /// skipped (a borrowed GPU host gives minutes; a partial report beats a killed one).
    pub deadline: Option<Instant>,
}

impl CheckOptions {
    /// Whether the deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Runs every section and returns the report; `progress` gets the report so far after each
/// section (`"complete": false` until the end), so that a run cut short still leaves figures.
/// Errors only for unusable options (missing fixtures); a failed measurement is recorded in the
/// report instead.
pub fn run(o: &CheckOptions, mut progress: impl FnMut(&Value)) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut report = json!({
        "genrep_version": env!("CARGO_PKG_VERSION"),
        "device": o.device_name,
        "cuda_feature": cfg!(feature = "cuda"),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "complete": false,
        "pass": false,
        "pass_means": "every parity entry within its tolerance, and repeated runs of fixed-shape batches give identical shard bytes",
    });
    let mut add = |key: &str, v: Value, report: &mut Value| {
        report[key] = v;
        report["seconds"] = json!(started.elapsed().as_secs_f64());
        progress(report);
    };
    add("parity", parity::run(o)?, &mut report);
    add("determinism", determinism::run(o), &mut report);
    add("throughput", throughput::run(o), &mut report);
    let mut serving = Vec::new();
    for m in &o.serving_models {
        serving.push(serving::run(o, *m));
        add("serving", json!(serving), &mut report);
    }
    report["pass"] =
        json!(report["parity"]["pass"] == true && report["determinism"]["pass"] == true);
    report["complete"] = json!(true);
    add("serving", json!(serving), &mut report);
    Ok(report)
}

/// Short name of a dtype, as the CLI spells it.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        _ => "other",
    }
}

/// Engine settings for a measurement with the given batch cap.
pub(crate) fn engine_config(max_batch: usize, encode_threads: usize) -> EngineConfig {
    EngineConfig {
        max_batch_size: max_batch,
        max_batch_wait: Duration::from_millis(5),
        max_queue: 1024,
        encode_threads: encode_threads.max(1),
    }
}

/// Starts an engine (through its pipeline) and waits for its warm-up pass (on the current
/// tokio runtime).
pub(crate) async fn ready_engine(
    g: Box<dyn Generator>,
    cfg: EngineConfig,
) -> Result<Pipeline, GeneratorError> {
    let e = Pipeline::start(g, cfg, Arc::new(Metrics::default()));
    match tokio::time::timeout(Duration::from_secs(120), e.engine().wait_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(GeneratorError::Input(err.to_string())),
        Err(_) => {
            return Err(GeneratorError::Input(
                "the engine's warm-up pass took over 120 s".into(),
            ))
        }
    }
    Ok(e)
}

/// The bytes of shard `[start, end)`, as the server sends them (tar of every sample, then the
/// end-of-archive blocks).
pub(crate) async fn shard_bytes(
    pipeline: &Pipeline,
    req: Arc<SampleRequest>,
    start: u64,
    end: u64,
) -> std::io::Result<Vec<u8>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let check = Consumer::new("check", "check", 1);
    pipeline.spawn_stream(check, req, start, StreamEnd::Shard(end), tx);
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A fresh multi-threaded runtime per measurement: dropping it stops the engine's batcher, which
/// ends the device thread and frees the generator (device memory) before the next one loads.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `f`, turning a panic into an error: one failing kernel (an unsupported dtype on a
/// device, say) is recorded in the report instead of ending the whole check.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}
