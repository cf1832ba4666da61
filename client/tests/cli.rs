//! `genrep-train` as a user runs it: output piped (not a terminal), folders that do not exist yet,
//! and bad flags that must give a message and a non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

/// Writes a WebDataset shard of `n` labelled `size`×`size` grayscale PNG digits-like samples.
fn write_shard(path: &Path, n: usize, size: u32) {
    let f = std::fs::File::create(path).unwrap();
    let mut tar = tar::Builder::new(f);
    for i in 0..n {
        let mut px = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut px, size, size);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            let data: Vec<u8> = (0..size * size)
                .map(|p| ((p as usize * 7 + i * 31) % 256) as u8)
                .collect();
            w.write_image_data(&data).unwrap();
        }
        let cls = format!("{}", i % 3).into_bytes();
        for (name, data) in [("png", &px), ("cls", &cls)] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o444);
            h.set_cksum();
            tar.append_data(&mut h, format!("{i:06}.{name}"), data.as_slice())
                .unwrap();
        }
    }
    tar.finish().unwrap();
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_genrep-train"))
        .args(args)
        .output()
        .unwrap()
}

const SMALL: &[&str] = &[
    "--steps",
    "4",
    "--batch-size",
    "6",
    "--width",
    "4",
    "--stages",
    "2",
    "--proj-dim",
    "8",
    "--augment",
    "none",
    "--warmup-steps",
    "1",
];

#[test]
fn piped_training_logs_lines_and_creates_the_metrics_folder() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("d-000000.tar");
    write_shard(&shard, 24, 12);
    let metrics = dir.path().join("runs/a/metrics.jsonl");
    let shard = shard.to_str().unwrap();
    let mut args = vec!["train", "--source", shard];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(&[
        "--log-every",
        "2",
        "--knn-train",
        shard,
        "--knn-test",
        shard,
        "--knn-every",
        "2",
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    let out = run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Output is a pipe here: plain lines at steps 2 and 4, and the kNN figures.
    assert!(err.contains("step 2/4 loss"), "{err}");
    assert!(err.contains("step 4/4 loss"), "{err}");
    assert!(err.contains("step 4: kNN top-1"), "{err}");
    let lines = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"loss\"")).count(), 4);
    assert_eq!(lines.lines().filter(|l| l.contains("knn_top1")).count(), 2);
}

#[test]
fn bad_flags_are_messages_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("d-000000.tar");
    write_shard(&shard, 12, 8);
    let shard = shard.to_str().unwrap();
    let mut args = vec!["train", "--source", shard, "--in-channels", "3"];
    args.extend_from_slice(SMALL);
    let out = run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("1 channel(s)") && err.contains("--in-channels 1"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    let out = run(&[
        "eval",
        "--checkpoint",
        dir.path().to_str().unwrap(),
        "--train",
        shard,
        "--test",
        shard,
        "--k",
        "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--k must be at least 1"), "{err}");
}

#[test]
fn zero_steps_saves_the_random_init_encoder_for_eval() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("d-000000.tar");
    write_shard(&shard, 12, 8);
    let shard = shard.to_str().unwrap();
    let ckpt = dir.path().join("init");
    let mut args = vec!["train", "--source", shard];
    args.extend_from_slice(SMALL);
    let steps = args.iter().position(|a| *a == "--steps").unwrap();
    args[steps + 1] = "0";
    args.extend_from_slice(&["--checkpoint-dir", ckpt.to_str().unwrap()]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--train",
        shard,
        "--test",
        shard,
        "--k",
        "3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["step"], 0, "{report}");
    assert!(report["linear_top1"].as_f64().is_some(), "{report}");
}
