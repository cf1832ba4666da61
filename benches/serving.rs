//! Serving throughput with the embedded default generator on this machine, measured side by side
//! (the same measurements as the serving section of `genrep check`):
//!
//! (a) the engine in-process (8 concurrent shard readers, no HTTP);
//! (b) 1 and 8 concurrent HTTP shard consumers (loopback), as a ratio to (a);
//! (c) 8 concurrent consumers of single-sample requests with `--max-batch-size 32` vs 1.
//!
//!     cargo bench --bench serving [-- --quick]

use genrep::check::serving::{
    http_shards, in_process_shards, serve_http, single_samples, SHARD_SIZE,
};
use genrep::engine::EngineConfig;
use genrep::metrics::Metrics;
use genrep::pipeline::Pipeline;
use std::sync::Arc;
use std::time::Duration;

async fn engine(max_batch: usize) -> Pipeline {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let cfg = EngineConfig {
        max_batch_size: max_batch,
        max_batch_wait: Duration::from_millis(5),
        max_queue: 1024,
        encode_threads: 2,
    };
    let p = Pipeline::start(g, cfg, Arc::new(Metrics::default()));
    p.engine()
        .wait_ready()
        .await
        .expect("the embedded model warms up");
    p
}

fn main() {
    // As the binaries do: freed activations stay in the heap (genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    let quick = std::env::args().any(|a| a == "--quick");
    let dur = Duration::from_secs(if quick { 3 } else { 10 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a8 = in_process_shards(&engine(64).await, 8, SHARD_SIZE, dur)
            .await
            .unwrap();
        println!("(a) engine in-process, 8 readers        : {a8:8.1} samples/s (views=1, png)");
        let http = serve_http(engine(64).await).await.unwrap();
        for n in [1, 8] {
            let b = http_shards(http, n, SHARD_SIZE, dur).await.unwrap();
            println!(
                "(b) HTTP, {n} shard consumer(s)            : {b:8.1} samples/s  ratio to (a) {:.3}",
                b / a8
            );
        }
        let c32 = single_samples(serve_http(engine(32).await).await.unwrap(), 8, dur)
            .await
            .unwrap();
        let c1 = single_samples(serve_http(engine(1).await).await.unwrap(), 8, dur)
            .await
            .unwrap();
        println!("(c) 8 single-sample consumers, batch 32 : {c32:8.1} samples/s");
        println!(
            "(c) 8 single-sample consumers, batch 1  : {c1:8.1} samples/s  gain {:.2}x",
            c32 / c1
        );
    });
}
