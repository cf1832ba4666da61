//! `genrep walks train` end to end on the embedded generator with a tiny budget: the walk file
//! and its provenance, the metrics file, an interrupted run resumed to the same walks as an
//! uninterrupted one, and the refusals (bad flags, a checkpoint made with other settings, walks
//! loaded for other weights).

mod common;

use candle_core::{DType, Device};
use genrep::walks::file::WalkFile;
use std::path::Path;
use std::process::Command;

fn genrep(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args(args)
        .output()
        .unwrap()
}

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "walks",
        "train",
        "--out",
        out.to_str().unwrap(),
        "--transforms",
        "zoom,shift_x,color",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    genrep(&args)
}

fn embedded_sha() -> String {
    let g = genrep::embedded::load(&Device::Cpu, DType::F32).unwrap();
    g.spec().weights_sha256.clone()
}

#[test]
fn train_writes_walks_metrics_and_resumes_to_the_same_walks() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.safetensors");
    let out = train(&full, &["--steps", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Piped output: plain log lines, no progress bar.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("training walks") && !log.contains('\r'),
        "{log}"
    );
    let sha = embedded_sha();
    let g = genrep::embedded::load(&Device::Cpu, DType::F32).unwrap();
    let d = g.spec().latent_dim;
    let a = WalkFile::load(&full, &sha, d).unwrap();
    assert_eq!(a.names, ["zoom", "shift_x", "color_0"]);
    assert_eq!(a.meta["steps"], "4");
    assert_eq!(a.meta["transforms"], "zoom,shift_x,color");
    assert!(a.meta["final_loss"].parse::<f32>().unwrap() > 0.0);
    assert!(a.meta["alpha_ranges"].contains("\"zoom\""));
    let metrics =
        std::fs::read_to_string(dir.path().join("full.safetensors.metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [0, 1, 2, 3]);

    // Stopped after 2 steps, then resumed to 4: the same walks and loss.
    let part = dir.path().join("part.safetensors");
    assert!(train(&part, &["--steps", "2"]).status.success());
    let out = train(&part, &["--steps", "4", "--resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = WalkFile::load(&part, &sha, d).unwrap();
    let flat = |w: &WalkFile| w.walks.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&a), flat(&b));
    assert_eq!(a.meta["final_loss"], b.meta["final_loss"]);
    let metrics =
        std::fs::read_to_string(dir.path().join("part.safetensors.metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "the resumed run appends");

    // A checkpoint made with other settings is refused, naming the setting.
    let out = genrep(&[
        "walks",
        "train",
        "--out",
        part.to_str().unwrap(),
        "--transforms",
        "zoom,shift_x,color",
        "--batch-size",
        "4",
        "--seed",
        "4",
        "--steps",
        "6",
        "--resume",
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("seed = 3") && e.contains("this run has 4"),
        "{e}"
    );

    // Walks for other weights are refused when loaded.
    let e = WalkFile::load(&full, "0123456789abcdef", d)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trained for the weights") && e.contains("genrep walks train"),
        "{e}"
    );
    let e = WalkFile::load(&full, &sha, d + 1).unwrap_err().to_string();
    assert!(e.contains("has shape"), "{e}");
}

#[test]
fn bad_flags_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--transforms", "zoom,tilt"],
            "unknown transform `tilt`",
        ),
        (vec!["--transforms", "zoom,zoom"], "listed twice"),
        (vec!["--lr", "5"], "--lr 5"),
        (vec!["--steps", "0"], "--steps"),
        (vec!["--resume"], "resuming from"),
    ] {
        let mut a = vec!["walks", "train", "--out", o];
        a.extend(args.iter().copied());
        let r = genrep(&a);
        assert!(!r.status.success(), "{args:?} should fail");
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    assert!(!out.exists(), "a refused run writes no walk file");
}

/// The gradient reaches the walks through every family's layers: BigGAN-deep's and
/// BigGAN-PyTorch's (attention, conditional BN, the fused ops) and StyleGAN2's (mapping,
/// modulated convs, the transposed up-sampling conv, the epilogues: their differentiable forms),
/// conditional and unconditional, a model directory or a rosinality `.pt`.
#[test]
fn every_family_trains_walks() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    for model in [
        "biggan-tiny",
        "bigbigan/bbg-32",
        "bigbigan/bbg-32-uncond",
        "stylegan2/sg2-32-uncond",
        "stylegan2/sg2-16-cond",
        "stylegan2-pt/sg2-32-uncond.pt",
    ] {
        let out = dir.path().join("w.safetensors");
        let r = genrep(&[
            "walks",
            "train",
            "--model",
            fixtures.join(model).to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--transforms",
            "zoom,rot2d",
        ]);
        assert!(
            r.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let g =
            genrep::generator::load_model(&fixtures.join(model), &Device::Cpu, DType::F32).unwrap();
        let w = WalkFile::load(&out, &g.spec().weights_sha256, g.spec().latent_dim).unwrap();
        assert_eq!(w.names, ["zoom", "rot2d"], "{model}");
        let init = genrep::walks::train::State::init(2, g.spec().latent_dim, 0).unwrap();
        let moved = (w.walks - init.walks)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(moved > 0.0, "{model}: the walks did not move");
    }
}
