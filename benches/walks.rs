//! The cost of training steering walks (`genrep walks train`): seconds per step of GenRep's
//! composed-walk recipe (five transforms) on the embedded model at batch 32, and on the
//! BigGAN-deep-128 package config (random weights) at a small batch, to show what a real
//! architecture costs on this machine. Each step is one forward pass for the target, one
//! forward and one backward pass through the generator for the walks' gradient.
//!
//! `cargo bench --bench walks [-- --steps N --deep-batch B]`

use candle_core::{DType, Device};
use genrep::generator::{random_biggan, BigGanConfig, Generator};
use genrep::walks::train::{train, walk_names, EditMix, State, TrainConfig, Transform};
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds per step (after one warm-up step) and the last loss.
fn time_steps(g: &dyn Generator, batch: usize, steps: usize) -> (f64, f32) {
    let transforms = Transform::ALL.to_vec();
    let k = walk_names(&transforms, g.spec().channels).len();
    let mut state = State::init(k, g.spec().latent_dim, 0).unwrap();
    let mut cfg = TrainConfig {
        transforms,
        edits: EditMix::Composed,
        steps: 1,
        batch_size: batch,
        lr: 1e-3,
        seed: 0,
    };
    train(g, &cfg, &mut state, |_, _, _| Ok(())).unwrap();
    cfg.steps = 1 + steps;
    let t = Instant::now();
    let loss = train(g, &cfg, &mut state, |_, _, _| Ok(())).unwrap();
    (t.elapsed().as_secs_f64() / steps as f64, loss)
}

fn main() {
    let steps = arg("--steps", 5);
    let deep_batch = arg("--deep-batch", 4);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("walk training steps, five transforms, {threads} threads");
    let dev = Device::Cpu;
    let g = genrep::embedded::load(&dev, DType::F32).unwrap();
    let (s, loss) = time_steps(g.as_ref(), 32, steps * 4);
    println!(
        "embedded mnist-cdcgan  batch 32: {s:7.3} s/step  (5000 steps: {:6.1} min; loss {loss:.4})",
        s * 5000.0 / 60.0
    );
    let g = random_biggan(BigGanConfig::deep(128).unwrap(), 0, &dev, DType::F32).unwrap();
    let (s, loss) = time_steps(&g, deep_batch, steps);
    println!(
        "biggan-deep-128 random batch {deep_batch:>2}: {s:7.3} s/step  ({:.3} s/sample; GenRep's 5000 steps at batch 32: {:.1} h; loss {loss:.4})",
        s / deep_batch as f64,
        s / deep_batch as f64 * 32.0 * 5000.0 / 3600.0
    );
}
