//! The experiment command end to end at toy size (the committed table comes from the full
//! protocol): every row trains and evaluates, the files are written, and a second invocation
//! reuses the finished runs instead of training again.

use std::process::Command;

#[test]
fn the_whole_table_at_toy_size_then_resumed() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--out",
        out.path().to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--seeds",
        "2",
        "--sigmas",
        "0.2,0.8",
        "--knn-every",
        "1",
        "--width",
        "4",
        "--probe-steps",
        "30",
    ];
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_genrep-mnist-experiment"))
            .args(args)
            .output()
            .unwrap()
    };
    let first = run();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    for id in [
        "raw-pixels",
        "random-init",
        "real-simclr",
        "real-supcon",
        "none-simclr",
        "independent-supcon",
        "gauss-0.2",
        "gauss-0.8",
    ] {
        assert!(md.contains(&format!("| `{id}` |")), "{id} missing:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let star = json["sigma_star"].as_f64().unwrap();
    assert!(star == 0.2 || star == 0.8, "{star}");
    for suffix in ["-supcon", "-k2", "-k4"] {
        assert!(md.contains(&format!("| `gauss-{star}{suffix}` |")), "{md}");
    }
    // 11 rows × 2 seeds, each with accuracies in range.
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 22);
    for r in runs {
        for k in ["linear_top1", "knn_top1"] {
            let a = r[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&a), "{r}");
        }
    }
    // Raw pixels on the real digits are far above chance even with a 30-step probe.
    let raw = &json["rows"].as_array().unwrap()[0];
    assert_eq!(raw["id"], "raw-pixels");
    assert!(raw["knn_top1"]["mean"].as_f64().unwrap() > 0.9, "{raw}");
    for png in ["sigma.png", "steps.png"] {
        let bytes = std::fs::read(out.path().join(png)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "{png}"
        );
    }
    assert!(md.contains("genrep-train train --source"), "{md}");

    let second = run();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{err}");
    assert!(err.contains("reusing 22 finished runs"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("results.md")).unwrap(),
        md
    );
}

#[test]
fn bad_flags_are_messages() {
    let out = Command::new(env!("CARGO_BIN_EXE_genrep-mnist-experiment"))
        .args(["--sigmas", "0.2,-1", "--out", "/nonexistent-never-created"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sigmas must be positive"), "{err}");
}
