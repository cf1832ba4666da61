//! Generator throughput on this machine: images/s of StyleGAN2 (paper256 and config-f 512,
//! random weights) at batch 1 and 8, of BigBiGAN-128 (random weights) at batch 1 and 8, of
//! BigGAN-deep-128 (package config, random weights) at
//! batch 1, 8 and 32, and of the embedded default generator.
//!
//!     cargo bench --bench generator [-- --quick]
//!
//! With `GENREP_BENCH_PYTHON` naming a Python that has torch and pytorch-pretrained-biggan, it also
//! runs `tools/bench_reference.py` (same config, thread count and batch sizes) and prints the
//! ratio.

#[path = "../kernels/benches/support/mod.rs"]
mod support;

use candle_core::{DType, Device};
use genrep::check::throughput::images_per_s;
use genrep::generator::{
    random_biggan, random_biggan_pytorch, random_stylegan2, BigGanConfig, BigGanPytorchConfig,
    Generator, StyleGan2Config,
};
use std::time::Duration;
use support::{torch_reference, value_before};

/// Images/s at batch `b` (one warm-up pass, then passes for at least `min_time`).
fn time_batch(g: &dyn Generator, b: usize, min_time: Duration) -> f64 {
    images_per_s(g, b, min_time).unwrap().images_per_s
}

/// Prints one row per batch: ours at `ips[i]` and, with a
/// PyTorch side, its figure from the line starting `{label} torch f32 batch {b:>2}:` and the ratio.
fn print_rows(label: &str, batches: &[usize], ips: &[f64], torch: &Option<Vec<String>>) {
    for (&b, &ips) in batches.iter().zip(ips) {
        let mut line = format!(
            "{label:<18} candle f32 batch {b:>2}: {ips:8.3} images/s  ({:.3} s/image)",
            1.0 / ips
        );
        if let Some(lines) = torch {
            let pat = format!("{label} torch f32 batch {b:>2}:");
            let t = lines
                .iter()
                .find(|l| l.starts_with(&pat))
                .and_then(|l| value_before(l, "images/s"))
                .expect("torch figure for this row");
            line += &format!("   torch {t:8.3} images/s   candle/torch {:.2}x", ips / t);
        }
        println!("{line}");
    }
}

/// The reference's "reference check" line (its agreement with the fixtures), when it ran.
fn print_reference_check(torch: &Option<Vec<String>>) {
    if let Some(l) = torch
        .as_ref()
        .and_then(|lines| lines.iter().find(|l| l.starts_with("reference check")))
    {
        println!("{l}");
    }
}

/// StyleGAN2 at the paper256 and config-f 512 configurations (random weights), batch 1 and 8,
/// next to `tools/bench_stylegan2_reference.py` (its own NVlabs implementation, checked against
/// the reference fixtures before it times anything).
fn stylegan2_rows(dev: &Device, quick: bool, threads: &str) {
    let configs: Vec<(&str, StyleGan2Config)> = if quick {
        vec![("paper256", StyleGan2Config::paper256())]
    } else {
        vec![
            ("paper256", StyleGan2Config::paper256()),
            ("f512", StyleGan2Config::config_f(512)),
        ]
    };
    let names: Vec<&str> = configs.iter().map(|(n, _)| *n).collect();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stylegan2");
    let torch = torch_reference(
        "bench_stylegan2_reference.py",
        &[
            "--threads",
            threads,
            "--configs",
            &names.join(","),
            "--batches",
            "1,8",
            "--check",
            fixtures,
            "--min-time",
            "2",
        ],
    );
    print_reference_check(&torch);
    for (name, cfg) in configs {
        let g = random_stylegan2(cfg, 0, dev, DType::F32).unwrap();
        // Passes take up to seconds here: time several, so one slow pass cannot decide it.
        let ips: Vec<f64> = [1, 8]
            .iter()
            .map(|&b| time_batch(&g, b, Duration::from_secs(2)))
            .collect();
        print_rows(&format!("stylegan2-{name}"), &[1, 8], &ips, &torch);
    }
}

/// BigBiGAN-128 (BigGAN-PyTorch layout, random weights) at batch 1 and 8, next to
/// `tools/bench_bigbigan_reference.py` (its own implementation of the layout's math, checked
/// against the reference fixture before it times anything).
fn bigbigan_rows(dev: &Device, threads: &str) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bigbigan");
    let torch = torch_reference(
        "bench_bigbigan_reference.py",
        &[
            "--threads",
            threads,
            "--batches",
            "1,8",
            "--check",
            fixtures,
            "--min-time",
            "2",
        ],
    );
    print_reference_check(&torch);
    let g = random_biggan_pytorch(BigGanPytorchConfig::bigbigan_128(), 0, dev, DType::F32).unwrap();
    let ips: Vec<f64> = [1, 8]
        .iter()
        .map(|&b| time_batch(&g, b, Duration::from_secs(2)))
        .collect();
    print_rows("bigbigan-128", &[1, 8], &ips, &torch);
}

fn main() {
    // As the binaries do: freed activations stay in the heap (genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    let quick = std::env::args().any(|a| a == "--quick");
    let dev = Device::Cpu;
    println!(
        "threads: {} (rayon), candle CPU backend",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let threads = candle_core::utils::get_num_threads().to_string();
    stylegan2_rows(&dev, quick, &threads);
    bigbigan_rows(&dev, &threads);
    let g = random_biggan(BigGanConfig::deep(128).unwrap(), 0, &dev, DType::F32).unwrap();
    let batches: &[usize] = if quick { &[1, 8] } else { &[1, 8, 32] };
    let ours: Vec<f64> = batches
        .iter()
        .map(|&b| time_batch(&g, b, Duration::from_millis(300)))
        .collect();
    drop(g);
    // The PyTorch side, same config, thread count and batch sizes, when GENREP_BENCH_PYTHON names a
    // Python with torch and pytorch-pretrained-biggan.
    let list = batches
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let torch = torch_reference(
        "bench_reference.py",
        &["--threads", &threads, "--batches", &list],
    );
    for (i, &b) in batches.iter().enumerate() {
        let ips = ours[i];
        let mut line = format!(
            "biggan-deep-128 candle f32  batch {b:>2}: {ips:7.3} images/s  ({:.3} s/image)",
            1.0 / ips
        );
        if let Some(lines) = &torch {
            let pat = format!("batch {b:>2}:");
            let t = lines
                .iter()
                .find(|l| l.contains(&pat))
                .and_then(|l| value_before(l, "images/s"))
                .expect("torch figure for this batch");
            line += &format!(
                "   torch {t:7.3} images/s ({:.3} s/image)   candle/torch {:.2}x",
                1.0 / t,
                ips / t
            );
        }
        println!("{line}");
    }
    if torch.is_none() {
        println!("(set GENREP_BENCH_PYTHON to a Python with torch for the PyTorch column)");
    }
    let model_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist-cdcgan");
    if model_dir.join("model.safetensors").exists() {
        let g = genrep::generator::load_model_dir(&model_dir, &dev, DType::F32).unwrap();
        for b in [1usize, 64, 256] {
            let ips = time_batch(g.as_ref(), b, Duration::from_millis(500));
            println!("mnist-cdcgan    candle f32  batch {b:>3}: {ips:8.1} images/s");
        }
    }
}
