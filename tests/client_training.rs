//! The client end to end: a genrep server with the embedded generator on loopback, SupCon training
//! of a small encoder from its shards, kNN on the real test digits, and resume from a checkpoint.

mod common;

use candle_core::Device;
use common::Server;
use genrep_client::eval::{features, knn_top1, linear_probe, load_labelled, pixel_features};
use genrep_client::model::{build, EncoderConfig};
use genrep_client::train::{latest_checkpoint, Objective, TrainConfig, Trainer};
use std::process::Command;

fn config(source: String, steps: usize) -> TrainConfig {
    TrainConfig {
        source,
        objective: Objective::Supcon,
        views: 2,
        augment: "none".into(),
        steps,
        batch_size: 32,
        lr: 0.05,
        temperature: 0.1,
        lars: false,
        momentum: 0.9,
        weight_decay: 1e-4,
        warmup_steps: 5,
        seed: 3,
        encoder: EncoderConfig {
            in_channels: 1,
            width: 8,
            depth: 1,
            stages: 3,
            proj_dim: 32,
        },
        rank: 0,
        world_size: 1,
        prefetch: 2,
        cache_shards: true,
        shuffle_buffer: 0,
        fetch: Default::default(),
    }
}

type Labelled = (candle_core::Tensor, Vec<u32>);

/// The 4000 + 1000 real digits, written by `genrep real-data` and loaded as the client does.
fn real_digits() -> (Labelled, Labelled) {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let st = Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args(["real-data", "--out"])
        .arg(&real)
        .status()
        .unwrap();
    assert!(st.success());
    let load = |p: &str| load_labelled(&format!("{}/{p}", real.display()), &Device::Cpu).unwrap();
    (
        load("mnist-train-{000000..000003}.tar"),
        load("mnist-test-000000.tar"),
    )
}

#[test]
fn trains_from_the_server_beats_random_init_and_resumes() {
    let s = Server::start(&[]);
    let dev = Device::Cpu;
    let (train_set, test_set) = real_digits();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!((train_set.1.len(), test_set.1.len()), (4000, 1000));
    let knn = |enc: &genrep_client::model::Encoder| {
        let a = features(enc, &train_set.0, 500).unwrap();
        let b = features(enc, &test_set.0, 500).unwrap();
        knn_top1(&a, &train_set.1, &b, &test_set.1, 20, 10).unwrap()
    };

    let source =
        s.url("/v1/shards/train-{000000..000003}.tar?seed=1&sigma=0.2&views=1&shard_size=256");
    let steps = 80;
    let cfg = config(source, steps);
    let (random_enc, _) = build(cfg.encoder.clone(), &dev).unwrap();
    let random_knn = knn(&random_enc);

    let ckpt = dir.path().join("ckpt");
    let mut t = Trainer::new(cfg.clone(), None, &dev).unwrap();
    let mut losses = Vec::new();
    let (mut keys_after, mut loss_after) = (Vec::new(), 0.0);
    let t0 = std::time::Instant::now();
    while t.step < steps {
        let l = t.step().unwrap();
        losses.push(l.loss);
        if t.step == steps / 2 {
            t.save(&ckpt).unwrap();
        }
        if t.step == steps / 2 + 1 {
            keys_after = t.last_keys.clone();
            loss_after = l.loss;
        }
    }
    let head: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let tail: f32 = losses[steps - 10..].iter().sum::<f32>() / 10.0;
    let trained_knn = knn(&t.encoder);
    eprintln!(
        "{steps} steps in {:.1}s; loss {head:.4} -> {tail:.4}; kNN top-1 random init {random_knn:.4}, trained {trained_knn:.4}",
        t0.elapsed().as_secs_f64()
    );
    assert!(tail < head * 0.9, "loss did not fall: {head} -> {tail}");
    assert!(
        trained_knn > random_knn,
        "trained {trained_knn} <= random {random_knn}"
    );

    // Resume at the checkpoint: the next step sees the batch the uninterrupted run saw, with the
    // same weights, momentum and cursor, so the same loss.
    let latest = latest_checkpoint(&ckpt).unwrap();
    let mut resumed = Trainer::new(cfg.clone(), Some(&latest), &dev).unwrap();
    assert_eq!(resumed.step, steps / 2);
    let l = resumed.step().unwrap();
    assert_eq!(resumed.last_keys, keys_after);
    assert!(
        (l.loss - loss_after).abs() < 1e-3,
        "resumed loss {} vs {}",
        l.loss,
        loss_after
    );

    // Momentum buffers are stored by parameter name and checked on load: a buffer of the wrong
    // shape (or one for a parameter this encoder lacks) is an error naming it, never a silent
    // mix-up; `latest` is replaced whole (no temporary file is left).
    let opt_file = latest.join("optimizer.safetensors");
    let mut saved = candle_core::safetensors::load(&opt_file, &dev).unwrap();
    assert!(
        saved.keys().all(|k| k.starts_with("velocity.")),
        "{:?}",
        saved.keys()
    );
    let names: Vec<String> = saved.keys().cloned().collect();
    let victim = names
        .iter()
        .max_by_key(|k| saved[*k].elem_count())
        .unwrap()
        .clone();
    let good = saved[&victim].clone();
    // Saves `saved` with a 3-element buffer under `key`; the resume error.
    let mut resume_with_bad = |key: &str| {
        let bad = candle_core::Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        saved.insert(key.to_string(), bad);
        candle_core::safetensors::save(&saved, &opt_file).unwrap();
        let e = Trainer::new(cfg.clone(), Some(&latest), &dev)
            .err()
            .unwrap();
        saved.insert(victim.clone(), good.clone());
        e.to_string()
    };
    let e = resume_with_bad(&victim);
    assert!(
        e.contains(victim.trim_start_matches("velocity.")) && e.contains("shape"),
        "{e}"
    );
    let e = resume_with_bad("velocity.nothing.weight");
    assert!(e.contains("nothing.weight"), "{e}");
    assert!(!ckpt.join("latest.partial").exists());

    // An incompatible checkpoint is a clear error.
    let mut other = cfg.clone();
    other.encoder.width = 16;
    let e = Trainer::new(other, Some(&latest), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encoder"), "{e}");
}

#[test]
fn loader_errors_are_clear() {
    let dev = Device::Cpu;
    let e = Trainer::new(
        config(
            "http://127.0.0.1:9/v1/shards/x-{000000..000001}.tar".into(),
            1,
        ),
        None,
        &dev,
    )
    .and_then(|mut t| t.step().map(|_| ()))
    .unwrap_err()
    .to_string();
    assert!(e.contains("127.0.0.1:9") && e.contains("attempts"), "{e}");
    let e = Trainer::new(
        config("/nonexistent/dir-{000000..000001}.tar".into(), 1),
        None,
        &dev,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no such file"), "{e}");
    let e = Trainer::new(config("http://h/x-{1..".into(), 1), None, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bad shard pattern"), "{e}");
}

/// The raw-pixel reference row through the same probe code: a converged softmax regression on
/// the 4000 real training digits (what a learned encoder must beat) classifies the 1000 test
/// digits at ~0.89.
#[test]
fn raw_pixel_probe_converges_on_the_real_digits() {
    // As the binaries do: without it every probe step page-faults its buffers in again.
    genrep_kernels::tune_allocator();
    let ((xtr, ytr), (xte, yte)) = real_digits();
    let (ftr, fte) = (pixel_features(&xtr).unwrap(), pixel_features(&xte).unwrap());
    let acc = linear_probe(&ftr, &ytr, &fte, &yte, 10, 1500, 0.1).unwrap();
    assert!(acc > 0.86, "raw-pixel probe accuracy {acc}");
}
