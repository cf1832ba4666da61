//! The whole API on a StyleGAN2 model directory (the converted reference fixture): info and
//! OpenAPI describe its inputs, shards are deterministic across batch composition and restarts
//! and readable by stock webdataset, z- and w-space views, explicit z and w generation, and
//! the errors for inputs it lacks or values out of range.

mod common;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use candle_core::{DType, Device, Tensor};
use common::in_process::{call, ready};
use common::{python, Server};
use genrep::engine::EngineConfig;
use genrep::generator::{load_model_dir, ClassInput, NoiseMode, StyleGan2};
use genrep::params::Limits;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stylegan2")
        .join(name)
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

/// The members of a tar whose names end with `suffix`, in order.
fn members(tar: &[u8], suffix: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in tar::Archive::new(tar).entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().ends_with(suffix) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            out.push(v);
        }
    }
    out
}

/// The `json` members of a tar, in order.
fn metas(tar: &[u8]) -> Vec<serde_json::Value> {
    members(tar, ".json")
        .iter()
        .map(|m| serde_json::from_slice(m).unwrap())
        .collect()
}

/// The first npy member of a tar whose name ends with `suffix`.
fn npy_member(tar: &[u8], suffix: &str) -> genrep_wire::npy::NpyArray {
    genrep_wire::npy::NpyArray::parse(&members(tar, suffix)[0]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_openapi_describe_its_spaces_and_inputs() {
    let app = app(&model("sg2-32-uncond"), 8).await;
    let (c, body) = call(&app, Method::GET, "/v1/info", Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let v = json(&body);
    let g = &v["generator"];
    assert_eq!(g["architecture"], "stylegan2");
    assert_eq!(g["spaces"][1]["space"], "w");
    let knobs: Vec<&str> = g["knobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(knobs, ["gen_truncation", "truncation_cutoff", "noise_mode"]);
    assert_eq!(v["defaults"]["noise_mode"], "const");
    assert_eq!(v["defaults"]["gen_truncation"], 1.0);
    let (c, body) = call(&app, Method::GET, "/openapi.json", Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let doc = json(&body);
    let params = doc["paths"]["/v1/shards/{name}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .clone();
    let psi = params
        .iter()
        .find(|p| p["name"] == "gen_truncation")
        .unwrap();
    assert_eq!(psi["schema"]["maximum"], 2.0);
    assert!(params.iter().any(|p| p["name"] == "noise_mode"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &body).unwrap();
    common::run_ok(
        Command::new(python()).args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
            path.to_str().unwrap(),
        ]),
        "openapi-spec-validator",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_do_not_depend_on_batch_composition_and_w_views_are_offsets_in_w() {
    let q = "/v1/shards/train-000001.tar?seed=3&views=2&shard_size=5&gen_truncation=0.7";
    let (a, b) = (
        app(&model("sg2-32-uncond"), 1).await,
        app(&model("sg2-32-uncond"), 8).await,
    );
    let (c1, one) = call(&a, Method::GET, q, Body::empty()).await;
    let (c2, eight) = call(&b, Method::GET, q, Body::empty()).await;
    assert_eq!((c1, c2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(
        one, eight,
        "batch size 1 and 8 give the same bytes (f32 CPU)"
    );
    // The same anchors in w: z_pos repeats the anchor's z, offsets are σ·w with |w| ≤ 2.
    let qw = format!("{q}&space=w&sigma=0.25");
    let (c, w) = call(&b, Method::GET, &qw, Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let (mz, mw) = (metas(&one), metas(&w));
    assert_eq!(mz.len(), 5);
    for (z, w) in mz.iter().zip(&mw) {
        assert_eq!(z["z_anchor"], w["z_anchor"]);
        assert!(z.get("space").is_none() && z.get("offsets").is_none());
        assert_eq!(w["space"], "w");
        assert_eq!(w["z_pos"][0], w["z_anchor"]);
        let offs = w["offsets"].as_array().unwrap();
        assert_eq!(offs.len(), 2);
        for o in offs {
            let o: Vec<f64> = o
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(o.len(), 32);
            assert!(o.iter().all(|x| x.abs() <= 0.5 + 1e-6), "{o:?}");
        }
    }
    assert_ne!(one, w);
    // A w-space positive is the mapped anchor (ψ applied) plus its offset, on every row.
    let g = load_model_dir(&model("sg2-32-uncond"), &Device::Cpu, DType::F32).unwrap();
    let m = &mw[0];
    let z: Vec<f32> = serde_json::from_value(m["z_anchor"].clone()).unwrap();
    let off: Vec<f32> = serde_json::from_value(m["offsets"][1].clone()).unwrap();
    let knobs = StyleGan2::knobs(0.7, 0, NoiseMode::Const);
    let zt = Tensor::from_vec(z, (1, 32), &Device::Cpu).unwrap();
    let ws = g
        .map(&zt, &ClassInput::None, &knobs, genrep::generator::Space::W)
        .unwrap();
    let ws = ws
        .broadcast_add(&Tensor::from_vec(off, (1, 1, 32), &Device::Cpu).unwrap())
        .unwrap();
    let want = g
        .synthesize(
            &ws,
            genrep::generator::Space::W,
            &ClassInput::None,
            &knobs,
            &[],
        )
        .unwrap();
    let (c, got) = call(
        &b,
        Method::GET,
        "/v1/shards/train-000001.tar?seed=3&views=2&shard_size=5&gen_truncation=0.7&space=w&sigma=0.25&format=npy",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let got = npy_member(&got, "pos1.npy").to_f32().unwrap();
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_z_and_w_generate_and_bad_inputs_are_named() {
    let app = app(&model("sg2-16-cond"), 8).await;
    let z = vec![0.3f32; 16];
    let body =
        serde_json::json!({"z": [z], "classes": [2], "gen_truncation": 0.7, "format": "npy"});
    let (c, npy) = call(
        &app,
        Method::POST,
        "/v1/generate",
        Body::from(body.to_string()),
    )
    .await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&npy));
    let got = genrep_wire::npy::NpyArray::parse(&npy).unwrap();
    assert_eq!(got.shape, [1, 3, 16, 16]);
    let g = load_model_dir(&model("sg2-16-cond"), &Device::Cpu, DType::F32).unwrap();
    let want = g
        .generate(
            &z,
            &ClassInput::Ids(vec![2]),
            &StyleGan2::knobs(0.7, 0, NoiseMode::Const),
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.to_f32().unwrap(), want);
    // w rows, used for every layer.
    let w = vec![0.1f32; 24];
    let body = serde_json::json!({"w": [w.clone(), w], "format": "npy", "noise_mode": "none"});
    let (c, npy) = call(
        &app,
        Method::POST,
        "/v1/generate",
        Body::from(body.to_string()),
    )
    .await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&npy));
    assert_eq!(
        genrep_wire::npy::NpyArray::parse(&npy).unwrap().shape,
        [2, 3, 16, 16]
    );
    for (uri, body, needle) in [
        (
            "/v1/shards/train-000000.tar?gen_truncation=5",
            "",
            "gen_truncation",
        ),
        (
            "/v1/shards/train-000000.tar?noise_mode=loud",
            "",
            "noise_mode",
        ),
        ("/v1/shards/train-000000.tar?space=x", "", "space"),
        ("/v1/generate", r#"{"w": [[0.1]]}"#, "expected w_dim 24"),
        (
            "/v1/generate",
            r#"{"w": [[0.1]], "classes": [1]}"#,
            "classes go through",
        ),
        (
            "/v1/generate",
            r#"{"z": [[0.1]], "w": [[0.1]]}"#,
            "not both",
        ),
    ] {
        let (method, b) = if body.is_empty() {
            (Method::GET, Body::empty())
        } else {
            (Method::POST, Body::from(body.to_string()))
        };
        let (c, resp) = call(&app, method, uri, b).await;
        assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {body}");
        let v = json(&resp);
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{uri} {body}: {v}"
        );
    }
}

/// Other generators have no w space: `space=w` and `w` rows are 422s naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_w_on_biggan_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/biggan-tiny");
    let app = app(&dir, 8).await;
    let (c, resp) = call(
        &app,
        Method::GET,
        "/v1/shards/train-000000.tar?space=w",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json(&resp)["error"]
        .as_str()
        .unwrap()
        .contains("has no w space"));
    let (c, resp) = call(
        &app,
        Method::POST,
        "/v1/generate",
        Body::from(r#"{"w": [[0.1]]}"#),
    )
    .await;
    assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json(&resp)["error"]
        .as_str()
        .unwrap()
        .contains("no w space"));
    // And StyleGAN's own inputs are not BigGAN's.
    let (c, resp) = call(
        &app,
        Method::GET,
        "/v1/shards/train-000000.tar?noise_mode=none",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json(&resp)["error"]
        .as_str()
        .unwrap()
        .contains("has no such input"));
}

/// The real server process on the fixture: stock webdataset reads z- and w-space shards, and
/// a restart serves the same bytes.
#[test]
fn webdataset_reads_stylegan2_shards_and_a_restart_serves_the_same_bytes() {
    let dir = model("sg2-32-uncond");
    let args = ["--model", dir.to_str().unwrap(), "--max-batch-size", "4"];
    let q = "/v1/shards/train-000000.tar?seed=5&views=2&shard_size=3&space=w";
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
url = sys.argv[1] + "/v1/shards/train-{000000..000001}.tar?seed=5&views=2&shard_size=3&space=w&gen_truncation=0.8"
n = 0
for i, s in enumerate(wds.WebDataset(url, shardshuffle=False).decode("pil")):
    assert s["anchor.png"].size == (32, 32) and s["pos1.png"].mode == "RGB"
    assert s["json"]["space"] == "w" and len(s["json"]["offsets"]) == 2 and "cls" not in s
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

/// A cropped model serves non-square images everywhere: info, shard members, sample PNGs,
/// grids and generate arrays, each the window of the uncropped image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cropped_model_serves_non_square_images_everywhere() {
    let src = model("sg2-32-uncond");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["crop"] = serde_json::json!({"top": 8, "left": 0, "height": 16, "width": 32});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let (cropped, full) = (app(dir.path(), 8).await, app(&src, 8).await);
    let (_, body) = call(&cropped, Method::GET, "/v1/info", Body::empty()).await;
    let g = &json(&body)["generator"];
    assert_eq!(
        (g["height"].as_u64(), g["width"].as_u64()),
        (Some(16), Some(32))
    );
    // Shard members in npy: [3, 16, 32], rows 8..24 of the full image.
    let q = "/v1/shards/train-000000.tar?views=1&shard_size=2&format=npy";
    let (_, c_tar) = call(&cropped, Method::GET, q, Body::empty()).await;
    let (_, f_tar) = call(&full, Method::GET, q, Body::empty()).await;
    let (c, f) = (
        npy_member(&c_tar, "anchor.npy"),
        npy_member(&f_tar, "anchor.npy"),
    );
    assert_eq!(c.shape, [3, 16, 32]);
    let (cv, fv) = (c.to_f32().unwrap(), f.to_f32().unwrap());
    for ch in 0..3 {
        for y in 0..16 {
            let got = &cv[(ch * 16 + y) * 32..(ch * 16 + y + 1) * 32];
            let want = &fv[(ch * 32 + y + 8) * 32..(ch * 32 + y + 9) * 32];
            assert_eq!(got, want, "channel {ch} row {y}");
        }
    }
    // PNGs: a sample is its views side by side, a grid one row per sample.
    let png_size = |b: &[u8]| {
        let d = png::Decoder::new(std::io::Cursor::new(b.to_vec()));
        let r = d.read_info().unwrap();
        (r.info().width, r.info().height)
    };
    let (c, b) = call(
        &cropped,
        Method::GET,
        "/v1/samples/3.png?views=1",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let (w1, h1) = png_size(&b);
    let (_, b) = call(
        &cropped,
        Method::GET,
        "/v1/grid.png?rows=3&views=1",
        Body::empty(),
    )
    .await;
    let (w3, h3) = png_size(&b);
    assert!(w1 > h1 && w1 >= 2 * 32 && h1 >= 16, "{w1}x{h1}");
    assert_eq!(w3, w1);
    assert!((3 * 16..3 * 32).contains(&h3), "{w3}x{h3}");
    let body = serde_json::json!({"z": [vec![0.2f32; 32]], "format": "npy"});
    let (c, npy) = call(
        &cropped,
        Method::POST,
        "/v1/generate",
        Body::from(body.to_string()),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    assert_eq!(
        genrep_wire::npy::NpyArray::parse(&npy).unwrap().shape,
        [1, 3, 16, 32]
    );
}
