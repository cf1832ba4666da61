//! Serving throughput with the embedded default generator on this machine, measured side by side:
//!
//! (a) the engine in-process (8 concurrent producers, no HTTP);
//! (b) 1 and 8 concurrent HTTP shard consumers (loopback), as a ratio to (a);
//! (c) 8 concurrent consumers of single-sample requests with `--max-batch-size 32` vs 1.
//!
//!     cargo bench --bench serving [-- --quick]

use genrep::api::{router, AppState, Limits};
use genrep::engine::{produce, Engine, EngineConfig, StreamEnd};
use genrep::metrics::Metrics;
use genrep::params::SampleRequest;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn engine(max_batch: usize) -> Engine {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let cfg = EngineConfig {
        max_batch_size: max_batch,
        max_batch_wait: Duration::from_millis(5),
        max_queue: 1024,
        encode_threads: 2,
    };
    Engine::start(g, cfg, Arc::new(Metrics::default()))
}

async fn wait_ready(e: &Engine) {
    while !e.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn request() -> SampleRequest {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    SampleRequest::parse(|k| (k == "views").then_some("1"), g.spec(), &limits()).unwrap()
}

fn limits() -> Limits {
    Limits::default()
}

/// Samples/s of `consumers` in-process producers, each `per` samples.
async fn in_process(consumers: u64, per: u64) -> f64 {
    let e = engine(64);
    wait_ready(&e).await;
    let req = Arc::new(request());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(produce(
            e.clone(),
            genrep::engine::Consumer::new(format!("c{c}"), "bench", 1),
            req.clone(),
            c * per,
            StreamEnd::Shard((c + 1) * per),
            tx,
            CancellationToken::new(),
        ));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(b) = rx.recv().await {
                n += b.unwrap().len() as u64;
            }
            n
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (consumers * per) as f64 / t.elapsed().as_secs_f64()
}

async fn start_http(max_batch: usize) -> String {
    let e = engine(max_batch);
    wait_ready(&e).await;
    let app = router(AppState::new(e, limits(), CancellationToken::new()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// Samples/s of `consumers` concurrent HTTP shard downloads of `per` samples each.
async fn http_shards(consumers: u64, per: u64) -> f64 {
    let base = start_http(64).await;
    let client = reqwest::Client::new();
    let t = Instant::now();
    let tasks: Vec<_> = (0..consumers)
        .map(|c| {
            let url = format!("{base}/v1/shards/b-{c:06}.tar?views=1&shard_size={per}");
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .len()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (consumers * per) as f64 / t.elapsed().as_secs_f64()
}

/// Samples/s of 8 consumers each fetching single samples back to back for `dur`.
async fn single_samples(max_batch: usize, dur: Duration) -> f64 {
    let base = start_http(max_batch).await;
    let client = reqwest::Client::new();
    let t = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|c| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while t.elapsed() < dur {
                    let url = format!("{base}/v1/samples/{}.png?views=1", c * 1_000_000 + n);
                    let r = client.get(url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    // As the binaries do: freed activations stay in the heap (genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    let quick = std::env::args().any(|a| a == "--quick");
    let per = if quick { 200 } else { 1000 };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a8 = in_process(8, per).await;
        println!("(a) engine in-process, 8 producers      : {a8:8.1} samples/s (views=1, png)");
        let b1 = http_shards(1, per).await;
        println!(
            "(b) HTTP, 1 shard consumer               : {b1:8.1} samples/s  ratio to (a) {:.3}",
            b1 / a8
        );
        let b8 = http_shards(8, per).await;
        println!(
            "(b) HTTP, 8 shard consumers              : {b8:8.1} samples/s  ratio to (a) {:.3}",
            b8 / a8
        );
        let dur = Duration::from_secs(if quick { 3 } else { 10 });
        let c32 = single_samples(32, dur).await;
        let c1 = single_samples(1, dur).await;
        println!("(c) 8 single-sample consumers, batch 32 : {c32:8.1} samples/s");
        println!(
            "(c) 8 single-sample consumers, batch 1  : {c1:8.1} samples/s  gain {:.2}x",
            c32 / c1
        );
    });
}
