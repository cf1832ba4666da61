//! `scripts/gpu-check.sh` and `genrep check` on the CPU (fixture-sized), so the GPU check cannot
//! rot between the rare runs on a GPU host: the report's shape, its passing checks, a failing
//! check's exit status, and clear errors for bad options.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_genrep")
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn gpu_check_script_cpu_path_reports_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let stdout = common::run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/gpu-check.sh"))
            .arg(bin())
            .args(["--device", "cpu", "--out"])
            .arg(&out)
            .env("PYTHON", common::python())
            .current_dir(dir.path()),
        "scripts/gpu-check.sh --device cpu",
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        report,
        "stdout and the report file differ"
    );
    assert_eq!(report["pass"], true, "{report:#}");
    let g = &report["genrep"];
    assert_eq!(g["device"], "cpu");
    assert_eq!(g["complete"], true);

    // Parity: every generator family, each dtype, within tolerance (f32 at the CPU tests' 1e-4).
    for model in [
        "biggan_fixture",
        "stylegan2_fixture",
        "bigbigan_fixture",
        "embedded",
    ] {
        let entries = g["parity"][model].as_array().unwrap();
        let dtypes: Vec<&str> = entries
            .iter()
            .map(|e| e["dtype"].as_str().unwrap())
            .collect();
        assert_eq!(dtypes, ["f32", "f16", "bf16"], "{model}");
        for e in entries {
            assert_eq!(e["pass"], true, "{model}: {e}");
        }
        assert!(num(&entries[0]["max_rel"], "f32 max_rel") <= 1e-4);
        // Half precision really ran in half precision (not silently in f32).
        assert!(
            num(&entries[2]["mean_abs"], "bf16 mean_abs") > 1e-5,
            "{model}"
        );
    }

    // Determinism: on the CPU every comparison holds, including the pinned shard.
    let d = &g["determinism"];
    for key in [
        "two_runs_identical_fixed_batch",
        "two_runs_identical_batch_cap_64",
        "batch_cap_64_vs_7_identical",
        "fixed_batch_vs_cap_64_identical",
        "pinned_cpu_shard_identical",
    ] {
        assert_eq!(d[key], true, "{key}: {d}");
    }
    assert_eq!(d["raw_batch_64_vs_7"]["bitwise_identical"], true);

    // Throughput: every (dtype, batch) of the fixture measured, half precision first, with
    // TFLOP/s from its config.
    let t = &g["throughput"];
    let entries = t["entries"].as_array().unwrap();
    let order: Vec<(&str, u64)> = entries
        .iter()
        .map(|e| (e["dtype"].as_str().unwrap(), e["batch"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("f16", 1),
            ("f16", 4),
            ("bf16", 1),
            ("bf16", 4),
            ("f32", 1),
            ("f32", 4)
        ]
    );
    let gflop = num(&t["models"][0]["gflop_per_image"], "gflop_per_image");
    assert!(gflop > 0.0);
    for e in entries {
        let ips = num(&e["images_per_s"], "images_per_s");
        assert!(ips > 0.0, "{e}");
        assert!((num(&e["tflops"], "tflops") - ips * gflop / 1e3).abs() < 1e-9);
    }

    // Serving: four figures and the two ratios, all positive.
    let s = &g["serving"][0];
    assert_eq!(s["model"], "embedded");
    for key in [
        "shards_in_process_samples_per_s",
        "shards_http_samples_per_s",
        "single_samples_batch_64_per_s",
        "single_samples_batch_1_per_s",
        "http_vs_in_process",
        "batching_gain",
    ] {
        assert!(num(&s[key], key) > 0.0, "{key}: {s}");
    }

    // The PyTorch side either ran or says why not (the test Python has no torch).
    assert!(
        report["torch"]["skipped"].is_string() || report["torch"]["entries"].is_array(),
        "{}",
        report["torch"]
    );
}

#[test]
fn the_pytorch_side_compares_matching_entries_only() {
    // gpu_torch_reference.compare() pairs genrep's and PyTorch's figures by (model, dtype,
    // batch); skipped, failed and unmatched entries give no ratio. Needs only the stdlib.
    let code = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from gpu_torch_reference import compare
report = {"throughput": {"entries": [
    {"model": "m", "dtype": "f16", "batch": 1, "images_per_s": 30.0, "tflops": 3.0},
    {"model": "m", "dtype": "f16", "batch": 4, "images_per_s": 80.0},
    {"model": "m", "dtype": "f32", "batch": 1, "skipped": "budget"},
    {"model": "m", "dtype": "bf16", "batch": 1, "error": "out of memory"},
]}}
torch = {"entries": [
    {"model": "m", "dtype": "f16", "batch": 1, "images_per_s": 10.0, "tflops": 1.0},
    {"model": "m", "dtype": "f16", "batch": 4, "error": "out of memory"},
    {"model": "m", "dtype": "f32", "batch": 1, "images_per_s": 5.0},
    {"model": "other", "dtype": "bf16", "batch": 1, "images_per_s": 5.0},
]}
print(json.dumps(compare(report, torch)))
print(json.dumps(compare(report, {"skipped": "no torch"})))
"#;
    let out = common::run_ok(
        Command::new(common::python())
            .args(["-c", code])
            .arg(repo().join("tools")),
        "gpu_torch_reference.compare",
    );
    let mut lines = out.lines();
    let rows: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["dtype"], "f16");
    assert_eq!(rows[0]["batch"], 1);
    assert_eq!(rows[0]["ratio"], 3.0);
    assert_eq!(lines.next().unwrap(), "[]");
}

#[test]
fn past_the_deadline_measurements_are_skipped_and_the_report_completes() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("sub/r.json");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    let out = Command::new(bin())
        .args(["check", "--device", "cpu", "--dtypes", "f32"])
        // A repeated flag replaces the earlier value (gpu-check.sh passes defaults first).
        .args(["--batches", "4", "--batches", "1", "--deadline-s", "0.001"])
        .args(["--serving-models", "embedded", "--models"])
        .arg(repo().join("tests/fixtures/biggan-tiny"))
        .arg("--fixtures")
        .arg(repo().join("tests/fixtures"))
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["complete"], true);
    // Parity and determinism always run (they are the pass/fail part).
    assert_eq!(r["pass"], true);
    let entries = r["throughput"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["batch"], 1);
    assert!(entries[0]["skipped"].is_string(), "{}", entries[0]);
    let s = &r["serving"][0];
    assert!(
        s["shards_http_samples_per_s"]["error"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{s}"
    );
    assert!(s["batching_gain"].is_null());
}

/// A copy of the fixtures whose f32 reference for truncation 0.4 is off by 1 %.
fn corrupted_fixtures(dir: &Path) -> PathBuf {
    let dst = dir.join("fixtures");
    for sub in ["biggan-tiny", "biggan-tiny-io"] {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
        for f in std::fs::read_dir(repo().join("tests/fixtures").join(sub)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dst.join(sub).join(f.file_name())).unwrap();
        }
    }
    let p = dst.join("biggan-tiny-io/out_onehot_t0.4.npy");
    let mut bytes = std::fs::read(&p).unwrap();
    let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    for v in bytes[header..].chunks_exact_mut(4) {
        let x = f32::from_le_bytes(v.try_into().unwrap()) * 1.01;
        v.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&p, bytes).unwrap();
    dst
}

#[test]
fn a_parity_failure_exits_1_with_the_report_written() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = corrupted_fixtures(dir.path());
    let report = dir.path().join("r.json");
    let out = Command::new(bin())
        .args([
            "check",
            "--device",
            "cpu",
            "--dtypes",
            "f32",
            "--batches",
            "1",
        ])
        .args([
            "--serving-models",
            "none",
            "--min-time-s",
            "0.05",
            "--models",
        ])
        .arg(fixtures.join("biggan-tiny"))
        .arg("--fixtures")
        .arg(&fixtures)
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("parity or determinism failed"), "{stderr}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["pass"], false);
    let e = &r["parity"]["biggan_fixture"][0];
    assert_eq!(e["pass"], false, "{e}");
    assert!(num(&e["max_rel"], "max_rel") > 5e-3, "{e}");
    // The embedded model's committed reference is untouched and still passes.
    assert_eq!(r["parity"]["embedded"][0]["pass"], true);
}

#[test]
fn bad_check_options_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--models", "deep-100"], "deep-128, deep-256, deep-512"),
        (
            &["--models", "/no/such/model"],
            "is none of deep-128/256/512, sg2-256, bigbigan-128, nor a model directory",
        ),
        (&["--fixtures", "/no/such/fixtures"], "cannot read fixture"),
        (&["--batches", "4,0"], "--batches"),
        (&["--serving-models", "deep-7"], "--serving-models"),
    ];
    for (args, needle) in cases {
        let out = Command::new(bin())
            .args(["check", "--device", "cpu", "--serving-models", "none"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A value out of a flag's range is a usage error (clap's status 2).
        let want = if args == ["--batches", "4,0"] { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
