//! Steered views through the API, on the embedded model and its shipped walks: `/v1/info` lists
//! the walks; `method=steer` positives are the anchor plus the recorded coefficients times the
//! walk file's vectors; `walks=` subsets and scales, `steer_scale` and `steer_gaussian` keep
//! each walk's coefficient; shards are deterministic across batch sizes and equal
//! `genrep export --method steer`; `/v1/walks.png` draws the walks; a server without walks (and
//! a bad walk name) answers 422 saying what to do.

mod common;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use candle_core::{DType, Device};
use common::in_process::{call, ready, send_from, LOCAL};
use genrep::engine::EngineConfig;
use genrep::params::Limits;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn cfg(max_batch_size: usize) -> EngineConfig {
    EngineConfig {
        max_batch_size,
        max_batch_wait: Duration::from_millis(2),
        max_queue: 256,
        encode_threads: 2,
    }
}

async fn embedded(max_batch_size: usize) -> axum::Router {
    let g = genrep::embedded::load(&Device::Cpu, DType::F32).unwrap();
    let app = genrep::server::app(
        g,
        cfg(max_batch_size),
        Limits::default(),
        CancellationToken::new(),
    );
    ready(app).await
}

/// The embedded weights without walks (the model directory, loaded without its walk file).
async fn without_walks() -> axum::Router {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist-cdcgan");
    let g = genrep::generator::load_model_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    assert!(g.spec().walks.is_none());
    let app = genrep::server::app(g, cfg(8), Limits::default(), CancellationToken::new());
    ready(app).await
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)))
}

async fn get_json(app: &axum::Router, uri: &str) -> serde_json::Value {
    let (c, body) = call(app, Method::GET, uri, Body::empty()).await;
    assert_eq!(
        c,
        StatusCode::OK,
        "{uri}: {}",
        String::from_utf8_lossy(&body)
    );
    json(&body)
}

async fn error(app: &axum::Router, uri: &str) -> (StatusCode, String) {
    let (c, body) = call(app, Method::GET, uri, Body::empty()).await;
    let v = json(&body);
    assert!(v["error_type"].is_string(), "{uri}: {v}");
    (c, v["error"].as_str().unwrap().to_string())
}

/// The shipped walks, read from the file itself (not through the server).
fn walk_vectors() -> BTreeMap<String, Vec<f32>> {
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(genrep::embedded::WEIGHTS))
    };
    let f = genrep::walks::file::WalkFile::from_bytes(
        genrep::embedded::WALKS,
        Path::new("walks"),
        &sha,
        64,
    )
    .unwrap();
    f.names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), f.walks.get(i).unwrap().to_vec1().unwrap()))
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn alphas(meta: &serde_json::Value, k: usize) -> BTreeMap<String, f32> {
    meta["alphas"][k]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, a)| (n.clone(), a.as_f64().unwrap() as f32))
        .collect()
}

/// `anchor + Σ α·w` as the server computes it (f64, rounded once).
fn moved(
    anchor: &[f32],
    a: &BTreeMap<String, f32>,
    walks: &BTreeMap<String, Vec<f32>>,
) -> Vec<f32> {
    let mut z: Vec<f64> = anchor.iter().map(|&v| v as f64).collect();
    for (n, &alpha) in a {
        for (zj, &wj) in z.iter_mut().zip(&walks[n]) {
            *zj += alpha as f64 * wj as f64;
        }
    }
    z.into_iter().map(|v| v as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steered_positives_are_the_anchor_moved_along_the_recorded_walks() {
    let app = embedded(8).await;
    let walks = walk_vectors();
    let names: Vec<&String> = walks.keys().collect();
    assert!(
        names.len() >= 4,
        "the embedded model ships its walks: {names:?}"
    );

    let info = get_json(&app, "/v1/info").await;
    let set = &info["generator"]["walks"];
    assert_eq!(set["source"], "<embedded>/walks.safetensors");
    let listed: Vec<&str> = set["walks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, names.iter().map(|n| n.as_str()).collect::<Vec<_>>());
    assert!(set["trained"]["final_loss"]
        .as_str()
        .unwrap()
        .parse::<f64>()
        .is_ok());
    let methods = info["sampler"]["methods"].as_array().unwrap();
    assert!(methods.contains(&"steer".into()) && methods.contains(&"steer_gaussian".into()));
    assert!(info["defaults"].get("walks").is_none());
    assert_eq!(info["defaults"]["steer_scale"], 1.0);

    let base = "/v1/samples/5.json?method=steer&views=3&seed=4";
    let m = get_json(&app, base).await;
    assert_eq!(m["method"], "steer");
    let anchor = floats(&m["z_anchor"]);
    for k in 0..3 {
        let a = alphas(&m, k);
        assert_eq!(a.len(), walks.len(), "every walk by default");
        let want = moved(&anchor, &a, &walks);
        assert_eq!(floats(&m["z_pos"][k]), want, "positive {k}");
        // Within the trained ranges.
        for w in set["walks"].as_array().unwrap() {
            let r = floats(&w["alpha_range"]);
            let v = a[w["name"].as_str().unwrap()];
            assert!(v >= r[0] - 1e-6 && v <= r[1] + 1e-6, "{w} {v}");
        }
    }
    assert_ne!(
        alphas(&m, 0),
        alphas(&m, 1),
        "fresh coefficients per positive"
    );
    // The anchor and class are every method's.
    let g = get_json(&app, "/v1/samples/5.json?views=3&seed=4").await;
    assert_eq!((&g["z_anchor"], &g["class"]), (&m["z_anchor"], &m["class"]));
    assert!(
        g.get("alphas").is_none(),
        "other methods' json is unchanged"
    );

    // A subset with its own scale, and steer_scale: each walk keeps its coefficient.
    let first = names[0].as_str();
    let sub = get_json(&app, &format!("{base}&walks={first}:0.5&steer_scale=2")).await;
    for k in 0..3 {
        let a = alphas(&sub, k);
        assert_eq!(a.keys().collect::<Vec<_>>(), [first]);
        assert!((a[first] - alphas(&m, k)[first]).abs() < 1e-6);
        assert_eq!(floats(&sub["z_pos"][k]), moved(&anchor, &a, &walks));
    }
    // steer_gaussian: the same coefficients, then a Gaussian offset within ±2σ.
    let sg = get_json(
        &app,
        "/v1/samples/5.json?method=steer_gaussian&views=3&seed=4&sigma=0.1",
    )
    .await;
    for k in 0..3 {
        assert_eq!(alphas(&sg, k), alphas(&m, k));
        let steered = floats(&m["z_pos"][k]);
        let pos = floats(&sg["z_pos"][k]);
        let off: Vec<f32> = pos.iter().zip(&steered).map(|(p, s)| p - s).collect();
        assert!(off.iter().all(|o| o.abs() <= 0.2 + 1e-5), "{off:?}");
        assert!(off.iter().any(|o| o.abs() > 1e-3));
    }
    // The images are the recorded latents': the PNG of a steered sample renders.
    let (c, png) = call(
        &app,
        Method::GET,
        "/v1/samples/5.png?method=steer&views=3&seed=4",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    assert_eq!(&png[1..4], b"PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steered_shards_are_deterministic_and_equal_the_export() {
    let uri = "/v1/shards/train-000001.tar?method=steer_gaussian&views=2&shard_size=6&seed=3&walks=zoom,shift_x:0.5";
    let (a, b) = (embedded(1).await, embedded(16).await);
    let (ca, ta) = call(&a, Method::GET, uri, Body::empty()).await;
    let (cb, tb) = call(&b, Method::GET, uri, Body::empty()).await;
    assert_eq!(
        (ca, cb),
        (StatusCode::OK, StatusCode::OK),
        "{}",
        String::from_utf8_lossy(&ta)
    );
    assert_eq!(ta, tb, "the same shard whatever the batching");

    let out = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args(["export", "--out"])
        .arg(out.path())
        .args([
            "--shards",
            "1",
            "--shard-size",
            "6",
            "--method",
            "steer_gaussian",
            "--views",
            "2",
            "--seed",
            "3",
            "--walks",
            "zoom,shift_x:0.5",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let file = std::fs::read(out.path().join("train-000001.tar")).unwrap();
    assert_eq!(file, ta, "export writes the served shard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_png_draws_rows_along_one_walk() {
    let app = embedded(8).await;
    let resp = send_from(
        &app,
        LOCAL,
        Method::GET,
        "/v1/walks.png?walk=zoom&steps=9&rows=3&seed=1",
        Body::empty(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let alphas: Vec<f32> = resp.headers()[genrep_wire::ALPHAS_HEADER]
        .to_str()
        .unwrap()
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(alphas.len(), 9);
    assert!((alphas[0] + 4f32.ln()).abs() < 1e-3 && alphas[4] == 0.0);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let dec = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    let reader = dec.read_info().unwrap();
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    assert_eq!(
        (w, h),
        (9 * 30 + 2, 3 * 30 + 2),
        "9 columns of 28 px, 3 rows, 2 px gaps"
    );
    let (c, _) = call(
        &app,
        Method::HEAD,
        "/v1/walks.png?walk=shift_x",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::OK);

    for (q, needle) in [
        ("walk=tilt", "no walk `tilt`"),
        ("walk=zoom&steps=1", "`steps`"),
        ("walk=zoom&steps=99", "`steps`"),
        ("walk=zoom&rows=0", "`rows`"),
        ("walk=zoom&steer_scale=9", "`steer_scale`"),
    ] {
        let (c, e) = error(&app, &format!("/v1/walks.png?{q}")).await;
        assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {e}");
        assert!(e.contains(needle), "{q}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_steering_requests_are_named() {
    let app = embedded(8).await;
    for (q, needle) in [
        ("method=steer&walks=tilt", "no walk `tilt` (loaded walks: "),
        ("method=steer&walks=zoom,zoom", "listed twice"),
        ("method=steer&walks=zoom:7", "[0, 4]"),
        ("method=steer&walks=", "empty entry"),
        ("method=steer&steer_scale=-1", "`steer_scale`"),
        ("method=steer&space=w", "`space`"),
        (
            "method=stear",
            "must be one of gaussian, independent, none, steer, steer_gaussian",
        ),
    ] {
        let (c, e) = error(&app, &format!("/v1/samples/0.json?{q}")).await;
        assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY, "{q}: {e}");
        assert!(e.contains(needle), "{q}: {e}");
    }
    let bare = without_walks().await;
    let info = get_json(&bare, "/v1/info").await;
    assert!(info["generator"]["walks"].is_null());
    for uri in [
        "/v1/samples/0.json?method=steer",
        "/v1/shards/train-000000.tar?method=steer_gaussian",
        "/v1/stream?method=steer&limit=1",
        "/v1/samples/0.json?walks=zoom",
        "/v1/walks.png",
    ] {
        let (c, e) = error(&bare, uri).await;
        assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {e}");
        assert!(
            e.contains("no walks loaded")
                && e.contains("genrep walks train")
                && e.contains("--walks"),
            "{uri}: {e}"
        );
    }
    // Gaussian views are unaffected by the missing walks.
    get_json(&bare, "/v1/samples/0.json?method=gaussian").await;
}

/// `--walks FILE` must belong to the served weights; a file for other weights stops the
/// server before it listens, with the reason.
#[test]
fn serve_refuses_walks_for_other_weights() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("walks.safetensors");
    // Walks trained for the embedded weights, offered to the BigGAN-PyTorch fixture.
    std::fs::write(&bad, genrep::embedded::WALKS).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bigbigan/bbg-32");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .arg("--walks")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trained for the weights") && err.contains("genrep walks train"),
        "{err}"
    );
    // Not a walk file at all.
    std::fs::write(&bad, b"not safetensors").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args(["serve", "--port", "0", "--walks"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a safetensors file"), "{err}");
}

/// Walk files are input: a non-finite walk, a walk no transform knows, a name listed twice, a
/// wrong shape, a missing tensor and a huge file are each refused naming the problem.
#[test]
fn hostile_walk_files_are_refused_by_name() {
    use safetensors::tensor::TensorView;
    let dir = tempfile::tempdir().unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(genrep::embedded::WEIGHTS))
    };
    let write = |name: &str, tensors: &[(&str, Vec<f32>)], walks: &str| {
        let bytes: Vec<(String, Vec<u8>, usize)> = tensors
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    v.len(),
                )
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, b, len)| {
                (
                    n.clone(),
                    TensorView::new(safetensors::Dtype::F32, vec![*len], b).unwrap(),
                )
            })
            .collect();
        let meta = std::collections::HashMap::from([
            ("format".to_string(), "genrep-walks/1".to_string()),
            ("generator_sha256".to_string(), sha.clone()),
            ("walks".to_string(), walks.to_string()),
        ]);
        let p = dir.path().join(name);
        std::fs::write(&p, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        p
    };
    let ok = vec![0.1f32; 64];
    let mut nan = ok.clone();
    nan[7] = f32::NAN;
    let cases = [
        (
            write("nan", &[("zoom", nan)], "zoom"),
            "non-finite value at [7]",
        ),
        (
            write("tilt", &[("tilt", ok.clone())], "tilt"),
            "unknown transform `tilt`",
        ),
        (
            write("twice", &[("zoom", ok.clone())], "zoom,zoom"),
            "listed twice",
        ),
        (write("shape", &[("zoom", vec![0.0; 63])], "zoom"), "[64]"),
        (
            write("missing", &[("zoom", ok.clone())], "zoom,shift_x"),
            "`shift_x` is missing",
        ),
        (
            write("colour", &[("color_1", ok.clone())], "color_1"),
            "1 channel",
        ),
    ];
    for (path, needle) in cases {
        let mut g = genrep::embedded::load(&Device::Cpu, DType::F32).unwrap();
        let e = genrep::walks::set::load_for(g.as_mut(), None, Some(&path)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(needle), "{}: {msg}", path.display());
    }
    // A huge file is refused from its size, before it is read.
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let mut g = genrep::embedded::load(&Device::Cpu, DType::F32).unwrap();
    let e = genrep::walks::set::load_for(g.as_mut(), None, Some(&big)).unwrap_err();
    assert!(format!("{e:#}").contains("is not a walk file"), "{e:#}");
}
