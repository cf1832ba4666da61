//! Training throughput of the default small encoder (width 16, 1 block per stage, 3 stages,
//! 1×28×28 input, projection 64) at batch 256 with 2 views: samples/s of one SimCLR step
//! (forward, NT-Xent, backward, SGD update) on this machine. Data loading and augmentation are
//! excluded so the figure is comparable with `tools/bench_train_reference.py` (same model and
//! step in PyTorch).
//!
//!     cargo bench -p genrep-client --bench train_step [-- --quick]

#[path = "../../kernels/benches/support/mod.rs"]
mod support;

use candle_core::{DType, Device, Tensor};
use genrep_client::loss::{l2_normalize, nt_xent};
use genrep_client::model::{build, trainable, EncoderConfig};
use genrep_client::optim::{Optimizer, Param, Rule};
use std::time::Instant;
use support::{torch_reference, value_before};

fn main() {
    // As the binaries do: freed activations stay in the heap (genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    let quick = std::env::args().any(|a| a == "--quick");
    let dev = Device::Cpu;
    let cfg = EncoderConfig {
        in_channels: 1,
        width: 16,
        depth: 1,
        stages: 3,
        proj_dim: 64,
    };
    let (enc, vm) = build(cfg, &dev).unwrap();
    let params: Vec<Param> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(n, v)| trainable(n).map(|d| Param::new(v.clone(), d)))
        .collect();
    let mut opt = Optimizer::new(params, Rule::Sgd, 0.9, 1e-4);
    let batch = 256;
    let x = Tensor::rand(0f32, 1f32, (2 * batch, 1, 28, 28), &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let mut step = || {
        let t = Instant::now();
        let z = l2_normalize(&enc.project(&enc.features(&x, true).unwrap()).unwrap()).unwrap();
        let loss = nt_xent(&z, 2, 0.1).unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        t.elapsed().as_secs_f64()
    };
    step();
    let n = if quick { 2 } else { 5 };
    let total: f64 = (0..n).map(|_| step()).sum();
    let per = total / n as f64;
    // Where the time goes: the forward pass alone (train-mode BN), then the backward pass.
    let t = Instant::now();
    let z = l2_normalize(&enc.project(&enc.features(&x, true).unwrap()).unwrap()).unwrap();
    let loss = nt_xent(&z, 2, 0.1).unwrap();
    let fwd = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let grads = loss.backward().unwrap();
    let bwd = t.elapsed().as_secs_f64();
    drop(grads);
    println!(
        "  forward {fwd:.3} s, backward {bwd:.3} s, optimizer + rest {:.3} s",
        (per - fwd - bwd).max(0.0)
    );
    println!(
        "candle train step, batch {batch} x 2 views: {per:.3} s/step, {:.1} samples/s",
        batch as f64 / per
    );
    // The same model and step in PyTorch, same thread count, when GENREP_BENCH_PYTHON is set.
    let threads = candle_core::utils::get_num_threads().to_string();
    match torch_reference("bench_train_reference.py", &["--threads", &threads]) {
        Some(lines) => {
            for l in &lines {
                println!("{l}");
            }
            let t = lines
                .iter()
                .find_map(|l| value_before(l, "samples/s"))
                .expect("torch samples/s");
            println!("candle / torch: {:.2}x", batch as f64 / per / t);
        }
        None => println!("(set GENREP_BENCH_PYTHON to a Python with torch for the PyTorch side)"),
    }
}
