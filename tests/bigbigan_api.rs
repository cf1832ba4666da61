//! The whole API on BigGAN-PyTorch model directories (the converted `bbg-32` fixture, served
//! conditionally and, as BigBiGAN is, unconditionally): info, shards deterministic across batch
//! composition and restarts and read by stock webdataset, `POST /v1/generate` equal to the
//! reference outputs, and `genrep generate` on the command line.

mod common;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use candle_core::{DType, Device};
use common::in_process::{call, ready};
use common::{python, Server};
use genrep::engine::EngineConfig;
use genrep::generator::load_model_dir;
use genrep::params::Limits;
use genrep_wire::npy::NpyArray;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bigbigan")
        .join(name)
}

fn reference(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("bbg-32-io").join(name)).unwrap();
    NpyArray::parse(&bytes).unwrap().to_f32().unwrap()
}

async fn app(dir: &Path, max_batch_size: usize) -> axum::Router {
    let g = load_model_dir(dir, &Device::Cpu, DType::F32).unwrap();
    let cfg = EngineConfig {
        max_batch_size,
        max_batch_wait: Duration::from_millis(2),
        max_queue: 256,
        encode_threads: 2,
    };
    ready(genrep::server::app(
        g,
        cfg,
        Limits::default(),
        CancellationToken::new(),
    ))
    .await
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    d / want.iter().map(|v| v.abs()).fold(0f32, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_shards_and_generate_on_the_conditional_and_unconditional_models() {
    let cond = app(&fixture("bbg-32"), 8).await;
    let (c, body) = call(&cond, Method::GET, "/v1/info", Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let g = json(&body)["generator"].clone();
    assert_eq!(g["architecture"], "biggan-pytorch");
    assert_eq!(
        (g["latent_dim"].as_u64(), g["num_classes"].as_u64()),
        (Some(20), Some(4))
    );
    assert_eq!(g["knobs"].as_array().unwrap().len(), 0);
    // BigGAN's truncation input and StyleGAN's w space are not this family's.
    for q in ["gen_truncation=0.5", "space=w"] {
        let (c, body) = call(
            &cond,
            Method::GET,
            &format!("/v1/shards/train-000000.tar?shard_size=2&{q}"),
            Body::empty(),
        )
        .await;
        assert!(c.is_client_error(), "{q}: {c}");
        assert!(json(&body)["error"].is_string(), "{q}");
    }

    // Shards do not depend on the batch they were computed in.
    let q = "/v1/shards/train-000001.tar?seed=3&views=2&shard_size=5";
    let one = app(&fixture("bbg-32"), 1).await;
    let (c1, a) = call(&one, Method::GET, q, Body::empty()).await;
    let (c2, b) = call(&cond, Method::GET, q, Body::empty()).await;
    assert_eq!((c1, c2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a, b, "batch size 1 and 8 give the same bytes (f32 CPU)");

    // Explicit z and classes give the reference's images.
    let z: Vec<f32> = reference("z.npy");
    let ids = NpyArray::parse(&std::fs::read(fixture("bbg-32-io").join("class_ids.npy")).unwrap())
        .unwrap()
        .to_i64()
        .unwrap();
    let rows: Vec<Vec<f32>> = z.chunks(20).map(|r| r.to_vec()).collect();
    let body = serde_json::json!({"z": rows, "classes": ids, "format": "npy"}).to_string();
    let (c, out) = call(&cond, Method::POST, "/v1/generate", Body::from(body)).await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&out));
    let got = NpyArray::parse(&out).unwrap().to_f32().unwrap();
    assert!(max_rel(&got, &reference("img_classes.npy")) <= 1e-5);

    // The unconditional model: no classes, class 0's embedding; classes are refused.
    let unc = app(&fixture("bbg-32-uncond"), 8).await;
    let body = serde_json::json!({"z": rows, "format": "npy"}).to_string();
    let (c, out) = call(&unc, Method::POST, "/v1/generate", Body::from(body)).await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&out));
    let got = NpyArray::parse(&out).unwrap().to_f32().unwrap();
    assert!(max_rel(&got, &reference("img_class0.npy")) <= 1e-5);
    let body = serde_json::json!({"z": rows, "classes": ids}).to_string();
    let (c, out) = call(&unc, Method::POST, "/v1/generate", Body::from(body)).await;
    assert!(c.is_client_error(), "{c}");
    assert!(json(&out)["error"].as_str().unwrap().contains("class"));
}

/// The real server process: stock webdataset reads the unconditional model's shards (no `cls`),
/// and a restart serves the same bytes.
#[test]
fn webdataset_reads_bigbigan_shards_and_a_restart_serves_the_same_bytes() {
    let dir = fixture("bbg-32-uncond");
    let args = ["--model", dir.to_str().unwrap(), "--max-batch-size", "4"];
    let q = "/v1/shards/train-000000.tar?seed=5&views=2&shard_size=3&sigma=0.2";
    let fetch = |s: &Server| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            reqwest::get(s.url(q))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        })
    };
    let first = {
        let s = Server::start(&args);
        let script = r#"
import sys, webdataset as wds
url = sys.argv[1] + "/v1/shards/train-{000000..000001}.tar?seed=5&views=2&shard_size=3&sigma=0.2"
n = 0
for s in wds.WebDataset(url, shardshuffle=False).decode("pil"):
    assert s["anchor.png"].size == (32, 32) and s["pos1.png"].mode == "RGB"
    assert len(s["json"]["z_anchor"]) == 20 and "cls" not in s
    n += 1
assert n == 6, n
print("ok", n)
"#;
        let out = common::run_ok(
            Command::new(python()).arg("-c").arg(script).arg(&s.base),
            "python webdataset",
        );
        assert!(out.contains("ok 6"), "{out}");
        fetch(&s)
    };
    let s = Server::start(&args);
    assert_eq!(first, fetch(&s));
}

/// `genrep generate` on the converted directory reproduces the reference from `.npy` files.
#[test]
fn genrep_generate_runs_the_converted_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.npy");
    let io = fixture("bbg-32-io");
    let bin = env!("CARGO_BIN_EXE_genrep");
    common::run_ok(
        Command::new(bin).args([
            "generate",
            "--model",
            fixture("bbg-32").to_str().unwrap(),
            "--z",
            io.join("z.npy").to_str().unwrap(),
            "--class",
            io.join("class_ids.npy").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]),
        "genrep generate",
    );
    let got = NpyArray::parse(&std::fs::read(&out).unwrap())
        .unwrap()
        .to_f32()
        .unwrap();
    assert!(max_rel(&got, &reference("img_classes.npy")) <= 1e-5);
}
