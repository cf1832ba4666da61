//! Serving throughput, measured side by side on one device:
//! - shards: 8 consumers reading shards from the engine in-process, and the same over HTTP
//!   (loopback, one keep-alive connection each): the cost of the HTTP layer;
//! - dynamic batching: 8 consumers each fetching single samples back to back, with
//!   `--max-batch-size 64` against 1: what batching the demand of many clients buys.
//!
//! Every measurement starts a fresh engine in its own runtime (see [`super::runtime`]).

use super::throughput::{parse_deep, random_deep};
use super::{dtype_name, engine_config, guarded, ready_engine, runtime, CheckOptions};
use crate::api::{router, AppState};
use crate::engine::Consumer;
use crate::generator::{Generator, GeneratorError};
use crate::params::{Limits, SampleRequest};
use crate::pipeline::{Pipeline, StreamEnd};
use crate::wds::TAR_END;
use bytes::Bytes;
use candle_core::{DType, Device};
use http_body_util::{BodyExt, Empty};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Consumers in every serving measurement.
pub const CONSUMERS: u64 = 8;
/// Samples per shard in the shard measurements (one full batch of 64 images at views=1).
pub const SHARD_SIZE: u64 = 32;

/// The generator behind a serving measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServingModel {
    /// The embedded default generator.
    Embedded,
    /// BigGAN-deep at this resolution with random weights.
    Deep(usize),
}

impl std::str::FromStr for ServingModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            _ => parse_deep(s).map(Self::Deep).ok_or_else(|| {
                format!("`{s}`: serving models are embedded, deep-128, deep-256, deep-512")
            }),
        }
    }
}

impl ServingModel {
    pub fn name(&self) -> String {
        match self {
            Self::Embedded => "embedded".into(),
            Self::Deep(r) => format!("biggan-deep-{r}"),
        }
    }

    pub fn load(
        &self,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn Generator>, GeneratorError> {
        match self {
            Self::Embedded => crate::embedded::load(device, dtype),
            Self::Deep(r) => random_deep(*r, device, dtype),
        }
    }
}

/// `views=1` PNG samples, as the HTTP measurements request them.
pub fn request(engine: &Pipeline) -> Arc<SampleRequest> {
    Arc::new(
        SampleRequest::parse(
            |k| (k == "views").then_some("1"),
            engine.spec(),
            &Limits::default(),
        )
        .expect("valid parameters"),
    )
}

/// Runs `consumer(c)` for each consumer concurrently until each has seen `dur` pass; returns
/// completed samples per second over the whole run (until the last consumer finished).
async fn concurrently<F, Fut>(consumers: u64, dur: Duration, consumer: F) -> Result<f64, String>
where
    F: Fn(u64, Instant) -> Fut,
    Fut: std::future::Future<Output = Result<u64, String>> + Send + 'static,
{
    let t = Instant::now();
    let tasks: Vec<_> = (0..consumers)
        .map(|c| tokio::spawn(consumer(c, t + dur)))
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())??;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// Samples/s of `consumers` in-process readers of `shard_size`-sample shards for `dur`.
pub async fn in_process_shards(
    engine: &Pipeline,
    consumers: u64,
    shard_size: u64,
    dur: Duration,
) -> Result<f64, String> {
    let req = request(engine);
    // One consumer for all readers, with the read-ahead budget the API gives one peer (two
    // batches), as the HTTP side's loopback clients are one consumer of the server.
    let reader = Consumer::new("check", "check", 1)
        .with_readahead((2 * engine.engine().config().max_batch_size).max(2));
    concurrently(consumers, dur, |c, until| {
        let (engine, req, reader) = (engine.clone(), req.clone(), reader.clone());
        async move {
            let mut n = 0;
            let mut shard = c;
            while Instant::now() < until {
                let (tx, mut rx) = tokio::sync::mpsc::channel(8);
                let start = shard * shard_size;
                let end = StreamEnd::Shard(start + shard_size);
                engine.spawn_stream(reader.clone(), req.clone(), start, end, tx);
                while let Some(chunk) = rx.recv().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    if chunk[..] != TAR_END[..] {
                        n += 1;
                    }
                }
                shard += consumers;
            }
            Ok(n)
        }
    })
    .await
}

/// Serves the API of `engine` on a loopback port through the connection handling of
/// `genrep serve` (open server: all loopback clients are one consumer).
pub async fn serve_http(engine: Pipeline) -> Result<SocketAddr, String> {
    let app = router(AppState::new(
        engine,
        Limits::default(),
        CancellationToken::new(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    crate::server::spawn_serving(l, app, crate::server::ConnectionLimits::default());
    Ok(addr)
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Self, String> {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    /// GETs `path` and returns the body's length; a non-2xx status or an aborted body is an error.
    pub async fn get(&mut self, path: &str) -> Result<usize, String> {
        self.send.ready().await.map_err(|e| e.to_string())?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {path}: body cut: {e}"))?;
            n += frame.data_ref().map_or(0, |d| d.len());
        }
        if !status.is_success() {
            return Err(format!("GET {path}: {status}"));
        }
        Ok(n)
    }
}

/// Samples/s of `consumers` HTTP readers of `shard_size`-sample shards for `dur`.
pub async fn http_shards(
    addr: SocketAddr,
    consumers: u64,
    shard_size: u64,
    dur: Duration,
) -> Result<f64, String> {
    concurrently(consumers, dur, |c, until| async move {
        let mut conn = Connection::open(addr).await?;
        let (mut n, mut shard) = (0, c);
        while Instant::now() < until {
            conn.get(&format!(
                "/v1/shards/b-{shard:06}.tar?views=1&shard_size={shard_size}"
            ))
            .await?;
            n += shard_size;
            shard += consumers;
        }
        Ok(n)
    })
    .await
}

/// Samples/s of `consumers` HTTP clients each fetching single samples back to back for `dur`.
pub async fn single_samples(
    addr: SocketAddr,
    consumers: u64,
    dur: Duration,
) -> Result<f64, String> {
    concurrently(consumers, dur, |c, until| async move {
        let mut conn = Connection::open(addr).await?;
        let mut n = 0;
        while Instant::now() < until {
            conn.get(&format!("/v1/samples/{}.png?views=1", c * 1_000_000 + n))
                .await?;
            n += 1;
        }
        Ok(n)
    })
    .await
}

/// One measurement on a fresh engine with batch cap `max_batch`.
fn measure<F, Fut>(
    o: &CheckOptions,
    m: ServingModel,
    dtype: DType,
    max_batch: usize,
    f: F,
) -> Result<f64, String>
where
    F: FnOnce(Pipeline) -> Fut,
    Fut: std::future::Future<Output = Result<f64, String>>,
{
    if o.past_deadline() {
        return Err("skipped: the check's deadline has passed".into());
    }
    guarded(|| {
        let g = m.load(&o.device, dtype).map_err(|e| e.to_string())?;
        runtime().block_on(async {
            let e = ready_engine(g, engine_config(max_batch, o.encode_threads))
                .await
                .map_err(|e| e.to_string())?;
            f(e).await
        })
    })
}

fn figure(r: &Result<f64, String>) -> Value {
    match r {
        Ok(v) => json!(v),
        Err(e) => json!({ "error": e }),
    }
}

fn ratio(a: &Result<f64, String>, b: &Result<f64, String>) -> Value {
    match (a, b) {
        (Ok(a), Ok(b)) if *b > 0.0 => json!(a / b),
        _ => Value::Null,
    }
}

/// The serving figures of one generator.
pub fn run(o: &CheckOptions, m: ServingModel) -> Value {
    let started = Instant::now();
    let dur = o.serving_time;
    let dtype = o.serving_dtype;
    let inproc = measure(o, m, dtype, 64, |e| async move {
        in_process_shards(&e, CONSUMERS, SHARD_SIZE, dur).await
    });
    let http = measure(o, m, dtype, 64, |e| async move {
        http_shards(serve_http(e).await?, CONSUMERS, SHARD_SIZE, dur).await
    });
    let batched = measure(o, m, dtype, 64, |e| async move {
        single_samples(serve_http(e).await?, CONSUMERS, dur).await
    });
    let unbatched = measure(o, m, dtype, 1, |e| async move {
        single_samples(serve_http(e).await?, CONSUMERS, dur).await
    });
    let v = json!({
        "model": m.name(),
        "dtype": dtype_name(dtype),
        "consumers": CONSUMERS,
        "views": 1,
        "format": "png",
        "shard_size": SHARD_SIZE,
        "seconds_each": dur.as_secs_f64(),
        "shards_in_process_samples_per_s": figure(&inproc),
        "shards_http_samples_per_s": figure(&http),
        "http_vs_in_process": ratio(&http, &inproc),
        "single_samples_batch_64_per_s": figure(&batched),
        "single_samples_batch_1_per_s": figure(&unbatched),
        "batching_gain": ratio(&batched, &unbatched),
        "seconds": started.elapsed().as_secs_f64(),
    });
    tracing::info!(serving = %v, "serving");
    v
}
